// Activation quantization for int4_2l with the low-rank down projection fused, one thread per 64 values of a row
// (Hopper).
//
// As in quantize_act_2l_fused_sm90.cu (q.7), a cluster of C CTAs owns 16 token rows at a time, CTA `rank` the K
// slice [rank Ks, (rank + 1) Ks) with that slice of proj_down resident in shared memory, so x is read from DRAM
// once for the quantization and for lr = x @ proj_down. q.7 ran 2.5x the per-row kernel's time by its per-element
// work (perf-notes v2.17, v2.46); here:
//   - thread t owns unit u = t % UR (64 values: 8 vectors) of row t / UR of every block (UR = Ks / 64 units a row):
//     its x * (1 / smooth) values stay in registers from the group maxima to the quantization, so each thread reads
//     x from shared memory once (and ldmatrix once, for the mma), and the row's work (its maximum over the cluster,
//     the divisions, the reciprocal) is done once per 64 values;
//   - a stage is [unit][16 rows][128 bytes], loaded by TMA (a box of 64 values x 16 rows a unit) with the 128-byte
//     swizzle (vector c of row r at c ^ (r % 8)); a unit's 16 rows go to 16 consecutive threads, so both the threads'
//     16-byte reads (8 rows of one unit a phase) and ldmatrix's (8 rows of one vector) are conflict-free; 1 / smooth is
//     swizzled by unit (a phase's threads read one address);
//   - warp-specialized (v5-v8): the unit warps take the units' pass, the row maxima's exchange and the
//     quantization; 1-3 mma warps of their own take the down projection's mma on the same stage, sum their partials
//     and send each 16-byte piece (row, quad) to the rank owning it (which sums the cluster's and stores lr); one
//     thread of a producer warp loads the stages by TMA (v8: a warp's cp.async issue is bounded by the warp, so v7's
//     producer warp took ~22k cycles to request a 48 KB stage; 24 TMA boxes take ~2.9k: v2.49). The groups run side
//     by side and meet only at the stage: mbarriers say that a stage has landed (the TMA's bytes) and that the unit
//     and mma warps have read it; a named barrier a block in each group; every wait suspends its warp (a polling
//     warp slows the others: v2.48);
//   - the row maxima go to every peer and the low-rank pieces to their owners by st.async, completing on the
//     receiver's mbarrier; every rank owns pieces, so every rank's mma warps wait on the cluster each block; the x
//     stage of block j + 2 is requested once block j's is read.
// (v8b, measured slower and reverted (v2.49): the mma warps' next k-step fragments requested before this step's mma,
// 3.6k -> 6.4k cycles a block; xq stores filling whole sectors by a lane pair's chunk swap, quantization 4.2k -> 4.7k.)
// Exact numerics of ops/reference.py quantize_act_2l_ref for xq and xscale (bit-identical to the per-row kernel);
// lr accumulates in fp32 in another order than cuBLAS (within 16-bit rounding of the reference).
// Opt-in: set_quantize_act_2l_fused(2) (perf-notes v2.47-v2.49); timing knobs: set_quantize_act_2l_cols_tuning (v2.50).
#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>

#include "common.cuh"
#include "fused_quant_sm90.cuh"
#include "launch.h"
#include "tma_sm90.cuh"

namespace svdq {
namespace {

constexpr int kRows = 16;      // token rows per block (one mma m16 tile)
constexpr int kMmaWarps = 3;  // at most this many warps take the down projection's k-steps
constexpr size_t kTwoPerSm = 113 * 1024;  // the shared memory that lets two CTAs share an SM (228 KB, 1 KB each kept)
constexpr int kMaxThreads = 512;
// stamps (benchmarks), the first blocks' steps: thread 0 (unit warps) 0-6: before the stage wait, after it, after
// the units' pass, after their barrier, after the maxima's sends, after their wait, after the quantization; the first
// mma thread 7-13: before the stage wait, after it, after the mma, after the mma warps' barrier, after the partials'
// sends, after their wait, after the owners' sums; the producer (block j: its loads of block j + 2) 14-16: before
// the stage's release, after it, after the loads' issue
constexpr int kStampBlocks = 64, kStampSteps = 17;

// Byte offsets of the shared-memory buffers (all multiples of 16). UR: 64-value units a row of the slice; MW: the
// mma warps.
struct Q2lcLayout {
  int Ks, C, R, MW;
  __host__ __device__ int ur() const { return Ks / 64; }
  __host__ __device__ int ut() const { return (kRows * ur() + 31) / 32 * 32; }  // the unit warps' threads
  __host__ __device__ int xr() const { return Ks + 8; }  // 16-bit elements per proj_down^T row (+16 B: ldmatrix)
  __host__ __device__ int ppr() const { return kRows * R / 4 / C; }  // low-rank pieces (float4) per rank
  // [2][UR][16][128 B] x stages (128-byte swizzle: at a 1024-byte boundary, as the base)
  __host__ __device__ size_t xs() const { return 0; }
  __host__ __device__ size_t pt() const { return xs() + (size_t)2 * kRows * Ks * 2; }  // [R][xr] proj_down^T slice
  __host__ __device__ size_t red() const { return pt() + (size_t)R * xr() * 2; }  // [2][MW][16][R] f32
  __host__ __device__ size_t rcp() const { return red() + (size_t)2 * MW * kRows * R * 4; }  // [Ks] f32, swizzled
  // [2][16][UR] f32 units' maxima (by parity: a thread may still read block j's while another writes block j + 1's)
  __host__ __device__ size_t umax() const { return rcp() + (size_t)Ks * 4; }
  // [2][16][C] the row maxima from the cluster
  __host__ __device__ size_t gmx() const { return umax() + ((size_t)2 * kRows * ur() * 4 + 15) / 16 * 16; }
  __host__ __device__ size_t glr() const { return gmx() + (size_t)2 * kRows * C * 4; }  // [2][C][ppr] float4
  __host__ __device__ size_t bars() const { return glr() + (size_t)2 * C * ppr() * 16; }  // 8 mbarriers
  __host__ __device__ size_t total() const { return bars() + 64 + 1024; }  // (+ the base's alignment to 1024)
};

// Vector c (16 bytes) of row r of a stage: its byte offset (unit c / 8's box, row r, TMA's 128-byte swizzle).
__host__ __device__ __forceinline__ uint32_t stage_off(int r, int c) {
  return (uint32_t)((c >> 3) * (kRows * 128) + r * 128 + (((c & 7) ^ (r & 7)) << 4));
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// The low-rank pieces rank `rank` owns (piece p: row p / (R / 4), quad p % (R / 4), owned by rank p % C at slot
// p / C): each summed over the C senders' slots in rank order, rounded once and stored to lr (rows past M skipped).
// got: this parity's [C][ppr] float4 slots; threads t of n take part.
template <typename T, int R>
__device__ __forceinline__ void store_owned_pieces(const float4* got, int C, int ppr, int rank, int row0, int M,
                                                   T* __restrict__ lr, int t, int n) {
  for (int slot = t; slot < ppr; slot += n) {
    const int p = slot * C + rank, r = p / (R / 4), qd = p - r * (R / 4);
    if (row0 + r >= M) continue;
    float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int q = 0; q < C; ++q) {
      const float4 v = got[q * ppr + slot];
      s.x += v.x, s.y += v.y, s.z += v.z, s.w += v.w;
    }
    *reinterpret_cast<uint2*>(lr + (int64_t)(row0 + r) * R + qd * 4) =
        make_uint2(Dt<T>::pack2(s.x, s.y), Dt<T>::pack2(s.z, s.w));
  }
}
#endif

// KS: the mma warps' accumulator sets (k-steps in flight: 2 at rank <= 32 by default, 4 the opt-in form, 1 above)
template <typename T, int NT, int KS>
__global__ void __launch_bounds__(kMaxThreads, 1)
    quantize_act_2l_cols_kernel(const __grid_constant__ CUtensorMap tx, const __grid_constant__ CUtensorMap tx2, int K1,
                                const T* __restrict__ smooth,
                                const T* __restrict__ pd, int8_t* __restrict__ xq, float* __restrict__ xscale,
                                T* __restrict__ lr, int M, int K, int G, int C, int MW, Q2lcTuning tune,
                                long long* __restrict__ stamps) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int R = NT * 8;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);  // the stages' swizzle
  const int Ks = K / C;
  const Q2lcLayout L{Ks, C, R, MW};
  const int XR = L.xr(), ppr = L.ppr(), UR = L.ur(), UT = L.ut();
  T* pt = reinterpret_cast<T*>(smem + L.pt());
  const uint32_t xs_s = smem_u32(smem + L.xs());
  float* red = reinterpret_cast<float*>(smem + L.red());
  float4* rcp_s = reinterpret_cast<float4*>(smem + L.rcp());
  float* umax = reinterpret_cast<float*>(smem + L.umax());
  float* gmx = reinterpret_cast<float*>(smem + L.gmx());
  float4* glr = reinterpret_cast<float4*>(smem + L.glr());
  // [0, 1]: the row maxima, [2, 3]: the low-rank partials (both from the cluster), [4, 5]: a stage has landed, [6, 7]:
  // the unit and mma warps have read a stage
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + L.bars());
  const uint32_t rank = cluster_rank();
  const int kbase = (int)rank * Ks;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, nthr = blockDim.x;
  const int clusters = gridDim.x / C, cid = blockIdx.x / C;
  const int nrb = (M + kRows - 1) / kRows;
  const int nblk = (nrb - cid + clusters - 1) / clusters;  // this cluster's row blocks (the grid has cid < nrb)
  const uint32_t max_bytes = (uint32_t)(C * kRows * 4), lr_bytes = (uint32_t)(ppr * 16 * C);
  // (benchmarks, set_quantize_act_2l_cols_stamps) the clock of thread 0 (steps 0-6), the first mma thread (7-13) and
  // the producer's lane 0 (14-16) at step p of its CTA's block j < kStampBlocks
  auto stamp = [&](int j, int p) {
    if (stamps && (tid == 0 || tid == UT || tid == UT + 32 * MW) && j < kStampBlocks)
      stamps[((int64_t)blockIdx.x * kStampBlocks + j) * kStampSteps + p] = clock64();
  };

  // the cluster's j-th row block: its stage and barrier parity, the barriers' phase, its first row, its stage's address
  struct Block {
    int par;
    uint32_t phase;
    int row0;
    uint32_t st;
  };
  auto block = [&](int j) {
    return Block{j & 1, (uint32_t)(j >> 1) & 1, (cid + j * clusters) * kRows,
                 xs_s + (uint32_t)((j & 1) * kRows * Ks * 2)};
  };
  // block j once its stage has landed (stamps p before the wait and p + 1 after it): the unit and the mma warps
  auto landed = [&](int j, int p) {
    const Block b = block(j);
    stamp(j, p);
    mbar_wait_suspended(smem_u32(&bars[4 + b.par]), b.phase);
    stamp(j, p + 1);
    return b;
  };

  // the warps: unit warps [0, UT / 32), mma warps [UT / 32, UT / 32 + MW), the producer warp last
  const int mt = tid - UT, mthreads = 32 * MW;
  const bool unit = tid < kRows * UR;
  // loads, by one thread: the cluster's j-th row block into stage j % 2, a TMA box a unit (rows past M zero-filled),
  // completing on the stage's barrier; the rows are cat([x, x2]): units at columns k < K1 from x, the rest from x2
  auto issue = [&](int j) {
    const Block b = block(j);
    const uint32_t bar = smem_u32(&bars[4 + b.par]);
    mbar_expect_tx(bar, (uint32_t)(kRows * Ks * 2));
    for (int u = 0; u < UR; ++u) {
      const int k = kbase + 64 * u;
      if (k < K1) tma_load_2d(b.st + u * (kRows * 128), &tx, 2 * k, b.row0, bar);
      else tma_load_2d(b.st + u * (kRows * 128), &tx2, 2 * (k - K1), b.row0, bar);
    }
  };
  if (tid == 0) {
    for (int b = 0; b < 4; ++b) mbar_init(smem_u32(&bars[b]), 1);
    for (int b = 4; b < 6; ++b) mbar_init(smem_u32(&bars[b]), 1);       // the producer's arrival (+ the bytes)
    for (int b = 6; b < 8; ++b) mbar_init(smem_u32(&bars[b]), 1 + MW);  // thread 0 and each mma warp
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    for (int b = 0; b < 2; ++b) {  // blocks 0 and 1
      mbar_expect_tx(smem_u32(&bars[b]), max_bytes);
      mbar_expect_tx(smem_u32(&bars[2 + b]), lr_bytes);
    }
  }
  __syncthreads();  // the barriers are initialized before any copy arrives on them
  // (tune.stagger) cluster cid starts its loads (cid % phases) x cycles late, so that the clusters' load and store
  // bursts need not all fall at once
  const long long delay = tune.stagger_phases > 1 ? (long long)(cid % tune.stagger_phases) * tune.stagger_cycles : 0;
  if (warp == nthr / 32 - 1 && lane == 0 && delay == 0)
    for (int j = 0; j < 2 && j < nblk; ++j) issue(j);
  load_proj_down_t<T, NT>(pt, pd, kbase, Ks, XR);
  for (int i = tid; i < Ks / 4; i += nthr) {  // 1 / smooth, float4 k of unit u at u * 16 + (k ^ (u % 8))
    const int u = i >> 4, k = i & 15;
    float4 v;
    v.x = __frcp_rn(Dt<T>::to_f(smooth[kbase + 4 * i]));
    v.y = __frcp_rn(Dt<T>::to_f(smooth[kbase + 4 * i + 1]));
    v.z = __frcp_rn(Dt<T>::to_f(smooth[kbase + 4 * i + 2]));
    v.w = __frcp_rn(Dt<T>::to_f(smooth[kbase + 4 * i + 3]));
    rcp_s[u * 16 + (k ^ (u & 7))] = v;
  }
  __syncthreads();
  cluster_barrier();  // every CTA of the cluster runs, its barriers armed, before any remote store

  if (tid < UT) {
    // the unit warps: each thread's unit of a block through its row's maxima to the 4-bit values
    const int ur = tid & 15, uu = tid >> 4;  // this thread's row of the block and unit of the row
#pragma unroll 1
    for (int j = 0; j < nblk; ++j) {
      const auto [par, phase, row0, st] = landed(j, 0);

      float v[64];    // this thread's unit: x * (1 / smooth)
      float gm[2] = {0.f, 0.f};  // its groups' maxima (G = 32: two; 64: one; 128: half of one, completed by a shuffle)
      if (unit) {
        float m0, m1;
        unit_pass<T>([&](int q) { return st + stage_off(ur, 8 * uu + q); }, rcp_s, uu, v, m0, m1);
        const float um = fmaxf(m0, m1);
        umax[(par * kRows + ur) * UR + uu] = um;
        gm[0] = G == 32 ? m0 : um;
        gm[1] = m1;
      }
      // (G = 128: Ks / 64 is even, so threads t and t ^ 16 hold the two halves of one group of a row)
      if (G == 128) gm[0] = fmaxf(gm[0], __shfl_xor_sync(0xffffffffu, gm[0], 16));

      stamp(j, 2);
      named_barrier(1, UT);  // the units' maxima are written, the stage is read
      if (tid == 0) mbar_arrive(smem_u32(&bars[6 + par]));
      stamp(j, 3);
      for (int i = tid; i < kRows * 8; i += UT) {  // this CTA's row maxima, 8 lanes a row, to every rank
        const int r = i >> 3, part = i & 7;
        float m = 0.f;
        for (int w = part; w < UR; w += 8) m = fmaxf(m, umax[(par * kRows + r) * UR + w]);
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 1));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 4));
        for (int q = part; q < C; q += 8)
          st_async_f32(map_rank(gmx + (par * kRows + r) * C + rank, q), m, map_rank(&bars[par], q));
      }
      stamp(j, 4);
      mbar_wait_suspended(smem_u32(&bars[par]), phase);
      stamp(j, 5);
      if (tid == 0) mbar_expect_tx(smem_u32(&bars[par]), max_bytes);  // block j + 2's phase
      const int m = row0 + ur;
      if (unit && m < M) {  // quantize this thread's unit of block j from registers
        const float4* mx = reinterpret_cast<const float4*>(gmx + (par * kRows + ur) * C);
        float amax = 0.f;
        for (int q = 0; q < C / 4; ++q) {
          const float4 w4 = mx[q];
          amax = fmaxf(amax, fmaxf(fmaxf(w4.x, w4.y), fmaxf(w4.z, w4.w)));
        }
        const float s_row = __fdiv_rn(amax, 112.f);
        if (rank == 0 && uu == 0) xscale[m] = s_row;
        uint32_t w[16];
        quantize_unit(v, gm, amax, s_row, G, w);
        // (tune.probe 1, a timing diagnostic: the values computed but stored only where their hash hits a constant)
        bool store = true;
        if (tune.probe == 1) {
          uint32_t h = 0;
#pragma unroll
          for (int q = 0; q < 16; ++q) h = h * 0x01000193u ^ w[q];
          store = h == 0x5bd1e995u;
        }
        uint4* dst = reinterpret_cast<uint4*>(xq + (int64_t)m * K + kbase + uu * 64);
        if (store) {
#pragma unroll
          for (int q = 0; q < 4; ++q) dst[q] = make_uint4(w[4 * q], w[4 * q + 1], w[4 * q + 2], w[4 * q + 3]);
        }
      }
      stamp(j, 6);
    }
  } else if (mt < mthreads) {
    // the mma warps: the down projection's partial over each warp's k-steps of the slice, summed over the warps and
    // sent to the pieces' owners, who sum the cluster's partials and store lr
    const int mw = warp - UT / 32;
    constexpr int kSets = KS;  // k-step s on accumulator set s % KS (within each run of KS k-steps)
    const int steps = Ks / 16, s0 = mw * steps / MW, s1 = (mw + 1) * steps / MW;
    const int arow = lane & 15;
    const uint32_t b_base = smem_u32(pt + ((lane & 7) + (lane >> 4) * 8) * XR + ((lane >> 3) & 1) * 8);
#pragma unroll 1
    for (int j = 0; j < nblk; ++j) {
      const auto [par, phase, row0, st] = landed(j, 7);
      float acc[kSets][NT][4] = {};
      auto kstep = [&](uint32_t stage, int s, float(&ac)[NT][4]) {
        uint32_t a[4];
        ldmatrix_x4(a, stage + stage_off(arow, 2 * s + (lane >> 4)));
#pragma unroll
        for (int p = 0; p < NT / 2; ++p) {
          uint32_t b[4];
          ldmatrix_x4(b, b_base + (p * 16 * XR + s * 16) * 2);
          mma_16816<T>(ac[2 * p], a, b[0], b[1]);
          mma_16816<T>(ac[2 * p + 1], a, b[2], b[3]);
        }
      };
      int s = s0;
      for (; s + kSets - 1 < s1; s += kSets) {
#pragma unroll
        for (int i = 0; i < kSets; ++i) kstep(st, s + i, acc[i]);
      }
      for (; s < s1; ++s) kstep(st, s, acc[0]);
#pragma unroll
      for (int i = 1; i < kSets; ++i)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[0][nt][e] += acc[i][nt][e];
      __syncwarp();
      if (lane == 0) mbar_arrive(smem_u32(&bars[6 + par]));  // this warp is done with the stage
      const int g = lane >> 2, t = lane & 3;
      float* rp = red + (size_t)par * MW * kRows * R;
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        float* pp = rp + (mw * kRows + g) * R + nt * 8 + 2 * t;
        *reinterpret_cast<float2*>(pp) = make_float2(acc[0][nt][0], acc[0][nt][1]);
        *reinterpret_cast<float2*>(pp + 8 * R) = make_float2(acc[0][nt][2], acc[0][nt][3]);
      }
      stamp(j, 9);
      named_barrier(2, mthreads);  // the warps' partials are written
      stamp(j, 10);
      // piece p (row p / (R / 4), quad p % (R / 4)) of this CTA's partial to rank p % C, slot p / C
      for (int p = mt; p < kRows * R / 4; p += mthreads) {
        float4 acc4 = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int w = 0; w < MW; ++w) {
          const float4 q4 = *reinterpret_cast<const float4*>(rp + w * kRows * R + p * 4);
          acc4.x += q4.x, acc4.y += q4.y, acc4.z += q4.z, acc4.w += q4.w;
        }
        const int owner = p % C;
        st_async_v4(map_rank(glr + (par * C + (int)rank) * ppr + p / C, owner), acc4,
                    map_rank(&bars[2 + par], owner));
      }
      stamp(j, 11);
      mbar_wait_suspended(smem_u32(&bars[2 + par]), phase);
      stamp(j, 12);
      if (mt == 0) mbar_expect_tx(smem_u32(&bars[2 + par]), lr_bytes);  // block j + 2's phase
      store_owned_pieces<T, R>(glr + par * C * ppr, C, ppr, (int)rank, row0, M, lr, mt, mthreads);
      stamp(j, 13);
    }
  } else if (lane == 0) {
    // the producer warp's first thread: block j + 2 into block j's stage once both groups have read it
    if (delay) {
      const long long t0 = clock64();
      while (clock64() - t0 < delay) __nanosleep(64);
      for (int j = 0; j < 2 && j < nblk; ++j) issue(j);
    }
#pragma unroll 1
    for (int j = 0; j + 2 < nblk; ++j) {
      stamp(j, 14);
      mbar_wait_suspended(smem_u32(&bars[6 + (j & 1)]), (j >> 1) & 1);
      stamp(j, 15);
      issue(j + 2);
      stamp(j, 16);
    }
  }
  cluster_barrier();  // no CTA leaves while a peer's stores to it may be in flight
#endif
}

template <typename T>
const void* pick_kernel(int NT, bool four_sets) {
  switch (NT) {
    case 2:
      return four_sets ? reinterpret_cast<const void*>(&quantize_act_2l_cols_kernel<T, 2, 4>)
                       : reinterpret_cast<const void*>(&quantize_act_2l_cols_kernel<T, 2, 2>);
    case 4:
      return four_sets ? reinterpret_cast<const void*>(&quantize_act_2l_cols_kernel<T, 4, 4>)
                       : reinterpret_cast<const void*>(&quantize_act_2l_cols_kernel<T, 4, 2>);
    case 6: return reinterpret_cast<const void*>(&quantize_act_2l_cols_kernel<T, 6, 1>);
    case 8: return reinterpret_cast<const void*>(&quantize_act_2l_cols_kernel<T, 8, 1>);
    default: return nullptr;
  }
}

constexpr size_t kSmemLimit = 227 * 1024;
long long* g_stamps = nullptr;  // set_quantize_act_2l_cols_stamps
Q2lcTuning g_tuning;              // set_quantize_act_2l_cols_tuning

}  // namespace

void set_quantize_act_2l_cols_stamps(long long* stamps) { g_stamps = stamps; }
void set_quantize_act_2l_cols_tuning(const Q2lcTuning& t) { g_tuning = t; }
Q2lcTuning quantize_act_2l_cols_tuning() { return g_tuning; }
int quantize_act_2l_cols_stamp_layout() { return kStampBlocks * 100 + kStampSteps; }

Q2lcShape q2lc_shape(int M, int K, int R, int G, int force_cluster) {
  (void)M;
  Q2lcShape best;
  if (R <= 0 || R % 16 || R > 64 || K <= 0 || (G != 32 && G != 64 && G != 128)) return best;
  for (int C : {8, 16, 4}) {  // the portable size first; 16 where a slice of 8 does not fit
    if (force_cluster && C != force_cluster) continue;
    if (K % C || (K / C) % 64 || (K / C) % G) continue;
    const int Ks = K / C;
    const int ut = Q2lcLayout{Ks, C, R, 1}.ut();  // a thread for each 64-value unit of the block's rows
    // the mma warps: one for each 16 of the slice's k-steps, at most 3 and as many as the CTA's threads leave beside
    // the producer warp; fewer where that lets two CTAs share an SM
    const int mw0 = std::min({kMmaWarps, std::max(1, Ks / 256), (kMaxThreads - ut - 32) / 32});
    if (mw0 < 1) continue;
    int mw = mw0;
    for (int w : {mw0, 2, 1})
      if (w <= mw0 && Q2lcLayout{Ks, C, R, w}.total() <= kTwoPerSm && ut + 32 * w + 32 <= kMaxThreads / 2) {
        mw = w;
        break;
      }
    const size_t smem = Q2lcLayout{Ks, C, R, mw}.total();
    if (smem > kSmemLimit) continue;
    return Q2lcShape{C, ut + 32 * mw + 32, mw, smem};
  }
  return best;
}

namespace {
// A launch of `grid` CTAs in clusters of s.C (attrs points into the object: not copyable)
struct ClusterLaunch {
  cudaLaunchConfig_t cfg = {};
  cudaLaunchAttribute attr[1];
  ClusterLaunch(const Q2lcShape& s, int grid, cudaStream_t stream) {
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = s.C;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.gridDim = dim3(grid);
    cfg.blockDim = dim3(s.threads);
    cfg.dynamicSmemBytes = s.smem;
    cfg.stream = stream;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  ClusterLaunch(const ClusterLaunch&) = delete;
  ClusterLaunch& operator=(const ClusterLaunch&) = delete;
};

// per (device, kernel, cluster size, shared bytes): the clusters that fit at once (the attributes set once)
int clusters_fit(const void* kern, const Q2lcShape& s, int num_sms, cudaError_t* err) {
  static std::mutex mu;
  static std::map<std::tuple<int, const void*, int, size_t>, int> fits;
  int dev = 0;
  *err = cudaGetDevice(&dev);
  if (*err != cudaSuccess) return 0;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_tuple(dev, kern, s.C, s.smem);
  auto it = fits.find(key);
  if (it != fits.end()) return it->second;
  *err = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)kSmemLimit);
  if (*err == cudaSuccess && s.C > 8)
    *err = cudaFuncSetAttribute(kern, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  if (*err != cudaSuccess) return 0;
  ClusterLaunch l(s, s.C * std::max(1, num_sms / s.C), nullptr);
  int n = 0;
  *err = cudaOccupancyMaxActiveClusters(&n, kern, &l.cfg);
  if (*err != cudaSuccess) return 0;
  fits.emplace(key, n);
  return n;
}

const void* kernel_for(DType dtype, int R, const Q2lcShape& s) {
  (void)s;
  const bool four = g_tuning.mma_sets == 4;
  return dtype == DType::kBF16 ? pick_kernel<__nv_bfloat16>(R / 8, four) : pick_kernel<__half>(R / 8, four);
}
}  // namespace

bool quantize_act_2l_cols_supported(int M, int K, int R, int G, int num_sms, int force_cluster) {
#ifdef SVDQ_BUILT_SM90A
  const Q2lcShape s = q2lc_shape(M, K, R, G, force_cluster);
  if (s.C == 0) return false;
  cudaError_t e = cudaSuccess;  // (both dtypes' kernels have the same resources)
  return clusters_fit(kernel_for(DType::kBF16, R, s), s, num_sms, &e) > 0 && e == cudaSuccess;
#else
  (void)M, (void)K, (void)R, (void)G, (void)num_sms, (void)force_cluster;
  return false;
#endif
}

cudaError_t launch_quantize_act_2l_cols(const QuantizeAct2lArgs& a, int num_sms, int force_cluster, int cap_clusters,
                                        int* grid, cudaStream_t stream) {
  const Q2lcShape s = q2lc_shape(a.M, a.K, a.R, a.group_size, force_cluster);
  if (s.C == 0) return cudaErrorInvalidValue;
  if (a.M == 0) return cudaSuccess;
  const void* kern = kernel_for(a.dtype, a.R, s);
  if (!kern) return cudaErrorInvalidValue;
  cudaError_t e = cudaSuccess;
  int max_clusters = clusters_fit(kern, s, num_sms, &e);
  if (e != cudaSuccess) return e;
  if (max_clusters <= 0) return cudaErrorInvalidConfiguration;
  if (cap_clusters > 0) max_clusters = std::min(max_clusters, cap_clusters);
  const int nrb = (a.M + kRows - 1) / kRows;
  ClusterLaunch l(s, s.C * std::min(nrb, max_clusters), stream);
  *grid = (int)l.cfg.gridDim.x;
  int M = a.M, K = a.K, G = a.group_size, C = s.C, MW = s.mma_warps;
  int K1 = a.x2 ? a.K1 : a.K;
  // x (and x2) as byte matrices [M, 2 K1] ([M, 2 (K - K1)]), a box a 64-value unit of 16 rows
  CUtensorMap tx, tx2;
  if (K1 % 64 || !make_map(&tx, a.x, (uint64_t)M, (uint64_t)K1 * 2, kRows, 128, CU_TENSOR_MAP_SWIZZLE_128B))
    return cudaErrorInvalidValue;
  tx2 = tx;
  if (K > K1 && !make_map(&tx2, a.x2, (uint64_t)M, (uint64_t)(K - K1) * 2, kRows, 128, CU_TENSOR_MAP_SWIZZLE_128B))
    return cudaErrorInvalidValue;
  const void* smooth = a.smooth;
  const void* pd = a.proj_down;
  int8_t* xq = a.xq;
  float* xscale = a.xscale;
  void* lr = a.lr;
  long long* stamps = g_stamps;
  Q2lcTuning tune = g_tuning;
  void* args[] = {&tx, &tx2, &K1, &smooth, &pd, &xq, &xscale, &lr, &M, &K, &G, &C, &MW, &tune, &stamps};
  return cudaLaunchKernelExC(&l.cfg, kern, args);
}

}  // namespace svdq

// Activation quantization for int4_2l with the low-rank down projection fused, for K up to 3072 (Hopper; q.9,
// perf-notes v2.50-v2.51; opt-in: set_quantize_act_2l_fused(3)).
//
// Two CTAs take each 8-row block of x, CTA h = blockIdx.x % 2 of a pair:
//   - both load the block's whole rows (the second reader finds them in L2), by TMA into [unit][8 rows][128 B] with
//     the 128-byte swizzle, two stages;
//   - CTA h keeps proj_down's columns [R/2 h, R/2 (h + 1)) resident and computes those columns of lr for the block's
//     8 rows (mma.m16n8k16 with rows 8-15 of A zero). v3 (set_quantize_act_2l_pairs_pd_tma(True)) loads them by TMA as
//     they lie, [k][R/2] (the 32-byte swizzle at rank 32), and ldmatrix.trans makes them mma's B operand; v2 loads
//     them with every thread and stores them transposed, [R/2][k];
//   - at rank 32 the down projection can also run transposed (set_quantize_act_2l_pairs_lr_t(True), v2.51):
//     lr^T = proj_down^T x^T, proj_down's 16 columns as mma's 16 rows and the block's 8 rows as its n = 8, so no half
//     of an mma is zero and a k-step is one mma instead of two;
//   - CTA h quantizes rows 4h .. 4h + 3 of the block: a whole row is in its shared memory, so the row's maximum is a
//     sum over its own threads (no cluster, no exchange: q.7 / q.8's cost at small K).
// x is read from DRAM once; a CTA holds K x R/2 x 2 bytes of proj_down, two 8 x K x 2-byte stages and its 4 rows of
// xq, so K <= 3072 at rank 32. Thread t < 4 K / 64 owns row t % 4 of unit t / 4 (64 values): its x * (1 / smooth)
// stays in registers from the group maxima to the quantization (q.8's per-element work); its xq bytes are staged in
// shared memory and each row goes out as one bulk copy (v2: q.8's scattered 16-byte stores were ~2k cycles of its
// quantization, v2.50), or (set_quantize_act_2l_pairs_units, v2.53) are stored by the thread itself or copied out of
// the staging by all unit threads. Warp-specialized: unit warps, mma warps and one producer thread meet at the
// stages' mbarriers (landed; read by both groups).
// xq and xscale: the exact numerics of ops/reference.py quantize_act_2l_ref (the per-row kernel's bits); lr in fp32,
// summed in another order than cuBLAS (within 16-bit rounding of the reference).
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

constexpr int kRows = 8;      // token rows a block (the upper half of mma's m16 tile is zero)
constexpr int kQRows = 4;     // rows each CTA of a pair quantizes
constexpr int kMmaWarps = 8;  // at most this many warps take the down projection's k-steps
constexpr int kMaxThreads = 512;
constexpr size_t kSmemLimit = 227 * 1024;
// stamps (benchmarks), the first blocks' steps: thread 0 (unit warps) 0-6: before the stage wait, after it, after the
// units' pass, after their barrier, after the quantization, after the staging's barrier, after the bulk stores' issue;
// the first mma thread 7-12: before the stage wait, after it, after the k-steps, after the partials' barrier, after
// the sums, after the second barrier; the producer (block j: its loads of block j + 2) 13-15: before the stage's
// release, after it, after the loads' issue; thread 0 at block 0 only, 16-17: the kernel's start, the prologue's end,
// and 18-19: %globaltimer (ns, one clock for all SMs) at its start and after its last store
constexpr int kStampBlocks = 64, kStampSteps = 20;

constexpr int kPdBox = 64;  // proj_down rows a TMA box (K is a multiple of 64)

// Byte offsets of the shared-memory buffers. RH: proj_down columns a CTA keeps (R / 2).
struct Q2lpLayout {
  int K, RH, MW;
  __host__ __device__ int ur() const { return K / 64; }
  __host__ __device__ int ut() const { return (kQRows * ur() + 31) / 32 * 32; }  // the unit warps' threads
  __host__ __device__ size_t xs() const { return 0; }   // [2][UR][8][128 B] (at a 1024-byte boundary)
  __host__ __device__ int xr() const { return K + 8; }  // v2: 16-bit elements per proj_down^T row (+16 B: ldmatrix)
  // v2: [RH][xr]; v3: [K][RH] (1024-aligned); the larger, v2's, either way
  __host__ __device__ size_t pt() const { return xs() + (size_t)2 * kRows * K * 2; }
  __host__ __device__ size_t rcp() const { return pt() + (size_t)RH * xr() * 2; }      // [K] f32, swizzled
  __host__ __device__ size_t red() const { return rcp() + (size_t)K * 4; }              // [MW][8][RH] f32
  __host__ __device__ int urp() const { return (ur() + 3) / 4 * 4; }  // a row's unit maxima, padded to float4s
  __host__ __device__ size_t umax() const { return red() + (size_t)MW * kRows * RH * 4; }  // [2][4][URP] f32
  __host__ __device__ int xqr() const { return K + 16; }  // bytes a staged xq row (+16: conflict-free writes)
  __host__ __device__ size_t xqs() const { return umax() + (size_t)2 * kQRows * urp() * 4; }  // [4][xqr] int8
  __host__ __device__ size_t bars() const { return xqs() + (size_t)kQRows * xqr(); }
  __host__ __device__ size_t total() const { return bars() + 48 + 1024; }  // 5 mbarriers (+ the base's alignment)
};

// Vector c (16 bytes) of row r of a stage: unit c / 8's box, row r, TMA's 128-byte swizzle.
__host__ __device__ __forceinline__ uint32_t stage_off8(int r, int c) {
  return (uint32_t)((c >> 3) * (kRows * 128) + r * 128 + (((c & 7) ^ r) << 4));
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// `bytes` (a multiple of 16) from shared memory to global memory by the bulk-copy unit, as a bulk group
__device__ __forceinline__ void bulk_store(void* dst, uint32_t src, uint32_t bytes) {
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(dst), "r"(src), "r"(bytes)
               : "memory");
}
#endif

template <typename T, int NTH, bool kTmaPd, bool kLrT>
__global__ void __launch_bounds__(kMaxThreads, 1)
    quantize_act_2l_pairs_kernel(const __grid_constant__ CUtensorMap tx, const __grid_constant__ CUtensorMap tp,
                                 const T* __restrict__ smooth, const T* __restrict__ pd, int8_t* __restrict__ xq,
                                 float* __restrict__ xscale, T* __restrict__ lr, int M, int K, int G, int MW,
                                 int form, long long* __restrict__ stamps) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int RH = NTH * 8, R = 2 * RH, RB = RH * 2;  // RB: bytes a resident proj_down row
  extern __shared__ __align__(128) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);  // the stages' swizzle
  const Q2lpLayout L{K, RH, MW};
  const int UR = L.ur(), UT = L.ut(), URP = L.urp(), XR = L.xr();
  const uint32_t pt_s = smem_u32(smem + L.pt());
  const uint32_t xs_s = smem_u32(smem + L.xs());
  float4* rcp_s = reinterpret_cast<float4*>(smem + L.rcp());
  float* red = reinterpret_cast<float*>(smem + L.red());
  float* umax = reinterpret_cast<float*>(smem + L.umax());
  // [0, 1]: a stage has landed; [2, 3]: the unit and mma warps have read it; [4]: proj_down's columns have landed
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + L.bars());
  const int h = blockIdx.x & 1, pairs = gridDim.x >> 1, pid = blockIdx.x >> 1;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, nthr = blockDim.x;
  const int nb = (M + kRows - 1) / kRows;
  const int nblk = (nb - pid + pairs - 1) / pairs;  // this pair's blocks (the grid has pid < nb)
  const int mt = tid - UT, mthreads = 32 * MW;
  auto stamp = [&](int j, int p) {  // (benchmarks) thread 0, the first mma thread and the producer's lane 0
    if (stamps && (tid == 0 || (p < 16 && (tid == UT || tid == nthr - 32))) && j < kStampBlocks)
      stamps[((int64_t)blockIdx.x * kStampBlocks + j) * kStampSteps + p] = clock64();
  };
  auto gstamp = [&](int p) {  // (benchmarks) thread 0: the global timer
    if (stamps && tid == 0) {
      long long t;
      asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
      stamps[(int64_t)blockIdx.x * kStampBlocks * kStampSteps + p] = t;
    }
  };
  gstamp(18);
  stamp(0, 16);

  auto stage = [&](int j) { return xs_s + (uint32_t)((j & 1) * kRows * K * 2); };
  auto row0_of = [&](int j) { return (pid + j * pairs) * kRows; };
  // the pair's j-th block into stage j % 2, a TMA box a 64-value unit, or (form bit 0) one 3-D box [unit][row][128 B]
  // for the whole block (rows past M zero-filled, counted as bytes)
  const bool box3d = form & 1;
  // xq's stores: (form bit 1) each unit thread stores its own 64 bytes (four 16-byte stores), no staging; (bit 3) the
  // staged rows copied out by all unit threads, 16 bytes each a turn, consecutive threads on consecutive bytes;
  // otherwise thread 0's bulk copy a row. (bit 2) a row's maximum by shuffles within each unit warp, so a thread reads
  // one maximum a warp, not one a unit
  const bool direct = form & 2, warp_max = form & 4, warp_copy = form & 8;
  const int ahead = form >> 8;  // (CTA 0 of a pair) blocks brought into L2 this far ahead of the loads
  auto issue = [&](int j) {
    const uint32_t bar = smem_u32(&bars[j & 1]);
    mbar_expect_tx(bar, (uint32_t)(kRows * K * 2));
    if (box3d) tma_load_3d(stage(j), &tx, 0, row0_of(j), 0, bar);
    else
      for (int u = 0; u < UR; ++u) tma_load_2d(stage(j) + u * (kRows * 128), &tx, 128 * u, row0_of(j), bar);
  };
  auto prefetch = [&](int j) {
    if (ahead == 0 || h == 1 || j >= nblk) return;
    if (box3d) tma_prefetch_l2_3d(&tx, 0, row0_of(j), 0);
    else
      for (int u = 0; u < UR; ++u) tma_prefetch_l2_2d(&tx, 128 * u, row0_of(j));
  };
  if (tid == 0) {
    for (int b = 0; b < 2; ++b) mbar_init(smem_u32(&bars[b]), 1);       // the producer's arrival (+ the bytes)
    for (int b = 2; b < 4; ++b) mbar_init(smem_u32(&bars[b]), 1 + MW);  // thread 0 and each mma warp
    mbar_init(smem_u32(&bars[4]), 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  if (warp == nthr / 32 - 1 && lane == 0) {  // the first stage, (v3) proj_down's columns [RH h, RH (h + 1)), the second
    if (nblk > 0) issue(0);
    if constexpr (kTmaPd) {
      const uint32_t bar = smem_u32(&bars[4]);
      mbar_expect_tx(bar, (uint32_t)(K * RB));
      for (int k0 = 0; k0 < K; k0 += kPdBox) tma_load_2d(pt_s + k0 * RB, &tp, RB * h, k0, bar);
    }
    if (nblk > 1) issue(1);
    for (int j = 2; j < 2 + ahead; ++j) prefetch(j);
  }
  if constexpr (!kTmaPd)  // v2: proj_down's columns [RH h, RH (h + 1)) transposed, pt[n * XR + k]
    load_proj_down_t<T, NTH, 8>(reinterpret_cast<T*>(smem + L.pt()), pd + RH * h, 0, K, XR, R);
  for (int i = tid; i < K / 4; i += nthr) {  // 1 / smooth, float4 k of unit u at u * 16 + (k ^ (u % 8))
    const int u = i >> 4, k = i & 15;
    float4 v;
    v.x = __frcp_rn(Dt<T>::to_f(smooth[4 * i]));
    v.y = __frcp_rn(Dt<T>::to_f(smooth[4 * i + 1]));
    v.z = __frcp_rn(Dt<T>::to_f(smooth[4 * i + 2]));
    v.w = __frcp_rn(Dt<T>::to_f(smooth[4 * i + 3]));
    rcp_s[u * 16 + (k ^ (u & 7))] = v;
  }
  __syncthreads();
  stamp(0, 17);

  if (tid < UT) {
    // the unit warps: each thread's unit of its row through the row's maximum to the 4-bit values, staged in shared
    // memory (xqs) and stored a whole row at a time by the bulk-copy unit (thread 0), so no thread waits on them
    const int qr = tid & 3, uu = tid >> 2, br = kQRows * h + qr;  // the row among the CTA's 4, in the block
    const bool unit = tid < kQRows * UR;
    const uint32_t xqs = smem_u32(smem + L.xqs());
    const int XQR = L.xqr();
#pragma unroll 1
    for (int j = 0; j < nblk; ++j) {
      const int par = j & 1;
      stamp(j, 0);
      mbar_wait_suspended(smem_u32(&bars[par]), (j >> 1) & 1);
      stamp(j, 1);
      const uint32_t st = stage(j);
      float v[64];  // this thread's unit: x * (1 / smooth)
      float gm[2] = {0.f, 0.f}, um = 0.f;
      if (unit) {
        float m0, m1;
        unit_pass<T>([&](int q) { return st + stage_off8(br, 8 * uu + q); }, rcp_s, uu, v, m0, m1);
        um = fmaxf(m0, m1);
        if (!warp_max) umax[(par * kQRows + qr) * URP + uu] = um;
        gm[0] = G == 32 ? m0 : um;
        gm[1] = m1;
      }
      if (warp_max) {  // lanes with the same row: lane % 4 (units lane / 4 of the warp's eight)
#pragma unroll
        for (int o = 4; o < 32; o <<= 1) um = fmaxf(um, __shfl_xor_sync(0xffffffffu, um, o));
        if (lane < kQRows) umax[(par * kQRows + qr) * URP + warp] = um;
      }
      stamp(j, 2);
      // (G = 128: UR is even, so threads t and t ^ 4 hold the two halves of one group of a row)
      if (G == 128) gm[0] = fmaxf(gm[0], __shfl_xor_sync(0xffffffffu, gm[0], 4));
      if (tid == 0) tma_store_wait_read();  // the previous block's staged xq has been read
      named_barrier(1, UT);  // the units' maxima are written, the stage is read, the xq staging is free
      stamp(j, 3);
      if (tid == 0) mbar_arrive(smem_u32(&bars[2 + par]));
      const int m = row0_of(j) + br;
      if (unit && m < M) {
        const float* mr = umax + (par * kQRows + qr) * URP;
        float amax = 0.f;
        if (warp_max) {
          for (int w = 0; w < UT / 32; ++w) amax = fmaxf(amax, mr[w]);
        } else {
          for (int q = 0; q < UR / 4; ++q) {
            const float4 w4 = reinterpret_cast<const float4*>(mr)[q];
            amax = fmaxf(amax, fmaxf(fmaxf(w4.x, w4.y), fmaxf(w4.z, w4.w)));
          }
          for (int q = UR / 4 * 4; q < UR; ++q) amax = fmaxf(amax, mr[q]);
        }
        const float s_row = __fdiv_rn(amax, 112.f);
        if (uu == 0) xscale[m] = s_row;
        uint32_t w[16];
        quantize_unit(v, gm, amax, s_row, G, w);
        if (direct) {
          uint4* dst = reinterpret_cast<uint4*>(xq + (int64_t)m * K + uu * 64);
#pragma unroll
          for (int q = 0; q < 4; ++q) dst[q] = make_uint4(w[4 * q], w[4 * q + 1], w[4 * q + 2], w[4 * q + 3]);
        } else {
          const uint32_t dst = xqs + qr * XQR + uu * 64;
#pragma unroll
          for (int q = 0; q < 4; ++q)
            asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(dst + 16 * q), "r"(w[4 * q]),
                         "r"(w[4 * q + 1]), "r"(w[4 * q + 2]), "r"(w[4 * q + 3])
                         : "memory");
        }
      }
      stamp(j, 4);
      if (direct) {  // (no staging: umax's parity j % 2 is rewritten at block j + 2, past block j + 1's barrier)
        stamp(j, 5);
        stamp(j, 6);
        continue;
      }
      if (warp_copy) {  // (the staging is rewritten after block j + 1's barrier, which these copies precede)
        named_barrier(3, UT);
        stamp(j, 5);
        const int r0 = row0_of(j) + kQRows * h;
        for (int r = 0; r < kQRows && r0 + r < M; ++r)
          for (int col = tid; col < K / 16; col += UT) {
            uint4 v;
            asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                         : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                         : "r"(xqs + r * XQR + col * 16));
            reinterpret_cast<uint4*>(xq + (int64_t)(r0 + r) * K)[col] = v;
          }
        stamp(j, 6);
        continue;
      }
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");  // the staging, visible to the bulk copies
      named_barrier(3, UT);
      stamp(j, 5);
      if (tid == 0) {
        const int r0 = row0_of(j) + kQRows * h;
        for (int r = 0; r < kQRows && r0 + r < M; ++r) bulk_store(xq + (int64_t)(r0 + r) * K, xqs + r * XQR, K);
        asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
      }
      stamp(j, 6);
    }
    if (tid == 0) asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");  // before the CTA exits
    gstamp(19);
  } else if (mt < mthreads) {
    // the mma warps: lr's RH columns of the block's 8 rows over each warp's k-steps, summed over the warps
    const int mw = warp - UT / 32;
    constexpr int kSets = 4;  // k-step s of a run of four on accumulator set s % 4 (four k-steps in flight)
    const int steps = K / 16, s0 = mw * steps / MW, s1 = (mw + 1) * steps / MW;
    const int arow = lane & 7, avec = (lane >> 3) & 1;
    // matrix i = lane / 8 of a k-step's B. v3: rows k = 8 (i % 2) + lane % 8, the 16-byte chunk i / 2 of the row (at
    // rank 32 under the 32-byte swizzle: chunk c of row k sits at c ^ (k / 4 % 2)); v2: rows n = 8 (i / 2) + lane % 8,
    // k from 8 (i % 2)
    const int br = (lane & 7) + 8 * ((lane >> 3) & 1);
    const uint32_t b_base =
        kTmaPd ? pt_s + br * RB + (NTH == 2 ? (((lane >> 4) ^ ((lane >> 2) & 1)) * 16) : 0)
               : pt_s + (((lane & 7) + (lane >> 4) * 8) * XR + ((lane >> 3) & 1) * 8) * 2;
    if constexpr (kTmaPd) mbar_wait_suspended(smem_u32(&bars[4]), 0);
#pragma unroll 1
    for (int j = 0; j < nblk; ++j) {
      const int par = j & 1;
      stamp(j, 7);
      mbar_wait_suspended(smem_u32(&bars[par]), (j >> 1) & 1);
      stamp(j, 8);
      const uint32_t st = stage(j);
      float acc[kSets][NTH][4] = {};
      auto kstep = [&](int s, float(&ac)[NTH][4]) {
        uint32_t x0, x1, p[4];  // the stage's 8 rows x 16 k; the resident proj_down's 16 k x RH columns
        ldmatrix_x2(x0, x1, st + stage_off8(arow, 2 * s + avec));
        if constexpr (NTH == 2) {
          if constexpr (kTmaPd) ldmatrix_x4_trans(p, b_base + s * 16 * RB);
          else ldmatrix_x4(p, b_base + s * 32);
        } else {
          if constexpr (kTmaPd) ldmatrix_x2_trans(p[0], p[1], b_base + s * 16 * RB);
          else ldmatrix_x2(p[0], p[1], b_base + s * 32);
        }
        if constexpr (kLrT) {  // (rank 32) A: proj_down^T's 16 columns (m16), B: the rows (n8)
          const uint32_t a[4] = {p[0], p[2], p[1], p[3]};  // (columns, k): (0-7, 0-7), (8-15, 0-7), (0-7, 8-15), ...
          mma_16816<T>(ac[0], a, x0, x1);
        } else {  // A: the rows in the upper half (rows 8-15 zero), B: each 8 columns of proj_down
          const uint32_t a[4] = {x0, 0u, x1, 0u};
          mma_16816<T>(ac[0], a, p[0], p[1]);
          if constexpr (NTH == 2) mma_16816<T>(ac[1], a, p[2], p[3]);
        }
      };
      int s = s0;
      for (; s + kSets - 1 < s1; s += kSets) {
#pragma unroll
        for (int i = 0; i < kSets; ++i) kstep(s + i, acc[i]);
      }
      for (; s < s1; ++s) kstep(s, acc[0]);
      __syncwarp();
      stamp(j, 9);
      if (lane == 0) mbar_arrive(smem_u32(&bars[2 + par]));  // this warp is done with the stage
      const int g = lane >> 2, t = lane & 3;
      if constexpr (kLrT) {  // c0 / c1: column g of rows 2t / 2t + 1; c2 / c3: column g + 8 of them
#pragma unroll
        for (int i = 1; i < kSets; ++i)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[0][0][e] += acc[i][0][e];
        float* rw = red + mw * kRows * RH;
        rw[2 * t * RH + g] = acc[0][0][0];
        rw[(2 * t + 1) * RH + g] = acc[0][0][1];
        rw[2 * t * RH + g + 8] = acc[0][0][2];
        rw[(2 * t + 1) * RH + g + 8] = acc[0][0][3];
      } else {  // rows g (c0, c1); rows g + 8 (c2, c3) are the zero half
#pragma unroll
        for (int i = 1; i < kSets; ++i)
#pragma unroll
          for (int nt = 0; nt < NTH; ++nt) acc[0][nt][0] += acc[i][nt][0], acc[0][nt][1] += acc[i][nt][1];
#pragma unroll
        for (int nt = 0; nt < NTH; ++nt)
          *reinterpret_cast<float2*>(red + (mw * kRows + g) * RH + nt * 8 + 2 * t) =
              make_float2(acc[0][nt][0], acc[0][nt][1]);
      }
      named_barrier(2, mthreads);  // the warps' partials are written
      stamp(j, 10);
      const int row0 = row0_of(j);
      for (int p = mt; p < kRows * RH / 2; p += mthreads) {  // a pair of columns of a row: summed in warp order
        const int r = p / (RH / 2), c = 2 * (p - r * (RH / 2));
        float2 sum = make_float2(0.f, 0.f);
        for (int w = 0; w < MW; ++w) {
          const float2 q2 = *reinterpret_cast<const float2*>(red + (w * kRows + r) * RH + c);
          sum.x += q2.x, sum.y += q2.y;
        }
        if (row0 + r < M)
          *reinterpret_cast<uint32_t*>(lr + (int64_t)(row0 + r) * R + RH * h + c) = Dt<T>::pack2(sum.x, sum.y);
      }
      stamp(j, 11);
      named_barrier(2, mthreads);  // read before the next block's partials
      stamp(j, 12);
    }
  } else if (lane == 0) {
    // the producer warp's first thread: block j + 2 into block j's stage once both groups have read it
#pragma unroll 1
    for (int j = 0; j + 2 < nblk; ++j) {
      stamp(j, 13);
      mbar_wait_suspended(smem_u32(&bars[2 + (j & 1)]), (j >> 1) & 1);
      stamp(j, 14);
      issue(j + 2);
      prefetch(j + 2 + ahead);
      stamp(j, 15);
    }
  }
#endif
}

template <typename T, bool kTmaPd>
const void* pick_kernel(int R, bool lr_t) {  // (lr_t: rank 32 only)
  switch (R) {
    case 16: return reinterpret_cast<const void*>(&quantize_act_2l_pairs_kernel<T, 1, kTmaPd, false>);
    case 32:
      return lr_t ? reinterpret_cast<const void*>(&quantize_act_2l_pairs_kernel<T, 2, kTmaPd, true>)
                  : reinterpret_cast<const void*>(&quantize_act_2l_pairs_kernel<T, 2, kTmaPd, false>);
    default: return nullptr;
  }
}

const void* kernel_for(DType dtype, int R, bool tma_pd, bool lr_t) {
  if (dtype == DType::kBF16)
    return tma_pd ? pick_kernel<__nv_bfloat16, true>(R, lr_t) : pick_kernel<__nv_bfloat16, false>(R, lr_t);
  return tma_pd ? pick_kernel<__half, true>(R, lr_t) : pick_kernel<__half, false>(R, lr_t);
}

long long* g_stamps = nullptr;  // set_quantize_act_2l_pairs_stamps
int g_mma_warps = 0;            // set_quantize_act_2l_pairs_mma_warps
bool g_pd_tma = false;          // set_quantize_act_2l_pairs_pd_tma
bool g_lr_t = false;            // set_quantize_act_2l_pairs_lr_t
bool g_box3d = false;           // set_quantize_act_2l_pairs_loads
int g_ahead = 0;
int g_stores = 0;               // set_quantize_act_2l_pairs_units
bool g_warp_max = false;

}  // namespace

void set_quantize_act_2l_pairs_stamps(long long* stamps) { g_stamps = stamps; }
int quantize_act_2l_pairs_stamp_layout() { return kStampBlocks * 100 + kStampSteps; }
void set_quantize_act_2l_pairs_mma_warps(int n) { g_mma_warps = n; }
void set_quantize_act_2l_pairs_pd_tma(bool on) { g_pd_tma = on; }
bool quantize_act_2l_pairs_pd_tma() { return g_pd_tma; }
void set_quantize_act_2l_pairs_lr_t(bool on) { g_lr_t = on; }
bool quantize_act_2l_pairs_lr_t() { return g_lr_t; }
void set_quantize_act_2l_pairs_loads(bool box3d, int ahead) { g_box3d = box3d, g_ahead = ahead; }
bool quantize_act_2l_pairs_box3d() { return g_box3d; }
int quantize_act_2l_pairs_ahead() { return g_ahead; }
void set_quantize_act_2l_pairs_units(int stores, bool warp_max) { g_stores = stores, g_warp_max = warp_max; }
int quantize_act_2l_pairs_stores() { return g_stores; }
bool quantize_act_2l_pairs_warp_max() { return g_warp_max; }

Q2lpShape q2lp_shape(int M, int K, int R, int G) {
  (void)M;
  Q2lpShape s;
  if ((R != 16 && R != 32) || K <= 0 || K % 64 || (G != 32 && G != 64 && G != 128) || K % G) return s;
  const int ut = Q2lpLayout{K, R / 2, 1}.ut();
  const int mw = std::min(g_mma_warps > 0 ? g_mma_warps : kMmaWarps, (kMaxThreads - ut - 32) / 32);
  if (mw < 1) return s;
  const size_t smem = Q2lpLayout{K, R / 2, mw}.total();
  if (smem > kSmemLimit) return s;
  return Q2lpShape{ut + 32 * mw + 32, mw, smem};
}

bool quantize_act_2l_pairs_supported(int M, int K, int R, int G) {
#ifdef SVDQ_BUILT_SM90A
  return q2lp_shape(M, K, R, G).threads > 0;
#else
  (void)M, (void)K, (void)R, (void)G;
  return false;
#endif
}

cudaError_t launch_quantize_act_2l_pairs(const QuantizeAct2lArgs& a, int num_sms, int cap_pairs, int* grid,
                                         cudaStream_t stream) {
  const Q2lpShape s = q2lp_shape(a.M, a.K, a.R, a.group_size);
  if (s.threads == 0 || a.x2) return cudaErrorInvalidValue;
  if (a.M == 0) return cudaSuccess;
  const void* kern = kernel_for(a.dtype, a.R, g_pd_tma, g_lr_t);
  if (!kern) return cudaErrorInvalidValue;
  static std::mutex mu;
  static std::map<std::tuple<int, const void*>, bool> attr_set;
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (!attr_set[std::make_tuple(dev, kern)]) {
      e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)kSmemLimit);
      if (e != cudaSuccess) return e;
      attr_set[std::make_tuple(dev, kern)] = true;
    }
  }
  const int nb = (a.M + kRows - 1) / kRows;
  int pairs = std::max(1, std::min(nb, num_sms / 2));  // one CTA an SM (its shared memory)
  if (cap_pairs > 0) pairs = std::min(pairs, cap_pairs);
  *grid = 2 * pairs;
  int M = a.M, K = a.K, G = a.group_size, MW = s.mma_warps;
  // x as a byte matrix [M, 2 K], a box a 64-value unit of 8 rows, or (g_box3d) as [K / 64 units][M rows][128 B]
  // (strides 128 B and 2 K B), a box the block's every unit; (v3) proj_down as [K, 2 R], a box kPdBox rows of one
  // CTA's half (RB = R bytes: R / 2 16-bit columns)
  CUtensorMap tx, tp = {};
  const int RB = a.R;
  const bool x_ok = g_box3d ? make_map_u8<3>(&tx, a.x, {128, (cuuint64_t)M, (cuuint64_t)K / 64},
                                             {(cuuint64_t)K * 2, 128}, {128, (cuuint32_t)kRows, (cuuint32_t)K / 64},
                                             CU_TENSOR_MAP_SWIZZLE_128B)
                            : make_map(&tx, a.x, (uint64_t)M, (uint64_t)K * 2, kRows, 128, CU_TENSOR_MAP_SWIZZLE_128B);
  if (!x_ok ||
      (g_pd_tma && !make_map(&tp, a.proj_down, (uint64_t)K, (uint64_t)a.R * 2, kPdBox, RB,
                             RB == 32 ? CU_TENSOR_MAP_SWIZZLE_32B : CU_TENSOR_MAP_SWIZZLE_NONE)))
    return cudaErrorInvalidValue;
  const void* smooth = a.smooth;
  const void* pd = a.proj_down;
  int8_t* xq = a.xq;
  float* xscale = a.xscale;
  void* lr = a.lr;
  long long* stamps = g_stamps;
  int form = (g_box3d ? 1 : 0) | (g_stores == 1 ? 2 : g_stores == 2 ? 8 : 0) | (g_warp_max ? 4 : 0) | g_ahead << 8;
  void* args[] = {&tx, &tp, &smooth, &pd, &xq, &xscale, &lr, &M, &K, &G, &MW, &form, &stamps};
  return cudaLaunchKernel(kern, dim3(*grid), dim3(s.threads), args, s.smem, stream);
}

}  // namespace svdq

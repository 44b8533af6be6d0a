// Activation quantization for int4_2l with the low-rank down projection fused (Hopper: thread-block clusters).
//
// The per-row kernel (quantize_act_2l.cu) reads x once but leaves lr = x @ proj_down to cuBLAS, which reads x a
// second time (35-42 us of a 4608 x 12288 call on H200). Here x is read once for both:
//   - a cluster of C CTAs owns 16 token rows at a time; CTA r owns the K slice [r Ks, (r + 1) Ks), Ks = K / C, and
//     keeps that slice of proj_down (transposed) and of 1 / smooth in shared memory for the whole launch: clusters
//     are persistent and walk row blocks rb = cluster, + clusters, ...;
//   - the row blocks' slices come into S shared-memory stages by cp.async, S - 1 blocks ahead; 16 warps then take
//     the group maxima (consecutive lanes share a group; the row maxima by atomicMax on the float bits) and the
//     down projection (mma.sync m16n8k16, one warp per n-tile and quarter of the slice, ldmatrix from the stage);
//   - the row maxima and the low-rank partials meet over distributed shared memory by st.async, completing on the
//     receivers' mbarriers (no fence: the next blocks' loads stay in flight); rank q sums the low-rank columns
//     4j .. 4j + 3 with j % C == q; then every CTA quantizes and stores its slice.
// Exact numerics of ops/reference.py quantize_act_2l_ref for xq and xscale (bit-identical to the per-row kernel);
// lr accumulates in fp32 in another order than cuBLAS (within 16-bit rounding of the reference).
// Status: opt-in (set_quantize_act_2l_fused(1)); measured 2.5x slower than the per-row kernel + cuBLAS on H200
// (perf-notes v2.16). The PROBE instances (v2.17) put the cost in the row block's own pipeline, not in the cluster
// exchange (-1 %) or the down projection (-18 %): without both it is still 2x the per-row kernel + cuBLAS, with 16
// warps per SM at 0.45 instructions per scheduler and cycle and half its shared-memory wavefronts excess.
#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>

#include "common.cuh"
#include "fused_quant_sm90.cuh"
#include "launch.h"

namespace svdq {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define SVDQ_Q2LF_BODY 1
#else
#define SVDQ_Q2LF_BODY 0
#endif

namespace {

constexpr int kRows = 16;      // token rows per block (one mma m16 tile)
constexpr int kThreads = 512;  // 16 warps
constexpr int kKSplit = 4;     // the down projection's slice quarters (tasks: n-tiles x quarters over the warps)

// Byte offsets of the shared-memory buffers (all multiples of 16).
struct Q2lfLayout {
  int Ks, G, C, R, S;
  __host__ __device__ int row() const { return Ks + 8; }  // 16-bit elements per stage / proj_down^T row (+16 B)
  __host__ __device__ int quads_per_rank() const { return (R / 4 + C - 1) / C; }
  __host__ __device__ size_t pt() const { return 0; }  // [R][row] proj_down^T slice
  __host__ __device__ size_t rcp() const { return pt() + (size_t)R * row() * 2; }  // [Ks] f32 1 / smooth
  __host__ __device__ size_t xt() const { return rcp() + (size_t)Ks * 4; }  // [S][16][row] x stages
  __host__ __device__ size_t gsc() const { return xt() + (size_t)S * kRows * row() * 2; }  // [16][Ks / G] float2
  __host__ __device__ size_t rmax() const { return gsc() + (size_t)kRows * (Ks / G) * 8; }  // [2][16] u32
  __host__ __device__ size_t part() const { return rmax() + 2 * kRows * 4; }  // [kKSplit][16][R] f32
  __host__ __device__ size_t got_lr() const { return part() + (size_t)kKSplit * kRows * R * 4; }  // [2][C][16][qpr] f4
  __host__ __device__ size_t got_max() const { return got_lr() + (size_t)2 * C * kRows * quads_per_rank() * 16; }
  __host__ __device__ size_t bars() const { return got_max() + (size_t)2 * C * kRows * 4; }  // [2] mbarriers
  __host__ __device__ size_t total() const { return bars() + 16; }
};

#if SVDQ_Q2LF_BODY  // the device helpers exist only where the kernel body does
// whether the phase with this parity has completed, without suspending the thread (try_wait may)
__device__ __forceinline__ bool mbar_test_wait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  asm volatile("{\n.reg .pred p;\nmbarrier.test_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
               : "=r"(done) : "r"(bar), "r"(parity) : "memory");
  return done != 0;
}

__device__ __forceinline__ void rcp8(const float* rcp_s, int k, float (&rc)[8]) {
  const float4 a = *reinterpret_cast<const float4*>(rcp_s + k);
  const float4 b = *reinterpret_cast<const float4*>(rcp_s + k + 4);
  rc[0] = a.x, rc[1] = a.y, rc[2] = a.z, rc[3] = a.w, rc[4] = b.x, rc[5] = b.y, rc[6] = b.z, rc[7] = b.w;
}
#endif

// PROBE (benchmarks only): bit 0 leaves out the cluster exchange (each CTA takes its own row maxima, lr is not
// summed), bit 1 the down projection's mma loop (both: timing with wrong results); bit 2 waits for the exchange by
// spinning on mbarrier.test_wait instead of try_wait (which may suspend the thread; results exact)
template <typename T, int NT, int S, int PROBE = 0>
__global__ void __launch_bounds__(kThreads, 1)
    quantize_act_2l_fused_kernel(const T* __restrict__ x, const T* __restrict__ smooth, const T* __restrict__ pd,
                                 int8_t* __restrict__ xq, float* __restrict__ xscale, T* __restrict__ lr, int M,
                                 int K, int G, int C) {
#if SVDQ_Q2LF_BODY
  constexpr int R = NT * 8;
  constexpr bool kExchange = !(PROBE & 1), kMma = !(PROBE & 2), kSpin = (PROBE & 4) != 0;
  extern __shared__ __align__(128) unsigned char smem[];
  const int Ks = K / C;
  const Q2lfLayout L{Ks, G, C, R, S};
  const int XR = L.row();
  T* pt = reinterpret_cast<T*>(smem + L.pt());
  float* rcp_s = reinterpret_cast<float*>(smem + L.rcp());
  T* xt = reinterpret_cast<T*>(smem + L.xt());
  float2* gsc = reinterpret_cast<float2*>(smem + L.gsc());
  unsigned* rmax = reinterpret_cast<unsigned*>(smem + L.rmax());
  float* part = reinterpret_cast<float*>(smem + L.part());
  float4* got_lr = reinterpret_cast<float4*>(smem + L.got_lr());
  float* got_max = reinterpret_cast<float*>(smem + L.got_max());
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem + L.bars());
  const uint32_t rank = cluster_rank();
  const int kbase = (int)rank * Ks;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int clusters = gridDim.x / C, cid = blockIdx.x / C;
  const int nrb = (M + kRows - 1) / kRows;
  const int nblk = (nrb - cid + clusters - 1) / clusters;  // this cluster's row blocks (the grid has cid < nrb)
  const int vpr = Ks / 8;           // 16-byte vectors per row of the slice
  const int nvec = kRows * vpr;     // per block: a multiple of 32, so loop trips are whole warps
  const int vpg = G / 8;            // vectors per group: consecutive lanes
  const int gpr = Ks / G;           // groups per row of the slice
  const int qpr = L.quads_per_rank();

  auto issue = [&](int j) {  // this cluster's j-th row block into stage j % S (past the end: an empty group)
    if (j < nblk) {
      const int row0 = (cid + j * clusters) * kRows;
      T* dst = xt + (size_t)(j % S) * kRows * XR;
      for (int v = tid; v < nvec; v += kThreads) {
        const int r = v / vpr, kv = v - r * vpr;
        const bool in = row0 + r < M;
        const T* src = in ? x + (int64_t)(row0 + r) * K + kbase + kv * 8 : x;
        cp_async16(smem_u32(dst + r * XR + kv * 8), src, in ? 16 : 0);
      }
    }
    cp_async_commit();
  };
  for (int j = 0; j < S - 1; ++j) issue(j);  // under the prologue

  load_proj_down_t<T, NT>(pt, pd, kbase, Ks, XR);  // pt[n][k - kbase]
  for (int k = tid; k < Ks; k += kThreads) rcp_s[k] = __frcp_rn(Dt<T>::to_f(smooth[kbase + k]));
  if (tid < 2 * kRows) rmax[tid] = 0u;
  if (tid == 0) {
    mbar_init(smem_u32(&bars[0]), 1);
    mbar_init(smem_u32(&bars[1]), 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  cluster_barrier();  // every CTA of the cluster runs, its barriers initialised, before any remote store

  // bytes received per block: every CTA's 16 row maxima, and its partials of the low-rank quads this rank owns
  const int owned = (int)rank < R / 4 ? (R / 4 - (int)rank + C - 1) / C : 0;
  const uint32_t expect = (uint32_t)(C * kRows * 4 + owned * kRows * 16 * C);
#pragma unroll 1
  for (int j = 0; j < nblk; ++j) {
    const int par = j & 1;
    const int row0 = (cid + j * clusters) * kRows;
    const T* xb = xt + (size_t)(j % S) * kRows * XR;
    __syncthreads();  // block j - 1 is consumed: its stage may be refilled
    issue(j + S - 1);
    cp_async_wait<S - 1>();
    if (kExchange && tid == 0) mbar_expect_tx(smem_u32(&bars[par]), expect);
    __syncthreads();  // block j is in shared memory for every thread

    for (int v = tid; v < nvec; v += kThreads) {  // group maxima of x * (1 / smooth); row maxima
      const int r = v / vpr, kv = v - r * vpr;
      float f[8], rc[8];
      unpack8<T>(*reinterpret_cast<const uint4*>(xb + r * XR + kv * 8), f);
      rcp8(rcp_s, kv * 8, rc);
      float m = 0.f;
#pragma unroll
      for (int e = 0; e < 8; ++e) m = fmaxf(m, fabsf(__fmul_rn(f[e], rc[e])));
      for (int o = 1; o < vpg; o <<= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
      if ((kv & (vpg - 1)) == 0) {
        gsc[r * gpr + kv / vpg].x = m;
        atomicMax(&rmax[par * kRows + r], __float_as_uint(m));  // non-negative floats order as their bits
      }
    }
    for (int task = warp; kMma && task < NT * kKSplit; task += kThreads / 32) {  // the down projection's partials
      const int nt = task % NT, ks = task / NT;
      const int steps = Ks / 16 / kKSplit;
      float acc[2][4] = {};
      const uint32_t a_addr = smem_u32(xb + (lane & 15) * XR + ks * steps * 16 + (lane >> 4) * 8);
      const uint32_t b_addr = smem_u32(pt + (nt * 8 + (lane & 7)) * XR + ks * steps * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll 2
      for (int s = 0; s < steps; ++s) {
        uint32_t a[4], b0, b1;
        ldmatrix_x4(a, a_addr + s * 32);
        ldmatrix_x2(b0, b1, b_addr + s * 32);
        mma_16816<T>(acc[s & 1], a, b0, b1);
      }
      const int g = lane >> 2, t = lane & 3;
      float* pp = part + (ks * kRows) * R + nt * 8 + 2 * t;
      *reinterpret_cast<float2*>(pp + g * R) = make_float2(acc[0][0] + acc[1][0], acc[0][1] + acc[1][1]);
      *reinterpret_cast<float2*>(pp + (g + 8) * R) = make_float2(acc[0][2] + acc[1][2], acc[0][3] + acc[1][3]);
    }
    __syncthreads();
    // this CTA's partials, 16 bytes at a time: low-rank quad q to rank q % C, the row maxima to every rank
    for (int i = tid; kExchange && i < kRows * R / 4 + kRows / 4; i += kThreads) {
      if (i < kRows * R / 4) {
        const int r = i / (R / 4), qd = i - r * (R / 4);
        float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
        for (int ks = 0; ks < kKSplit; ++ks) {
          const float4 v = *reinterpret_cast<const float4*>(part + (ks * kRows + r) * R + qd * 4);
          s.x += v.x, s.y += v.y, s.z += v.z, s.w += v.w;
        }
        const int owner = qd % C;
        const float4* dst = got_lr + ((par * C + (int)rank) * kRows + r) * qpr + qd / C;
        st_async_v4(map_rank(dst, owner), s, map_rank(&bars[par], owner));
      } else {
        const int r0 = 4 * (i - kRows * R / 4);
        unsigned* rm = rmax + par * kRows + r0;
        const float4 m = make_float4(__uint_as_float(rm[0]), __uint_as_float(rm[1]), __uint_as_float(rm[2]),
                                     __uint_as_float(rm[3]));
        rm[0] = rm[1] = rm[2] = rm[3] = 0u;  // for block j + 2
        const float* dst = got_max + (par * C + (int)rank) * kRows + r0;
        for (int q = 0; q < C; ++q) st_async_v4(map_rank(dst, q), m, map_rank(&bars[par], q));
      }
    }
    if constexpr (kExchange && kSpin) {
      while (!mbar_test_wait(smem_u32(&bars[par]), (j >> 1) & 1)) {
      }
    } else if constexpr (kExchange) {
      mbar_wait(smem_u32(&bars[par]), (j >> 1) & 1);
    } else {  // probe: this CTA's own row maxima in every slot
      for (int i = tid; i < C * kRows; i += kThreads)
        got_max[par * C * kRows + i] = __uint_as_float(rmax[par * kRows + i % kRows]);
      __syncthreads();
      if (tid < kRows) rmax[par * kRows + tid] = 0u;
    }
    const float* maxes = got_max + par * C * kRows;
    for (int i = tid; i < kRows * gpr; i += kThreads) {  // per (row, group): s_int and 1 / (s_row * s_int)
      const int r = i / gpr;
      float amax = 0.f;
      for (int q = 0; q < C; ++q) amax = fmaxf(amax, maxes[q * kRows + r]);
      int s_int = 1;
      if (amax > 0.f) s_int = min(16, max(1, (int)ceilf(__fdiv_rn(gsc[i].x, amax) * 16.f)));
      const float scale = __fmul_rn(__fdiv_rn(amax, 112.f), (float)s_int);
      float inv = __frcp_rn(scale);
      if (!(scale > 0.f) || isinf(inv)) inv = 0.f;  // as the reference: 0 where 1 / scale is not finite
      gsc[i] = make_float2(__int_as_float(s_int), inv);
    }
    store_owned_quads<T, R>(got_lr + par * C * kRows * qpr, C, qpr, (int)rank, row0, M, lr);
    if (rank == 0 && tid < kRows && row0 + tid < M) {
      float amax = 0.f;
      for (int q = 0; q < C; ++q) amax = fmaxf(amax, maxes[q * kRows + tid]);
      xscale[row0 + tid] = __fdiv_rn(amax, 112.f);
    }
    __syncthreads();  // the group scales are in place
    for (int v = tid; v < nvec; v += kThreads) {
      const int r = v / vpr, kv = v - r * vpr;
      if (row0 + r >= M) continue;
      float f[8], rc[8];
      unpack8<T>(*reinterpret_cast<const uint4*>(xb + r * XR + kv * 8), f);
      rcp8(rcp_s, kv * 8, rc);
      const float2 sc = gsc[r * gpr + kv / vpg];
      const int s_int = __float_as_int(sc.x);
      int b[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        // clamp, then round half-even by adding 1.5 * 2^23: the low byte of the sum's bits is q (two's
        // complement), and (that word * s_int) has q * s_int in its low byte
        const float p = fminf(7.f, fmaxf(-8.f, __fmul_rn(__fmul_rn(f[e], rc[e]), sc.y)));
        b[e] = __float_as_int(__fadd_rn(p, 12582912.f)) * s_int;
      }
      const uint32_t w0 = __byte_perm(__byte_perm(b[0], b[1], 0x0040), __byte_perm(b[2], b[3], 0x0040), 0x5410);
      const uint32_t w1 = __byte_perm(__byte_perm(b[4], b[5], 0x0040), __byte_perm(b[6], b[7], 0x0040), 0x5410);
      *reinterpret_cast<uint2*>(xq + (int64_t)(row0 + r) * K + kbase + kv * 8) = make_uint2(w0, w1);
    }
  }
  cluster_barrier();  // no CTA leaves while a peer's stores to it may be in flight
#endif
}

template <typename T, int NT, int S, int PROBE = 0>
const void* kernel_ptr() {
  return reinterpret_cast<const void*>(&quantize_act_2l_fused_kernel<T, NT, S, PROBE>);
}

// the probes: bfloat16, rank 32 only
const void* pick_probe(int probe, int S) {
#define SVDQ_Q2LF_PROBE(P)                                                 \
  if (probe == P) {                                                        \
    if (S == 1) return kernel_ptr<__nv_bfloat16, 4, 1, P>();               \
    if (S == 2) return kernel_ptr<__nv_bfloat16, 4, 2, P>();               \
    if (S == 3) return kernel_ptr<__nv_bfloat16, 4, 3, P>();               \
    return kernel_ptr<__nv_bfloat16, 4, 4, P>();                           \
  }
  SVDQ_Q2LF_PROBE(1) SVDQ_Q2LF_PROBE(2) SVDQ_Q2LF_PROBE(3) SVDQ_Q2LF_PROBE(4)
#undef SVDQ_Q2LF_PROBE
  return nullptr;
}

template <typename T>
const void* pick_kernel(int NT, int S) {
#define SVDQ_Q2LF(NTV)                                  \
  if (NT == NTV) {                                      \
    if (S == 1) return kernel_ptr<T, NTV, 1>();         \
    if (S == 2) return kernel_ptr<T, NTV, 2>();         \
    if (S == 3) return kernel_ptr<T, NTV, 3>();         \
    return kernel_ptr<T, NTV, 4>();                     \
  }
  SVDQ_Q2LF(2) SVDQ_Q2LF(4) SVDQ_Q2LF(6) SVDQ_Q2LF(8)
#undef SVDQ_Q2LF
  return nullptr;
}

int g_last_grid = 0;      // CTAs of the last launch (benchmarks: clusters that fit x cluster size)
int g_fused_mode = 0;     // 0: never (the default), 1: q.7 where a shape exists (measured slower, perf-notes v2.16),
                          // 2: the fixed-column kernel (quantize_act_2l_cols_sm90.cu) where a shape exists,
                          // 3: CTA pairs (quantize_act_2l_pairs_sm90.cu) where K <= 3072,
                          // -1: mode 3 where it applies from g_pairs_min_tokens tokens, else the per-row pair
int g_pairs_min_tokens = 1024;  // (mode -1; set_quantize_act_2l_pairs_min_tokens)
int g_force_cluster = 0;  // benchmarks: force this cluster size (0: the cost model)
int g_probe = 0;          // benchmarks: launch the PROBE kernels (bfloat16, rank 32)
int g_cap_clusters = 0;   // benchmarks: launch at most this many clusters (0: as many as fit at once)
constexpr size_t kSmemLimit = 227 * 1024;

// Modelled time (ns) of one launch with this shape (the constants are rough: H200, perf-notes v2.16).
double q2lf_cost(int M, int K, int R, int C, int S, int num_sms) {
  const int Ks = K / C;
  const int clusters = std::max(1, num_sms / C);
  const int nrb = (M + kRows - 1) / kRows;
  const int rounds = (nrb + clusters - 1) / clusters;
  const double prologue = 1500.0 + (double)Ks * R * 2 / 40.0;  // proj_down slice from L2
  const double load = (double)Ks * kRows * 2 / 30.0;           // this SM's share of the HBM rate
  const double per_block = S > 1 ? std::max(load, 1500.0) : load + 1500.0;  // exchange and arithmetic ~1.5 us
  return prologue + rounds * per_block;
}

}  // namespace

Q2lfShape q2lf_shape(int M, int K, int R, int G, int num_sms) {
  Q2lfShape best;
  if (R <= 0 || R % 16 || R > 64 || K <= 0 || (G != 32 && G != 64 && G != 128)) return best;
  double best_cost = 1e300;
  for (int C = 2; C <= 8; ++C) {  // (st.async needs a peer: a cluster of one is not a cluster)
    if (g_force_cluster && C != g_force_cluster) continue;
    if (K % C || (K / C) % 64 || (K / C) % G) continue;
    const int Ks = K / C;
    for (int S = 4; S >= 1; --S) {
      const size_t smem = Q2lfLayout{Ks, G, C, R, S}.total();
      if (smem > kSmemLimit) continue;
      const double cost = q2lf_cost(M, K, R, C, S, num_sms);
      if (cost < best_cost) {
        best_cost = cost;
        best = Q2lfShape{C, S, smem};
      }
      break;  // the most stages that fit
    }
  }
  return best;
}

void set_quantize_act_2l_fused(int mode, int cluster, int probe, int cap_clusters) {
  g_probe = probe;
  g_cap_clusters = cap_clusters;
  g_fused_mode = mode;
  g_force_cluster = cluster;
}
int quantize_act_2l_fused_mode() { return g_fused_mode; }
void set_quantize_act_2l_pairs_min_tokens(int m) { g_pairs_min_tokens = m; }
int quantize_act_2l_pairs_min_tokens() { return g_pairs_min_tokens; }
int quantize_act_2l_fused_last_grid() { return g_last_grid; }

bool quantize_act_2l_fused_supported(int M, int K, int R, int G, int num_sms) {
#ifdef SVDQ_BUILT_SM90A
  if (g_fused_mode == 2) return quantize_act_2l_cols_supported(M, K, R, G, num_sms, g_force_cluster);
  if (g_fused_mode == 3) return quantize_act_2l_pairs_supported(M, K, R, G);
  if (g_fused_mode == -1) return M >= g_pairs_min_tokens && quantize_act_2l_pairs_supported(M, K, R, G);
  return g_fused_mode > 0 && q2lf_shape(M, K, R, G, num_sms).C > 0;
#else
  (void)M, (void)K, (void)R, (void)G, (void)num_sms;
  return false;
#endif
}

cudaError_t launch_quantize_act_2l_fused(const QuantizeAct2lArgs& a, int num_sms, cudaStream_t stream) {
  if (g_fused_mode == 2)
    return launch_quantize_act_2l_cols(a, num_sms, g_force_cluster, g_cap_clusters, &g_last_grid, stream);
  if (g_fused_mode == 3 || g_fused_mode == -1)
    return launch_quantize_act_2l_pairs(a, num_sms, g_cap_clusters, &g_last_grid, stream);
  const Q2lfShape s = q2lf_shape(a.M, a.K, a.R, a.group_size, num_sms);
  if (s.C == 0) return cudaErrorInvalidValue;
  if (a.M == 0) return cudaSuccess;
  const bool bf = a.dtype == DType::kBF16;
  const void* kern = g_probe ? (bf && a.R == 32 ? pick_probe(g_probe, s.S) : nullptr)
                     : bf ? pick_kernel<__nv_bfloat16>(a.R / 8, s.S) : pick_kernel<__half>(a.R / 8, s.S);
  if (!kern) return cudaErrorInvalidValue;
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  // per (device, kernel, cluster size, shared bytes): the attribute set, and the clusters that fit at once
  static std::mutex mu;
  static std::map<std::tuple<int, const void*, int, size_t>, int> fits;
  cudaLaunchConfig_t cfg = {};
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = s.C;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = s.smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  int max_clusters = 0;
  {
    std::lock_guard<std::mutex> lock(mu);
    const auto key = std::make_tuple(dev, kern, s.C, s.smem);
    auto it = fits.find(key);
    if (it == fits.end()) {
      e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)kSmemLimit);
      if (e != cudaSuccess) return e;
      cfg.gridDim = dim3(s.C * std::max(1, num_sms / s.C));
      int n = 0;
      e = cudaOccupancyMaxActiveClusters(&n, kern, &cfg);
      if (e != cudaSuccess) return e;
      it = fits.emplace(key, n).first;
    }
    max_clusters = it->second;
  }
  if (max_clusters <= 0) return cudaErrorInvalidConfiguration;
  if (g_cap_clusters > 0) max_clusters = std::min(max_clusters, g_cap_clusters);
  const int nrb = (a.M + kRows - 1) / kRows;
  cfg.gridDim = dim3(s.C * std::min(nrb, max_clusters));
  g_last_grid = (int)cfg.gridDim.x;
  int M = a.M, K = a.K, G = a.group_size, C = s.C;
  const void* x = a.x;
  const void* smooth = a.smooth;
  const void* pd = a.proj_down;
  int8_t* xq = a.xq;
  float* xscale = a.xscale;
  void* lr = a.lr;
  void* args[] = {&x, &smooth, &pd, &xq, &xscale, &lr, &M, &K, &G, &C};
  return cudaLaunchKernelExC(&cfg, kern, args);
}

}  // namespace svdq

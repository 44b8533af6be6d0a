// Activation quantization for the two-level INT4 format (int4_2l), any architecture.
//
// The per-token scale needs the whole row's absmax before any value can be quantized, so one CTA owns
// a token row at a time and holds it in registers: V 16-byte vectors per thread, strided by the block size, so a
// group of G values sits in G/8 consecutive lanes. x is read once, multiplied by the fp32 reciprocal
// of the smoothing factor (one small prep launch computes 1 / smooth; the binding caches it per smoothing factor, so
// that launch runs once per layer), reduced to group and row maxima, and written as int8 q * s_int with the
// per-token fp32 scale. From K = 8192 on, CTAs are
// persistent (as many as fit at once): the next rows of a CTA stream into a shared-memory ring by cp.async while
// it quantizes the current one, so the SM keeps loads in flight through the row-max barrier and the stores (one
// CTA per row: 2.2 TB/s on H200 at 4608 x 12288, persistent 2.7: perf-notes v2.17). (A 16-row variant
// with the low-rank down projection fused on mma.sync had to read x twice and ran 1.7-2x slower:
// too few CTAs for the row-max dependency; the Hopper cluster variant is quantize_act_2l_fused_sm90.cu.
// The down projection stays on cuBLAS, in the binding.)
// Exact numerics: ops/reference.py quantize_act_2l_ref: s_row = amax / 112, s_int = clamp(ceil(amax_g /
// amax * 16), 1, 16), q = clamp(rne(fl(fl(x * rcp) * (1 / (s_row * s_int)))), -8, 7).
#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>

#include "common.cuh"
#include "launch.h"
#include "pdl.cuh"

namespace svdq {
namespace {

template <typename T>
__global__ void rcp_kernel(const T* __restrict__ smooth, float* __restrict__ rcp, int K) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k < K) rcp[k] = __frcp_rn(Dt<T>::to_f(smooth[k]));
}


// 16 bytes global -> shared, asynchronous where the architecture has cp.async (sm_80+), else a plain copy; each
// thread copies exactly the vectors it reads back, so the ring needs no barrier, only the thread's own waits.
__device__ __forceinline__ void row_copy16(uint4* dst, const uint4* src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  cp_async16(smem_u32(dst), src, 16);
#else
  *dst = *src;
#endif
}
__device__ __forceinline__ void row_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  cp_async_commit();
#endif
}
__device__ __forceinline__ void row_wait(int pending) {  // at most `pending` (0 ... 2) of this thread's rows in flight
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if (pending >= 2) cp_async_wait<2>();
  else if (pending == 1) cp_async_wait<1>();
  else cp_async_wait<0>();
#endif
}

// Persistent: CTA b quantizes rows b, b + gridDim.x, ...; the next S - 1 of its rows stream into a ring of S
// shared-memory rows while it quantizes the current one from registers.
template <typename T, int V, int G, bool kLean = false, bool kPartial = false>
// x2 (K1 < K): the row is cat([x[m] (K1 values), x2[m] (K - K1 values)]), read in place (K1 % 8 == 0). kLean: see
// store_row (set_quantize_act_2l_lean, on by default). kPartial: the block's last warp reaches past the row (K / 8 not
// a multiple of 32 V); its lanes there load zeros and store nothing.
__global__ void __launch_bounds__(512) quantize_act_2l_kernel(const T* __restrict__ x, const T* __restrict__ x2,
                                                               int K1, const float* __restrict__ rcp,
                                                               int8_t* __restrict__ xq, float* __restrict__ xscale,
                                                               int M, int K, int S, int* ready) {
  constexpr int VPG = G / 8;  // 16-byte vectors per group = consecutive lanes sharing a group
  extern __shared__ uint4 ring[];  // [S][K / 8]
  __shared__ float red[2][32];
  const int nthr = blockDim.x, nwarps = nthr >> 5;
  const int tid = threadIdx.x;
  const int vpr = K / 8;
  pdl_wait();     // (set_pdl) x, rcp and the outputs' memory belong to the kernels before this one
  pdl_trigger();  // the GEMM after it may be scheduled as SMs free up
  auto fetch = [&](int m, int stage) {  // row m into the ring (past the end: an empty group)
    if (m < M) {
      const uint4* src = reinterpret_cast<const uint4*>(x + (int64_t)m * K1);
      const uint4* src2 = reinterpret_cast<const uint4*>(x2 + (int64_t)m * (K - K1)) - K1 / 8;
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const int v = tid + i * nthr;
        if (!kPartial || v < vpr) row_copy16(ring + stage * vpr + v, (v < K1 / 8 ? src : src2) + v);
      }
    }
    row_commit();
  };
  for (int s = 0; s < S - 1; ++s) fetch(blockIdx.x + s * gridDim.x, s);
  int stage = 0;
#pragma unroll 1
  for (int m = blockIdx.x, j = 0; m < M; m += gridDim.x, ++j) {
    if (S == 1) fetch(m, 0);  // no ring: this row, now
    row_wait(S > 1 ? S - 2 : 0);
    float xs[V][8];
    float gmax[V];
    float tmax = 0.f;
#pragma unroll
    for (int i = 0; i < V; ++i) {
      const int v = tid + i * nthr;
      const bool in_row = !kPartial || v < vpr;
      const uint4 xv = in_row ? ring[stage * vpr + v] : make_uint4(0u, 0u, 0u, 0u);
      const float4 r0 = in_row ? __ldg(reinterpret_cast<const float4*>(rcp + v * 8)) : make_float4(0.f, 0.f, 0.f, 0.f);
      const float4 r1 = in_row ? __ldg(reinterpret_cast<const float4*>(rcp + v * 8 + 4)) : make_float4(0.f, 0.f, 0.f, 0.f);
      const uint32_t xw[4] = {xv.x, xv.y, xv.z, xv.w};
      const float rc[8] = {r0.x, r0.y, r0.z, r0.w, r1.x, r1.y, r1.z, r1.w};
      float amax = 0.f;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float xe = e & 1 ? half_hi<T>(xw[e >> 1]) : half_lo<T>(xw[e >> 1]);
        xs[i][e] = __fmul_rn(xe, rc[e]);
        amax = fmaxf(amax, fabsf(xs[i][e]));
      }
#pragma unroll
      for (int o = 1; o < VPG; o <<= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
      gmax[i] = amax;
      tmax = fmaxf(tmax, amax);
    }
    if (S > 1) {  // the slot read one row ago is free: this thread's copies of its next row go there
      fetch(m + (S - 1) * gridDim.x, stage == 0 ? S - 1 : stage - 1);
      stage = stage + 1 == S ? 0 : stage + 1;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
    float* rw = red[j & 1];  // alternate rows: a thread a row ahead cannot overwrite what a slow one still reads
    if ((tid & 31) == 0) rw[tid >> 5] = tmax;
    __syncthreads();
    if (ready && tid == 0) atomicAdd(ready + (m >> 6), 1);  // row m is read: the down projection beside may follow
    float amax = 0.f;
    for (int w = 0; w < nwarps; ++w) amax = fmaxf(amax, rw[w]);
    const float s_row = __fdiv_rn(amax, 112.f);
    if (tid == 0) xscale[m] = s_row;
    // Lean (kLean): lane l holds 1 / (s_row (l % 16 + 1)), the 16 reciprocals a row can need, each computed as the
    // reference does; and no clamp where the row's amax is finite and s_row normal: there s_int >= 16 gmax / amax
    // bounds |x / scale| by 7 (1 + 5 2^-24), so rounding gives [-7, 7] and the clamp never binds.
    auto store_row = [&](auto lean, auto clamp, float inv_tab) {
#pragma unroll
      for (int i = 0; i < V; ++i) {
        const int v = tid + i * nthr;
        int s_int = 1;
        if (amax > 0.f) s_int = min(16, max(1, (int)ceilf(__fdiv_rn(gmax[i], amax) * 16.f)));
        float inv;
        if constexpr (decltype(lean)::value) {
          inv = __shfl_sync(0xffffffffu, inv_tab, s_int - 1);
        } else {
          const float scale = __fmul_rn(s_row, (float)s_int);
          inv = __frcp_rn(scale);
          if (!(scale > 0.f) || isinf(inv)) inv = 0.f;  // as the reference: 0 where 1 / scale is not finite
        }
        int b[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          // clamp, then round half-even by adding 1.5 * 2^23: the low byte of the sum's bits is q (two's
          // complement), and (that word * s_int) has q * s_int in its low byte
          float p = __fmul_rn(xs[i][e], inv);
          if constexpr (decltype(clamp)::value) p = fminf(7.f, fmaxf(-8.f, p));
          b[e] = __float_as_int(__fadd_rn(p, 12582912.f)) * s_int;
        }
        const uint32_t w0 = __byte_perm(__byte_perm(b[0], b[1], 0x0040), __byte_perm(b[2], b[3], 0x0040), 0x5410);
        const uint32_t w1 = __byte_perm(__byte_perm(b[4], b[5], 0x0040), __byte_perm(b[6], b[7], 0x0040), 0x5410);
        if (!kPartial || v < vpr) *reinterpret_cast<uint2*>(xq + (int64_t)m * K + v * 8) = make_uint2(w0, w1);
      }
    };
    if constexpr (kLean) {
      const float sc = __fmul_rn(s_row, (float)((tid & 15) + 1));
      float inv_tab = __frcp_rn(sc);
      if (!(sc > 0.f) || isinf(inv_tab)) inv_tab = 0.f;
      if (amax >= 0x1p-100f && amax <= 3.40282347e38f) store_row(std::true_type{}, std::false_type{}, inv_tab);
      else store_row(std::true_type{}, std::true_type{}, inv_tab);
    } else {
      store_row(std::false_type{}, std::true_type{}, 0.f);
    }
  }
  row_wait(0);  // no copy outlives the CTA
}

int g_persistent = 1;  // 0: one CTA per row (the kernel before v2.17; benchmarks)
bool g_lean = true;    // the lean kernel (kLean; set_quantize_act_2l_lean; on by default since v2.25: the same bits, -3 to -12 %)
int g_max_ctas = 0;    // > 0: at most this many CTAs (tests: one CTA walking many rows)
int g_last_ctas = 0;   // CTAs of the last launch (benchmarks)
// Persistent CTAs from this K on. Below it they gained nothing on H200 (4608 x 3072) and, holding every SM, kept
// the side stream's down projection from overlapping the quantizer (+2.3 us a call); at K = 12288 -19 %.
constexpr int kPersistentMinK = 8192;

// Ring slots per CTA: up to four while the ring stays within 96 KB (two or more CTAs per SM) and the device's
// per-block limit; one (no ring: each row loaded when its turn comes) for a CTA with a single row.
int ring_rows(int K, int rows_per_cta, int smem_optin) {
  const int row_bytes = K * 2;
  smem_optin -= 1024;  // the kernel's static shared memory
  for (int s = std::min(4, rows_per_cta); s > 1; --s)
    if (s * row_bytes <= std::min(96 * 1024, smem_optin)) return s;
  return 1;
}

struct DeviceLimits {
  int sms = 0, smem_optin = 0;
};
// Per device: SMs and the per-block shared-memory opt-in; per (device, kernel, threads, shared bytes): the CTAs that
// fit at once. The kernel's dynamic shared-memory limit is raised to the device's opt-in once, so no launch of
// another ring size can leave it below what a later launch needs.
cudaError_t launch_limits(const void* kern, int threads, size_t smem, int* ctas_fit, DeviceLimits* lim) {
  static std::mutex mu;
  static std::map<int, DeviceLimits> devices;
  static std::map<std::pair<int, const void*>, bool> raised;
  static std::map<std::tuple<int, const void*, int, size_t>, int> fits;
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  std::lock_guard<std::mutex> lock(mu);
  auto d = devices.find(dev);
  if (d == devices.end()) {
    DeviceLimits l;
    e = cudaDeviceGetAttribute(&l.sms, cudaDevAttrMultiProcessorCount, dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&l.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (e != cudaSuccess) return e;
    d = devices.emplace(dev, l).first;
  }
  *lim = d->second;
  if (kern == nullptr) return cudaSuccess;
  if (!raised.count({dev, kern})) {  // the opt-in covers static and dynamic shared memory together
    cudaFuncAttributes fa;
    e = cudaFuncGetAttributes(&fa, kern);
    if (e == cudaSuccess)
      e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               lim->smem_optin - (int)fa.sharedSizeBytes);
    if (e != cudaSuccess) return e;
    raised[{dev, kern}] = true;
  }
  const auto key = std::make_tuple(dev, kern, threads, smem);
  auto it = fits.find(key);
  if (it == fits.end()) {
    int per_sm = 0;
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, threads, smem);
    if (e != cudaSuccess) return e;
    it = fits.emplace(key, std::max(1, per_sm) * lim->sms).first;
  }
  *ctas_fit = it->second;
  return cudaSuccess;
}

template <typename T, int V, int G, bool kLean, bool kPartial = false>
cudaError_t launch_vg(const QuantizeAct2lArgs& a, int threads, cudaStream_t s) {
  const void* kern = reinterpret_cast<const void*>(&quantize_act_2l_kernel<T, V, G, kLean, kPartial>);
  DeviceLimits lim;
  int fit = 0;
  cudaError_t e = launch_limits(nullptr, 0, 0, &fit, &lim);
  if (e != cudaSuccess) return e;
  int ctas = a.M, S = 1;
  if (g_persistent && (a.K >= kPersistentMinK || g_max_ctas > 0)) {
    // the grid and the ring depend on each other: size the grid for the largest ring first
    const int S0 = ring_rows(a.K, 4, lim.smem_optin);
    e = launch_limits(kern, threads, (size_t)S0 * a.K * 2, &fit, &lim);
    if (e != cudaSuccess) return e;
    ctas = std::min(a.M, fit);
    if (a.leave > 0.f) ctas = std::min(ctas, std::max(1, (int)((1.f - a.leave) * fit)));
    if (g_max_ctas > 0) ctas = std::min(ctas, g_max_ctas);
    S = ring_rows(a.K, (a.M + ctas - 1) / ctas, lim.smem_optin);
  }
  const size_t smem = (size_t)S * a.K * 2;
  e = launch_limits(kern, threads, smem, &fit, &lim);  // (raises the kernel's shared-memory limit once)
  if (e != cudaSuccess) return e;
  g_last_ctas = ctas;
  const int K1 = a.x2 ? a.K1 : a.K;
  const auto kernel = quantize_act_2l_kernel<T, V, G, kLean, kPartial>;
  return launch_plain_or_pdl(kernel, kernel, dim3(ctas), dim3(threads), smem, s, static_cast<const T*>(a.x),
                             static_cast<const T*>(a.x2), K1, a.rcp, a.xq, a.xscale, a.M, a.K, S, a.ready);
}

template <typename T, int G>
cudaError_t launch_v(const QuantizeAct2lArgs& a, int v, int threads, cudaStream_t s) {
  switch (v) {
// (a block reaching past the row: the lean form only, whose bits are the plain one's)
#define SVDQ_Q2L_CASE(VV)                                                                                      \
  case VV:                                                                                                     \
    if (threads * VV != a.K / 8) return launch_vg<T, VV, G, true, true>(a, threads, s);                        \
    return g_lean ? launch_vg<T, VV, G, true>(a, threads, s) : launch_vg<T, VV, G, false>(a, threads, s);
    SVDQ_Q2L_CASE(1)
    SVDQ_Q2L_CASE(2)
    SVDQ_Q2L_CASE(3)
    SVDQ_Q2L_CASE(4)
    SVDQ_Q2L_CASE(5)
    SVDQ_Q2L_CASE(6)
    SVDQ_Q2L_CASE(7)
    SVDQ_Q2L_CASE(8)
#undef SVDQ_Q2L_CASE
    default: return cudaErrorInvalidValue;
  }
}

// Threads for V vectors each over a row of vpr vectors: whole warps (the group reductions shuffle over full warps).
int threads_for(int vpr, int v) { return (vpr + 32 * v - 1) / (32 * v) * 32; }

// Vectors per thread for a row of K values: the smallest V <= 8 with K / (8 V) threads a multiple of 32 and at most
// 256 (else at most 512); where none exists (K / 8 not a multiple of 32 V, e.g. PixArt's 1152, SD3.5 Large's 2432),
// the smallest V whose ceil(K / (8 V)) threads, rounded up to whole warps, are at most 256 (else 512): the last
// warp's lanes past the row idle. 0 when K is not a positive multiple of 8 or the row does not fit one CTA.
int vectors_per_thread(int K) {
  if (K <= 0 || K % 8) return 0;
  const int vpr = K / 8;
  for (int limit : {256, 512})
    for (int v = 1; v <= 8; ++v)
      if (vpr % v == 0 && (vpr / v) % 32 == 0 && vpr / v <= limit) return v;
  for (int limit : {256, 512})
    for (int v = 1; v <= 8; ++v)
      if (threads_for(vpr, v) <= limit) return v;
  return 0;
}

}  // namespace

bool quantize_act_2l_supported(int K) { return vectors_per_thread(K) > 0; }

cudaError_t launch_smooth_rcp(DType dtype, const void* smooth, float* rcp, int K, cudaStream_t stream) {
  if (dtype == DType::kBF16)
    rcp_kernel<__nv_bfloat16><<<(K + 255) / 256, 256, 0, stream>>>(static_cast<const __nv_bfloat16*>(smooth), rcp, K);
  else
    rcp_kernel<__half><<<(K + 255) / 256, 256, 0, stream>>>(static_cast<const __half*>(smooth), rcp, K);
  return cudaGetLastError();
}
void set_quantize_act_2l_persistent(int on, int max_ctas) {
  g_persistent = on ? 1 : 0;
  g_max_ctas = max_ctas;
}
int quantize_act_2l_last_ctas() { return g_last_ctas; }
void set_quantize_act_2l_lean(bool on) { g_lean = on; }
bool quantize_act_2l_lean() { return g_lean; }

namespace {
std::atomic<bool> g_pdl{false};
}  // namespace
void set_pdl(bool on) { g_pdl = on; }
bool pdl() { return g_pdl; }
bool pdl_device() {
  static std::atomic<int> capable[64] = {};  // 0 unknown, 1 no, 2 yes
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  if (dev >= 64) return false;
  int c = capable[dev];
  if (c == 0) {
    int major = 0;
    c = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess && major >= 9 ? 2 : 1;
    capable[dev] = c;
  }
  return c == 2;
}

cudaError_t launch_quantize_act_2l(const QuantizeAct2lArgs& a, cudaStream_t stream) {
  const int v = vectors_per_thread(a.K);
  if (v == 0) return cudaErrorInvalidValue;
  if (a.M == 0) return cudaSuccess;
  const bool bf = a.dtype == DType::kBF16;
  if (!a.rcp_ready) {
    const cudaError_t e = launch_smooth_rcp(a.dtype, a.smooth, a.rcp, a.K, stream);
    if (e != cudaSuccess) return e;
  }
  if (a.K % a.group_size) return cudaErrorInvalidValue;
  const int threads = threads_for(a.K / 8, v);
  switch (a.group_size) {
    case 32: return bf ? launch_v<__nv_bfloat16, 32>(a, v, threads, stream) : launch_v<__half, 32>(a, v, threads, stream);
    case 64: return bf ? launch_v<__nv_bfloat16, 64>(a, v, threads, stream) : launch_v<__half, 64>(a, v, threads, stream);
    case 128: return bf ? launch_v<__nv_bfloat16, 128>(a, v, threads, stream) : launch_v<__half, 128>(a, v, threads, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace svdq

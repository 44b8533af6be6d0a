// Activation quantization of int4_2l with the low-rank down projection fused in, on Hopper clusters.
//
// The per-token scale needs a whole row's absmax, the down projection x @ proj_down wants many rows per
// CTA to amortise proj_down; a thread-block cluster gives both. A cluster of C CTAs owns 16 token rows;
// CTA c owns the K slice [c K / C, (c + 1) K / C) of them. Each CTA reads its x slice once into shared
// memory, computes 1 / smooth for the slice, the group maxima and its partial row maxima, and its
// partial [16, R] down projection on mma.sync (proj_down staged in 64-row chunks, fp32 accumulation).
// One cluster barrier later every CTA reads the C partial row maxima over distributed shared memory,
// CTA c sums rows 16 c / C .. of the low-rank partials in rank order (deterministic), and all CTAs
// quantize their slices from shared memory. x is read from DRAM once (the earlier path read it twice:
// the per-row kernel plus cuBLAS for the down projection) and there is one launch instead of three.
// Numerics are those of quantize_act_2l.cu (bit-exact xq and xscale); lr is an fp32 sum rounded once.
#include <cooperative_groups.h>

#include "common.cuh"
#include "launch.h"

namespace svdq {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define SVDQ_CLUSTER_BODY 1
#else
#define SVDQ_CLUSTER_BODY 0
#endif

namespace {

namespace cg = cooperative_groups;

constexpr int kRowsQ = 16;     // token rows per cluster (the mma M)
constexpr int kThreadsQ = 256;
constexpr int kKC = 64;        // proj_down rows per staged chunk
constexpr int kMaxSlice = 2048;

// Byte offsets of the shared-memory regions (all 16-byte aligned).
struct QLayout {
  int x_stride, x, rcp, gmax, rmax, amax, pd, part, total;
  __host__ __device__ QLayout(int ks, int r, int g) {
    x_stride = ks * 2 + 16;  // +16 bytes: ldmatrix rows fall in distinct banks
    x = 0;
    rcp = x + kRowsQ * x_stride;
    gmax = rcp + ks * 4;
    rmax = gmax + kRowsQ * (ks / g) * 4;
    amax = rmax + kRowsQ * 4;
    pd = amax + kRowsQ * 4;
    const int pd_bytes = 2 * kKC * (r + 8) * 2, red_bytes = 4 * kRowsQ * r * 4;  // red reuses the pd buffers
    part = pd + (pd_bytes > red_bytes ? pd_bytes : red_bytes);
    total = part + kRowsQ * r * 4;
  }
};

__device__ __forceinline__ void ldsm_x4(uint32_t (&a)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3]) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x2_trans(uint32_t& b0, uint32_t& b1, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n" : "=r"(b0), "=r"(b1) : "r"(addr));
}

template <typename T>
__device__ __forceinline__ void smoothed8(const uint8_t* sm, const QLayout& L, int r, int cv, float (&xs)[8]) {
  const uint4 xv = *reinterpret_cast<const uint4*>(sm + L.x + r * L.x_stride + cv * 16);
  const float4 r0 = *reinterpret_cast<const float4*>(sm + L.rcp + cv * 32);
  const float4 r1 = *reinterpret_cast<const float4*>(sm + L.rcp + cv * 32 + 16);
  const uint32_t w[4] = {xv.x, xv.y, xv.z, xv.w};
  const float rc[8] = {r0.x, r0.y, r0.z, r0.w, r1.x, r1.y, r1.z, r1.w};
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const uint32_t bits = e & 1 ? w[e >> 1] >> 16 : w[e >> 1] & 0xFFFFu;
    xs[e] = __fmul_rn(Dt<T>::bits_to_f(bits), rc[e]);
  }
}

// NT: n8 tiles of the rank per warp (R / 16), rounded up to the instantiated bound.
template <typename T, int G, int NT>
__global__ void __launch_bounds__(kThreadsQ) quantize_act_2l_cluster_kernel(
    const T* __restrict__ x, const T* __restrict__ smooth, const T* __restrict__ pd, int8_t* __restrict__ xq,
    float* __restrict__ xscale, T* __restrict__ lr, int M, int K, int R) {
#if SVDQ_CLUSTER_BODY
  cg::cluster_group cluster = cg::this_cluster();
  const int C = (int)cluster.num_blocks();
  const int c = (int)cluster.block_rank();
  const int ks_len = K / C, k0 = c * ks_len;
  const int m0 = (blockIdx.x / C) * kRowsQ;
  const QLayout L(ks_len, R, G);
  extern __shared__ __align__(16) uint8_t sm[];
  const uint32_t sb = smem_u32(sm);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int vpr = ks_len / 8;  // 16-byte vectors per row of the slice

  for (int v = tid; v < kRowsQ * vpr; v += kThreadsQ) {
    const int r = v / vpr, cv = v % vpr, m = m0 + r;
    cp_async16(sb + L.x + r * L.x_stride + cv * 16, x + (int64_t)min(m, M - 1) * K + k0 + cv * 8, m < M ? 16 : 0);
  }
  cp_async_commit();
  const int nchunks = R > 0 ? ks_len / kKC : 0;
  const int pd_stride = (R + 8) * 2, cpr = R / 8;
  auto load_pd = [&](int j) {
    const uint32_t buf = sb + L.pd + (j & 1) * kKC * pd_stride;
    for (int i = tid; i < kKC * cpr; i += kThreadsQ) {
      const int kr = i / cpr, cc = i % cpr;
      cp_async16(buf + kr * pd_stride + cc * 16, pd + (int64_t)(k0 + j * kKC + kr) * R + cc * 8, 16);
    }
  };
  if (nchunks > 0) load_pd(0);
  cp_async_commit();
  if (nchunks > 1) load_pd(1);
  cp_async_commit();

  float* rcp_s = reinterpret_cast<float*>(sm + L.rcp);
  for (int k = tid; k < ks_len; k += kThreadsQ) rcp_s[k] = __frcp_rn(Dt<T>::to_f(smooth[k0 + k]));
  unsigned* rmax_s = reinterpret_cast<unsigned*>(sm + L.rmax);
  if (tid < kRowsQ) rmax_s[tid] = 0u;
  cp_async_wait<2>();  // the x slice
  __syncthreads();

  // group maxima and partial row maxima of fl(x * rcp); a group's G / 8 vectors sit in consecutive lanes
  constexpr int VPG = G / 8;
  const int gpr = ks_len / G;
  float* gmax_s = reinterpret_cast<float*>(sm + L.gmax);
  for (int v = tid; v < kRowsQ * vpr; v += kThreadsQ) {
    const int r = v / vpr, cv = v % vpr;
    float xs[8];
    smoothed8<T>(sm, L, r, cv, xs);
    float a = 0.f;  // fmaxf from 0 drops NaN, as the per-row kernel does
#pragma unroll
    for (int e = 0; e < 8; ++e) a = fmaxf(a, fabsf(xs[e]));
#pragma unroll
    for (int o = 1; o < VPG; o <<= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
    if ((lane & (VPG - 1)) == 0) {
      gmax_s[r * gpr + cv / VPG] = a;
      atomicMax(&rmax_s[r], __float_as_uint(a));  // non-negative floats order as their bit patterns
    }
  }

  // partial down projection [16, R] over the slice: warp w takes k16 step (w & 3) of every chunk and the
  // rank's n8 tiles of half (w >> 2)
  const int kstep = warp & 3, half = warp >> 2, ntw = R / 16;
  const int g = lane >> 2, t = lane & 3;
  float acc[NT][4];
#pragma unroll
  for (int i = 0; i < NT; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
  for (int j = 0; j < nchunks; ++j) {
    cp_async_wait<1>();
    __syncthreads();  // chunk j is in its buffer
    const uint32_t buf = sb + L.pd + (j & 1) * kKC * pd_stride;
    uint32_t a[4];
    ldsm_x4(a, sb + L.x + (lane & 15) * L.x_stride + (j * kKC + kstep * 16 + (lane >> 4) * 8) * 2);
#pragma unroll
    for (int i = 0; i < NT; ++i) {
      if (i < ntw) {
        uint32_t b0, b1;
        ldsm_x2_trans(b0, b1, buf + (kstep * 16 + (lane & 15)) * pd_stride + (half * ntw + i) * 16);
        mma_16816<T>(acc[i], a, b0, b1);
      }
    }
    __syncthreads();  // buffer (j & 1) is free again
    if (j + 2 < nchunks) load_pd(j + 2);
    cp_async_commit();
  }
  float* part = reinterpret_cast<float*>(sm + L.part);
  if (R > 0) {
    float* red = reinterpret_cast<float*>(sm + L.pd);
#pragma unroll
    for (int i = 0; i < NT; ++i) {
      if (i < ntw) {
        const int col = (half * ntw + i) * 8 + 2 * t;
        red[(kstep * 16 + g) * R + col] = acc[i][0];
        red[(kstep * 16 + g) * R + col + 1] = acc[i][1];
        red[(kstep * 16 + g + 8) * R + col] = acc[i][2];
        red[(kstep * 16 + g + 8) * R + col + 1] = acc[i][3];
      }
    }
    __syncthreads();
    const int n = kRowsQ * R;
    for (int i = tid; i < n; i += kThreadsQ) part[i] = ((red[i] + red[n + i]) + red[2 * n + i]) + red[3 * n + i];
  }
  cluster.sync();  // every slice's row maxima and low-rank partials are visible

  float* amax_s = reinterpret_cast<float*>(sm + L.amax);
  if (tid < kRowsQ) {
    unsigned mx = 0u;
    for (int q = 0; q < C; ++q) mx = max(mx, cluster.map_shared_rank(rmax_s, q)[tid]);
    amax_s[tid] = __uint_as_float(mx);
    if (c == 0 && m0 + tid < M) xscale[m0 + tid] = __fdiv_rn(__uint_as_float(mx), 112.f);
  }
  {
    const int rows = kRowsQ / C;
    for (int i = tid; i < rows * R; i += kThreadsQ) {
      const int r = c * rows + i / R, col = i % R;
      float s = 0.f;
      for (int q = 0; q < C; ++q) s += cluster.map_shared_rank(part, q)[r * R + col];
      if (m0 + r < M) lr[(int64_t)(m0 + r) * R + col] = Dt<T>::from_f(s);
    }
  }
  asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");  // done reading the others' memory
  __syncthreads();

  for (int v = tid; v < kRowsQ * vpr; v += kThreadsQ) {
    const int r = v / vpr, cv = v % vpr;
    float xs[8];
    smoothed8<T>(sm, L, r, cv, xs);
    const float amax = amax_s[r];
    const float s_row = __fdiv_rn(amax, 112.f);
    int s_int = 1;
    if (amax > 0.f) s_int = min(16, max(1, (int)ceilf(__fdiv_rn(gmax_s[r * gpr + cv / VPG], amax) * 16.f)));
    const float scale = __fmul_rn(s_row, (float)s_int);
    float inv = __frcp_rn(scale);
    if (!(scale > 0.f) || isinf(inv)) inv = 0.f;
    int b[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float p = fminf(7.f, fmaxf(-8.f, __fmul_rn(xs[e], inv)));
      b[e] = __float_as_int(__fadd_rn(p, 12582912.f)) * s_int;  // see quantize_act_2l.cu
    }
    const uint32_t w0 = __byte_perm(__byte_perm(b[0], b[1], 0x0040), __byte_perm(b[2], b[3], 0x0040), 0x5410);
    const uint32_t w1 = __byte_perm(__byte_perm(b[4], b[5], 0x0040), __byte_perm(b[6], b[7], 0x0040), 0x5410);
    if (m0 + r < M) *reinterpret_cast<uint2*>(xq + (int64_t)(m0 + r) * K + k0 + cv * 8) = make_uint2(w0, w1);
  }
  asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");  // no CTA leaves while read
#endif
}

// Cluster size: the largest of 8, 4, 2, 1 that cuts K into 128-multiples of at most kMaxSlice.
int cluster_size(int K) {
  for (int c : {8, 4, 2, 1})
    if (K % (128 * c) == 0 && K / c <= kMaxSlice) return c;
  return 0;
}

template <typename T, int G, int NT>
cudaError_t launch_cluster(const QuantizeAct2lArgs& a, int C, cudaStream_t stream) {
  auto kern = quantize_act_2l_cluster_kernel<T, G, NT>;
  const QLayout L(a.K / C, a.R, G);
  cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, L.total);
  if (e != cudaSuccess) return e;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(C * ((a.M + kRowsQ - 1) / kRowsQ));
  cfg.blockDim = dim3(kThreadsQ);
  cfg.dynamicSmemBytes = L.total;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = C;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, kern, static_cast<const T*>(a.x), static_cast<const T*>(a.smooth),
                            static_cast<const T*>(a.proj_down), a.xq, a.xscale, static_cast<T*>(a.lr), a.M, a.K, a.R);
}

template <typename T, int G>
cudaError_t launch_cluster_r(const QuantizeAct2lArgs& a, int C, cudaStream_t stream) {
  return a.R <= 64 ? launch_cluster<T, G, 4>(a, C, stream) : launch_cluster<T, G, 16>(a, C, stream);
}

bool g_fused_off = false;

}  // namespace

bool quantize_act_2l_fused_supported(int K, int R) {
  return !g_fused_off && R >= 0 && R % 16 == 0 && R <= kMaxRank2l && K > 0 && cluster_size(K) > 0;
}

void set_quantize_act_2l_fused(bool on) { g_fused_off = !on; }

cudaError_t launch_quantize_act_2l_fused(const QuantizeAct2lArgs& a, cudaStream_t stream) {
  const int C = cluster_size(a.K);
  if (C == 0 || a.R % 16 || a.R > kMaxRank2l) return cudaErrorInvalidValue;
  if (a.M == 0) return cudaSuccess;
  const bool bf = a.dtype == DType::kBF16;
  switch (a.group_size) {
    case 32: return bf ? launch_cluster_r<__nv_bfloat16, 32>(a, C, stream) : launch_cluster_r<__half, 32>(a, C, stream);
    case 64: return bf ? launch_cluster_r<__nv_bfloat16, 64>(a, C, stream) : launch_cluster_r<__half, 64>(a, C, stream);
    case 128:
      return bf ? launch_cluster_r<__nv_bfloat16, 128>(a, C, stream) : launch_cluster_r<__half, 128>(a, C, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace svdq

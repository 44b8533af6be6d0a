// Activation quantization for the two-level INT4 format (int4_2l), any architecture.
//
// The per-token scale needs the whole row's absmax before any value can be quantized, so one CTA owns
// a token row and holds it in registers: V 16-byte vectors per thread, strided by the block size, so a
// group of G values sits in G/8 consecutive lanes. x is read once, multiplied by the fp32 reciprocal
// of the smoothing factor (one small prep launch computes 1 / smooth for the whole call), reduced to
// group and row maxima, and written as int8 q * s_int with the per-token fp32 scale. (A 16-row variant
// with the low-rank down projection fused on mma.sync had to read x twice and ran 1.7-2x slower:
// too few CTAs for the row-max dependency. The down projection stays on cuBLAS, in the binding.)
// Exact numerics: ops/reference.py quantize_act_2l_ref: s_row = amax / 112, s_int = clamp(ceil(amax_g /
// amax * 16), 1, 16), q = clamp(rne(fl(fl(x * rcp) * (1 / (s_row * s_int)))), -8, 7).
#include "common.cuh"
#include "launch.h"

namespace svdq {
namespace {

template <typename T>
__global__ void rcp_kernel(const T* __restrict__ smooth, float* __restrict__ rcp, int K) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k < K) rcp[k] = __frcp_rn(Dt<T>::to_f(smooth[k]));
}


template <typename T, int V, int G>
__global__ void __launch_bounds__(512) quantize_act_2l_kernel(const T* __restrict__ x, const float* __restrict__ rcp,
                                                               int8_t* __restrict__ xq, float* __restrict__ xscale,
                                                               int K) {
  constexpr int VPG = G / 8;  // 16-byte vectors per group = consecutive lanes sharing a group
  __shared__ float red[32];
  const int m = blockIdx.x;
  const int nthr = blockDim.x;
  const int tid = threadIdx.x;
  const T* xr = x + (int64_t)m * K;
  float xs[V][8];
  float gmax[V];
  float tmax = 0.f;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const int v = tid + i * nthr;
    const uint4 xv = *reinterpret_cast<const uint4*>(xr + v * 8);
    const float4 r0 = __ldg(reinterpret_cast<const float4*>(rcp + v * 8));
    const float4 r1 = __ldg(reinterpret_cast<const float4*>(rcp + v * 8 + 4));
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
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
  if ((tid & 31) == 0) red[tid >> 5] = tmax;
  __syncthreads();
  if (tid < 32) {
    float v = tid < (nthr >> 5) ? red[tid] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (tid == 0) red[0] = v;
  }
  __syncthreads();
  const float amax = red[0];
  const float s_row = __fdiv_rn(amax, 112.f);
  if (tid == 0) xscale[m] = s_row;
#pragma unroll
  for (int i = 0; i < V; ++i) {
    const int v = tid + i * nthr;
    int s_int = 1;
    if (amax > 0.f) s_int = min(16, max(1, (int)ceilf(__fdiv_rn(gmax[i], amax) * 16.f)));
    const float scale = __fmul_rn(s_row, (float)s_int);
    float inv = __frcp_rn(scale);
    if (!(scale > 0.f) || isinf(inv)) inv = 0.f;  // as the reference: 0 where 1 / scale is not finite
    int b[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      // clamp, then round half-even by adding 1.5 * 2^23: the low byte of the sum's bits is q (two's
      // complement), and (that word * s_int) has q * s_int in its low byte
      const float p = fminf(7.f, fmaxf(-8.f, __fmul_rn(xs[i][e], inv)));
      b[e] = __float_as_int(__fadd_rn(p, 12582912.f)) * s_int;
    }
    const uint32_t w0 = __byte_perm(__byte_perm(b[0], b[1], 0x0040), __byte_perm(b[2], b[3], 0x0040), 0x5410);
    const uint32_t w1 = __byte_perm(__byte_perm(b[4], b[5], 0x0040), __byte_perm(b[6], b[7], 0x0040), 0x5410);
    *reinterpret_cast<uint2*>(xq + (int64_t)m * K + v * 8) = make_uint2(w0, w1);
  }
}

template <typename T, int G>
cudaError_t launch_v(const QuantizeAct2lArgs& a, int v, int threads, cudaStream_t s) {
  dim3 grid(a.M);
  const T* x = static_cast<const T*>(a.x);
  switch (v) {
#define SVDQ_Q2L_CASE(VV) \
  case VV: quantize_act_2l_kernel<T, VV, G><<<grid, threads, 0, s>>>(x, a.rcp, a.xq, a.xscale, a.K); break;
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
  return cudaGetLastError();
}

// Vectors per thread for a row of K values: the smallest V <= 8 with K / (8 V) threads a multiple of 32
// and at most 256 (else at most 512); 0 when no such block exists.
int vectors_per_thread(int K) {
  if (K <= 0 || K % 256) return 0;
  for (int limit : {256, 512})
    for (int v = 1; v <= 8; ++v)
      if ((K / 8) % v == 0 && (K / 8 / v) % 32 == 0 && K / 8 / v <= limit) return v;
  return 0;
}

}  // namespace

bool quantize_act_2l_supported(int K) { return vectors_per_thread(K) > 0; }

cudaError_t launch_quantize_act_2l(const QuantizeAct2lArgs& a, cudaStream_t stream) {
  const int v = vectors_per_thread(a.K);
  if (v == 0) return cudaErrorInvalidValue;
  if (a.M == 0) return cudaSuccess;
  const bool bf = a.dtype == DType::kBF16;
  if (bf) rcp_kernel<__nv_bfloat16><<<(a.K + 255) / 256, 256, 0, stream>>>(
      static_cast<const __nv_bfloat16*>(a.smooth), a.rcp, a.K);
  else rcp_kernel<__half><<<(a.K + 255) / 256, 256, 0, stream>>>(static_cast<const __half*>(a.smooth), a.rcp, a.K);
  const int threads = a.K / 8 / v;
  switch (a.group_size) {
    case 32: return bf ? launch_v<__nv_bfloat16, 32>(a, v, threads, stream) : launch_v<__half, 32>(a, v, threads, stream);
    case 64: return bf ? launch_v<__nv_bfloat16, 64>(a, v, threads, stream) : launch_v<__half, 64>(a, v, threads, stream);
    case 128: return bf ? launch_v<__nv_bfloat16, 128>(a, v, threads, stream) : launch_v<__half, 128>(a, v, threads, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace svdq

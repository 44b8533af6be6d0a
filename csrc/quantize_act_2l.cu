// Activation quantization for the two-level INT4 format (int4_2l), any architecture.
//
// One CTA per token row: the row is read once into registers (V 16-byte vectors per thread, strided
// by the block size, so a group of G values sits in G/8 consecutive threads), smoothed by a multiply
// with the IEEE reciprocal of the smoothing factor, reduced to group and row maxima, and written as
// int8 q * s_int with the per-token fp32 scale. The exact numerics are ops/reference.py's
// quantize_act_2l_ref (formats/int4_2l.py): s_row = amax / 112, s_int = clamp(ceil(amax_g / amax * 16),
// 1, 16), q = clamp(rne(xs * (1 / (s_row * s_int))), -8, 7).
#include "common.cuh"
#include "launch.h"

namespace svdq {
namespace {

template <typename T, int V, int G>
__global__ void __launch_bounds__(512) quantize_act_2l_kernel(const T* __restrict__ x, const T* __restrict__ smooth,
                                                               int8_t* __restrict__ xq, float* __restrict__ xscale,
                                                               int K) {
  constexpr int VPG = G / 8;  // 16-byte vectors per group = consecutive threads sharing a group
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
    const uint4 sv = __ldg(reinterpret_cast<const uint4*>(smooth + v * 8));
    const uint32_t xw[4] = {xv.x, xv.y, xv.z, xv.w};
    const uint32_t sw[4] = {sv.x, sv.y, sv.z, sv.w};
    float amax = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float xe = Dt<T>::bits_to_f(e & 1 ? xw[e >> 1] >> 16 : xw[e >> 1] & 0xFFFFu);
      const float se = Dt<T>::bits_to_f(e & 1 ? sw[e >> 1] >> 16 : sw[e >> 1] & 0xFFFFu);
      xs[i][e] = __fmul_rn(xe, __frcp_rn(se));
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
    const float inv = scale > 0.f ? __frcp_rn(scale) : 0.f;
    uint32_t w[2] = {0u, 0u};
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const int q = min(7, max(-8, __float2int_rn(__fmul_rn(xs[i][e], inv))));
      w[e >> 2] |= (uint32_t)((q * s_int) & 0xFF) << (8 * (e & 3));
    }
    *reinterpret_cast<uint2*>(xq + (int64_t)m * K + v * 8) = make_uint2(w[0], w[1]);
  }
}

template <typename T, int G>
cudaError_t launch_v(const QuantizeAct2lArgs& a, int v, int threads, cudaStream_t s) {
  dim3 grid(a.M);
  const T* x = static_cast<const T*>(a.x);
  const T* sm = static_cast<const T*>(a.smooth);
  switch (v) {
#define SVDQ_Q2L_CASE(VV) \
  case VV: quantize_act_2l_kernel<T, VV, G><<<grid, threads, 0, s>>>(x, sm, a.xq, a.xscale, a.K); break;
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

}  // namespace

// Vectors per thread for a row of K values: the smallest V <= 8 with K / (8 V) threads a multiple of 32
// and at most 256 (else at most 512); 0 when no such block exists (the caller uses the reference).
int quantize_act_2l_vectors(int K) {
  if (K <= 0 || K % 256) return 0;
  for (int limit : {256, 512})
    for (int v = 1; v <= 8; ++v)
      if ((K / 8) % v == 0 && (K / 8 / v) % 32 == 0 && K / 8 / v <= limit) return v;
  return 0;
}

cudaError_t launch_quantize_act_2l(const QuantizeAct2lArgs& a, cudaStream_t stream) {
  const int v = quantize_act_2l_vectors(a.K);
  if (v == 0 || a.M == 0) return a.M == 0 ? cudaSuccess : cudaErrorInvalidValue;
  const int threads = a.K / 8 / v;
  const bool bf = a.dtype == DType::kBF16;
  switch (a.group_size) {
    case 32: return bf ? launch_v<__nv_bfloat16, 32>(a, v, threads, stream) : launch_v<__half, 32>(a, v, threads, stream);
    case 64: return bf ? launch_v<__nv_bfloat16, 64>(a, v, threads, stream) : launch_v<__half, 64>(a, v, threads, stream);
    case 128: return bf ? launch_v<__nv_bfloat16, 128>(a, v, threads, stream) : launch_v<__half, 128>(a, v, threads, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace svdq

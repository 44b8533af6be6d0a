// Per-head RMSNorm followed by rotary embedding, in one pass (FLUX's q/k after their projections): what torch's
// RMSNorm (a 16-bit weight) and diffusers' apply_rotary_emb (use_real, pairs (2i, 2i+1)) compute, with their roundings:
//   h = round16(x * rsqrt(mean(x^2) + eps) * w) (fp32 throughout, one rounding, as torch's fused rms_norm),
//   y[2i] = round16(h[2i] cos[2i] - h[2i+1] sin[2i]), y[2i+1] = round16(h[2i+1] cos[2i+1] + h[2i] sin[2i+1])
// (products and sums rounded separately, as the eager ops do). One warp per row of D = 32 E values; a block's
// warps walk the rows of one token's heads, so the token's cos / sin stay in registers.
#include "common.cuh"
#include "launch.h"

namespace svdq {
namespace {

template <typename T, int E>
__global__ void __launch_bounds__(256) rms_norm_rope_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                                            const float* __restrict__ cosv,
                                                            const float* __restrict__ sinv, T* __restrict__ y,
                                                            int64_t tokens, int S, int H, float eps) {
  constexpr int D = 32 * E;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float wt[E];
#pragma unroll
  for (int e = 0; e < E; ++e) wt[e] = Dt<T>::to_f(w[lane * E + e]);
  for (int64_t tok = blockIdx.x; tok < tokens; tok += gridDim.x) {
    const int s = (int)(tok % S);
    float c[E], sn[E];
#pragma unroll
    for (int e = 0; e < E; ++e) c[e] = cosv[(int64_t)s * D + lane * E + e], sn[e] = sinv[(int64_t)s * D + lane * E + e];
    for (int h = warp; h < H; h += blockDim.x / 32) {
      const int64_t base = (tok * H + h) * D + lane * E;
      float v[E];
#pragma unroll
      for (int e = 0; e < E; e += 2) {
        const uint32_t p = *reinterpret_cast<const uint32_t*>(x + base + e);
        v[e] = Dt<T>::bits_to_f((uint16_t)(p & 0xFFFF));
        v[e + 1] = Dt<T>::bits_to_f((uint16_t)(p >> 16));
      }
      float ss = 0.f;
#pragma unroll
      for (int e = 0; e < E; ++e) ss = __fadd_rn(ss, __fmul_rn(v[e], v[e]));
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) ss = __fadd_rn(ss, __shfl_xor_sync(0xffffffffu, ss, o));
      const float rstd = rsqrtf(__fadd_rn(__fdiv_rn(ss, (float)D), eps));
#pragma unroll
      for (int e = 0; e < E; ++e) v[e] = Dt<T>::to_f(Dt<T>::from_f(__fmul_rn(__fmul_rn(v[e], rstd), wt[e])));
#pragma unroll
      for (int e = 0; e < E; e += 2) {
        const float y0 = __fadd_rn(__fmul_rn(v[e], c[e]), __fmul_rn(-v[e + 1], sn[e]));
        const float y1 = __fadd_rn(__fmul_rn(v[e + 1], c[e + 1]), __fmul_rn(v[e], sn[e + 1]));
        *reinterpret_cast<uint32_t*>(y + base + e) = Dt<T>::pack2(y0, y1);
      }
    }
  }
}

template <typename T>
cudaError_t launch_t(const RmsNormRopeArgs& a, int blocks, cudaStream_t stream) {
  const T* x = static_cast<const T*>(a.x);
  const T* w = static_cast<const T*>(a.weight);
  T* y = static_cast<T*>(a.y);
  const int64_t tokens = a.rows / a.H;
  switch (a.D) {
    case 64: rms_norm_rope_kernel<T, 2><<<blocks, 256, 0, stream>>>(x, w, a.cos, a.sin, y, tokens, a.S, a.H, a.eps); break;
    case 128: rms_norm_rope_kernel<T, 4><<<blocks, 256, 0, stream>>>(x, w, a.cos, a.sin, y, tokens, a.S, a.H, a.eps); break;
    case 256: rms_norm_rope_kernel<T, 8><<<blocks, 256, 0, stream>>>(x, w, a.cos, a.sin, y, tokens, a.S, a.H, a.eps); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

bool rms_norm_rope_supported(int D) { return D == 64 || D == 128 || D == 256; }

cudaError_t launch_rms_norm_rope(const RmsNormRopeArgs& a, int num_sms, cudaStream_t stream) {
  if (!rms_norm_rope_supported(a.D) || a.H <= 0 || a.rows % a.H) return cudaErrorInvalidValue;
  if (a.rows == 0) return cudaSuccess;
  const int64_t tokens = a.rows / a.H;
  const int blocks = (int)std::min<int64_t>(tokens, (int64_t)num_sms * 8);
  return a.dtype == DType::kBF16 ? launch_t<__nv_bfloat16>(a, blocks, stream) : launch_t<__half>(a, blocks, stream);
}

}  // namespace svdq

// Per-head RMSNorm followed by rotary embedding, in one pass (FLUX's q/k after their projections): what torch's
// RMSNorm (a 16-bit weight) and diffusers' apply_rotary_emb (use_real, pairs (2i, 2i+1)) compute, with their roundings:
//   h = round16(x * rsqrt(mean(x^2) + eps) * w) (fp32 throughout, one rounding, as torch's fused rms_norm),
//   y[2i] = round16(h[2i] cos[2i] - h[2i+1] sin[2i]), y[2i+1] = round16(h[2i+1] cos[2i+1] + h[2i] sin[2i+1])
// (products and sums rounded separately, as the eager ops do). One warp per row of D = 32 E values; a block's
// warps walk the rows of one token's heads (U at a time, their loads in flight together), so the token's cos / sin
// stay in registers. Rows and cos / sin rows must be 16-byte aligned (the binding makes them so). With a front part
// (FLUX's double blocks: the text tokens' q / k) the output is the concatenation along the tokens, written in place.
#include "common.cuh"
#include "launch.h"

namespace svdq {
namespace {

// W 32-bit words at p (16-byte aligned for W >= 4, else 4 W bytes) in as few loads / stores as possible
template <int W>
__device__ __forceinline__ void load_words(const void* p, uint32_t (&w)[W]) {
  if constexpr (W % 4 == 0) {
#pragma unroll
    for (int i = 0; i < W / 4; ++i) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(p) + i);
      w[4 * i] = v.x, w[4 * i + 1] = v.y, w[4 * i + 2] = v.z, w[4 * i + 3] = v.w;
    }
  } else if constexpr (W == 2) {
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
    w[0] = v.x, w[1] = v.y;
  } else {
    w[0] = __ldg(reinterpret_cast<const uint32_t*>(p));
  }
}
template <int W>
__device__ __forceinline__ void store_words(void* p, const uint32_t (&w)[W]) {
  if constexpr (W % 4 == 0) {
#pragma unroll
    for (int i = 0; i < W / 4; ++i) reinterpret_cast<uint4*>(p)[i] = make_uint4(w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]);
  } else if constexpr (W == 2) {
    *reinterpret_cast<uint2*>(p) = make_uint2(w[0], w[1]);
  } else {
    *reinterpret_cast<uint32_t*>(p) = w[0];
  }
}

// U heads per warp per step: their loads are all in flight before the first is reduced
// Output token t = (b, s) of S positions: s < S0 from front [B, S0, H, D] with weight w0, else from x [B, S - S0, H, D]
// with weight w (front null: S0 = 0).
template <typename T, int E, int U = 4>
__global__ void __launch_bounds__(256) rms_norm_rope_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                                            const T* __restrict__ front, const T* __restrict__ w0,
                                                            const float* __restrict__ cosv,
                                                            const float* __restrict__ sinv, T* __restrict__ y,
                                                            int64_t tokens, int S, int S0, int H, float eps) {
  constexpr int D = 32 * E;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  float wt1[E], wt0[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    wt1[e] = Dt<T>::to_f(w[lane * E + e]);
    wt0[e] = S0 ? Dt<T>::to_f(w0[lane * E + e]) : 0.f;
  }
  for (int64_t tok = blockIdx.x; tok < tokens; tok += gridDim.x) {
    const int s = (int)(tok % S);
    const int64_t b = tok / S;
    const bool first = s < S0;
    const T* src = first ? front + (b * S0 + s) * H * D : x + (b * (S - S0) + s - S0) * H * D;
    float wt[E];
#pragma unroll
    for (int e = 0; e < E; ++e) wt[e] = first ? wt0[e] : wt1[e];
    const int64_t col = (int64_t)s * D + lane * E;
    uint32_t cw[E], sw[E];
    load_words<E>(cosv + col, cw);
    load_words<E>(sinv + col, sw);
    for (int h0 = warp; h0 < H; h0 += warps * U) {
      uint32_t xw[U][E / 2];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (h0 + u * warps < H) load_words<E / 2>(src + (int64_t)(h0 + u * warps) * D + lane * E, xw[u]);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int h = h0 + u * warps;
        if (h >= H) break;
        float v[E];
#pragma unroll
        for (int e = 0; e < E; e += 2) v[e] = Dt<T>::bits_to_f(xw[u][e / 2] & 0xFFFFu), v[e + 1] = Dt<T>::bits_to_f(xw[u][e / 2] >> 16);
        float ss = 0.f;
#pragma unroll
        for (int e = 0; e < E; ++e) ss = __fadd_rn(ss, __fmul_rn(v[e], v[e]));
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) ss = __fadd_rn(ss, __shfl_xor_sync(0xffffffffu, ss, o));
        const float rstd = rsqrtf(__fadd_rn(__fdiv_rn(ss, (float)D), eps));
#pragma unroll
        for (int e = 0; e < E; ++e) v[e] = Dt<T>::to_f(Dt<T>::from_f(__fmul_rn(__fmul_rn(v[e], rstd), wt[e])));
        uint32_t out[E / 2];
#pragma unroll
        for (int e = 0; e < E; e += 2) {
          const float c0 = __uint_as_float(cw[e]), c1 = __uint_as_float(cw[e + 1]);
          const float s0 = __uint_as_float(sw[e]), s1 = __uint_as_float(sw[e + 1]);
          const float y0 = __fadd_rn(__fmul_rn(v[e], c0), __fmul_rn(-v[e + 1], s0));
          const float y1 = __fadd_rn(__fmul_rn(v[e + 1], c1), __fmul_rn(v[e], s1));
          out[e / 2] = Dt<T>::pack2(y0, y1);
        }
        store_words<E / 2>(y + (tok * H + h) * D + lane * E, out);
      }
    }
  }
}

// v4: one warp per token. A row of D values is D / 8 lanes' 16-byte vectors, so one load covers 256 / D of the
// token's head rows; U such loads are in flight before the first row is reduced (FLUX, D = 128: 24 heads in 2
// batches). The token's cos / sin and norm weight are read once per lane. Same formula as v3; the sum of squares
// is reduced over the row's lanes in another order (both within one rounding of torch's).
template <typename T, int D, int U = 6>
__global__ void __launch_bounds__(128) rms_norm_rope_warp_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                                                 const T* __restrict__ front, const T* __restrict__ w0,
                                                                 const float* __restrict__ cosv,
                                                                 const float* __restrict__ sinv, T* __restrict__ y,
                                                                 int64_t tokens, int S, int S0, int H, float eps) {
  constexpr int LPR = D / 8, RPL = 32 / LPR;  // lanes per row, rows per load
  const int lane = threadIdx.x & 31;
  const int64_t tok = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (tok >= tokens) return;
  const int sub = lane / LPR, l = lane % LPR;
  const int s = (int)(tok % S);
  const int64_t b = tok / S;
  const bool first = s < S0;
  const T* src = first ? front + (b * S0 + s) * H * D : x + (b * (S - S0) + s - S0) * H * D;
  const T* wp = first ? w0 : w;
  float wt[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) wt[e] = Dt<T>::to_f(wp[l * 8 + e]);
  uint32_t cw[8], sw[8];
  load_words<8>(cosv + (int64_t)s * D + l * 8, cw);
  load_words<8>(sinv + (int64_t)s * D + l * 8, sw);
  for (int h0 = 0; h0 < H; h0 += U * RPL) {
    uint32_t xw[U][4];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int h = h0 + u * RPL + sub;
      if (h < H) load_words<4>(src + (int64_t)h * D + l * 8, xw[u]);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (h0 + u * RPL >= H) break;  // uniform over the warp: no row of this load exists
      const int h = h0 + u * RPL + sub;
      float v[8];
#pragma unroll
      for (int e = 0; e < 8; e += 2) v[e] = Dt<T>::bits_to_f(xw[u][e / 2] & 0xFFFFu), v[e + 1] = Dt<T>::bits_to_f(xw[u][e / 2] >> 16);
      float ss = 0.f;
#pragma unroll
      for (int e = 0; e < 8; ++e) ss = __fadd_rn(ss, __fmul_rn(v[e], v[e]));
#pragma unroll
      for (int o = LPR / 2; o > 0; o >>= 1) ss = __fadd_rn(ss, __shfl_xor_sync(0xffffffffu, ss, o));
      const float rstd = rsqrtf(__fadd_rn(__fdiv_rn(ss, (float)D), eps));
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = Dt<T>::to_f(Dt<T>::from_f(__fmul_rn(__fmul_rn(v[e], rstd), wt[e])));
      uint32_t out[4];
#pragma unroll
      for (int e = 0; e < 8; e += 2) {
        const float c0 = __uint_as_float(cw[e]), c1 = __uint_as_float(cw[e + 1]);
        const float s0 = __uint_as_float(sw[e]), s1 = __uint_as_float(sw[e + 1]);
        const float y0 = __fadd_rn(__fmul_rn(v[e], c0), __fmul_rn(-v[e + 1], s0));
        const float y1 = __fadd_rn(__fmul_rn(v[e + 1], c1), __fmul_rn(v[e], s1));
        out[e / 2] = Dt<T>::pack2(y0, y1);
      }
      if (h < H) store_words<4>(y + (tok * H + h) * D + l * 8, out);
    }
  }
}

int g_version = 4;  // 3: one block per token at a time, E values per lane (benchmarks: set_rms_norm_rope_version)

template <typename T>
cudaError_t launch_t(const RmsNormRopeArgs& a, int blocks, cudaStream_t stream) {
  const T* x = static_cast<const T*>(a.x);
  const T* w = static_cast<const T*>(a.weight);
  const T* x0 = static_cast<const T*>(a.front);
  const T* w0 = static_cast<const T*>(a.front_weight);
  T* y = static_cast<T*>(a.y);
  const int64_t tokens = a.rows / a.H;
  const unsigned warp_blocks = (unsigned)((tokens + 3) / 4);
#define SVDQ_RNR_CASE(DD, EE)                                                                                        \
  case DD:                                                                                                          \
    if (g_version == 4)                                                                                             \
      rms_norm_rope_warp_kernel<T, DD><<<warp_blocks, 128, 0, stream>>>(x, w, x0, w0, a.cos, a.sin, y, tokens, a.S, \
                                                                       a.S0, a.H, a.eps);                           \
    else                                                                                                            \
      rms_norm_rope_kernel<T, EE><<<blocks, 256, 0, stream>>>(x, w, x0, w0, a.cos, a.sin, y, tokens, a.S, a.S0,   \
                                                              a.H, a.eps);                                          \
    break;
  switch (a.D) {
    SVDQ_RNR_CASE(64, 2)
    SVDQ_RNR_CASE(128, 4)
    SVDQ_RNR_CASE(256, 8)
    default: return cudaErrorInvalidValue;
  }
#undef SVDQ_RNR_CASE
  return cudaGetLastError();
}

}  // namespace

bool rms_norm_rope_supported(int D) { return D == 64 || D == 128 || D == 256; }
void set_rms_norm_rope_version(int v) { g_version = v == 3 ? 3 : 4; }
int rms_norm_rope_version() { return g_version; }

cudaError_t launch_rms_norm_rope(const RmsNormRopeArgs& a, int num_sms, cudaStream_t stream) {
  if (!rms_norm_rope_supported(a.D) || a.H <= 0 || a.rows % a.H) return cudaErrorInvalidValue;
  if (a.rows == 0) return cudaSuccess;
  const int64_t tokens = a.rows / a.H;
  const int blocks = (int)std::min<int64_t>(tokens, (int64_t)num_sms * 8);
  return a.dtype == DType::kBF16 ? launch_t<__nv_bfloat16>(a, blocks, stream) : launch_t<__half>(a, blocks, stream);
}

}  // namespace svdq

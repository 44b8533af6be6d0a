// The few-token int4_2l GEMM's per-chunk arithmetic (w4a4_gemv_2l.cu). Plain integer code that also compiles for
// the host, so tests/test_gemv_2l_host.py checks the nibble / activation pairing on the CPU for both weight orders.
#pragma once
#include <stdint.h>

#include "widen_2l.cuh"

namespace svdq {

SVDQ_HD int dp4a_hd(uint32_t a, uint32_t b, int c) {
#if defined(__CUDA_ARCH__)
  return __dp4a(static_cast<int>(a), static_cast<int>(b), c);
#else
  for (int i = 0; i < 4; ++i) c += (int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i));
  return c;
#endif
}

SVDQ_HD uint32_t load_u32_hd(const int8_t* p) {
#if defined(__CUDA_ARCH__)
  return __ldg(reinterpret_cast<const uint32_t*>(p));
#else
  return (uint32_t)(uint8_t)p[0] | ((uint32_t)(uint8_t)p[1] << 8) | ((uint32_t)(uint8_t)p[2] << 16) |
         ((uint32_t)(uint8_t)p[3] << 24);
#endif
}

// 16 * sum over the word's 8 nibbles of q * x: each nibble moved to the top of its byte is 16 q as a signed byte
// (exact); xe / xo hold the x bytes that meet the low / high nibbles, byte b of each for the word's byte b.
SVDQ_HD int gemv_dot_word(uint32_t w, uint32_t xe, uint32_t xo) {
  return dp4a_hd(w & 0xF0F0F0F0u, xo, dp4a_hd((w << 4) & 0xF0F0F0F0u, xe, 0));
}

// Sum over chunk kk (16 bytes, 32 weights) of one row's 128-deep stage of q * s_int * x, exact. xs: the stage's
// 128 activation bytes; sc0 / sc1: the row's integer scales of the stage's groups (group size 64).
// Canonical order: chunk kk is k 32 kk .. + 31, word j its k 8 j .. + 7 (low nibble first), so the chunk lies in
// group kk / 2. Fragment order (ops/layout_2l.py): byte b of word j of chunk kk holds k0 + b (low nibble) and
// k0 + 16 + b (high), k0 = 32 j + 4 kk; words 0-1 lie in the first group, 2-3 in the second.
template <bool kFrag>
SVDQ_HD int gemv_chunk_dot(const uint32_t (&w)[4], const int8_t* xs, int kk, uint32_t sc0, uint32_t sc1) {
  int d[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int k0 = kFrag ? 32 * j + 4 * kk : 32 * kk + 8 * j;
    const uint32_t a = load_u32_hd(xs + k0), b = load_u32_hd(xs + k0 + (kFrag ? 16 : 4));
    if (kFrag)
      d[j] = gemv_dot_word(w[j], a, b);
    else
      d[j] = gemv_dot_word(w[j], byte_perm_hd(a, b, 0x6420), byte_perm_hd(a, b, 0x7531));
  }
  if (kFrag) return (int)sc0 * ((d[0] + d[1]) >> 4) + (int)sc1 * ((d[2] + d[3]) >> 4);
  return (int)(kk < 2 ? sc0 : sc1) * ((d[0] + d[1] + d[2] + d[3]) >> 4);
}

}  // namespace svdq

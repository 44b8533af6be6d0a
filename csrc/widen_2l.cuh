// Widening of packed INT4 weights to int8 q * s_int for the int4_2l GEMM, shared by its two main loops
// (A tile in shared memory, or A fragments in registers). Plain integer code that also compiles for the
// host, so tests/test_widen_2l_host.py checks the register-fragment gather on the CPU against the wgmma
// A-fragment layout.
#pragma once
#include <stdint.h>

#if defined(__CUDACC__)
#define SVDQ_HD __host__ __device__ __forceinline__
#else
#define SVDQ_HD inline
#endif

namespace svdq {

SVDQ_HD uint32_t byte_perm_hd(uint32_t x, uint32_t y, uint32_t s) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(x, y, s);
#else
  const uint64_t v = ((uint64_t)y << 32) | x;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) r |= (uint32_t)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xFF) << (8 * i);
  return r;
#endif
}

// Four packed bytes of (unsigned nibble x s) minus 8 s per byte (mod 256): the signed products q x s.
SVDQ_HD uint32_t sub_bytes(uint32_t x, uint32_t c_lo7, uint32_t c_hi) {
  const uint32_t t = (x | 0x80808080u) - c_lo7;
  return t ^ (x & 0x80808080u) ^ c_hi;
}

// The per-byte constants of sub_bytes for the integer group scale s in [1, 16].
struct WidenConst {
  uint32_t s, c_lo7, c_hi;
};
SVDQ_HD WidenConst widen_const(uint32_t s) {
  const uint32_t c = (8u * s) * 0x01010101u;
  return {s, c & 0x7F7F7F7Fu, ~c & 0x80808080u};
}

// Eight signed nibbles (k 0..7 of `w`, low nibble first) times s as int8: lo = k 0..3, hi = k 4..7
// (products <= 15 * 16 = 240 never carry into the next byte).
SVDQ_HD void widen8(uint32_t w, const WidenConst& c, uint32_t& lo, uint32_t& hi) {
  const uint32_t p = w ^ 0x88888888u;                                               // signed -> offset binary
  const uint32_t ev = sub_bytes((p & 0x0F0F0F0Fu) * c.s, c.c_lo7, c.c_hi);          // k 0, 2, 4, 6
  const uint32_t od = sub_bytes(((p >> 4) & 0x0F0F0F0Fu) * c.s, c.c_lo7, c.c_hi);   // k 1, 3, 5, 7
  lo = byte_perm_hd(ev, od, 0x5140);
  hi = byte_perm_hd(ev, od, 0x7362);
}

// Fragment order (ops/layout_2l.py): byte b of a word holds k b (low nibble) and k 16 + b (high nibble) of its lane's
// two k-quads, each nibble n the two's complement of q. Per byte, n s (<= 240) plus 8 b3 (32 - 2 s) (b3 = n's bit 3;
// <= 240) is q s + 256 b3 in [0, 255]: no byte carries into the next, so one 32-bit multiply-add serves four bytes.
struct FoConst {
  uint32_t s, c8;
};
SVDQ_HD FoConst fo_const(uint32_t s) { return {s, 32u - 2u * s}; }

// One fragment-order word -> lo = q * s of k 0..3, hi = k 16..19 (int8 bytes): 9 integer instructions for 8 weights
// (widen8: ~17).
SVDQ_HD void widen8_fo(uint32_t w, const FoConst& c, uint32_t& lo, uint32_t& hi) {
  const uint32_t w4 = w >> 4;
  lo = (w & 0x08080808u) * c.c8 + (w & 0x0F0F0F0Fu) * c.s;
  hi = (w4 & 0x08080808u) * c.c8 + (w4 & 0x0F0F0F0Fu) * c.s;
}

// Byte offset of the 16-byte chunk `jj` (k 32 jj .. 32 jj + 31) of row r in the packed weight tile as
// TMA writes it: rows of 64 bytes with the 64-byte swizzle (chunk jj stored at jj ^ ((r >> 1) & 3)).
SVDQ_HD int packed_chunk_offset(int r, int jj) { return r * 64 + ((jj ^ ((r >> 1) & 3)) << 4); }

// The wgmma A fragment (m64 k32, s8) of one thread for k-step j (k 32 j .. 32 j + 31 of a 128-deep stage):
// a[0] = row r0, k 4t .. 4t+3; a[1] = row r0 + 8, same k; a[2] = row r0, k 16 + 4t ..; a[3] = row r0 + 8,
// k 16 + 4t .. (t = lane % 4; r0 = the warp's row g = lane / 4). `wt` is the stage's packed tile, `sc`
// its integer group scales ([group][kRows], uint8), G the group size.
template <int G, int kRows>
SVDQ_HD void gather_frag(const uint8_t* wt, const uint8_t* sc, int r0, int t, int j, uint32_t (&a)[4]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = r0 + 8 * h;
    const uint8_t* c = wt + packed_chunk_offset(r, j);
    // bytes 2t, 2t+1 (k 4t .. 4t+3) and 8+2t, 9+2t (k 16+4t ..) of the chunk
#if defined(__CUDA_ARCH__)
    const uint32_t w = __byte_perm(*reinterpret_cast<const uint16_t*>(c + 2 * t),
                                   *reinterpret_cast<const uint16_t*>(c + 8 + 2 * t), 0x5410);
#else
    const uint32_t w = (uint32_t)c[2 * t] | ((uint32_t)c[2 * t + 1] << 8) | ((uint32_t)c[8 + 2 * t] << 16) |
                       ((uint32_t)c[9 + 2 * t] << 24);
#endif
    const WidenConst k = widen_const(sc[((32 * j) / G) * kRows + r]);
    widen8(w, k, a[h], a[2 + h]);
  }
}

// frag_stage in two steps, so a kernel can load the next stage's bytes while its wgmmas run: frag_load, the
// thread's words (w[h][j]: row r0 + 8 h, k-step j) and group scales (sc[h][g]: row r0 + 8 h, group g of the
// stage); frag_widen, the fragments from them.
template <int G, int kRows>
SVDQ_HD void frag_load(const uint8_t* wt, const uint8_t* sc, int r0, int t, uint32_t (&w)[2][4],
                       uint32_t (&s)[2][128 / G]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = r0 + 8 * h;
    const uint8_t* c = wt + packed_chunk_offset(r, t);
#if defined(__CUDA_ARCH__)
    const uint4 v = *reinterpret_cast<const uint4*>(c);
    w[h][0] = v.x, w[h][1] = v.y, w[h][2] = v.z, w[h][3] = v.w;
#else
    for (int j = 0; j < 4; ++j)
      w[h][j] = (uint32_t)c[4 * j] | ((uint32_t)c[4 * j + 1] << 8) | ((uint32_t)c[4 * j + 2] << 16) |
                ((uint32_t)c[4 * j + 3] << 24);
#endif
#pragma unroll
    for (int g = 0; g < 128 / G; ++g) s[h][g] = sc[g * kRows + r];
  }
}

template <int G>
SVDQ_HD void frag_widen(const uint32_t (&w)[2][4], const uint32_t (&s)[2][128 / G], uint32_t (&a)[4][4]) {
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int j = 0; j < 4; ++j) widen8_fo(w[h][j], fo_const(s[h][(32 * j) / G]), a[j][h], a[j][2 + h]);
}

// k-step j of frag_widen alone, a[j] of rows r0 and r0 + 8 (the pipelined loop widens one k-step at a time under the
// previous k-steps' wgmmas: csrc/rf_loop.cuh).
template <int G>
SVDQ_HD void frag_widen_step(const uint32_t (&w)[2][4], const uint32_t (&s)[2][128 / G], int j, uint32_t (&a)[4]) {
#pragma unroll
  for (int h = 0; h < 2; ++h) widen8_fo(w[h][j], fo_const(s[h][(32 * j) / G]), a[h], a[2 + h]);
}

// The previous widening on the same words (signed nibbles, canonical byte order inside a word): wrong values on
// today's fragment order, kept only as the GEMM's timing probe 6 (perf-notes v2.22).
template <int G>
SVDQ_HD void frag_widen_v1(const uint32_t (&w)[2][4], const uint32_t (&s)[2][128 / G], uint32_t (&a)[4][4]) {
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int j = 0; j < 4; ++j) widen8(w[h][j], widen_const(s[h][(32 * j) / G]), a[j][h], a[j][2 + h]);
}

// The packed weight tile in fragment order (the persistent register-fragment loop's layout): within each row's 64
// bytes of a stage, word 4 t + j (bytes 16 t + 4 j .. + 3) holds the k's of gather_frag's word for k-step j and lane
// t % 4 == t, nibble-interleaved as widen8_fo reads them; TMA's 64-byte swizzle on top. So a thread's words for all
// four k-steps are one 16-byte load per row. frag_stage: the thread's fragments a[j][0..3] (as gather_frag's a for
// k-step j) of rows r0 and r0 + 8.
template <int G, int kRows>
SVDQ_HD void frag_stage(const uint8_t* wt, const uint8_t* sc, int r0, int t, uint32_t (&a)[4][4]) {
  uint32_t w[2][4], s[2][128 / G];
  frag_load<G, kRows>(wt, sc, r0, t, w, s);
  frag_widen<G>(w, s, a);
}
}  // namespace svdq

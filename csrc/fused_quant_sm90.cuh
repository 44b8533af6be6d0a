// Device helpers of the fused quantizers (quantize_act_2l_fused_sm90.cu, quantize_act_2l_cols_sm90.cu,
// quantize_act_2l_pairs_sm90.cu): thread-block cluster rank and barrier, distributed shared memory addresses,
// asynchronous stores into a peer's shared memory that complete on its mbarrier, 16-bit unpacking, the resident
// proj_down slice, and one thread's 64-value unit from the stage to its int8 values.
#pragma once
#include <cstdint>

#include "common.cuh"

namespace svdq {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ uint32_t cluster_rank() {
  uint32_t r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
  return r;
}
__device__ __forceinline__ void cluster_barrier() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}
__device__ __forceinline__ uint32_t map_rank(const void* local, uint32_t rank) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(smem_u32(local)), "r"(rank));
  return remote;
}
// 16 / 4 bytes into a peer's shared memory, completing as transaction bytes on its mbarrier: no fence, so the
// sender's loads in flight are not waited for
__device__ __forceinline__ void st_async_v4(uint32_t remote, const float4& v, uint32_t remote_bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.f32 [%0], {%1, %2, %3, %4}, [%5];\n"
               ::"r"(remote), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w), "r"(remote_bar) : "memory");
}
__device__ __forceinline__ void st_async_f32(uint32_t remote, float v, uint32_t remote_bar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];\n"
               ::"r"(remote), "r"(__float_as_uint(v)), "r"(remote_bar) : "memory");
}

template <typename T>
__device__ __forceinline__ void unpack8(const uint4& v, float (&f)[8]) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = half_lo<T>(w[i]);
    f[2 * i + 1] = half_hi<T>(w[i]);
  }
}

// The CTA's slice of proj_down, 8 NT columns from pd (rows ld elements apart: 8 NT, or more where pd starts at a
// column of a wider proj_down), rows [kbase, kbase + Ks), transposed into shared memory: pt[n * XR + k] (rows of XR >=
// Ks 16-bit elements, as the mma's B operand is loaded by ldmatrix). kBatch: loads in flight per thread. All threads of
// the block take part.
template <typename T, int NT, int kBatch = 4>
__device__ __forceinline__ void load_proj_down_t(T* pt, const T* __restrict__ pd, int kbase, int Ks, int XR,
                                                 int ld = NT * 8) {
  const int nthr = blockDim.x, tid = threadIdx.x;
  for (int e0 = 0; e0 < Ks * NT; e0 += kBatch * nthr) {
    uint4 v[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int e = e0 + u * nthr + tid, kl = e / NT;
      if (e < Ks * NT)
        v[u] = __ldg(reinterpret_cast<const uint4*>(pd + (int64_t)(kbase + kl) * ld + (e - kl * NT) * 8));
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int e = e0 + u * nthr + tid, kl = e / NT, nt = e - kl * NT;
      if (e >= Ks * NT) break;
      const T* vv = reinterpret_cast<const T*>(&v[u]);
#pragma unroll
      for (int i = 0; i < 8; ++i) pt[(nt * 8 + i) * XR + kl] = vv[i];
    }
  }
}

// A thread's 64-value unit uu of a stage: v = x * (1 / smooth) (vector q of the unit at shared address addr(q), 1 /
// smooth swizzled by unit: float4 k of unit uu at rcp_s[uu * 16 + (k ^ (uu % 8))]); m0 / m1: max |v| of its halves.
template <typename T, typename Addr>
__device__ __forceinline__ void unit_pass(Addr addr, const float4* rcp_s, int uu, float (&v)[64], float& m0, float& m1) {
#pragma unroll
  for (int q = 0; q < 8; ++q) {
    uint4 raw;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(raw.x), "=r"(raw.y), "=r"(raw.z), "=r"(raw.w)
                 : "r"(addr(q)));
    float f[8];
    unpack8<T>(raw, f);
    const float4 r0 = rcp_s[uu * 16 + ((2 * q) ^ (uu & 7))];
    const float4 r1 = rcp_s[uu * 16 + ((2 * q + 1) ^ (uu & 7))];
    const float rc[8] = {r0.x, r0.y, r0.z, r0.w, r1.x, r1.y, r1.z, r1.w};
#pragma unroll
    for (int e = 0; e < 8; ++e) v[8 * q + e] = __fmul_rn(f[e], rc[e]);
  }
  m0 = 0.f, m1 = 0.f;
#pragma unroll
  for (int e = 0; e < 32; ++e) m0 = fmaxf(m0, fabsf(v[e]));
#pragma unroll
  for (int e = 32; e < 64; ++e) m1 = fmaxf(m1, fabsf(v[e]));
}

// A unit's 64 values times their half's 1 / scale, rounded half-even, (kClamp) clamped to [-8, 7], times the half's
// s_int, packed four int8 to a word.
template <bool kClamp>
__device__ __forceinline__ void quantize_unit_body(const float (&v)[64], const float (&inv)[2], const int (&s_int)[2],
                                                   uint32_t (&w)[16]) {
#pragma unroll
  for (int q = 0; q < 8; ++q) {
    const int h = q >> 2;
    int b[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      // round half-even by adding 1.5 * 2^23: the low byte of the sum's bits is q (two's complement), and
      // (that word * s_int) has q * s_int in its low byte
      float p = __fmul_rn(v[8 * q + e], inv[h]);
      if (kClamp) p = fminf(7.f, fmaxf(-8.f, p));
      b[e] = __float_as_int(__fadd_rn(p, 12582912.f)) * s_int[h];
    }
    w[2 * q] = __byte_perm(__byte_perm(b[0], b[1], 0x0040), __byte_perm(b[2], b[3], 0x0040), 0x5410);
    w[2 * q + 1] = __byte_perm(__byte_perm(b[4], b[5], 0x0040), __byte_perm(b[6], b[7], 0x0040), 0x5410);
  }
}

// The unit's int8 values q * s_int against its row's maximum amax, packed four to a word into w (the exact numerics of
// ops/reference.py quantize_act_2l_ref); gm: its group maxima (G = 32: two groups, else gm[0]); s_row = amax / 112.
__device__ __forceinline__ void quantize_unit(const float (&v)[64], const float (&gm)[2], float amax, float s_row, int G,
                                              uint32_t (&w)[16]) {
  int s_int[2];
  float inv[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    s_int[h] = 1;
    if (amax > 0.f) s_int[h] = min(16, max(1, (int)ceilf(__fdiv_rn(gm[h], amax) * 16.f)));
    const float scale = __fmul_rn(s_row, (float)s_int[h]);
    inv[h] = __frcp_rn(scale);
    if (!(scale > 0.f) || isinf(inv[h])) inv[h] = 0.f;  // as the reference: 0 where 1 / scale is not finite
    if (G != 32) {
      s_int[1] = s_int[0], inv[1] = inv[0];
      break;
    }
  }
  // no clamp where the row's amax is finite and s_row normal (quantize_act_2l.cu's lean form: |q| <= 7); two bodies,
  // so that the usual one issues no (predicated-off) clamps
  if (amax >= 0x1p-100f && amax <= 3.40282347e38f) quantize_unit_body<false>(v, inv, s_int, w);
  else quantize_unit_body<true>(v, inv, s_int, w);
}

// The low-rank quads rank `rank` of a cluster of C owns (quad q at rank q % C): each summed over the C senders' slots
// in rank order, rounded once and stored to lr (rows row0 ... of the 16-row block; past M skipped). got: this parity's
// [C][16][qpr] float4 slots. All threads of the block take part.
template <typename T, int R>
__device__ __forceinline__ void store_owned_quads(const float4* got, int C, int qpr, int rank, int row0, int M,
                                                  T* __restrict__ lr) {
  for (int i = threadIdx.x; i < 16 * qpr; i += blockDim.x) {
    const int r = i / qpr, slot = i - r * qpr, qd = slot * C + rank;
    if (qd >= R / 4 || row0 + r >= M) continue;
    float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int q = 0; q < C; ++q) {
      const float4 p = got[(q * 16 + r) * qpr + slot];
      s.x += p.x, s.y += p.y, s.z += p.z, s.w += p.w;
    }
    *reinterpret_cast<uint2*>(lr + (int64_t)(row0 + r) * R + qd * 4) =
        make_uint2(Dt<T>::pack2(s.x, s.y), Dt<T>::pack2(s.z, s.w));
  }
}
#endif
}  // namespace svdq

// Device helpers of the two fused quantizers (quantize_act_2l_fused_sm90.cu, quantize_act_2l_cols_sm90.cu):
// thread-block cluster rank and barrier, distributed shared memory addresses, asynchronous stores into a peer's shared
// memory that complete on its mbarrier, 16-bit unpacking and the resident proj_down slice.
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

// The CTA's slice of proj_down [K, 8 NT], rows [kbase, kbase + Ks), transposed into shared memory: pt[n * XR + k]
// (rows of XR >= Ks 16-bit elements, as the mma's B operand is loaded by ldmatrix). All threads of the block take part.
template <typename T, int NT>
__device__ __forceinline__ void load_proj_down_t(T* pt, const T* __restrict__ pd, int kbase, int Ks, int XR) {
  constexpr int R = NT * 8, kBatch = 4;  // loads in flight per thread
  const int nthr = blockDim.x, tid = threadIdx.x;
  for (int e0 = 0; e0 < Ks * NT; e0 += kBatch * nthr) {
    uint4 v[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int e = e0 + u * nthr + tid, kl = e / NT;
      if (e < Ks * NT) v[u] = __ldg(reinterpret_cast<const uint4*>(pd + (int64_t)(kbase + kl) * R + (e - kl * NT) * 8));
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

// TMA tensor maps, loads and stores, wgmma shared-memory descriptors, read-only loads, the low-rank epilogue wgmma and
// the output's packing into the TMA-store staging: what the int4_2l GEMM kernels on sm_90a share
// (w4a4_gemm_2l_sm90.cu, w4a4_gemm_2l_pingpong_sm90.cu).
#pragma once
#include <cuda.h>
#include <cudaTypedefs.h>
#include <stdint.h>

#include <type_traits>

#include "common.cuh"
#include "wgmma_s8.cuh"

namespace svdq {

// Loads issued where they stand (volatile), read-only path; the thread waits only where the value is used.
__device__ __forceinline__ float ldg_nc_f32(const float* p) {
  float v;
  asm volatile("ld.global.nc.f32 %0, [%1];\n" : "=f"(v) : "l"(p));
  return v;
}
__device__ __forceinline__ uint32_t ldg_nc_u32(const void* p) {
  uint32_t v;
  asm volatile("ld.global.nc.b32 %0, [%1];\n" : "=r"(v) : "l"(p));
  return v;
}
template <typename T>
__device__ __forceinline__ uint32_t ldg_nc_u16(const T* p) {
  unsigned short v;
  asm volatile("ld.global.nc.b16 %0, [%1];\n" : "=h"(v) : "l"(p));
  return v;
}
__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}

// Shared-memory matrix descriptor of a K-major tile with 128-byte swizzle (8 rows x 128 bytes per atom).
__device__ __forceinline__ uint64_t desc_k128(uint32_t saddr) {
  uint64_t d = 0;
  d |= (uint64_t)((saddr & 0x3FFFF) >> 4);  // start address
  d |= (uint64_t)1 << 16;                   // leading byte offset (unused for swizzled K-major)
  d |= (uint64_t)(1024 >> 4) << 32;         // stride byte offset: next 8-row atom
  d |= (uint64_t)1 << 62;                   // 128-byte swizzle
  return d;
}

// The same for a K-major tile of 64-byte rows with 64-byte swizzle (8 rows x 64 bytes per atom).
__device__ __forceinline__ uint64_t desc_k64(uint32_t saddr) {
  uint64_t d = 0;
  d |= (uint64_t)((saddr & 0x3FFFF) >> 4);
  d |= (uint64_t)1 << 16;
  d |= (uint64_t)(512 >> 4) << 32;
  d |= (uint64_t)2 << 62;  // 64-byte swizzle
  return d;
}

// The persistent kernels' low-rank branch, d (fp32 bit patterns) += proj_up rows (A fragments up[ks]) x the low-rank
// tile at desc (rank steps of 16: +32 bytes each): R / 16 wgmmas, waited for.
template <typename T, int BT>
__device__ __forceinline__ void lowrank_wgmma(int (&d)[BT / 2], const uint32_t (&up)[4][4], uint64_t desc, int steps) {
  wgmma_fence();
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) {
    if (ks >= steps) break;
    if constexpr (std::is_same_v<T, __nv_bfloat16>) wgmma_bf16_rs<BT>(d, up[ks], desc + 2 * ks);
    else wgmma_f16_rs<BT>(d, up[ks], desc + 2 * ks);
  }
  wgmma_commit();
  wgmma_wait<0>();
}

// 2-D tile store from shared memory (inner coordinate c0 in elements, outer c1 in rows), as a bulk group.
// (left in flight: PS waits for it before the staging is rewritten, and before exit)
__device__ __forceinline__ void tma_store_2d_async(const CUtensorMap* map, uint32_t src, int c0, int c1) {
  asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%1, %2}], [%3];\n"
               ::"l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(src) : "memory");
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}
// The shared memory of the bulk stores in flight has been read: it may be rewritten, or the CTA may exit.
__device__ __forceinline__ void tma_store_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
}
__device__ __forceinline__ void tma_store_2d(const CUtensorMap* map, uint32_t src, int c0, int c1) {
  tma_store_2d_async(map, src, c0, c1);
  tma_store_wait_read();
}
// 2-D tile brought into L2 only (inner coordinate c0 in elements, outer c1 in rows): no shared memory, no completion.
__device__ __forceinline__ void tma_prefetch_l2_2d(const CUtensorMap* map, int c0, int c1) {
  asm volatile("cp.async.bulk.prefetch.tensor.2d.L2.global.tile [%0, {%1, %2}];\n"
               ::"l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1) : "memory");
}
// 3-D tile brought into L2 only (coordinates innermost first).
__device__ __forceinline__ void tma_prefetch_l2_3d(const CUtensorMap* map, int c0, int c1, int c2) {
  asm volatile("cp.async.bulk.prefetch.tensor.3d.L2.global.tile [%0, {%1, %2, %3}];\n"
               ::"l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2) : "memory");
}
// 3-D tile load (coordinates innermost first), completing on mbarrier `bar`.
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const CUtensorMap* map, int c0, int c1, int c2,
                                            uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];\n"
      ::"r"(dst), "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar) : "memory");
}
// 2-D tile load (inner coordinate c0 in elements, outer c1 in rows), completing on mbarrier `bar`.
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, int c0, int c1, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n"
      ::"r"(dst), "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar) : "memory");
}

// Token octet j of a warp's accumulators (fp32 bit patterns: rows g and g + 8, tokens 8 j + 2 t and + 1) plus the rows'
// biases, GELU'd where act == 1 (kAct 0 / 1: known at compile time), packed as two T pairs: p0 of row g, p1 of row g + 8.
template <typename T, int N, int kAct = -1>
__device__ __forceinline__ void pack_octet(const int (&acc)[N], int j, float bA, float bB, int act, uint32_t& p0,
                                           uint32_t& p1) {
  float v[4] = {__int_as_float(acc[4 * j]) + bA, __int_as_float(acc[4 * j + 1]) + bA,
                __int_as_float(acc[4 * j + 2]) + bB, __int_as_float(acc[4 * j + 3]) + bB};
  if (kAct == 1 || (kAct < 0 && act == 1)) {
#pragma unroll
    for (int e = 0; e < 4; ++e) v[e] = gelu_tanh(v[e]);
  }
  p0 = Dt<T>::pack2(v[0], v[1]);
  p1 = Dt<T>::pack2(v[2], v[3]);
}

// A warpgroup's 64 rows x BT tokens (this thread's acc, bias added, GELU'd where act == 1) into the output staging at
// `out` as [token][64] rows of 128 bytes with the 128-byte swizzle, two token octets per stmatrix (the transposes of
// octets j and j + 1; conflict-free: a warp's 8 tokens land in 8 different 16-byte chunks), for one TMA store.
// stage_octets_as: token octets J0 .. J1 - 1 only (an even count), from the staging's first row (an output staged in
// parts through less memory). kAct: 0 no GELU, 1 GELU, -1 decided per octet from `act` (the layout before perf-notes
// v2.34, kept for its A/B: ptxas lays each GELU body inline, so with act = 0 a warp jumps over ~1 KB of cold code per
// octet pair). (device pass of sm_90 only: stmatrix)
template <typename T, int BT, int kAct, int J0, int J1>
__device__ __forceinline__ void stage_octets_as(const int (&acc)[BT / 2], uint32_t out, int warp, int lane, float bA,
                                                float bB, int act) {
  static_assert(J0 % 2 == 0 && J1 % 2 == 0 && J0 < J1 && J1 <= BT / 8, "whole octet pairs of the tile");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  const int k = lane >> 3, i = lane & 7;  // this lane addresses row i of matrix k
  const uint32_t dst = out + i * 128 + ((((2 * warp + (k & 1)) ^ i)) << 4) + (k >> 1) * 8 * 128;
#pragma unroll
  for (int j = J0; j < J1; j += 2) {
    uint32_t a0, a1, b0, b1;
    pack_octet<T, BT / 2, kAct>(acc, j, bA, bB, act, a0, a1);
    pack_octet<T, BT / 2, kAct>(acc, j + 1, bA, bB, act, b0, b1);
    stmatrix_x4_trans(dst + (j - J0) * 8 * 128, a0, a1, b0, b1);  // row (j-J0)*8 + i (+ 8): chunk 2 warp (+1) ^ i
  }
#endif
}
template <typename T, int BT, int kAct>
__device__ __forceinline__ void stage_output_as(const int (&acc)[BT / 2], uint32_t out, int warp, int lane, float bA,
                                                float bB, int act) {
  stage_octets_as<T, BT, kAct, 0, BT / 8>(acc, out, warp, lane, bA, bB, act);
}
// The same with `act` decided once: two straight-line bodies, so the one that runs is contiguous code (octets J0 ..
// J1 - 1, as stage_octets_as).
template <typename T, int BT, int J0 = 0, int J1 = BT / 8>
__device__ __forceinline__ void stage_output(const int (&acc)[BT / 2], uint32_t out, int warp, int lane, float bA,
                                             float bB, int act) {
  if (act == 1) stage_octets_as<T, BT, 1, J0, J1>(acc, out, warp, lane, bA, bB, act);
  else stage_octets_as<T, BT, 0, J0, J1>(acc, out, warp, lane, bA, bB, act);
}

inline PFN_cuTensorMapEncodeTiled_v12000 encode_fn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      p = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// A uint8 tensor map of rank N (dims innermost first, dims[0] contiguous; strides of dims 1 .. N-1 in bytes, in any
// order), tiles of box.
template <int N>
inline bool make_map_u8(CUtensorMap* map, const void* base, const cuuint64_t (&dims)[N],
                        const cuuint64_t (&strides)[N - 1], const cuuint32_t (&box)[N], CUtensorMapSwizzle swizzle) {
  auto fn = encode_fn();
  if (!fn) return false;
  cuuint32_t elem[N];
  for (int i = 0; i < N; ++i) elem[i] = 1;
  return fn(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, N, const_cast<void*>(base), dims, strides, box, elem,
            CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// Row-major uint8 matrix [rows, cols] (cols contiguous, rows `stride` bytes apart; 0: cols), tiles of box_rows x
// box_cols.
inline bool make_map(CUtensorMap* map, const void* base, uint64_t rows, uint64_t cols, uint32_t box_rows,
                     uint32_t box_cols, CUtensorMapSwizzle swizzle, uint64_t stride = 0) {
  return make_map_u8<2>(map, base, {cols, rows}, {stride ? stride : cols}, {box_cols, box_rows}, swizzle);
}

}  // namespace svdq

// Shared device helpers of the svdquant kernels (plain CUDA, no torch headers).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace svdq {

template <typename T> struct Dt;
template <> struct Dt<__nv_bfloat16> {
  static constexpr float kMax = 3.3895313892515355e38f;  // torch.finfo(torch.bfloat16).max
  __device__ static __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __forceinline__ __nv_bfloat16 from_f(float v) { return __float2bfloat16_rn(v); }
  // 16-bit pattern -> float (exact)
  __device__ static __forceinline__ float bits_to_f(uint32_t b) { return __uint_as_float(b << 16); }
  __device__ static __forceinline__ uint32_t pack2(float a, float b) {
    __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};
template <> struct Dt<__half> {
  static constexpr float kMax = 65504.0f;  // torch.finfo(torch.float16).max
  __device__ static __forceinline__ float to_f(__half v) { return __half2float(v); }
  __device__ static __forceinline__ __half from_f(float v) { return __float2half_rn(v); }
  __device__ static __forceinline__ float bits_to_f(uint32_t b) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(b & 0xFFFFu)));
  }
  __device__ static __forceinline__ uint32_t pack2(float a, float b) {
    __half2 v = __floats2half2_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};

// GELU, tanh approximation (torch's approximate="tanh"), as x * sigmoid(2u) = x / (1 + e^(-2u)),
// u = sqrt(2 / pi) (x + 0.044715 x^3); ex2.approx and the fast divide: within ~1e-6 relative of the fp32 formula,
// far below the 16-bit output's rounding (the limits hold: e^(-2u) -> inf gives -0, -> 0 gives x).
__device__ __forceinline__ float gelu_tanh(float x) {
  const float u = x * (0.7978845608f + 0.0356774081f * x * x);
  return __fdividef(x, 1.f + __expf(-2.f * u));
}

// The low / high 16-bit value of a 32-bit word as float (exact)
template <typename T>
__device__ __forceinline__ float half_lo(uint32_t w) {
  if constexpr (Dt<T>::kMax > 1e30f) return __uint_as_float(w << 16);  // bfloat16: the high half of an fp32
  else return Dt<T>::bits_to_f(w & 0xFFFFu);
}
template <typename T>
__device__ __forceinline__ float half_hi(uint32_t w) {
  if constexpr (Dt<T>::kMax > 1e30f) return __uint_as_float(w & 0xFFFF0000u);
  else return Dt<T>::bits_to_f(w >> 16);
}

// D += A(16x16, row) * B(16x8, col), 16-bit inputs, fp32 accumulate.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// D += A(16x32, row, s8) * B(32x8, col, s8), int32 accumulate.
__device__ __forceinline__ void mma_s8_16832(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// D = A * B + c (c broadcast to all four accumulators): starts a group without resetting registers.
__device__ __forceinline__ void mma_s8_16832_init(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                                                  int c) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%10,%10,%10};\n"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(c));
}

// Native 4-bit tensor-core MMA (sm_80+; emulated, slowly, on sm_90): D = A * B + D over k = 64, A and B as
// packed signed nibbles, element 0 in the low bits. The fragments hold the bytes that m16n8k32 s8 holds.
__device__ __forceinline__ void mma_s4_16864(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k64.row.col.s32.s4.s4.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_s4_16864_init(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                                                  int c) {
  asm volatile(
      "mma.sync.aligned.m16n8k64.row.col.s32.s4.s4.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%10,%10,%10};\n"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1), "r"(c));
}

// Eight int8 values in [-8, 7] (bytes of lo, then hi) -> eight packed nibbles, element 0 in the low bits.
__device__ __forceinline__ uint32_t pack_s4x8(uint32_t lo, uint32_t hi) {
  lo &= 0x0F0F0F0Fu;
  hi &= 0x0F0F0F0Fu;
  lo |= lo >> 4;  // bytes 0 and 2 now hold (e0, e1) and (e2, e3)
  hi |= hi >> 4;
  return __byte_perm(lo, hi, 0x6420);
}

// 8x8 b16 transpose across the warp (thread holds row lane/4, cols 2*(lane%4)..+1 before and after).
__device__ __forceinline__ uint32_t movmatrix_trans(uint32_t a) {
  uint32_t d;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(d) : "r"(a));
  return d;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
// Four 8x8 b16 matrices in mma fragment layout (thread l: row l / 4, columns 2 (l % 4), + 1 of each), stored
// transposed: lane 8 k + i gives the shared-memory address of row i of matrix k's transpose (16 bytes).
__device__ __forceinline__ void stmatrix_x4_trans(uint32_t addr, uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(a), "r"(b),
               "r"(c), "r"(d)
               : "memory");
}
#endif

// Reciprocal refined to the accuracy the division below needs (nvcc's own div.rn fast path).
__device__ __forceinline__ float rcp_refined(float b) {
  float y;
  asm("rcp.approx.f32 %0, %1;" : "=f"(y) : "f"(b));
  return fmaf(fmaf(-b, y, 1.0f), y, y);
}

// a / b correctly rounded (IEEE div.rn) given y = rcp_refined(b), valid while b, a and the quotient
// stay well inside the normal range (the callers check the ranges and use __fdiv_rn otherwise).
__device__ __forceinline__ float div_fast(float a, float b, float y) {
  const float q = a * y;
  const float r = fmaf(-b, q, a);
  return fmaf(r, y, q);
}

// ldmatrix: four / two 8 x 8 16-bit matrices from shared memory (.trans: transposed, e.g. a [k][n] tile as the
// mma B operand)
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t& r0, uint32_t& r1, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r0), "=r"(r1) : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t& r0, uint32_t& r1, uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n" : "=r"(r0), "=r"(r1) : "r"(addr));
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global->shared async copy; src_bytes = 0 zero-fills without reading global memory.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// mbarriers (sm_90): init, arrive with expected transaction bytes, plain arrive, wait on a phase's parity
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\nWAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT_%=;\n}\n" ::"r"(bar), "r"(parity) : "memory");
}
// mbar_wait with the thread suspended meanwhile (a time hint, as CUTLASS's barriers): for warps that wait long beside
// warps that work, which a polling try_wait would take issue slots and the shared-memory pipe from (perf-notes v2.48)
__device__ __forceinline__ void mbar_wait_suspended(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done;\nWAIT_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1, %2;\n"
      "@!done bra WAIT_%=;\n}\n" ::"r"(bar), "r"(parity), "r"(0x989680) : "memory");
}
}  // namespace svdq

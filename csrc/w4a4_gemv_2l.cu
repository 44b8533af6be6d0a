// The int4_2l GEMM for a few tokens (M <= kGemvMaxTokens): a memory-bound weight stream, not a tile GEMM.
// At M = 1 (FLUX's AdaLN modulation layers: temb [1, 3072] -> 18432) the wgmma kernels widen every weight for
// one useful token column of 64; here each weight byte is read once and used by dp4a on its nibbles.
//
// A block owns 8 weight rows; its warps split K in contiguous runs of 128-deep stages. Lane (r, kk) reads
// row r's 16-byte chunk kk of a stage (a stage row is 64 bytes): 32 nibbles. Per 4-byte word, the low and the
// high nibbles are moved to the top of their bytes ((w << 4) & 0xF0.., w & 0xF0..: 16 q as a signed byte, exact)
// and dotted by dp4a with the 8 activation bytes they meet (picked by byte_perm from the two 4-byte words of
// x that hold them); the word's sum / 16 times its group's integer scale is added to an exact int32 total, as the
// GEMM's int32 sum over K (|sum| <= K 128 8 16 < 2^31 for K <= 65536). The epilogue is the GEMM's:
// (float(acc) wchannel[n]) xscale[m] + lr[m] . proj_up[n] + bias[n], then the activation.
#include "common.cuh"
#include "gemv_2l.cuh"
#include "launch.h"
#include "pdl.cuh"

namespace svdq {
namespace {

constexpr int kRowsPerBlock = 8;
constexpr int kWarps = 4;
static_assert(kRowsPerBlock * kGemvMaxTokens <= kWarps * 32, "one epilogue output per thread");
constexpr int kStageBytes = 64;  // one row's packed bytes of a 128-deep K stage

__device__ __forceinline__ uint4 ld_stream(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// Group size 64: a stage holds groups 2 s and 2 s + 1 (gemv_chunk_dot). kPdl (set_pdl): launched to start under the
// previous kernel's tail, it requests its first U stages' weights and scales before waiting for that kernel's writes.
template <typename T, int MT, bool kFrag, bool kPdl = false>
__global__ void __launch_bounds__(kWarps * 32) gemv_2l_kernel(W4A4Gemm2lArgs a) {
  constexpr int U = MT <= 2 ? 4 : 2;  // stages in flight per lane (8 at M <= 2 measured slower: 72 registers)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane / 4, kk = lane % 4;
  const int n = blockIdx.x * kRowsPerBlock + r;
  const int stages = a.K / 128;
  const int s_begin = warp * stages / kWarps, s_end = (warp + 1) * stages / kWarps;
  // the epilogue's per-output operands, requested before the weight stream (thread o: row o % 8, token o / 8)
  const int o_rr = threadIdx.x % kRowsPerBlock, o_m = threadIdx.x / kRowsPerBlock;
  const bool o_live = o_m < a.M;
  const int o_n = blockIdx.x * kRowsPerBlock + o_rr;
  float o_scale = 0.f, o_bias = 0.f;
  if (o_live) {
    o_scale = __ldg(a.wchannel + o_n);
    o_bias = a.bias ? Dt<T>::to_f(static_cast<const T*>(a.bias)[o_n]) : 0.f;
  }
  const int8_t* wrow = a.qweight + static_cast<int64_t>(n) * (a.K / 2) + 16 * kk;
  int acc[MT] = {};
  for (int base = s_begin; base < s_end; base += U) {
    uint4 wv[U];
    uint32_t sc0[U], sc1[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (base + u < s_end) {
        const int s = base + u;
        wv[u] = ld_stream(wrow + static_cast<int64_t>(s) * kStageBytes);
        sc0[u] = __ldg(a.wscales + static_cast<int64_t>(2 * s) * a.N + n);
        sc1[u] = __ldg(a.wscales + static_cast<int64_t>(2 * s + 1) * a.N + n);
      }
    }
    // kPdl: the first stages' weights are in flight; xq, xscale, lr and y's memory belong to the kernels before this one
    if (kPdl && base == s_begin) pdl_wait();
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (base + u >= s_end) break;
      const uint32_t w[4] = {wv[u].x, wv[u].y, wv[u].z, wv[u].w};
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if (m >= a.M) break;
        const int8_t* xs = a.xq + static_cast<int64_t>(m) * a.K + 128 * (base + u);
        acc[m] += gemv_chunk_dot<kFrag>(w, xs, kk, sc0[u], sc1[u]);
      }
    }
  }
  if constexpr (kPdl) {
    if (s_begin >= s_end) pdl_wait();  // a warp without stages (K < 512) reads the epilogue's operands too
    pdl_trigger();
  }
  __shared__ int part[kWarps][kRowsPerBlock][MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    int v = acc[m];
    v += __shfl_xor_sync(0xFFFFFFFFu, v, 1);
    v += __shfl_xor_sync(0xFFFFFFFFu, v, 2);
    if (kk == 0) part[warp][r][m] = v;
  }
  __syncthreads();
  if (!o_live) return;  // kRowsPerBlock * MT <= the block's threads: one output per thread
  int total = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) total += part[w][o_rr][o_m];
  float c = static_cast<float>(total) * o_scale * __ldg(a.xscale + o_m);
  const int64_t ldlr = a.ldlr ? a.ldlr : a.R;
  const uint4* lr = reinterpret_cast<const uint4*>(static_cast<const T*>(a.lr) + o_m * ldlr);
  const uint4* pu = reinterpret_cast<const uint4*>(static_cast<const T*>(a.proj_up) + static_cast<int64_t>(o_n) * a.R);
  for (int i = 0; i < a.R / 8; ++i) {
    const uint4 l = __ldg(lr + i), p = __ldg(pu + i);
    const uint32_t lw[4] = {l.x, l.y, l.z, l.w}, pw[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      c = fmaf(half_lo<T>(lw[e]), half_lo<T>(pw[e]), c);
      c = fmaf(half_hi<T>(lw[e]), half_hi<T>(pw[e]), c);
    }
  }
  if (a.bias) c += o_bias;
  if (a.act == 1) c = gelu_tanh(c);
  const int64_t ldy = a.ldy ? a.ldy : a.N;
  static_cast<T*>(a.y)[o_m * ldy + o_n] = Dt<T>::from_f(c);
}

template <typename T, int MT, bool kFrag>
cudaError_t launch_mt(const W4A4Gemm2lArgs& a, cudaStream_t stream) {
  return launch_plain_or_pdl(gemv_2l_kernel<T, MT, kFrag>, gemv_2l_kernel<T, MT, kFrag, true>,
                             dim3(a.N / kRowsPerBlock), dim3(kWarps * 32), 0, stream, a);
}

template <typename T, bool kFrag>
cudaError_t launch_typed(const W4A4Gemm2lArgs& a, cudaStream_t stream) {
  if (a.M <= 1) return launch_mt<T, 1, kFrag>(a, stream);
  if (a.M <= 2) return launch_mt<T, 2, kFrag>(a, stream);
  if (a.M <= 4) return launch_mt<T, 4, kFrag>(a, stream);
  return launch_mt<T, 8, kFrag>(a, stream);
}

int g_gemv_mode = -1;  // -1 auto (gemv_2l_takes), 0 never, m > 0: every M <= m
long long g_gemv_launches = 0;

}  // namespace

bool gemv_2l_takes(const W4A4Gemm2lArgs& a) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  // auto: where it beat the tile GEMM on the H200 (perf-notes v2.21: M <= 2 everywhere, M = 4 at K <= 4096)
  const bool wanted = g_gemv_mode < 0 ? a.M <= 2 || (a.M <= 4 && a.K <= 4096) : a.M <= g_gemv_mode;
  return wanted && a.M >= 1 && a.group_size == 64 && a.wscales != nullptr && a.K % 128 == 0 &&
         a.N % kRowsPerBlock == 0 && a.R % 8 == 0 && (a.ldlr == 0 || a.ldlr % 8 == 0) && aligned(a.qweight) &&
         aligned(a.xq) && aligned(a.lr) && aligned(a.proj_up);
}

long long gemv_2l_launches() { return g_gemv_launches; }
void set_gemv_2l_mode(int m) { g_gemv_mode = m < 0 ? -1 : (m > kGemvMaxTokens ? kGemvMaxTokens : m); }
int gemv_2l_mode() { return g_gemv_mode; }

cudaError_t launch_w4a4_gemv_2l(const W4A4Gemm2lArgs& a, cudaStream_t stream) {
  ++g_gemv_launches;
  const bool bf = a.dtype == DType::kBF16;
  if (a.frag) return bf ? launch_typed<__nv_bfloat16, true>(a, stream) : launch_typed<__half, true>(a, stream);
  return bf ? launch_typed<__nv_bfloat16, false>(a, stream) : launch_typed<__half, false>(a, stream);
}

}  // namespace svdq

// The low-rank branch's down projection at a few hundred tokens (Hopper): lr[M, R] = x[M, K] @ proj_down[K, R],
// fp32 accumulation, one rounding to 16 bits at the end (the reference's numerics up to the fp32 summation order).
//
// cuBLAS runs this skinny product (R = 16 .. 128) as a split-K GEMM plus a reduction kernel, ~7 us at M = 256
// (perf-notes v2.15), longer than the quantizer it overlaps on the side stream. Here one kernel: a CTA takes 16
// token rows and a K slice of a cluster of S CTAs (S = 1, 2, 4 or 8: the row blocks times S fill the SMs), streams
// its slice in stages of 128 (x rows and proj_down rows by cp.async, four stages in flight), and its four warps
// take two 16-deep k-steps of each stage on mma.sync m16n8k16 (x by ldmatrix, proj_down by ldmatrix.trans). The
// warps' partials meet in shared memory, the cluster's in distributed shared memory, where CTA z rounds and stores
// the z-th share of the 16 x R outputs.
// Chain (set_lr_chain, Hopper, M <= 256): the kernel follows the quantizer on the same stream, launched programmatically
// (PDL), so it starts while the quantizer runs; a fifth warp waits for the quantizer to complete and only then signals
// the GEMM after it, which may therefore start on the SMs this kernel leaves free, read the quantizer's outputs at
// once, and wait for lr (its pdl_wait) only before its epilogue. This kernel's completion implies the quantizer's.
// The binding picks it and its CTA budget (bindings.cpp: where the GEMM that read this proj_down's lr last time left
// SMs free).
#include <cooperative_groups.h>

#include <algorithm>
#include <atomic>
#include <mutex>

#include "common.cuh"
#include "launch.h"
#include "pdl.cuh"

namespace svdq {
namespace {

constexpr int kDownKC = 128;     // K per stage
constexpr int kDownThreads = 128;

// Deep (opt-in, set_lowrank_down_deep; measured mixed, perf-notes v2.29: -5 % chained at 3072 x 3072, +10 % on the side
// stream at 3072 x 12288, 256 tokens): up to 8 stages in flight within ~192 KB instead of 4 (4 were
// latency-bound at K >= 12288, perf-notes v2.23)
template <int R, bool Deep = false>
struct DownCfg {
  static constexpr int kXRow = kDownKC * 2 + 16;  // bytes per x row in shared memory (padded: ldmatrix conflict-free)
  static constexpr int kPRow = R * 2 + 16;        // bytes per proj_down row
  static constexpr int kXBytes = 16 * kXRow;
  static constexpr int kStage = kXBytes + kDownKC * kPRow;
  static constexpr int kRed = 4 * 16 * R * 4;  // the four warps' fp32 partials
  static constexpr int kDeepFit = (192 * 1024 - kRed) / kStage;
  static constexpr int kStages = !Deep ? 4 : kDeepFit > 8 ? 8 : kDeepFit;
  static constexpr int kSmem = kStages * kStage + kRed;  // + (V - 1) kRed for V slices per CTA, + a ring per group
                                                         // past the first (launch_down)
};

// Pipes (Chain, g.59): the CTA's V slices taken by that many groups of four warps at once, each group on its own
// ring of stages (V / Pipes slices each), so a CTA streams its K range Pipes times as wide; the same lr bits.
template <typename T, int R, bool Deep, bool Chain = false, int Pipes = 1>
__global__ void __launch_bounds__(Chain ? Pipes * kDownThreads + 32 : kDownThreads) lowrank_down_kernel(
    const T* __restrict__ x, const T* __restrict__ pd, T* __restrict__ lr, int M, int K, int V) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  static_assert(Pipes == 1 || (Chain && !Deep && Pipes == 2), "two rings: the chained kernel's plain instances");
  using C = DownCfg<R, Deep>;
  constexpr int kDownStages = C::kStages;
  constexpr int kCompute = Pipes * kDownThreads;  // the computing threads
  extern __shared__ __align__(128) uint8_t smem[];
  const int tid = threadIdx.x, pipe = Pipes > 1 ? tid / kDownThreads : 0;
  const uint32_t sb = smem_u32(smem) + pipe * kDownStages * C::kStage;  // this group's ring
  const int S = gridDim.x, z = blockIdx.x;  // cluster (S, 1, 1): rank z takes K slice z
  const int m0 = blockIdx.y * 16;
  // V slices per CTA (Chain: the side path's cluster of S V CTAs folded onto S): slice q of S V takes the stages
  // [q units / (S V), (q + 1) units / (S V)), its partial summed as that path's CTA q sums it, so lr is bit for bit
  // the side path's. Group `pipe` takes slices [pipe V / Pipes, (pipe + 1) V / Pipes) of the CTA's.
  const int SV = S * V, units = K / kDownKC, v0 = pipe * V / Pipes;
  const int u0 = (z * V + v0) * units / SV, n = (z * V + (pipe + 1) * V / Pipes) * units / SV - u0;
  const int ptid = Pipes > 1 ? tid % kDownThreads : tid, warp = ptid >> 5, lane = tid & 31;
  namespace cg = cooperative_groups;
  if constexpr (Chain) {
    // x was complete before the quantizer started, and lr's memory was allocated after its launch: the four warps
    // need not wait. The fifth waits for the quantizer, then lets the GEMM start, then meets the cluster's barriers.
    if (tid >= kCompute) {
      pdl_wait();
      pdl_trigger();
      if (S > 1) {
        cg::this_cluster().sync();
        cg::this_cluster().sync();
      }
      return;
    }
  } else {
    pdl_wait();      // (set_pdl) x comes from the kernel before this one, which may still use lr's memory
    pdl_trigger();  // the GEMM after it may be scheduled as SMs free up
  }
  // a group's four computing warps' barrier (Chain: the fifth is waiting for the quantizer meanwhile), and all
  // computing warps' (one group: the same)
  auto sync4 = [pipe] {
    if constexpr (Chain) asm volatile("bar.sync %0, %1;\n" ::"r"(1 + pipe), "n"(kDownThreads) : "memory");
    else __syncthreads();
  };
  auto sync_all = [&] {
    if constexpr (Pipes > 1) asm volatile("bar.sync 3, %0;\n" ::"n"(kCompute) : "memory");
    else sync4();
  };
  auto load = [&](int c) {  // stage c of this CTA's slice (rows past M zero-filled)
    const uint32_t st = sb + (c % kDownStages) * C::kStage;
    const int k0 = (u0 + c) * kDownKC;
#pragma unroll
    for (int i = ptid; i < 16 * kDownKC / 8; i += kDownThreads) {
      const int row = i / (kDownKC / 8), ch = i % (kDownKC / 8), m = m0 + row;
      cp_async16(st + row * C::kXRow + ch * 16, x + (int64_t)min(m, M - 1) * K + k0 + ch * 8, m < M ? 16 : 0);
    }
#pragma unroll
    for (int i = ptid; i < kDownKC * R / 8; i += kDownThreads) {
      const int row = i / (R / 8), ch = i % (R / 8);
      cp_async16(st + C::kXBytes + row * C::kPRow + ch * 16, pd + (int64_t)(k0 + row) * R + ch * 8, 16);
    }
  };
  float acc[R / 8][4] = {};
  // per slice v, the warps' partials [v][warp][16][R] (fragment: acc[nt][0, 1] row g, columns 8 nt + 2t, + 1; [2, 3]
  // row g + 8), each warp writing its own as its slice ends (no barrier in the loop)
  float* red = reinterpret_cast<float*>(smem + Pipes * C::kStages * C::kStage);
  const int g = lane >> 2, t = lane & 3;
  auto flush = [&](int v) {
#pragma unroll
    for (int nt = 0; nt < R / 8; ++nt) {
      float* r0 = red + ((v * 4 + warp) * 16 + g) * R + nt * 8 + 2 * t;
      r0[0] = acc[nt][0], r0[1] = acc[nt][1], r0[8 * R] = acc[nt][2], r0[8 * R + 1] = acc[nt][3];
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
    }
  };
  int v = v0, vend = (z * V + v0 + 1) * units / SV - u0;  // the slice in progress and the stage after its last
#pragma unroll
  for (int c = 0; c < kDownStages - 1; ++c) {
    if (c < n) load(c);
    cp_async_commit();
  }
  for (int c = 0; c < n; ++c) {
    cp_async_wait<kDownStages - 2>();
    sync4();  // stage c landed for every thread; every warp is past stage c - 1, whose buffer is refilled next
    if (c + kDownStages - 1 < n) load(c + kDownStages - 1);
    cp_async_commit();
    const uint32_t st = sb + (c % kDownStages) * C::kStage;
#pragma unroll
    for (int ks = 0; ks < 2; ++ks) {  // warp w: k-steps 2w and 2w + 1 of the stage's eight
      const int kk = (2 * warp + ks) * 16;
      uint32_t a[4];
      ldmatrix_x4(a, st + (lane & 15) * C::kXRow + (kk + (lane >> 4) * 8) * 2);
#pragma unroll
      for (int nt = 0; nt < R / 8; ++nt) {
        uint32_t b0, b1;
        ldmatrix_x2_trans(b0, b1, st + C::kXBytes + (kk + (lane & 15)) * C::kPRow + nt * 16);
        mma_16816<T>(acc[nt], a, b0, b1);
      }
    }
    if (c + 1 == vend) {
      flush(v);
      ++v;
      vend = (z * V + v + 1) * units / SV - u0;
    }
  }
  sync_all();
  for (int v = 0; v < V; ++v) {  // slice v's partial, in place of warp 0's: w0 + ((w1 + w2) + w3)
    float* rv = red + v * 4 * 16 * R;
    for (int i = tid; i < 16 * R; i += kCompute) rv[i] += rv[i + 16 * R] + rv[i + 32 * R] + rv[i + 48 * R];
  }
  cg::cluster_group cluster = cg::this_cluster();
  if (S > 1) cluster.sync();
  else sync_all();
  for (int i = z * 16 * R / S + tid; i < (z + 1) * 16 * R / S; i += kCompute) {
    float part[8];  // every slice's partial requested before any is added (one round trip to the peers)
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      if (q < SV) {
        const float* sl = red + (q % V) * 4 * 16 * R;
        part[q] = q / V == z ? sl[i] : cluster.map_shared_rank(sl, q / V)[i];
      }
    }
    float sum = 0.f;
#pragma unroll
    for (int q = 0; q < 8; ++q)
      if (q < SV) sum += part[q];  // in slice order, as the side path's CTAs add them
    const int m = m0 + i / R;
    if (m < M) lr[(int64_t)m * R + i % R] = Dt<T>::from_f(sum);
  }
  if (S > 1) cluster.sync();  // the peers have read this CTA's partials
#endif
}

// Beside the quantizer at many tokens (set_lowrank_down_beside; perf-notes v2.30): past L2, cuBLAS's down projection
// streamed all of x from DRAM a second time after the persistent quantizer (which holds every SM) had read it. Here
// a persistent kernel on the CTAs the quantizer leaves free takes items (a block of 64 token rows, one of Q K-ranges),
// block by block, each once the quantizer has read the block's rows (its per-block counter `ready`, a timing hint
// only: nothing here reads what the quantizer writes), so it reads x from L2 right behind the quantizer. An item
// streams its K-range in stages of 128 (x rows and proj_down rows by cp.async, three stages in flight); warp w takes
// the 16 rows w % 4 and k-steps 4 (w / 4) .. + 3 of each stage on mma.sync m16n8k16; the item's partial (warp pairs
// added) goes to `part` [Q][M][R] (fp32), and the block's last item to finish (counter `done`) adds the Q partials in
// K order, rounds and stores lr. The counters are the call's own (zeroed before both kernels). The quantizer never
// waits for this kernel, so neither can deadlock whichever runs first.
constexpr int kRowsBlock = 64;     // token rows per item
constexpr int kRowsThreads = 256;  // eight warps: four 16-row tiles x two halves of a stage's k-steps

template <int R>
struct RowsCfg {
  static constexpr int kXRow = kDownKC * 2 + 16;  // bytes per x row in shared memory (padded: ldmatrix conflict-free)
  static constexpr int kPRow = R * 2 + 16;
  static constexpr int kXBytes = kRowsBlock * kXRow;
  static constexpr int kStage = kXBytes + kDownKC * kPRow;
  static constexpr int kStages = 3;
  static constexpr int kSmem = kStages * kStage;
  static_assert(8 * 16 * R * 4 <= kSmem, "the warps' partials reuse the stages");
};

template <typename T, int R>
__global__ void __launch_bounds__(kRowsThreads) lowrank_down_rows_kernel(const T* __restrict__ x,
                                                                         const T* __restrict__ x2, int K1,
                                                                         const T* __restrict__ pd, T* __restrict__ lr,
                                                                         float* __restrict__ part, const int* ready,
                                                                         int* done, int M, int K, int Q) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using C = RowsCfg<R>;
  extern __shared__ __align__(128) uint8_t smem[];
  __shared__ int s_last;
  const uint32_t sb = smem_u32(smem);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int mt = warp & 3, kh = warp >> 2;
  const int units = K / kDownKC, items = (M + kRowsBlock - 1) / kRowsBlock * Q;
  pdl_wait();
  pdl_trigger();
  for (int it = blockIdx.x; it < items; it += gridDim.x) {
    const int b = it / Q, q = it % Q, m0 = b * kRowsBlock, rows = min(kRowsBlock, M - m0);
    const int u0 = q * units / Q, n = (q + 1) * units / Q - u0;
    if (tid == 0 && ready)  // the quantizer has read these rows: they are in L2
      while (*reinterpret_cast<const volatile int*>(ready + b) < rows) __nanosleep(200);
    __syncthreads();
    auto load = [&](int c) {  // stage c of the item (rows past M zero-filled); stages never straddle K1
      const uint32_t st = sb + (c % C::kStages) * C::kStage;
      const int k0 = (u0 + c) * kDownKC;
      const T* src = k0 < K1 ? x + k0 : x2 + (k0 - K1);
      const int64_t ld = k0 < K1 ? K1 : K - K1;
      for (int i = tid; i < kRowsBlock * (kDownKC / 8); i += kRowsThreads) {
        const int row = i / (kDownKC / 8), ch = i % (kDownKC / 8), m = m0 + row;
        cp_async16(st + row * C::kXRow + ch * 16, src + (int64_t)min(m, M - 1) * ld + ch * 8, m < M ? 16 : 0);
      }
      for (int i = tid; i < kDownKC * R / 8; i += kRowsThreads) {
        const int row = i / (R / 8), ch = i % (R / 8);
        cp_async16(st + C::kXBytes + row * C::kPRow + ch * 16, pd + (int64_t)(k0 + row) * R + ch * 8, 16);
      }
    };
    float acc[R / 8][4] = {};
#pragma unroll
    for (int c = 0; c < C::kStages - 1; ++c) {
      if (c < n) load(c);
      cp_async_commit();
    }
    for (int c = 0; c < n; ++c) {
      cp_async_wait<C::kStages - 2>();
      __syncthreads();  // stage c landed for every thread; every warp is past stage c - 1, refilled next
      if (c + C::kStages - 1 < n) load(c + C::kStages - 1);
      cp_async_commit();
      const uint32_t st = sb + (c % C::kStages) * C::kStage;
#pragma unroll
      for (int ks = 0; ks < 4; ++ks) {
        const int kk = (4 * kh + ks) * 16;
        uint32_t a[4];
        ldmatrix_x4(a, st + (mt * 16 + (lane & 15)) * C::kXRow + (kk + (lane >> 4) * 8) * 2);
#pragma unroll
        for (int nt = 0; nt < R / 8; ++nt) {
          uint32_t b0, b1;
          ldmatrix_x2_trans(b0, b1, st + C::kXBytes + (kk + (lane & 15)) * C::kPRow + nt * 16);
          mma_16816<T>(acc[nt], a, b0, b1);
        }
      }
    }
    cp_async_wait<0>();
    __syncthreads();  // every warp is past the last stage: the stages hold the warps' partials [warp][16][R] now
    float* red = reinterpret_cast<float*>(smem);
#pragma unroll
    for (int nt = 0; nt < R / 8; ++nt) {
      float* r0 = red + (warp * 16 + g) * R + nt * 8 + 2 * t;
      r0[0] = acc[nt][0], r0[1] = acc[nt][1], r0[8 * R] = acc[nt][2], r0[8 * R + 1] = acc[nt][3];
    }
    __syncthreads();
    float* dst = part + ((int64_t)q * M + m0) * R;  // the item's partial: the first half of its k-steps, then the second
    for (int i = tid; i < rows * R; i += kRowsThreads) {
      const int row = i / R, w = row >> 4, r = row & 15, col = i % R;
      dst[i] = red[(w * 16 + r) * R + col] + red[((w + 4) * 16 + r) * R + col];
    }
    __threadfence();
    __syncthreads();
    if (tid == 0) s_last = atomicAdd(done + b, 1) == Q - 1;
    __syncthreads();
    if (s_last) {  // every item of the block has stored its partial: their sum in K order
      __threadfence();
      for (int i = tid; i < rows * R; i += kRowsThreads) {
        float sum = 0.f;
        for (int qq = 0; qq < Q; ++qq) sum += __ldcg(part + ((int64_t)qq * M + m0) * R + i);
        lr[(int64_t)m0 * R + i] = Dt<T>::from_f(sum);
      }
    }
    __syncthreads();  // s_last and the partials' memory are reused by the next item
  }
#endif
}

constexpr int kDownDefaultTokens = 256;  // measured: cuBLAS is 0-4 % faster at 512 tokens on the H100 (perf-notes v2.28)
int g_down_max_tokens = kDownDefaultTokens;  // the kernel for M <= this (0: cuBLAS always)
int g_down_splits = 0;        // the cluster size along K: 0 the rule below, 1, 2, 4 or 8 forced (benchmarks)
bool g_down_deep = false;     // the deep instances (up to 8 stages in flight)
bool g_down_wide = false;     // set_lowrank_down_max_tokens called: every K and R 96 / 128 too
int g_lr_chain = -1;  // set_lr_chain: -1 where it pays (the binding's rule), 0 never, 1 wherever the shape allows
int g_chain_pipes = 2;  // set_lr_chain_pipes: the chained kernel's groups of four warps per CTA (g.59, perf-notes v2.40)
long long g_chain_pipes_launches = 0;  // (tests: which kernel ran)
constexpr int kChainMaxTokens = 256;

// The side path's cluster size: S = 1, 2, 4 or 8 CTAs per 16 rows along K, row blocks x S filling the SMs (or forced).
// Chain: the same S slices (so the same lr bits) on at most max_ctas CTAs (the SMs the GEMM after it leaves free): a
// cluster of P (a power of two dividing S, rows x P <= max_ctas), V = S / P slices each; launched programmatically after
// the quantizer (the attribute whatever set_pdl says, where the device has it).
template <typename T, int R, bool Deep, bool Chain = false, int Pipes = 1>
cudaError_t launch_down(const void* x, const void* pd, void* lr, int M, int K, int num_sms, int max_ctas,
                        cudaStream_t stream) {
  auto kern = lowrank_down_kernel<T, R, Deep, Chain, Pipes>;
  constexpr int kSlice = DownCfg<R, Deep>::kRed;  // a slice's four warp partials in shared memory (one in kSmem)
  constexpr int kRing = (Pipes - 1) * DownCfg<R, Deep>::kStages * DownCfg<R, Deep>::kStage;  // (g.59) more rings
  constexpr int kVmaxFit = (227 * 1024 - DownCfg<R, Deep>::kSmem - kRing) / kSlice + 1;
  constexpr int kVmax = kVmaxFit > 8 ? 8 : kVmaxFit;  // slices per CTA that fit (>= 1 for every instance)
  static_assert(kVmax >= 1, "no room for a slice's partials");
  constexpr int smem_max = DownCfg<R, Deep>::kSmem + kRing + (kVmax - 1) * kSlice;
  static std::once_flag set[64];
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  if (dev < 64) {
    std::call_once(set[dev], [&] { e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_max); });
    if (e != cudaSuccess) return e;
  }
  const int rows = (M + 15) / 16, units = K / kDownKC;
  int S = 1;
  while (S < 8 && rows * S * 2 <= num_sms && S * 2 <= units) S *= 2;
  if (g_down_splits) S = std::min(g_down_splits, units);
  int P = S, V = 1;
  if constexpr (Chain) {
    P = 1;
    while (S % (P * 2) == 0 && (rows * P * 2 <= max_ctas || S / P > kVmax)) P *= 2;
    V = S / P;
    if constexpr (!Deep && Pipes == 1 && R <= 64) {  // (g.59) two groups of warps, V / 2 slices each
      if (g_chain_pipes == 2 && V % 2 == 0) {
        ++g_chain_pipes_launches;
        return launch_down<T, R, Deep, Chain, 2>(x, pd, lr, M, K, num_sms, max_ctas, stream);
      }
    }
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(P, rows, 1);
  cfg.blockDim = dim3(Chain ? Pipes * kDownThreads + 32 : kDownThreads);
  cfg.dynamicSmemBytes = DownCfg<R, Deep>::kSmem + kRing + (V - 1) * kSlice;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = P;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  // Chain: programmatic whatever set_pdl says. Else (set_pdl) under a CUDA graph its edge from x's producer may become
  // programmatic; eagerly the side stream's event keeps it a full dependency
  cfg.numAttrs = pdl_launch_attr(attr, P > 1 ? 1 : 0, Chain);
  return cudaLaunchKernelEx(&cfg, kern, static_cast<const T*>(x), static_cast<const T*>(pd), static_cast<T*>(lr), M, K,
                            V);
}

template <typename T, bool Deep, bool Chain = false>
cudaError_t launch_down_r(const void* x, const void* pd, void* lr, int M, int K, int R, int num_sms, int max_ctas,
                          cudaStream_t stream) {
  switch (R) {
    case 16: return launch_down<T, 16, Deep, Chain>(x, pd, lr, M, K, num_sms, max_ctas, stream);
    case 32: return launch_down<T, 32, Deep, Chain>(x, pd, lr, M, K, num_sms, max_ctas, stream);
    case 48: return launch_down<T, 48, Deep, Chain>(x, pd, lr, M, K, num_sms, max_ctas, stream);
    case 64: return launch_down<T, 64, Deep, Chain>(x, pd, lr, M, K, num_sms, max_ctas, stream);
    case 96: return launch_down<T, 96, Deep, Chain>(x, pd, lr, M, K, num_sms, max_ctas, stream);  // q / k / v sharing one call
    case 128: return launch_down<T, 128, Deep, Chain>(x, pd, lr, M, K, num_sms, max_ctas, stream);
    default: return cudaErrorInvalidValue;
  }
}

template <typename T>
cudaError_t launch_down_typed(const void* x, const void* pd, void* lr, int M, int K, int R, int num_sms,
                              cudaStream_t stream) {
  return g_down_deep ? launch_down_r<T, true>(x, pd, lr, M, K, R, num_sms, 0, stream)
                     : launch_down_r<T, false>(x, pd, lr, M, K, R, num_sms, 0, stream);
}

// Items per 64-row block: K-ranges of about 12 stages (1536 of K), so a block's items finish soon after the quantizer
// has read it and the last block's add little after the quantizer's end.
int rows_items(int K) { return std::max(1, K / kDownKC / 12); }

template <typename T, int R>
cudaError_t launch_rows(const void* x, const void* x2, int K1, const void* pd, void* lr, float* part, const int* ready,
                        int* done, int M, int K, int ctas, cudaStream_t stream) {
  auto kern = lowrank_down_rows_kernel<T, R>;
  static std::once_flag set[64];
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  if (dev >= 64) return cudaErrorInvalidDevice;
  std::call_once(set[dev], [&] {
    e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, RowsCfg<R>::kSmem);
  });
  if (e != cudaSuccess) return e;
  const int Q = rows_items(K), items = (M + kRowsBlock - 1) / kRowsBlock * Q;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(std::max(1, std::min(ctas, items)));
  cfg.blockDim = dim3(kRowsThreads);
  cfg.dynamicSmemBytes = RowsCfg<R>::kSmem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  cfg.attrs = attr;
  cfg.numAttrs = pdl_launch_attr(attr, 0, false);
  return cudaLaunchKernelEx(&cfg, kern, static_cast<const T*>(x), static_cast<const T*>(x2), K1,
                            static_cast<const T*>(pd), static_cast<T*>(lr), part, ready, done, M, K, Q);
}

template <typename T>
cudaError_t launch_rows_r(const void* x, const void* x2, int K1, const void* pd, void* lr, float* part,
                          const int* ready, int* done, int M, int K, int R, int ctas, cudaStream_t stream) {
  switch (R) {
    case 16: return launch_rows<T, 16>(x, x2, K1, pd, lr, part, ready, done, M, K, ctas, stream);
    case 32: return launch_rows<T, 32>(x, x2, K1, pd, lr, part, ready, done, M, K, ctas, stream);
    case 48: return launch_rows<T, 48>(x, x2, K1, pd, lr, part, ready, done, M, K, ctas, stream);
    case 64: return launch_rows<T, 64>(x, x2, K1, pd, lr, part, ready, done, M, K, ctas, stream);
    default: return cudaErrorInvalidValue;
  }
}

int g_down_beside = 0;  // set_lowrank_down_beside: -1 the rule, 0 never (cuBLAS on the side stream), 1 wherever it fits
float g_beside_share = 0.2f;  // the quantizer's CTAs left to the down projection beside it
int g_beside_ctas = 0;         // > 0: the down projection's CTAs forced
std::atomic<long long> g_beside_launches{0};  // (tests: which path ran)

}  // namespace

bool lowrank_down_chain_takes(int M, int K, int R) {
#ifdef SVDQ_BUILT_SM90A
  return g_lr_chain != 0 && M > 0 && M <= kChainMaxTokens && K % kDownKC == 0 &&
         (R == 16 || R == 32 || R == 48 || R == 64 || R == 96 || R == 128);
#else
  (void)M, (void)K, (void)R;
  return false;
#endif
}
void set_lr_chain(int mode) { g_lr_chain = mode < 0 ? -1 : mode > 0 ? 1 : 0; }
int lr_chain() { return g_lr_chain; }
void set_lr_chain_pipes(int pipes) { g_chain_pipes = pipes == 2 ? 2 : 1; }
int lr_chain_pipes() { return g_chain_pipes; }
long long lr_chain_pipes_launches() { return g_chain_pipes_launches; }
cudaError_t launch_lowrank_down_chain(DType dtype, const void* x, const void* pd, void* lr, int M, int K, int R,
                                      int num_sms, int max_ctas, cudaStream_t stream) {
  if (!lowrank_down_chain_takes(M, K, R) || max_ctas < 1) return cudaErrorInvalidValue;
  if (g_down_deep)
    return dtype == DType::kBF16
               ? launch_down_r<__nv_bfloat16, true, true>(x, pd, lr, M, K, R, num_sms, max_ctas, stream)
               : launch_down_r<__half, true, true>(x, pd, lr, M, K, R, num_sms, max_ctas, stream);
  return dtype == DType::kBF16
             ? launch_down_r<__nv_bfloat16, false, true>(x, pd, lr, M, K, R, num_sms, max_ctas, stream)
             : launch_down_r<__half, false, true>(x, pd, lr, M, K, R, num_sms, max_ctas, stream);
}

bool lowrank_down_takes(int M, int K, int R) {
#ifdef SVDQ_BUILT_SM90A
  // by default where measured faster than cuBLAS (H200, perf-notes v2.23: the chain at M = 256 0.95x at K = 3072,
  // 1.06x at K >= 12288; H100, v2.28: 1.00-1.04x slower at M = 512): M <= 256, K <= 4096, R <= 64
  const bool r_ok = R == 16 || R == 32 || R == 48 || R == 64 || (g_down_wide && (R == 96 || R == 128));
  return M > 0 && M <= g_down_max_tokens && K % kDownKC == 0 && (g_down_wide || K <= 4096) && r_ok;
#else
  (void)M, (void)K, (void)R;
  return false;
#endif
}
void set_lowrank_down_max_tokens(int m, bool wide) {
  g_down_max_tokens = m < 0 ? kDownDefaultTokens : m;
  g_down_wide = wide;
}
int lowrank_down_max_tokens() { return g_down_max_tokens; }
void set_lowrank_down_deep(bool on) { g_down_deep = on; }
void set_lowrank_down_splits(int s) { g_down_splits = s == 1 || s == 2 || s == 4 || s == 8 ? s : 0; }
int lowrank_down_splits() { return g_down_splits; }
bool lowrank_down_deep() { return g_down_deep; }

cudaError_t launch_lowrank_down(DType dtype, const void* x, const void* pd, void* lr, int M, int K, int R, int num_sms,
                                cudaStream_t stream) {
  if (!lowrank_down_takes(M, K, R)) return cudaErrorInvalidValue;
  return dtype == DType::kBF16 ? launch_down_typed<__nv_bfloat16>(x, pd, lr, M, K, R, num_sms, stream)
                               : launch_down_typed<__half>(x, pd, lr, M, K, R, num_sms, stream);
}


bool lowrank_down_beside_takes(int M, int K, int K1, int R, int64_t x_bytes, int64_t l2_bytes) {
#ifdef SVDQ_BUILT_SM90A
  if (g_down_beside == 0 || M <= 0 || K % kDownKC || K1 % kDownKC) return false;
  if (!(R == 16 || R == 32 || R == 48 || R == 64)) return false;
  // the rule: past L2 (where cuBLAS's down projection reads x from DRAM again) and where the quantizer is persistent
  return g_down_beside == 1 || (K >= 8192 && x_bytes > l2_bytes);
#else
  (void)M, (void)K, (void)K1, (void)R, (void)x_bytes, (void)l2_bytes;
  return false;
#endif
}
void set_lowrank_down_beside(int mode, double share, int ctas) {
  g_down_beside = mode < 0 ? -1 : mode > 0 ? 1 : 0;
  if (share >= 0.0) g_beside_share = (float)std::min(std::max(share, 0.0), 0.9);
  g_beside_ctas = std::max(ctas, 0);
}
int lowrank_down_beside() { return g_down_beside; }
float lowrank_down_beside_share() { return g_beside_share; }
int lowrank_down_beside_ctas(int num_sms) {
  return g_beside_ctas > 0 ? g_beside_ctas : std::max(8, (int)(g_beside_share * 2 * num_sms + 0.5f));
}
int lowrank_down_beside_items(int K) { return rows_items(K); }
long long lowrank_down_beside_launches() { return g_beside_launches; }
int lowrank_down_beside_blocks(int M) { return (M + kRowsBlock - 1) / kRowsBlock; }
cudaError_t launch_lowrank_down_beside(DType dtype, const void* x, const void* x2, int K1, const void* pd, void* lr,
                                       float* part, int* counters, int M, int K, int R, int ctas,
                                       cudaStream_t stream) {
  const int* ready = counters;
  int* done = counters + lowrank_down_beside_blocks(M);
  ++g_beside_launches;
  return dtype == DType::kBF16
             ? launch_rows_r<__nv_bfloat16>(x, x2, K1, pd, lr, part, ready, done, M, K, R, ctas, stream)
             : launch_rows_r<__half>(x, x2, K1, pd, lr, part, ready, done, M, K, R, ctas, stream);
}

}  // namespace svdq

// The int4_2l GEMM (w4a4_gemm_2l_sm90.cu's numerics, the same bits) with its two consumer warpgroups in ping-pong:
// each computes whole 128-row x 128-token tiles alone, the CTA's tiles alternating between them, so one warpgroup's
// epilogue (scales, low-rank branch, bias, output) runs under the other's main loop and the tensor cores do not wait
// for it. Opt-in (set_gemm_2l_rf_pingpong; perf-notes v2.31): measured 1.26-1.41x slower than the default on the H100
// (v2.32), since one warpgroup alone drives the tensor cores at only ~50 % of their rate.
//
// Persistent, one CTA per SM: a producer warpgroup's thread loads every stage of the CTA's tiles t = blockIdx.x,
// + gridDim.x, ... in order by TMA (activations 128 x 128 bytes, the weights' packed fragment-order tile 128 x 64
// bytes, their group scales) into a ring of kStages; the CTA's k-th tile belongs to consumer warpgroup k % 2, whose
// four warps release each of its stages (an empty mbarrier of count 4). A consumer takes its tile's stages as the
// two-warpgroup kernel's pipelined loop does (set_gemm_2l_rf_pipelined): its rows' fragment-order words widened into
// wgmma registers one k-step ahead, each k-step's two wgmmas (rows 0-63 and 64-127 against the same activations) one
// commit group, three groups in flight. The other warpgroup's tile follows in the ring, so while one warpgroup is in
// its epilogue the other's stages are already loaded and its wgmmas run alone (a hand-off mbarrier keeps the main
// loops in the ring's order: see below). Each warpgroup has its own low-rank
// tile and token scales (cp.async, an mbarrier per warpgroup, the next own tile's requested once its low-rank step is
// done) and its own output staging (TMA stores left in flight under its next tile).
//
// Epilogue per 64-row half, as the two-warpgroup kernel's: (float(acc) * wchannel) * xscale, the low-rank branch by
// wgmma into the same registers, bias, optional GELU, bf16 / fp16, stmatrix into the staging, one TMA store. So the
// output is bit for bit the two-warpgroup kernel's at 128-token tiles (tests/gpu/test_rf_pingpong.py).
// Branch ranks 16 / 32 (the 32-wide low-rank tile), group 64, unsplit; not after the chained down projection.
#include <cuda.h>
#include <cudaTypedefs.h>

#include <type_traits>

#include "common.cuh"
#include "launch.h"
#include "pdl.cuh"
#include "rf_loop.cuh"
#include "tma_sm90.cuh"
#include "wgmma_s8.cuh"
#include "widen_2l.cuh"

namespace svdq {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SVDQ_PP_BODY 1
#else
#define SVDQ_PP_BODY 0
#endif

namespace {

struct PingPong {
  static constexpr int kBT = 128;                 // tokens per tile (the wgmma N)
  static constexpr int kRows = 128;               // weight rows per tile
  static constexpr int kBK = 128;                 // K per stage
  static constexpr int kG = 64;                   // group size
  static constexpr int kActBytes = kBT * kBK;     // 16 KB
  static constexpr int kWBytes = kRows * kBK / 2;  // 8 KB
  static constexpr int kScBytes = (kBK / kG) * kRows;
  static constexpr int kStageBytes = (kActBytes + kWBytes + kScBytes + 1023) / 1024 * 1024;
  static constexpr int kOutBytes = 4 * kBT * 128;  // two warpgroups x two 64-row halves, [token][64] x 2 bytes
  static constexpr int kLrRow = 64;               // the low-rank tile's rows: rank 32 x 2 bytes, 64-byte swizzle
  static constexpr int kXsOff = kBT * kLrRow;     // then the tile's token scales
  static constexpr int kLrBytes = (kXsOff + kBT * 4 + 1023) / 1024 * 1024;  // per warpgroup
  static constexpr int kFixed = 1024 + kOutBytes + 2 * kLrBytes + 256;      // alignment, staging, low-rank, barriers
  static constexpr int kStages = (227 * 1024 - kFixed) / kStageBytes;
  static constexpr int kSmem = kFixed + kStages * kStageBytes;
  static constexpr int kThreads = 384;  // two consumer warpgroups, then the producer's
};
static_assert(PingPong::kStages >= 3, "ping-pong GEMM: too few stages");

template <typename T>
__global__ void __launch_bounds__(PingPong::kThreads, 1)
    w4a4_gemm_2l_pingpong_kernel(const __grid_constant__ CUtensorMap tm_x, const __grid_constant__ CUtensorMap tm_w,
                                 const __grid_constant__ CUtensorMap tm_s, const __grid_constant__ CUtensorMap tm_y,
                                 const float* __restrict__ xscale, const float* __restrict__ wchannel,
                                 const T* __restrict__ lr, const T* __restrict__ proj_up, const T* __restrict__ bias,
                                 int M, int N, int K, int R, int act, int64_t ldlr, long long* __restrict__ life) {
#if SVDQ_PP_BODY
  using C = PingPong;
  constexpr int BT = C::kBT, NS = C::kStages, G = C::kG;
  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
  const uint32_t sbase = smem_u32(smem);
  const uint32_t out_region = sbase + NS * C::kStageBytes;
  const uint32_t lr_base = out_region + C::kOutBytes;
  const uint32_t bars = lr_base + 2 * C::kLrBytes;  // full [NS], empty [NS], low-rank tile landed [2], hand-off
  const uint32_t empty_bars = bars + 8 * NS, lr_full = empty_bars + 8 * NS, handoff = lr_full + 16;

  const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, t = lane & 3;
  const int KT = K / C::kBK, row_tiles = N / C::kRows, num_tiles = row_tiles * ((M + BT - 1) / BT);
  if (tid == 0) {
    for (int s = 0; s < NS; ++s) mbar_init(bars + 8 * s, 1), mbar_init(empty_bars + 8 * s, 4);
    mbar_init(lr_full, 128), mbar_init(lr_full + 8, 128), mbar_init(handoff, 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  pdl_wait();     // (set_pdl) xq, xscale and lr come from the kernels before this one, which may still use y's memory
  pdl_trigger();  // the kernel after this one may be scheduled as SMs free up

  if (wg == 2) {  // the producer: every stage of the CTA's tiles, in order, once its buffer is released
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
    if (tid == 256) {
      constexpr uint32_t kTx = C::kActBytes + C::kWBytes + (C::kBK / G) * C::kRows;
      int i = 0;
      for (int tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
        const int m0 = (tile / row_tiles) * BT, n0 = (tile % row_tiles) * C::kRows;
        for (int kt = 0; kt < KT; ++kt, ++i) {
          const int buf = i % NS;
          if (i >= NS) mbar_wait(empty_bars + 8 * buf, (i / NS - 1) & 1);
          const uint32_t stage = sbase + buf * C::kStageBytes, bar = bars + 8 * buf;
          mbar_expect_tx(bar, kTx);
          tma_load_2d(stage, &tm_x, kt * C::kBK, m0, bar);
          tma_load_2d(stage + C::kActBytes, &tm_w, kt * (C::kBK / 2), n0, bar);
          tma_load_2d(stage + C::kActBytes + C::kWBytes, &tm_s, n0, kt * (C::kBK / G), bar);
        }
      }
    }
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");

  // this warpgroup's low-rank tile and token scales, its mbarrier, its output staging (two 64-row halves)
  const uint32_t lr_s = lr_base + wg * C::kLrBytes, my_lr_full = lr_full + 8 * wg;
  const int wtid = tid & 127;
  auto load_lr = [&](int m0) {  // rows past M zero-filled; one arrival per thread when its copies land
    const int chunks = R / 8;
    for (int i = wtid; i < BT * chunks; i += 128) {
      const int row = i / chunks, c = i % chunks, m = m0 + row;
      cp_async16(lr_s + row * C::kLrRow + ((c ^ ((row >> 1) & 3)) << 4), lr + (int64_t)min(m, M - 1) * ldlr + c * 8,
                 m < M ? 16 : 0);
    }
    for (int i = wtid; i < BT; i += 128) cp_async4(lr_s + C::kXsOff + 4 * i, xscale + min(m0 + i, M - 1), m0 + i < M ? 4 : 0);
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(my_lr_full) : "memory");
  };
  const int r0 = warp * 16 + g;  // this thread's rows: r0, r0 + 8 (half 0), 64 + r0, 72 + r0 (half 1)
  // life (benchmarks/gemm_2l_tile_life.py --pingpong; the same bits): each warpgroup's first thread in the first 4 CTAs
  // stamps clock64 at its first 8 tiles' steps into life[((CTA * 2 + warpgroup) * 8 + tile) * 8 + step]: 0 tile start,
  // 1 first stage landed, 2 main loop done, 3 low-rank tile landed, 4 half 0's scales and branch, 5 half 1's, 6 stored
  auto stamp = [&](int n, int step) {
    if (life && (int)blockIdx.x < 4 && wtid == 0 && n < 8) life[(((int)blockIdx.x * 2 + wg) * 8 + n) * 8 + step] = clock64();
  };
  int lr_phase = 0;
  const int first = blockIdx.x + wg * gridDim.x;
  if (first < num_tiles) load_lr((first / row_tiles) * BT);

  for (int k = wg;; k += 2) {  // the CTA's k-th tile
    const int tile = blockIdx.x + k * gridDim.x;
    if (tile >= num_tiles) break;
    const int m0 = (tile / row_tiles) * BT, n0 = (tile % row_tiles) * C::kRows;
    const int base = k * KT;  // the tile's first stage in the ring's count
    stamp(k >> 1, 0);

    int acc0[BT / 2], acc1[BT / 2];
#pragma unroll
    for (int e = 0; e < BT / 2; ++e) acc0[e] = 0, acc1[e] = 0;
    uint32_t nw0[2][4], ns0[2][128 / G], nw1[2][4], ns1[2][128 / G], fa0[4][4], fa1[4][4];
    auto fetch = [&](int i) {
      const int buf = i % NS;
      mbar_wait(bars + 8 * buf, (i / NS) & 1);
      const uint8_t* wt = smem + buf * C::kStageBytes + C::kActBytes;
      frag_load<G, C::kRows>(wt, wt + C::kWBytes, r0, t, nw0, ns0);
      frag_load<G, C::kRows>(wt, wt + C::kWBytes, 64 + r0, t, nw1, ns1);
    };
    auto widen_step = [&](int j) {
      frag_widen_step<G>(nw0, ns0, j, fa0[j]);
      frag_widen_step<G>(nw1, ns1, j, fa1[j]);
    };
    // each k-step's two wgmmas (rows 0-63 and 64-127 against the same activations) one commit group (rf_loop.cuh)
    auto issue = [&](int i, int j) {
      const uint64_t db = desc_k128(sbase + (i % NS) * C::kStageBytes) + 2 * j;
      wgmma_fence();
      wgmma_s8_rs<BT>(acc0, fa0[j], db);
      wgmma_s8_rs<BT>(acc1, fa1[j], db);
      wgmma_commit();
    };
    auto release = [&](int i) {
      if (lane == 0) mbar_arrive(empty_bars + 8 * (i % NS));
    };
    // A full barrier's parity names its current phase or the one before, so a warpgroup must not wait on a stage while
    // an earlier phase of that buffer is pending: the CTA's tile k's first stage is waited on only once tile k - 1's
    // last one has landed (the hand-off barrier's phase k - 1, completed by the other warpgroup's last fetch).
    if (k > 0) mbar_wait(handoff, (k - 1) & 1);
    auto fetch_first_stamped = [&](int i) {
      fetch(i);
      if (i == base) stamp(k >> 1, 1);
      if (i == base + KT - 1 && wtid == 0) mbar_arrive(handoff);
    };
    rf_pipelined_loop<2>(base, KT, fetch_first_stamped, widen_step, issue, release);  // (release as before v2.35)
    stamp(k >> 1, 2);

    // the epilogue, per 64-row half: scales, low-rank branch, bias (+ GELU), staging, TMA store
    mbar_wait(my_lr_full, lr_phase & 1);
    ++lr_phase;
    fence_proxy_async_smem();  // the copies (generic proxy) seen by the low-rank wgmmas (async proxy)
    stamp(k >> 1, 3);
    auto scale_and_branch = [&](int (&acc)[BT / 2], int h) {
      const int rowA = n0 + h * 64 + r0, rowB = rowA + 8;
      const float wchA = ldg_nc_f32(wchannel + rowA), wchB = ldg_nc_f32(wchannel + rowB);
#pragma unroll
      for (int j = 0; j < BT / 8; ++j) {
        float x0, x1;  // tokens j*8 + 2t, + 1
        asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];\n" : "=f"(x0), "=f"(x1) : "r"(lr_s + C::kXsOff + (j * 8 + 2 * t) * 4));
        acc[4 * j + 0] = __float_as_int((__int2float_rn(acc[4 * j + 0]) * wchA) * x0);
        acc[4 * j + 1] = __float_as_int((__int2float_rn(acc[4 * j + 1]) * wchA) * x1);
        acc[4 * j + 2] = __float_as_int((__int2float_rn(acc[4 * j + 2]) * wchB) * x0);
        acc[4 * j + 3] = __float_as_int((__int2float_rn(acc[4 * j + 3]) * wchB) * x1);
      }
      if (R >= 16) {
        uint32_t up[4][4] = {};
#pragma unroll
        for (int ks = 0; ks < 2; ++ks) {
          if (ks * 16 >= R) break;
          const T* puA = proj_up + (int64_t)rowA * R + ks * 16 + 2 * t;
          const T* puB = proj_up + (int64_t)rowB * R + ks * 16 + 2 * t;
          up[ks][0] = ldg_nc_u32(puA), up[ks][1] = ldg_nc_u32(puB), up[ks][2] = ldg_nc_u32(puA + 8);
          up[ks][3] = ldg_nc_u32(puB + 8);
        }
        lowrank_wgmma<T, BT>(acc, up, desc_k64(lr_s), R / 16);
      }
    };
    scale_and_branch(acc0, 0);
    stamp(k >> 1, 4);
    scale_and_branch(acc1, 1);
    stamp(k >> 1, 5);
    if (wtid == 0) tma_store_wait_read();  // this warpgroup's previous stores have read the staging
    asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");  // ... and all its threads have read lr_s
    const int next_tile = tile + 2 * gridDim.x;  // this warpgroup's next: its low-rank tile may come now
    if (next_tile < num_tiles) load_lr((next_tile / row_tiles) * BT);
    auto stage_half = [&](const int (&acc)[BT / 2], int h) {
      const int rowA = n0 + h * 64 + r0;
      const float bA = bias ? Dt<T>::bits_to_f(ldg_nc_u16(bias + rowA)) : 0.f;
      const float bB = bias ? Dt<T>::bits_to_f(ldg_nc_u16(bias + rowA + 8)) : 0.f;
      stage_output<T, BT>(acc, out_region + (2 * wg + h) * BT * 128, warp, lane, bA, bB, act);
    };
    stage_half(acc0, 0);
    stage_half(acc1, 1);
    fence_proxy_async_smem();
    asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");  // the warpgroup's output tile is in shared memory
    if (wtid == 0) {
      tma_store_2d_async(&tm_y, out_region + (2 * wg) * BT * 128, n0 * 2, m0);
      tma_store_2d_async(&tm_y, out_region + (2 * wg + 1) * BT * 128, (n0 + 64) * 2, m0);
    }
    stamp(k >> 1, 6);
  }
  if (wtid == 0) tma_store_wait_read();  // the last stores have read the staging: the CTA may exit
#endif
}

}  // namespace

int g_pingpong = 0;  // 0 off, 1 every GEMM it takes, 2 those with a tile for each warpgroup of every CTA
long long g_pingpong_launches = 0;  // (tests: which kernel ran)

void set_gemm_2l_rf_pingpong(int mode) { g_pingpong = mode == 1 || mode == 2 ? mode : 0; }
int gemm_2l_rf_pingpong() { return g_pingpong; }
long long gemm_2l_rf_pingpong_launches() { return g_pingpong_launches; }

bool gemm_2l_pingpong_takes(const W4A4Gemm2lArgs& a, int num_sms) {
  if (!(a.frag && a.group_size == 64 && a.N % PingPong::kRows == 0 && a.K % PingPong::kBK == 0 &&
        (a.R == 0 || a.R == 16 || a.R == 32) && !a.lr_late && a.M > 0))
    return false;
  const long tiles = (long)(a.N / PingPong::kRows) * ((a.M + PingPong::kBT - 1) / PingPong::kBT);
  return g_pingpong == 1 || (g_pingpong == 2 && tiles >= 2L * num_sms);
}

namespace {
template <typename T>
cudaError_t launch_pingpong(const W4A4Gemm2lArgs& a, cudaStream_t stream, int num_sms, long long* life) {
  using C = PingPong;
  auto kern = w4a4_gemm_2l_pingpong_kernel<T>;
  CUtensorMap tm_x, tm_w, tm_s, tm_y;
  const int64_t ldy = a.ldy ? a.ldy : a.N;
  if (!make_map(&tm_y, a.y, a.M, (uint64_t)a.N * 2, C::kBT, 128, CU_TENSOR_MAP_SWIZZLE_128B, (uint64_t)ldy * 2) ||
      !make_map(&tm_x, a.xq, a.M, a.K, C::kBT, C::kBK, CU_TENSOR_MAP_SWIZZLE_128B) ||
      !make_map(&tm_w, a.qweight, a.N, a.K / 2, C::kRows, C::kBK / 2, CU_TENSOR_MAP_SWIZZLE_64B) ||
      !make_map(&tm_s, a.wscales, a.K / C::kG, a.N, C::kBK / C::kG, C::kRows, CU_TENSOR_MAP_SWIZZLE_NONE))
    return cudaErrorInvalidValue;
  static bool smem_set[64] = {};  // the attribute is per device: set once on each
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  if (dev >= 64 || !smem_set[dev]) {
    e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmem);
    if (e != cudaSuccess) return e;
    if (dev < 64) smem_set[dev] = true;
  }
  const long tiles = (long)(a.N / C::kRows) * ((a.M + C::kBT - 1) / C::kBT);
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3((unsigned)std::min<long>(tiles, num_sms > 0 ? num_sms : tiles));
  cfg.blockDim = dim3(C::kThreads);
  cfg.dynamicSmemBytes = C::kSmem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  cfg.attrs = attr;
  cfg.numAttrs = pdl_launch_attr(attr, 0);
  return cudaLaunchKernelEx(&cfg, kern, tm_x, tm_w, tm_s, tm_y, a.xscale, a.wchannel, static_cast<const T*>(a.lr),
                            static_cast<const T*>(a.proj_up), static_cast<const T*>(a.bias), a.M, a.N, a.K, a.R, a.act,
                            a.ldlr ? a.ldlr : (int64_t)a.R, life);
}
}  // namespace

cudaError_t launch_w4a4_gemm_2l_pingpong(const W4A4Gemm2lArgs& a, cudaStream_t stream, int num_sms, long long* life) {
  ++g_pingpong_launches;
  return a.dtype == DType::kBF16 ? launch_pingpong<__nv_bfloat16>(a, stream, num_sms, life)
                                 : launch_pingpong<__half>(a, stream, num_sms, life);
}

}  // namespace svdq

// W4A4 GEMM for the two-level INT4 format (int4_2l) on Hopper: int8 wgmma, exact int32 over all of K.
//
//   y[m, n] = (float(sum_k xq[m, k] * wq[n, k] * s_int[n, k / G]) * wchannel[n]) * xscale[m]
//             + lr[m, :] . proj_up[n, :] + bias[n]
//
// xq already holds q * s_int of the activations (int8 in [-128, 112]); the weights stay packed INT4 in
// memory and are widened to int8 (q * s_int) in registers, where they are the wgmma A operand. So the
// main loop has no floating-point promotion at all: the per-group scales are integers folded into the
// operands and the int32 accumulator is exact (|sum| < 2^31 for K <= 65536).
//
// CTA tile: 128 weight rows (two warpgroups of 64) x BT tokens (the wgmma N: 64, 128, 224 or 256), K in
// stages of 128. Per stage, one thread's TMA copies (completing on the stage's mbarrier) bring the
// activation tile (BT x 128 bytes, 128-byte swizzle: the wgmma B operand), the packed weight tile (128
// rows x 64 bytes, 64-byte swizzle) and the stage's integer group scales into shared memory. Each
// warpgroup widens its 64 weight rows to int8 q * s_int (unsigned nibble x s_int with one IMUL per four
// bytes, then a per-byte subtraction of 8 s_int) into its own A tile (double-buffered, 128-byte
// swizzle) while the previous stage's wgmmas run, then issues four wgmmas from shared memory.
// Small M (too few tiles to fill the SMs; gemm_2l_plan decides): split-K over a thread-block cluster of
// S CTAs along z. Each CTA sums its K range; the int32 partials meet in distributed shared memory, where
// CTA z adds the others' share of token columns z BT / S .. (z + 1) BT / S and runs the epilogue for
// those only. The sums are exact integers, so the output is bit-identical to the unsplit kernel's, with
// no workspace and no atomics.
// int8-stored weights (W8, an opt-in layout: q * s_int widened once at load): the weight tile is TMA-loaded
// straight into the stage as the wgmma A operand, no widening. Its producer-warpgroup loop (WS) hands the
// loads to a third warpgroup that refills a stage once all eight consumer warps have released it (full and
// empty mbarrier per stage), so the consumers never meet at a CTA barrier inside the loop.
// Persistent (PS: that loop, for int8 weights and for packed ones, whose consumers widen each stage into
// their A tiles; set_gemm_2l_persistent, by default where it pays: see g_persistent; unsplit plans): one CTA per SM walks the
// tiles t = blockIdx.x, + gridDim.x, ...; the producer's stage count runs on across tiles, so it loads the
// next tile's stages while the consumers run this tile's epilogue. The epilogue's operands (low-rank tile
// and token scales by cp.async into memory of their own, channel scales, bias and proj_up into registers)
// are requested at the tile's start, and the output goes to a staging tile and out by TMA stores left in
// flight under the next tile's stages, so the tensor cores wait only for the epilogue's arithmetic.
// Fragment order (FO: the packed weights' bytes regrouped per row and stage, svdquant_hf/ops/layout_2l.py): the
// persistent kernel widens them straight into registers as the wgmma A operand (RF: no A tiles, the two consumer
// warpgroups taking turns, the next stage's bytes loaded under the current stage's wgmmas; or three on 192-row
// tiles, CW = 3, where rf_cost says they fill the SMs better); the other kernels widen from that order into their
// A tiles.
// Epilogue: int32 -> fp32, the two scales, the low-rank branch as mma.sync bf16/fp16 on the same
// registers (lr from shared memory by ldmatrix), bias, and stores transposed by movmatrix (the
// accumulator is [weight row, token]); optionally (set_gemm_2l_tma_store) the tile goes to shared memory
// and out by one TMA store per warpgroup instead of 4-byte stores that fill half of each 32-byte sector.
// What was tried and measured (docs/perf-notes.md): cp.async instead of TMA needs a proxy fence that
// compiles to MEMBAR.ALL.CTA and waits for the loads in flight (556-688 TOP/s on H100); A in registers
// widened under the same warpgroup's wgmmas makes ptxas serialize them; a warp-specialised variant (one
// producer warpgroup widening for two consumer warpgroups) was slower (487-582 TOP/s): the widening is the
// critical path and needs all eight warps; A as register fragments with the two warpgroups in ping-pong
// (v2.8) was 11-18 % slower on H200 (a stage is widen -> wgmmas -> wait with nothing to overlap the
// widening), and CTA pairs sharing the activation tile by TMA multicast (v2.9) 1.3x slower (the data
// waits grew fourfold); both are in the history at commit 2baa9f2.
#include <cooperative_groups.h>
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

// The kernel body exists only in the sm_90a device pass; other architectures get an empty kernel (the
// Python dispatcher never launches it there: see gemm_2l_built()).
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SVDQ_SM90A_BODY 1
#else
#define SVDQ_SM90A_BODY 0
#endif

namespace {

constexpr int kBK = 128;     // K (bytes of activations) per stage
constexpr int kRows = 128;   // weight rows per CTA
constexpr int kSmemLimit = 227 * 1024;

// W8: the weights are stored widened (int8 q * s_int, [N, K]) and loaded by TMA straight into the stage as
// the wgmma A tiles: no group scales, no widening, no separate A tiles. WS: a third warpgroup issues the
// loads on per-stage full/empty mbarriers, so the consumers never meet at a CTA barrier in the loop; it gives
// its registers to them (setmaxnreg 40 / 232: 9 warps alone would cap everyone at 168). PS (with WS):
// persistent, the output staged for TMA stores left in flight, the low-rank tile in memory of its own.
// CW: consumer warpgroups, 64 weight rows each (3 and 1 only for the register-fragment loop: 192- and 64-row tiles;
// one, g.56, for a few hundred tokens: the fewest weights widened per stage for a tile's tokens). LR: the
// persistent kernels' low-rank tile width (0: 64 for int8 weights, 32 for packed ones; 64: the register-fragment
// loop for branches of rank 33-64, i.e. with a LoRA). OP: (PS) the output staged in OP token pieces through 1 / OP of
// the memory, which leaves room for more stages (perf-notes v2.35's g.50: halves, v2.36's g.51 / g.52).
template <int BT, bool W8 = false, bool WS = false, bool PS = false, bool FO = false, int CW = 2, int LR = 0,
          int OP = 1>
struct Tile2l {
  static constexpr int kTileRows = 64 * CW;   // weight rows per CTA tile
  static constexpr int kConsumers = 128 * CW;  // consumer threads
  static constexpr int kActBytes = BT * kBK;
  static constexpr int kWBytes = W8 ? kTileRows * kBK : kTileRows * kBK / 2;
  static constexpr int kScBytes = W8 ? 0 : 4 * kTileRows;  // up to kBK / 32 groups per stage
  static constexpr int kStageBytes = ((kActBytes + kWBytes + kScBytes + 1023) / 1024) * 1024;
  static constexpr int kABytes = W8 || (PS && FO) ? 0 : 64 * kBK;  // a warpgroup's int8 A tile, per buffer
  // PS: the largest branch rank whose low-rank tile has memory of its own (packed: 32, or 2 stages would be left)
  static constexpr int kLrRank = LR ? LR : W8 ? 64 : 32;
  // PS: the low-rank tile [BT][kLrRank] as the epilogue wgmma's K-major B operand (rows of kLrRow bytes, swizzled by
  // the row's width: 64 or 128 bytes; the mma.sync probe's rows are 16 bytes wider), then the tile's token scales
  static constexpr int kLrRow = kLrRank * 2;
  static constexpr int kXsOff = BT * (kLrRow + 16);
  static constexpr int kLrBytes = PS ? (kXsOff + BT * 4 + 1023) / 1024 * 1024 : 0;
  static constexpr int kOutBytes = PS ? BT * 128 * CW / OP : 0;  // PS: the output's staging for TMA stores
  static constexpr int kStagesFit =
      (kSmemLimit - 1024 - (WS ? 128 : 64) - 4 * kABytes - kLrBytes - kOutBytes) / kStageBytes;
  static constexpr int kStages = kStagesFit > 6 ? 6 : kStagesFit;
  static constexpr int kAhead = kStages - 2;  // the shared loop's stages loaded ahead
  // a full (and with WS an empty) mbarrier per stage; PS: one more, the low-rank tile's arrival
  static constexpr int kBarBytes = (WS ? 16 : 8) * kStages + (PS ? 8 : 0);
  static constexpr int kThreads = WS ? kConsumers + 128 : kConsumers;
  static constexpr int kSmem =
      kStages * kStageBytes + 4 * kABytes + kOutBytes + kLrBytes + kBarBytes + 1024;  // + alignment
  static constexpr int kAcc = BT / 2;                          // int32 accumulators per thread
};

// The kernel's `flags` argument (the launch sets those its switches and plan allow; each kernel honours its own):
constexpr int kFlagLrLate = 1;       // the low-rank tile late, after the chained down projection (set_lr_chain)
constexpr int kFlagLrProducer = 2;   // set_gemm_2l_lr_by_producer
constexpr int kFlagL2Prefetch = 4;   // set_gemm_2l_l2_prefetch
constexpr int kFlagNoStore = 8;      // set_gemm_2l_tile_life(.., no_store): a probe of the stamped kernel
constexpr int kFlagLifeSub = 32;     // set_gemm_2l_tile_life(.., substeps): the stamped kernel's epilogue sub-steps too
constexpr int kFlagActInLoop = 64;   // set_gemm_2l_act_in_loop: the staging tests act per octet (before v2.34; A/B)
constexpr int kFlagLrRolled = 128;   // set_gemm_2l_lr_unrolled(False): the low-rank copies in loops (before v2.35; A/B)

// The token pieces a kernel variant stages its output in (EP 17, 18, 19: halves; see the kernel).
__host__ __device__ constexpr int out_pieces(int ep) { return ep >= 17 && ep <= 20 ? 2 : 1; }
// The pipelined loop's twins stamping a tile's life (set_gemm_2l_tile_life; see the kernel).
__host__ __device__ constexpr bool stamped(int ep) { return ep == 12 || (ep >= 19 && ep <= 27); }
// The kernels on the pipelined loop (rf_loop.cuh), and those with the dispatched kernels' exact numerics (not probes).
__host__ __device__ constexpr bool pipelined(int ep) { return ep >= 10 && ep <= 27; }
// (22-25 and 27, EP 21's loop probes, count as its twins here: the features it has they have; only their loops differ)
__host__ __device__ constexpr bool exact(int ep) { return ep == 0 || ep == 10 || (ep >= 12 && ep <= 27); }

// One K stage of 128 on the tensor cores: four m64nBTk32 wgmmas, A and B from shared memory, committed as a group.
template <int BT>
__device__ __forceinline__ void wgmma_stage(int (&acc)[BT / 2], uint64_t da0, uint64_t db0) {
  wgmma_fence();
#pragma unroll
  for (int j = 0; j < 4; ++j) wgmma_s8_ss<BT>(acc, da0 + 2 * j, db0 + 2 * j);  // +32 bytes per k-step (16-byte units)
  wgmma_commit();
}

// TR: record per-stage clock64 timestamps of CTA (0, 0, 0) into `trace` (benchmarks/gemm_2l_trace.py); the
// dispatched kernels are built with TR = false. W8: int8 weights (G is then unused), WS: the producer-warp loop
// (see Tile2l), PS: that loop persistent (unsplit; the grid is at most one CTA per SM).
// EP (timing probes of the persistent register-fragment kernel, wrong results; benchmarks/gemm_2l_ksweep.py
// --probes): 1 without the low-rank mma, 2 without the output's TMA store, 3 without the epilogue after the K loop,
// 4 the low-rank branch by mma.sync as before v2.18 (exact: the A/B of the wgmma epilogue), 5 the consumer warpgroups
// meeting at CTA-wide barriers around the epilogue as before v2.18 (exact), 6 the widening before v2.22 (widen8 on
// signed nibbles: wrong values on today's fragment order, the same instructions), 7 no widening (the loaded words
// used as fragments); 8 (exact, not a probe: set_gemm_2l_rf_lead) the turns as per-warp counts of stages issued, so
// warpgroup 0 may lead by NS - 2 stages and each warpgroup runs on alone while the other is in its tile's epilogue;
// 9 (exact, set_gemm_2l_tile_life with set_gemm_2l_rf_pipelined(False)) the turns stamping their tiles' steps (see
// `life` below); 10 (exact, not a probe: set_gemm_2l_rf_pipelined) each warpgroup widening the next k-step under its own
// wgmmas, no turns; 11 (probe 8) 10 with warpgroup 1 idle in the main loop (it waits for and releases each stage): one
// warpgroup's pace alone; 12 (exact, set_gemm_2l_tile_life) 10 stamping its tiles' steps, two or three warpgroups;
// 13 (removed in v2.35: g.44, the output stored in pieces over the next tile's stages, measured neutral);
// 14 (exact, set_gemm_2l_lr_unrolled(False)) 10 with the last consumer warpgroup's low-rank copies in loops over
// runtime counts, as before v2.35 (12 can too; A/B); 15 and 16 (exact, set_gemm_2l_release_step(2 / 1)) 10 releasing
// each stage at the next stage's third k-step as before v2.35 / its second (rf_pipelined_loop's kRelease), not its first;
// 17 (exact, the default for three warpgroups' 192-token tiles (g.50) and two warpgroups' unsplit 256-token tiles
// (g.51) since v2.36; set_gemm_2l_out_pieces(tile, 1): 10 there) 10 staging and storing its output in two token halves
// through half the memory, which gives those tiles a fourth stage (the three-warpgroup tile in quarters for a fifth,
// g.52, measured 1-3 % slower in v2.36 and removed); 18 (exact, the default since v2.37, g.54;
// set_gemm_2l_split_halves(false): 0 there) 17 for two warpgroups' 256-token tiles with K split over a cluster: each CTA stages and stores only its own octets
// (at most half the tile for two CTAs or more), which gives the split kernel a fourth stage too; 19 (exact,
// set_gemm_2l_tile_life on the layouts of 17: the 192-token three-warpgroup and the 256-token two-warpgroup tiles with
// their output in halves) 12 on 17's layout, so the tile life describes the default kernels; 20 (exact, set_gemm_2l_tile_life with the 256-token
// tile split over a cluster) 18 stamped the same way, one tile per CTA, the first CTAs of the first clusters; 21
// (exact, set_gemm_2l_tile_life with one consumer warpgroup, g.56) 10 stamped, persistent or split; 22 and 23 (timing
// probes, set_gemm_2l_tile_life(.., loop_probe 1 / 2); perf-notes v2.40) 21 persistent with its k-steps unwidened / without
// their wgmmas; 24 and 25 (timing probes, loop_probe 3 / 4; v2.41) 21 persistent with no activation tiles loaded (the
// wgmmas read the stages' stale bytes) / and without wgmmas too (24 and 25 were v2.40-v2.41's g.61 and g.62, removed);
// 26 (exact, loop_probe 5; v2.41) 21 persistent giving each stage back at the next one's third k-step (kRelease 2: no
// wait<1> at a stage's first k-step), as EP 15 does for three warpgroups; 27 (timing probe, loop_probe 6; v2.43) 21
// persistent with its wgmmas' A operand from shared memory (the stage's first 64 activation rows) instead of the
// widened registers, the widening kept (folded into a sink): the same tensor work without the register-sourced operand.
template <typename T, int BT, int G, bool TR, bool W8, bool WS = false, bool PS = false, bool FO = false, int CW = 2,
          int EP = 0, int LR = 0>
__global__ void __launch_bounds__(Tile2l<BT, W8, WS, PS, FO, CW, LR, out_pieces(EP)>::kThreads, 1)
    w4a4_gemm_2l_sm90_kernel(const __grid_constant__ CUtensorMap tm_x, const __grid_constant__ CUtensorMap tm_w,
                             const __grid_constant__ CUtensorMap tm_s, const __grid_constant__ CUtensorMap tm_y,
                             const float* __restrict__ xscale,
                             const float* __restrict__ wchannel, const T* __restrict__ lr,
                             const T* __restrict__ proj_up, const T* __restrict__ bias, T* __restrict__ y, int M,
                             int N, int K, int R, long long* __restrict__ trace, int tma_store, int64_t ldy,
                             int act, int64_t ldlr, int flags) {
#if SVDQ_SM90A_BODY
  static_assert(!WS || !TR, "the producer-warp loop is untraced");
  static_assert(!PS || WS, "the persistent kernel is the producer-warp loop's");
  static_assert(!WS || W8 || PS, "packed weights take the producer-warp loop only persistent");
  static_assert(!FO || !W8, "fragment order is a layout of packed weights");
  constexpr bool RF = PS && FO;  // the persistent kernel on fragment order: its register-fragment loop
  static_assert(CW == 2 || (RF && (CW == 1 || CW == 3)), "one or three consumer warpgroups: the register-fragment loop");
  static_assert(CW != 1 || (PS && (EP == 10 || EP == 15 || EP >= 21) && LR == 0),
                "one consumer warpgroup (g.56): the pipelined loop, rank <= 32");
  static_assert(EP == 0 || (RF && (CW == 2 || exact(EP))),
                "probes and variants: the register-fragment loop");
  constexpr bool kPipe = pipelined(EP);
  constexpr bool kStamped = stamped(EP);
  constexpr bool kLife = EP == 9 || kStamped;  // a tile's life by clock64 stamps
  constexpr bool kExact = exact(EP);  // the dispatched kernels, twins
  static_assert(LR == 0 || (RF && CW == 2 && (EP == 0 || EP == 10 || EP == 17) && LR == 64),
                "wide low-rank tiles: the register-fragment loop, turns or pipelined");
  constexpr bool kCoupled = !PS || EP == 5;  // the consumers meet at CTA-wide barriers around the epilogue
  constexpr int kLrFree = 2 + 2 * CW;        // PS: named barrier after the turn barriers (kBarAll + 1 .. kBarAll + CW)
  using Cfg = Tile2l<BT, W8, WS, PS, FO, CW, LR, out_pieces(EP)>;
  constexpr int kTR = Cfg::kTileRows, kCT = Cfg::kConsumers;
  constexpr int kPieces = out_pieces(EP);  // the output staged and stored in token pieces (g.50, g.51: halves)
  constexpr bool kSplitPieces = EP == 18 || EP == 20;  // (g.54) split over a cluster too: each CTA stores its octets
  static_assert(kPieces == 1 || (PS && BT % (16 * kPieces) == 0), "pieces of whole octet pairs, persistent only");
  constexpr int kBarAll = 1 + CW;  // named barrier of all consumers (1 .. CW: each warpgroup's own)
  constexpr int NS = Cfg::kStages;
  // split (RF, one tile per CTA): the int32 partials meet in the drained stages and the output staging after them
  static_assert(!RF || Cfg::kAcc * kCT * 4 <= NS * Cfg::kStageBytes + Cfg::kOutBytes, "split exchange: no room");
  constexpr int GPS = kBK / G;  // groups per stage
  long long t_entry = 0;  // (EP 20's stamps) the kernel's entry
  if constexpr (kLife) t_entry = clock64();
  extern __shared__ uint8_t smem_raw[];
  // 1024-byte alignment for the swizzled tiles; indexing smem_raw keeps the loads in the shared window (LDS)
  uint8_t* smem = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);
  const uint32_t sbase = smem_u32(smem);

  const int tid = threadIdx.x;  // 0..kCT-1: the consumer warpgroups; WS: warpgroup CW (the last 128) loads
  const int wg = tid >> 7;
  const int warp = (tid >> 5) & 3;
  const int lane = tid & 31;
  const int g = lane >> 2, t = lane & 3;
  const int n0_blk = blockIdx.x * kTR;  // the CTA's tile (PS: its first)
  const int m0_blk = blockIdx.y * BT;
  const int KT = K / kBK;
  const int row_tiles = N / kTR;
  const int num_tiles = PS ? row_tiles * ((M + BT - 1) / BT) : 1;
  constexpr bool kSplits = !PS || (RF && CW <= 2 && kExact);  // the kernels that may run split
  const int splits = kSplits ? (int)gridDim.z : 1, z = kSplits ? (int)blockIdx.z : 0;  // cluster (1, 1, splits): rank z
  const int kt_lo = (int)((int64_t)z * KT / splits);
  const int NK = (int)((int64_t)(z + 1) * KT / splits) - kt_lo;  // stages of this CTA

  // one mbarrier per stage (TMA bytes arrived), after the stages and the A tiles; WS: then one per stage
  // that the eight consumer warps arrive on once its wgmmas are done (the buffer may be refilled)
  // (PS: the output tile's staging, then the low-rank tile's own memory, between the stages and the barriers)
  const uint32_t out_region = sbase + NS * Cfg::kStageBytes + 4 * Cfg::kABytes;
  const uint32_t lr_region = out_region + Cfg::kOutBytes;
  const uint32_t bars = lr_region + Cfg::kLrBytes;
  const uint32_t empty_bars = bars + 8 * NS;
  const uint32_t lr_full = empty_bars + 8 * NS;  // PS: the low-rank tile and token scales of this tile have landed
  constexpr uint32_t kTxBytes = Cfg::kActBytes + Cfg::kWBytes + (W8 ? 0 : GPS * kTR);
  constexpr bool kNoAct = EP == 24 || EP == 25;  // (EP 21's loop probes) the stages without their activation tiles
  auto load_at = [&](int buf, int kt, int tm0, int tn0) {  // one thread
    const uint32_t act = sbase + buf * Cfg::kStageBytes;
    const uint32_t bar = bars + 8 * buf;
    mbar_expect_tx(bar, kNoAct ? kTxBytes - Cfg::kActBytes : kTxBytes);
    if constexpr (!kNoAct) tma_load_2d(act, &tm_x, kt * kBK, tm0, bar);
    tma_load_2d(act + Cfg::kActBytes, &tm_w, kt * (W8 ? kBK : kBK / 2), tn0, bar);
    if constexpr (!W8) tma_load_2d(act + Cfg::kActBytes + Cfg::kWBytes, &tm_s, tn0, kt * GPS, bar);
  };
  auto load_stage = [&](int i) { load_at(i % NS, kt_lo + i, m0_blk, n0_blk); };  // i counts this CTA's stages
  if (tid == 0) {
    for (int s = 0; s < NS; ++s) mbar_init(bars + 8 * s, 1);
    if constexpr (WS)
      for (int s = 0; s < NS; ++s) mbar_init(empty_bars + 8 * s, kCT / 32);
    if constexpr (PS) mbar_init(lr_full, 128);  // one arrival per thread of the loading warpgroup
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  // EP 8 (set_gemm_2l_rf_lead): the register-fragment loop's turns as per-warp counts of stages issued, [warpgroup][warp]
  int* lead_cnt = nullptr;
  if constexpr (EP == 8) {
    __shared__ int s_lead[8];
    lead_cnt = s_lead;
    if (tid < 8) s_lead[tid] = 0;
  }
  __syncthreads();
  // late (PS, the chained down projection before it: set_lr_chain): xq and xscale are complete when this kernel starts
  // (the down projection lets it start only once the quantizer is done), lr is not: the first tile's low-rank tile
  // comes after a wait in the producer's idle warps, and the consumers wait before they store y
  const bool lr_late = PS && kExact && (flags & kFlagLrLate);
  // (set_gemm_2l_lr_by_producer) the producer's warps 1-3 load every tile's low-rank tile and token scales, so no
  // consumer issues a copy that its epilogue's proxy fence (MEMBAR.ALL.CTA) would wait for
  const bool lr_prod = PS && RF && !kCoupled && kExact && (flags & kFlagLrProducer);
  // (set_gemm_2l_l2_prefetch) halfway through a tile's stages the producer asks L2 for the next tile's first stages
  const bool l2_prefetch = PS && RF && kExact && (flags & kFlagL2Prefetch);
  // (set_gemm_2l_tile_life(stamps, no_store=True); a timing probe, wrong results) the stamped kernel without its output
  const bool life_no_store = kStamped && (flags & kFlagNoStore);
  const bool life_sub = kLife && (flags & kFlagLifeSub);
  // (EP 22 / 23 / 25 / 27: EP 21's loop probes, wrong results) its k-steps' fragments the loaded words themselves (no
  // widening; probe 7's mapping), its k-steps without wgmmas (the widening and the stage ring alone), or its wgmmas'
  // A operand from shared memory
  constexpr bool kNoWiden = EP == 22, kNoMma = EP == 23 || EP == 25, kSsA = EP == 27;
  if (!lr_late) pdl_wait();  // (set_pdl) xq, xscale and lr come from the kernels before this one, which may still use y's memory
  pdl_trigger();  // the kernel after this one may be scheduled as SMs free up
  if constexpr (WS) {
    if (tid >= kCT) {  // the producer: stage i into buffer i % NS once the consumers released it, then
      // the consumers' CTA and cluster barriers, and out
      if constexpr (CW == 3) asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n");
      else asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
      if (tid == kCT) {
        if constexpr (PS) {  // the stage count runs on over this CTA's tiles: the next tile's loads start at once
          int i = 0;
          for (int tile = blockIdx.x; tile < num_tiles; tile += gridDim.x)
            for (int kt = kt_lo; kt < kt_lo + NK; ++kt, ++i) {  // split (RF): this CTA's K range of its one tile
              if (i >= NS) mbar_wait(empty_bars + 8 * (i % NS), (i / NS - 1) & 1);
              load_at(i % NS, kt, (tile / row_tiles) * BT, (tile % row_tiles) * kTR);
              if (l2_prefetch && kt == kt_lo + NK / 2 && tile + (int)gridDim.x < num_tiles) {
                const int nt = tile + (int)gridDim.x, m0n = (nt / row_tiles) * BT, n0n = (nt % row_tiles) * kTR;
                for (int s = 0; s < NS + 2 && s < NK; ++s) {
                  tma_prefetch_l2_2d(&tm_x, (kt_lo + s) * kBK, m0n);
                  tma_prefetch_l2_2d(&tm_w, (kt_lo + s) * (kBK / 2), n0n);
                  tma_prefetch_l2_2d(&tm_s, n0n, (kt_lo + s) * GPS);
                }
              }
            }
        } else {
          for (int i = 0; i < NK; ++i) {
            if (i >= NS) mbar_wait(empty_bars + 8 * (i % NS), (i / NS - 1) & 1);
            load_stage(i);
          }
        }
      } else if ((lr_late || lr_prod) && tid >= kCT + 32) {
        // warps 1-3: the low-rank tile and token scales (late: the first tile's, once the down projection is done;
        // lr_prod: every tile's, each once the consumers are past the previous tile's low-rank step: barrier kLrFree)
        // into the memory the consumers' epilogue reads (the layout of lr_dst below); 96 copying threads' arrivals on
        // lr_full when their copies land, and warp 1's 32 at once (the barrier counts 128)
        const int ct = tid - kCT - 32, chunks = R / 8;
        for (int tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
          if (tile != (int)blockIdx.x) {
            if (!lr_prod) break;
            asm volatile("bar.sync %0, %1;\n" ::"n"(kLrFree), "n"(kCT + 96) : "memory");
          } else if (lr_late) {
            pdl_wait();
          }
          const int m0f = (tile / row_tiles) * BT;
          for (int i = ct; i < BT * chunks; i += 96) {
            const int row = i / chunks, c = i % chunks, m = m0f + row;
            const uint32_t dst =
                lr_region + row * Cfg::kLrRow + ((c ^ (Cfg::kLrRow == 64 ? (row >> 1) & 3 : row & 7)) << 4);
            cp_async16(dst, lr + (int64_t)min(m, M - 1) * ldlr + c * 8, m < M ? 16 : 0);
          }
          for (int i = ct; i < BT; i += 96)
            cp_async4(lr_region + Cfg::kXsOff + 4 * i, xscale + min(m0f + i, M - 1), m0f + i < M ? 4 : 0);
          asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(lr_full) : "memory");
          if (tid < kCT + 64) mbar_arrive(lr_full);
        }
      }
      if constexpr (PS) {  // the consumers meet only each other (named barrier kBarAll); split: the cluster's exchange
        if (splits > 1) {
          cooperative_groups::this_cluster().sync();
          cooperative_groups::this_cluster().sync();
        }
        return;
      }
      __syncthreads();
      if (gridDim.z > 1) {
        cooperative_groups::this_cluster().sync();
        cooperative_groups::this_cluster().sync();
      }
      __syncthreads();
      return;
    }
    // CW = 3: 512 threads, 128 x 24 + 384 x 160 registers
    if constexpr (CW == 3) asm volatile("setmaxnreg.inc.sync.aligned.u32 160;\n");
    else asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");
  }

  int acc[Cfg::kAcc] = {};  // zeroed per tile below; initialised here for the tracing stamps' reads

  // this thread's two weight rows inside the CTA tile (rows g and g + 8 of its warp's 16)
  const int rA = wg * 64 + warp * 16 + g;
  const int rB = rA + 8;
  // two int8 A tiles per warpgroup (double buffer), after the stages
  const uint32_t a_base = sbase + NS * Cfg::kStageBytes + wg * 2 * Cfg::kABytes;
  // trace: CTA (0, 0, 0), lane 0 of each warpgroup's first warp; 8 clock64 per stage
  const bool tracer = TR && blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0 && (tid & 127) == 0;
  long long* tr = trace + (int64_t)wg * (K / kBK) * 8;
  auto mark = [&](int i, int e) {
    if constexpr (TR) {
      if (tracer) tr[i * 8 + e] = clock64();
    }
  };
  // kernel start (slot 0) and end (slot 2): clock64 and %globaltimer, after the per-stage records; the
  // epilogue's steps in slots 4, 6, 8, 10 (after the accumulators of `acc` it names are final)
  auto stamp = [&](int slot) {
    if constexpr (TR) {
      if (tracer && wg == 0) {
        uint64_t ns;
        asm volatile("mov.u64 %0, %globaltimer;" : "=l"(ns));
        trace[2 * (K / kBK) * 8 + slot] = clock64();
        trace[2 * (K / kBK) * 8 + slot + 1] = (long long)ns;
      }
    }
  };
  stamp(0);
  // EP 9 / 12 (set_gemm_2l_tile_life, benchmarks/gemm_2l_tile_life.py; exact): each consumer warpgroup's first thread
  // stamps clock64 at its first kLifeTiles tiles' steps into shared memory (a global store would make the epilogue's
  // proxy fence wait for it), and the first kLifeCtas CTAs copy them out at the end to
  // trace[((CTA * CW + warpgroup) * kLifeTiles + tile) * 8 + step]: 0 tile start, 1 first k-step issued, 2 main loop
  // done, 3 low-rank tile in shared memory, 4 scales applied, 5 low-rank branch added, 6 output stored (TMA issued),
  // 7 the tile's first stage landed; with life_sub also the epilogue's sub-steps 8 .. 12 (8 the low-rank tile freed,
  // 9 the output staging free, 10 the output staged, 11 the proxy fence passed, 12 the warpgroup's barrier passed; and
  // for EP 20 split over a cluster, its one tile: 13 the cluster's exchange done, 14 the kernel's entry, 15 the last
  // store read) at trace[kLifeCtas * CW * kLifeTiles * 8 + the same index + step - 8]; CTA = blockIdx.x x splits + rank
  constexpr int kLifeCtas = 4, kLifeTiles = 8;
  int life_n = 0;  // the tile's index among this CTA's
  long long* life_s = nullptr;
  if constexpr (kLife) {
    __shared__ long long s_life[CW * kLifeTiles * 16];
    life_s = s_life;
    if ((tid & 127) == 0) {  // this warpgroup's stamps: only this thread writes and reads them
      for (int i = 0; i < kLifeTiles * 16; ++i) s_life[wg * kLifeTiles * 16 + i] = 0;
      if (life_sub && splits > 1) s_life[wg * kLifeTiles * 16 + 14] = t_entry;
    }
  }
  auto life = [&](int step) {
    if constexpr (kLife) {
      if ((tid & 127) == 0 && life_n < kLifeTiles && (step < 8 || life_sub))
        life_s[(wg * kLifeTiles + life_n) * 16 + step] = clock64();
    }
  };
  auto stamp_acc = [&](int slot) {  // an epilogue step: not before the accumulators' last writes
    if constexpr (TR || kLife) asm volatile("" ::"r"(acc[0]), "r"(acc[Cfg::kAcc - 1]));
    stamp(slot);
    life(slot / 2);
  };

  if (!WS && tid == 0)
    for (int s = 0; s < Cfg::kAhead && s < NK; ++s) load_stage(s);

  // Widen this warpgroup's 64 weight rows of stage kt to int8 q * s_int into its A tile (K-major, 128-byte
  // swizzle). A thread takes k32-chunk jj of rows rp and rp + 32: 16 packed bytes in, 32 bytes out, so
  // loads and stores are 16-byte vectors and the scale constants serve 32 weights (2.5 instructions per
  // weight; gathering the wgmma register-fragment layout instead cost 4.3). FO (fragment order): the same k's
  // are word jj of the row's four 16-byte chunks (k 32 jj + 4 t .. + 3 and 32 jj + 16 + 4 t .. in chunk t), four
  // 4-byte loads (conflict-free under the swizzle) instead of one 16-byte load.
  const int wtid = tid & 127, jj = wtid & 3, rp = wtid >> 2;
  const int gi_base = (jj * 32) / G;
  auto convert_stage = [&](int i, uint32_t a_tile) {
    const int buf = i % NS;
    const uint8_t* wt = smem + buf * Cfg::kStageBytes + Cfg::kActBytes;
    const uint8_t* sc = wt + Cfg::kWBytes;
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int rw = rp + 32 * i;  // row inside the warpgroup's tile
      const int r = wg * 64 + rw;  // row inside the CTA tile
      uint32_t o[8];
      if constexpr (FO) {
        const FoConst fc = fo_const(sc[gi_base * kTR + r]);
#pragma unroll
        for (int t = 0; t < 4; ++t) {  // o[0..3]: k 32 jj .. 32 jj + 15, o[4..7]: the next 16
          const uint32_t w = *reinterpret_cast<const uint32_t*>(wt + r * 64 + ((t ^ ((r >> 1) & 3)) << 4) + 4 * jj);
          widen8_fo(w, fc, o[t], o[4 + t]);
        }
      } else {
        const uint4 pk = *reinterpret_cast<const uint4*>(wt + r * 64 + ((jj ^ ((r >> 1) & 3)) << 4));
        const WidenConst wc = widen_const(sc[gi_base * kTR + r]);
        const uint32_t words[4] = {pk.x, pk.y, pk.z, pk.w};
#pragma unroll
        for (int w = 0; w < 4; ++w) widen8(words[w], wc, o[2 * w], o[2 * w + 1]);  // k 8w .. 8w+7 of the chunk
      }
      const uint32_t row = a_tile + rw * 128;
      asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(row + (((2 * jj) ^ (rw & 7)) << 4)),
                   "r"(o[0]), "r"(o[1]), "r"(o[2]), "r"(o[3]));
      asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(row + (((2 * jj + 1) ^ (rw & 7)) << 4)),
                   "r"(o[4]), "r"(o[5]), "r"(o[6]), "r"(o[7]));
    }
  };

  // One K stage: A from the warpgroup's shared-memory tile a_tile (widened while the previous stage's wgmmas run).
  auto stage_step = [&](int i, uint32_t a_tile) {
    mark(i, 0);
    __syncthreads();
    mark(i, 1);
    // every thread is past the previous step, so the wgmmas of stage i-2, both warpgroups', are complete and
    // their buffer may be refilled
    if (tid == 0 && i + Cfg::kAhead < NK) load_stage(i + Cfg::kAhead);
    mbar_wait(bars + 8 * (i % NS), (i / NS) & 1);
    mark(i, 2);
    if constexpr (W8) {  // this warpgroup's 64 rows of the stage's weight tile, as TMA wrote them
      a_tile = sbase + (i % NS) * Cfg::kStageBytes + Cfg::kActBytes + wg * 64 * kBK;
    } else {
      convert_stage(i, a_tile);
      fence_proxy_async_smem();
      mark(i, 3);
      asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg));  // the warpgroup's A tile is complete
    }
    mark(i, 4);
    const uint64_t da0 = desc_k128(a_tile);
    const uint64_t db0 = desc_k128(sbase + (i % NS) * Cfg::kStageBytes);
    wgmma_stage<BT>(acc, da0, db0);
    mark(i, 5);
    wgmma_wait<1>();  // the previous stage's wgmmas are done: its A tile may be rewritten
    mark(i, 6);
  };
  int done = 0;  // PS: stages consumed by this CTA's earlier tiles
  int lr_tiles = 0;  // PS, decoupled: tiles whose low-rank tile arrived (the mbarrier's phase)
  for (int tile = PS ? blockIdx.x : 0; tile < num_tiles; tile += PS ? gridDim.x : 1) {
  if constexpr (kLife) {
    life_n = (tile - (int)blockIdx.x) / (int)gridDim.x;
    life(0);
  }
  const int n0 = PS ? (tile % row_tiles) * kTR : n0_blk;
  const int m0 = PS ? (tile / row_tiles) * BT : m0_blk;
  // the low-rank activations into shared memory: [BT][R], rows padded by 16 bytes (PS: memory of its own, the
  // stages are the next tile's)
  const int lr_stride = R * 2 + 16;
  const uint32_t lr_s = PS ? lr_region : sbase;
  // the 16-byte chunk c (ranks 8c ..) of token row `row`: PS (the wgmma's B operand) chunk c ^ ((row / 2) % 4) of a
  // 64-byte row (c ^ (row % 8) of a 128-byte one), else rows padded by 16 bytes for ldmatrix
  auto lr_dst = [&](int row, int c) -> uint32_t {
    if constexpr (PS && EP != 4)
      return lr_s + row * Cfg::kLrRow + ((c ^ (Cfg::kLrRow == 64 ? (row >> 1) & 3 : row & 7)) << 4);
    else
      return lr_s + row * lr_stride + c * 16;
  };
  // chunk c of token row `row` of the low-rank tile at token m0n (rows past M zero-filled), and that tile's token
  // scale i (PS: into the low-rank tile's memory)
  auto copy_lr_chunk = [&](int m0n, int row, int c) {
    const int m = m0n + row;
    cp_async16(lr_dst(row, c), lr + (int64_t)min(m, M - 1) * ldlr + c * 8, m < M ? 16 : 0);
  };
  auto copy_xs = [&](int m0n, int i) {
    cp_async4(lr_region + Cfg::kXsOff + 4 * i, xscale + min(m0n + i, M - 1), m0n + i < M ? 4 : 0);
  };
  // the low-rank tile of the tile at token m0n, by the threads first, first + step, ...
  auto copy_lr_tile = [&](int m0n, int first, int step) {
    const int chunks = R / 8;
    if (chunks == 0) return;
    if (step % chunks == 0) {  // each thread keeps one chunk column (ranks 16, 32, 64): no division per copy
      const int c = first % chunks, rstep = step / chunks;
      for (int row = first / chunks; row < BT; row += rstep) copy_lr_chunk(m0n, row, c);
    } else {
      for (int i = first; i < BT * chunks; i += step) copy_lr_chunk(m0n, i / chunks, i % chunks);
    }
  };
  auto load_lr_tile = [&] { copy_lr_tile(m0, tid, kCT); };
  // PS, decoupled: the last consumer warpgroup alone loads the low-rank tile and token scales of the tile at token m0n
  // (once every other warpgroup is past the previous tile's low-rank step: barrier kLrFree), each thread's copies
  // arriving on the mbarrier lr_full when they land; so no warpgroup waits for another's epilogue.
  // The pipelined loop's kernels, at the rank the tile's memory is for: the copies with the chunk count known at compile
  // time, BT / kRstep of them per thread, unrolled (perf-notes v2.35: the loops over runtime counts that EP 14 keeps
  // cost the last warpgroup 1.0-1.6k cycles per tile)
  const bool lr_unrolled = kPipe && EP != 14 && !(kStamped && (flags & kFlagLrRolled)) && R == Cfg::kLrRank;
  auto load_lr_async = [&](int m0n) {
    const int wtid = tid & 127;
    if (lr_unrolled) {
      constexpr int kChunks = Cfg::kLrRank / 8, kRstep = 128 / kChunks;
      static_assert(BT % kRstep == 0, "each thread copies the same number of the tile's rows");
      const int c = wtid % kChunks, r0 = wtid / kChunks;
#pragma unroll
      for (int k = 0; k < BT / kRstep; ++k) copy_lr_chunk(m0n, r0 + k * kRstep, c);
#pragma unroll
      for (int k = 0; k < (BT + 127) / 128; ++k)
        if (wtid + 128 * k < BT) copy_xs(m0n, wtid + 128 * k);
    } else {
      copy_lr_tile(m0n, wtid, 128);
      for (int i = wtid; i < BT; i += 128) copy_xs(m0n, i);
    }
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(lr_full) : "memory");
  };
  const int rowA = n0 + rA, rowB = n0 + rB;
  auto load_up = [&](int ks, uint32_t (&a)[4]) {  // proj_up rows rowA / rowB, ranks ks*16 + 2t (+1, +8, +9)
    const T* puA = proj_up + (int64_t)rowA * R + ks * 16 + 2 * t;
    const T* puB = proj_up + (int64_t)rowB * R + ks * 16 + 2 * t;
    if constexpr (PS) {
      a[0] = ldg_nc_u32(puA), a[1] = ldg_nc_u32(puB), a[2] = ldg_nc_u32(puA + 8), a[3] = ldg_nc_u32(puB + 8);
    } else {
      a[0] = *reinterpret_cast<const uint32_t*>(puA);
      a[1] = *reinterpret_cast<const uint32_t*>(puB);
      a[2] = *reinterpret_cast<const uint32_t*>(puA + 8);
      a[3] = *reinterpret_cast<const uint32_t*>(puB + 8);
    }
  };
  // PS: the epilogue's operands are requested before the main loop, which hides their latency (v2.13: ~40 % of
  // a tile's time outside its stages went to these waits): the low-rank tile and the token scales by cp.async
  // (once every consumer is past the previous tile's low-rank step), the rows' channel scales, bias and the
  // first two proj_up steps into registers (volatile loads: issued here, waited for at their first use)
  float wchA = 0.f, wchB = 0.f, bA = 0.f, bB = 0.f;
  uint32_t up0[4] = {}, up1[4] = {};
  if constexpr (PS) {
    if constexpr (kCoupled) {
      asm volatile("bar.sync %0, %1;\n" ::"n"(kBarAll), "n"(kCT) : "memory");
      load_lr_tile();
      for (int i = tid; i < BT; i += kCT) copy_xs(m0, i);
      cp_async_commit();
    } else if (tile == (int)blockIdx.x && wg == CW - 1 && !lr_late && !lr_prod) {  // the first tile's; later ones at
      load_lr_async(m0);  // the previous epilogue (late, lr_prod: the producer's warps)
    }
    wchA = ldg_nc_f32(wchannel + rowA), wchB = ldg_nc_f32(wchannel + rowB);
    if (bias) bA = Dt<T>::bits_to_f(ldg_nc_u16(bias + rowA)), bB = Dt<T>::bits_to_f(ldg_nc_u16(bias + rowB));
    if (R >= 16) load_up(0, up0);
    if (R >= 32) load_up(1, up1);
  }
#pragma unroll
  for (int i = 0; i < Cfg::kAcc; ++i) acc[i] = 0;
  if constexpr (RF) {
    // Register fragments (weights in fragment order, ops/layout_2l.py: a row's words for the whole stage are one
    // 16-byte load): A is widened into registers, so a stage moves 32 KB less through shared memory than with A
    // tiles. ptxas serializes a warpgroup's wgmmas when it defines a wgmma input while an earlier group of the stage
    // is in flight (v2.8; EP 10 below: not when each wgmma is its own group and the last reader of the registers
    // written is waited for), so each warpgroup runs widen -> 4 wgmmas -> wait<0>, and the two take turns (named barriers
    // 4 and 5: WG0 stage i, WG1 stage i, WG0 stage i + 1, ...) so one widens while the other's wgmmas run; the
    // turns run on across this CTA's tiles. The next stage's bytes are loaded before this stage's wgmmas are
    // waited for (registers no wgmma reads: no serialization), so the widening after the wait starts from them.
    const bool more = tile + (int)gridDim.x < num_tiles;
    constexpr int kTurn = kBarAll + 1;  // CW turn barriers after the consumers' (4, 5 with two warpgroups)
    constexpr int kLead = NS - 2;       // EP 8: warpgroup 0's lead in stages (the ring holds both and the next)
    auto lead_wait = [&](int from, int count) {  // EP 8: until warpgroup `from`'s same warp has issued `count` stages
      if (lane == 0) {
        const volatile int* c = lead_cnt + from * 4 + warp;
        while (*c < count) {
        }
      }
      __syncwarp();
    };
    uint32_t nw[2][4], nsc[2][128 / G];
    auto fetch = [&](int i) {
      const int buf = i % NS;
      mbar_wait(bars + 8 * buf, (i / NS) & 1);
      if constexpr (kLife) {
        if (i == done) life(7);
      }
      const uint8_t* wt = smem + buf * Cfg::kStageBytes + Cfg::kActBytes;
      frag_load<G, kTR>(wt, wt + Cfg::kWBytes, rA, t, nw, nsc);
    };
    if (EP == 11 && wg == 1) {  // probe: this warpgroup only takes each stage and releases it
      for (int i = done; i < done + NK; ++i) {
        mbar_wait(bars + 8 * (i % NS), (i / NS) & 1);
        if (lane == 0) mbar_arrive(empty_bars + 8 * (i % NS));
      }
    } else if constexpr (kPipe) {
      // pipelined within the warpgroup (set_gemm_2l_rf_pipelined, rf_loop.cuh): no turns, the two warpgroups run on
      // independently, bound only by the stage ring
      uint32_t fa[4][4];
      uint32_t sink = 0;  // (EP 23 / 25)
      auto widen_step = [&](int j) {
        if constexpr (kNoWiden) {
#pragma unroll
          for (int h = 0; h < 2; ++h) fa[j][h] = nw[h][j], fa[j][2 + h] = nw[h][j] ^ nsc[h][(32 * j) / G];
        } else {
          frag_widen_step<G>(nw, nsc, j, fa[j]);
        }
      };
      auto issue = [&](int i, int j) {
        if constexpr (kNoMma) {  // (the fragments folded into a sink, so the widening stays; an empty commit group keeps
          // the loop's waits. v2.40's probe kept them by an empty asm, which ptxas saw through: no widening, v2.41)
#pragma unroll
          for (int e = 0; e < 4; ++e) sink ^= fa[j][e];
        } else if constexpr (kSsA) {  // (A: the stage's first 64 activation rows, laid out as B's; the widening sunk)
#pragma unroll
          for (int e = 0; e < 4; ++e) sink ^= fa[j][e];
          const uint64_t db = desc_k128(sbase + (i % NS) * Cfg::kStageBytes) + 2 * j;
          wgmma_fence();
          wgmma_s8_ss<BT>(acc, db, db);
        } else {
          wgmma_fence();
          wgmma_s8_rs<BT>(acc, fa[j], desc_k128(sbase + (i % NS) * Cfg::kStageBytes) + 2 * j);
        }
        wgmma_commit();
        if constexpr (kLife) {
          if (i == done && j == 0) life(1);
        }
      };
      auto release = [&](int i) {
        if (lane == 0) mbar_arrive(empty_bars + 8 * (i % NS));
      };
      rf_pipelined_loop<EP == 15 || EP == 26 ? 2 : EP == 16 ? 1 : 0>(done, NK, fetch, widen_step, issue, release);
      if constexpr (kNoMma || kSsA) {
        if (sink == 0x9e3779b9u) acc[0] ^= 1;  // (a use the compiler cannot fold)
      }
    } else {
    fetch(done);
    for (int i = done; i < done + NK; ++i) {
      const int buf = i % NS;
      const uint32_t stage = sbase + buf * Cfg::kStageBytes;
      uint32_t fa[4][4];
      if constexpr (EP == 6) {
        frag_widen_v1<G>(nw, nsc, fa);
      } else if constexpr (EP == 7) {
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int j = 0; j < 4; ++j) fa[j][h] = nw[h][j], fa[j][2 + h] = nw[h][j] ^ nsc[h][(32 * j) / G];
      } else {
        frag_widen<G>(nw, nsc, fa);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(fa[j][e])::"memory");
      // turn barrier kTurn + w: warpgroup w has issued its wgmmas (w < CW - 1: of stage i for w + 1; the last
      // one: of stage i - 1 for warpgroup 0). EP 8: per warp (the warps of a sub-partition's tensor core), warpgroup 1
      // issues stage i after warpgroup 0 has, warpgroup 0 stage i after warpgroup 1 has issued stage i - 1 - kLead:
      // warpgroup 0 may lead by kLead stages, so each runs on alone while the other is in its tile's epilogue (the
      // stage ring bounds the lead: kLead = NS - 2)
      if constexpr (EP == 8) {
        if (wg > 0) lead_wait(0, i + 1);
        else if (i > kLead) lead_wait(1, i - kLead);
      } else if (wg > 0) {
        if constexpr (CW == 2) asm volatile("bar.sync %0, 256;\n" ::"n"(kTurn) : "memory");
        else asm volatile("bar.sync %0, 256;\n" ::"r"(kTurn + wg - 1) : "memory");
      } else if (i > 0) asm volatile("bar.sync %0, 256;\n" ::"n"(kTurn + CW - 1) : "memory");
      const uint64_t db0 = desc_k128(stage);
      wgmma_fence();
#pragma unroll
      for (int j = 0; j < 4; ++j) wgmma_s8_rs<BT>(acc, fa[j], db0 + 2 * j);
      wgmma_commit();
      if constexpr (EP == 9) {
        if (i == done) life(1);
      }
      if constexpr (EP == 8) {
        __syncwarp();
        if (lane == 0) {  // this warp's count: only it writes it
          volatile int* c = lead_cnt + wg * 4 + warp;
          *c = *c + 1;
        }
      } else if (wg < CW - 1) {
        if constexpr (CW == 2) asm volatile("bar.arrive %0, 256;\n" ::"n"(kTurn) : "memory");
        else asm volatile("bar.arrive %0, 256;\n" ::"r"(kTurn + wg) : "memory");
      } else if (i + 1 < done + NK || more) asm volatile("bar.arrive %0, 256;\n" ::"n"(kTurn + CW - 1) : "memory");
      if (i + 1 < done + NK) fetch(i + 1);
      wgmma_wait<0>();
      if (lane == 0) mbar_arrive(empty_bars + 8 * buf);  // this warp is done with the stage
    }
    }  // EP != 10
  } else if constexpr (WS) {  // consumers: no CTA barrier in the loop; a warp releases a stage when its wgmmas are done
    const int base = PS ? done : 0;
    for (int i = base; i < base + NK; ++i) {
      const uint32_t stage = sbase + (i % NS) * Cfg::kStageBytes;
      mbar_wait(bars + 8 * (i % NS), (i / NS) & 1);
      uint32_t a_tile = stage + Cfg::kActBytes + wg * 64 * kBK;  // W8: the weights as TMA wrote them
      if constexpr (!W8) {  // packed: widened into the warpgroup's A tile i & 1, once every warp of the warpgroup
        a_tile = a_base + (i & 1) * Cfg::kABytes;  // is past its wait for stage i - 2's wgmmas (which read it)
        asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg));
        convert_stage(i, a_tile);
        fence_proxy_async_smem();
        asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg));  // the warpgroup's A tile is complete
      }
      const uint64_t da0 = desc_k128(a_tile);
      const uint64_t db0 = desc_k128(stage);
      wgmma_stage<BT>(acc, da0, db0);
      wgmma_wait<1>();  // stage i - 1's wgmmas (this warp's share) are done: release its buffer
      if (i > base && lane == 0) mbar_arrive(empty_bars + 8 * ((i - 1) % NS));
    }
  } else {
    for (int i = 0; i < NK; i += 2) {
      stage_step(i, a_base);
      if (i + 1 < NK) stage_step(i + 1, a_base + Cfg::kABytes);
    }
  }
  wgmma_wait<0>();
  stamp_acc(4);  // main loop done
  if constexpr (PS) {
    done += NK;
    if (!RF && lane == 0) mbar_arrive(empty_bars + 8 * ((done - 1) % NS));  // the last stage: the next tile may load
  } else {
    __syncthreads();
  }

  constexpr int JB = BT / 8;  // 8-token column blocks of the tile
  int jlo = 0, jhi = JB;      // the blocks this CTA finishes and stores
  if (splits > 1) {
    // Every CTA's partials go to its shared memory as [octet j][thread] int4 (the stages are drained); CTA z sums
    // octets jlo .. jhi - 1 of all of them, a batch of octets per peer by 16-byte loads of distributed shared memory
    // in flight together, into its own buffer, and takes its octets back from there.
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    // PS (RF, split): no CTA barrier after the loop, so the other warpgroup's last wgmmas may still read a stage
    if constexpr (PS) asm volatile("bar.sync %0, %1;\n" ::"n"(kBarAll), "n"(kCT) : "memory");
    auto red_at = [&](int j) { return sbase + (uint32_t)(j * kCT + tid) * 16; };
#pragma unroll
    for (int j = 0; j < JB; ++j)
      asm volatile("st.shared.v4.s32 [%0], {%1, %2, %3, %4};\n" ::"r"(red_at(j)), "r"(acc[4 * j]), "r"(acc[4 * j + 1]),
                   "r"(acc[4 * j + 2]), "r"(acc[4 * j + 3]) : "memory");
    cluster.sync();
    jlo = z * JB / splits;
    jhi = (z + 1) * JB / splits;
    constexpr int kB = 4;  // octets per batch
    for (int j0 = jlo; j0 < jhi; j0 += kB) {
      int sum[kB][4];
#pragma unroll
      for (int u = 0; u < kB; ++u)
        if (j0 + u < jhi)
          asm volatile("ld.shared.v4.s32 {%0, %1, %2, %3}, [%4];\n"
                       : "=r"(sum[u][0]), "=r"(sum[u][1]), "=r"(sum[u][2]), "=r"(sum[u][3]) : "r"(red_at(j0 + u)) : "memory");
      for (int q = 1; q < splits; ++q) {
        uint32_t peer;
        asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(peer) : "r"(red_at(j0)), "r"((z + q) % splits));
        int v[kB][4];
#pragma unroll
        for (int u = 0; u < kB; ++u)
          if (j0 + u < jhi)
            asm volatile("ld.shared::cluster.v4.s32 {%0, %1, %2, %3}, [%4];\n"
                         : "=r"(v[u][0]), "=r"(v[u][1]), "=r"(v[u][2]), "=r"(v[u][3]) : "r"(peer + u * kCT * 16) : "memory");
#pragma unroll
        for (int u = 0; u < kB; ++u)
          if (j0 + u < jhi)
#pragma unroll
            for (int e = 0; e < 4; ++e) sum[u][e] += v[u][e];
      }
#pragma unroll
      for (int u = 0; u < kB; ++u)
        if (j0 + u < jhi)
          asm volatile("st.shared.v4.s32 [%0], {%1, %2, %3, %4};\n" ::"r"(red_at(j0 + u)), "r"(sum[u][0]), "r"(sum[u][1]),
                       "r"(sum[u][2]), "r"(sum[u][3]) : "memory");
    }
#pragma unroll
    for (int j = 0; j < JB; ++j)
      if (j >= jlo && j < jhi)
        asm volatile("ld.shared.v4.s32 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(acc[4 * j]), "=r"(acc[4 * j + 1]), "=r"(acc[4 * j + 2]), "=r"(acc[4 * j + 3]) : "r"(red_at(j)) : "memory");
    cluster.sync();  // nobody reads this CTA's shared memory any more: the epilogue may reuse it
    life(13);
  }

  if constexpr (!PS) {  // the stages are drained: the low-rank tile goes where they were
    load_lr_tile();
    cp_async_commit();
  }
  if constexpr (PS && !kCoupled) {
    mbar_wait(lr_full, lr_tiles & 1);
    if (lr_late && lr_tiles == 0) pdl_wait();  // the down projection is done (so the wait is short): y may be written
    ++lr_tiles;
    fence_proxy_async_smem();  // the copies (generic proxy) seen by the low-rank wgmmas (async proxy)
  } else {
    cp_async_wait<0>();
    if constexpr (PS) {
      asm volatile("bar.sync %0, %1;\n" ::"n"(kBarAll), "n"(kCT) : "memory");
      fence_proxy_async_smem();
    } else {
      __syncthreads();
    }
  }
  stamp_acc(6);  // low-rank tile in shared memory
  // PS, decoupled: past the low-rank step the tile's lr / token scales are free: the others arrive, the loader waits
  // for them and loads the next tile's
  auto lr_free = [&] {
    if constexpr (PS && !kCoupled) {
      if (lr_prod) {  // the producer's warps wait for every consumer's arrival, then load the next tile's
        if (tile + (int)gridDim.x < num_tiles)
          asm volatile("bar.arrive %0, %1;\n" ::"n"(kLrFree), "n"(kCT + 96) : "memory");
      } else if (wg < CW - 1) {
        asm volatile("bar.arrive %0, %1;\n" ::"n"(kLrFree), "n"(kCT) : "memory");
      } else {
        asm volatile("bar.sync %0, %1;\n" ::"n"(kLrFree), "n"(kCT) : "memory");
        if (tile + (int)gridDim.x < num_tiles) load_lr_async(((tile + (int)gridDim.x) / row_tiles) * BT);
      }
    }
  };
  if (EP == 3 && tile >= 0) {  // (a condition the front end cannot fold: no unreachable-code warning)
    lr_free();
    continue;
  }

  if constexpr (!PS) wchA = wchannel[rowA], wchB = wchannel[rowB];
  // acc now holds fp32 bit patterns
#pragma unroll
  for (int j = 0; j < BT / 8; ++j) {
    float x0, x1;  // tokens j*8 + 2t, + 1
    if constexpr (PS) {
      asm volatile("ld.shared.v2.f32 {%0, %1}, [%2];\n"
                   : "=f"(x0), "=f"(x1) : "r"(lr_region + Cfg::kXsOff + (j * 8 + 2 * t) * 4));
    } else {
      const int m = m0 + j * 8 + 2 * t;
      x0 = xscale[min(m, M - 1)], x1 = xscale[min(m + 1, M - 1)];
    }
    acc[4 * j + 0] = __float_as_int((__int2float_rn(acc[4 * j + 0]) * wchA) * x0);
    acc[4 * j + 1] = __float_as_int((__int2float_rn(acc[4 * j + 1]) * wchA) * x1);
    acc[4 * j + 2] = __float_as_int((__int2float_rn(acc[4 * j + 2]) * wchB) * x0);
    acc[4 * j + 3] = __float_as_int((__int2float_rn(acc[4 * j + 3]) * wchB) * x1);
  }
  stamp_acc(8);  // scales applied (their loads arrived)
  constexpr bool kLrWgmma = PS && EP != 4;
  if constexpr (kLrWgmma) {  // the low-rank branch on the tensor cores: R / 16 wgmmas into the scaled accumulators
    if (EP != 1 && R >= 16) {
      uint32_t up[4][4];
#pragma unroll
      for (int e = 0; e < 4; ++e) up[0][e] = up0[e], up[1][e] = up1[e], up[2][e] = 0, up[3][e] = 0;
      if (R >= 48) load_up(2, up[2]);
      if (R >= 64) load_up(3, up[3]);
      lowrank_wgmma<T, BT>(acc, up, Cfg::kLrRow == 64 ? desc_k64(lr_s) : desc_k128(lr_s), R / 16);
    }
  }
  for (int ks = 0; ks < (kLrWgmma ? 0 : R / 16); ++ks) {
    uint32_t a[4];
    if (PS && ks < 2) {
#pragma unroll
      for (int e = 0; e < 4; ++e) a[e] = ks == 0 ? up0[e] : up1[e];
    } else {
      load_up(ks, a);
    }
    // ldmatrix.x2: lanes 0-7 address rows of the r-block ks*16, lanes 8-15 of ks*16 + 8
    const int lrow = lane & 7, lmat = (lane >> 3) & 1;
#pragma unroll
    for (int j = 0; j < BT / 8; ++j) {
      uint32_t b0, b1;
      const uint32_t addr = lr_s + (j * 8 + lrow) * lr_stride + (ks * 16 + lmat * 8) * 2;
      asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(b0), "=r"(b1) : "r"(addr));
      float d[4] = {__int_as_float(acc[4 * j]), __int_as_float(acc[4 * j + 1]), __int_as_float(acc[4 * j + 2]),
                    __int_as_float(acc[4 * j + 3])};
      mma_16816<T>(d, a, b0, b1);
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[4 * j + e] = __float_as_int(d[e]);
    }
  }
  stamp_acc(10);  // low-rank branch added
  lr_free();
  life(8);
  if constexpr (!PS) {
    bA = bias ? Dt<T>::to_f(bias[rowA]) : 0.f;
    bB = bias ? Dt<T>::to_f(bias[rowB]) : 0.f;
  }
  const int nbase = n0 + wg * 64 + warp * 16;
  // tma_store: each warpgroup's 64 weight rows x BT tokens go to shared memory as [token][64] bf16 rows of 128
  // bytes (128-byte swizzle: conflict-free, since a warp's 8 tokens g hit 8 different 16-byte chunks), and one
  // TMA store writes them (full lines, rows past M clipped). Split tiles, and ranks whose branch leaves no
  // room after the low-rank tile, keep the per-thread stores. PS always stores so, from staging of its own, and
  // leaves the store in flight under the next tile's stages (waited for before the staging is rewritten).
  const int lr_bytes = (BT * lr_stride + 1023) / 1024 * 1024;
  const bool ts = PS || (tma_store && splits == 1 && lr_bytes + BT * 256 <= NS * Cfg::kStageBytes);
  const uint32_t stage_out = (PS ? out_region : sbase + lr_bytes) + wg * BT * 128 / kPieces;
  if constexpr (PS) {  // the previous tile's store has read the staging
    if ((tid & 127) == 0) tma_store_wait_read();
    asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");
  }
  life(9);
  // the tile's values in the fragment layout, bias (and GELU) added: p0 rows nbase + g, p1 rows nbase + 8 + g, tokens
  // j*8 + 2t, + 1
  if constexpr (kPieces > 1) {  // piece by piece: stage, store, wait until the store has read it, the next piece
    const int col = (n0 + wg * 64) * 2;
    constexpr int kPT = BT / kPieces;  // tokens per piece
    auto piece = [&](auto at) {
      constexpr int P = decltype(at)::value, J0 = P * kPT / 8, J1 = (P + 1) * kPT / 8;
      // (split, EP 18) a CTA stores only its octets jlo .. jhi - 1, from the piece(s) that hold them
      if (kSplitPieces && splits > 1 && (jhi <= J0 || jlo >= J1)) return;
      stage_output<T, BT, J0, J1>(acc, stage_out, warp, lane, bA, bB, act);
      if (P + 1 == kPieces) life(10);  // (the stamped twin: the last piece's sub-steps)
      fence_proxy_async_smem();
      if (P + 1 == kPieces) life(11);
      asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");
      if (P + 1 == kPieces) life(12);
      if ((tid & 127) == 0 && !life_no_store) {  // (the stamped twin's probe stores nothing)
        if (kSplitPieces && splits > 1) {  // boxes of 8 rows (the split's tensor map), octet j at (j - J0) KB
          for (int j = max(jlo, J0); j < min(jhi, J1) && m0 + 8 * j < M; ++j)
            tma_store_2d_async(&tm_y, stage_out + (j - J0) * 1024, col, m0 + 8 * j);
          if (P + 1 < kPieces) tma_store_wait_read();
        } else if (P == 0 || m0 + P * kPT < M) {
          tma_store_2d_async(&tm_y, stage_out, col, m0 + P * kPT);
          if (P + 1 < kPieces) tma_store_wait_read();
        }
      }
      if (P + 1 < kPieces) asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg) : "memory");
    };
    static_assert(kPieces == 2, "halves");
    piece(std::integral_constant<int, 0>{});
    piece(std::integral_constant<int, 1>{});
  } else if (ts) {
    if (flags & kFlagActInLoop) stage_output_as<T, BT, -1>(acc, stage_out, warp, lane, bA, bB, act);
    else stage_output<T, BT>(acc, stage_out, warp, lane, bA, bB, act);
  }
#pragma unroll
  for (int j = 0; j < (ts || kPieces > 1 ? 0 : BT / 8); ++j) {
    uint32_t p0, p1;
    pack_octet<T>(acc, j, bA, bB, act, p0, p1);
    const uint32_t q0 = movmatrix_trans(p0);  // token j*8+g, rows nbase + 2t, +1
    const uint32_t q1 = movmatrix_trans(p1);  // token j*8+g, rows nbase + 8 + 2t, +1
    const int m = m0 + j * 8 + g;
    if (m < M && j >= jlo && j < jhi) {
      T* dst = y + (int64_t)m * ldy + nbase + 2 * t;
      *reinterpret_cast<uint32_t*>(dst) = q0;
      *reinterpret_cast<uint32_t*>(dst + 8) = q1;
    }
  }
  if (ts && kPieces == 1) {
    life(10);
    fence_proxy_async_smem();
    life(11);
    asm volatile("bar.sync %0, 128;\n" ::"r"(1 + wg));  // the warpgroup's output tile is in shared memory
    life(12);
    if ((tid & 127) == 0 && EP != 2 && !life_no_store) {
      if constexpr (PS) {
        if (splits == 1) {
          tma_store_2d_async(&tm_y, stage_out, (n0 + wg * 64) * 2, m0);
        } else {  // split (RF): this CTA's token octets, boxes of 8 rows (the staging is 1024-aligned per octet)
          for (int j = jlo; j < jhi && m0 + 8 * j < M; ++j)
            tma_store_2d_async(&tm_y, stage_out + j * 1024, (n0 + wg * 64) * 2, m0 + 8 * j);
        }
      } else
        tma_store_2d(&tm_y, stage_out, (n0 + wg * 64) * 2, m0);
    }
  }
  life(6);
  }  // tiles
  if constexpr (PS) {  // the last store has read the staging: the CTA may exit
    if ((tid & 127) == 0) tma_store_wait_read();
  }
  if constexpr (kLife) {  // this warpgroup's stamps, written by this thread, out
    if (splits > 1) life(15);
    const int life_cta = (int)blockIdx.x * splits + z;
    if (trace && life_cta < kLifeCtas && (tid & 127) == 0)
      for (int i = 0; i < kLifeTiles * 8; ++i) {
        const int at = (life_cta * CW + wg) * kLifeTiles * 8 + i, from = (wg * kLifeTiles + i / 8) * 16 + i % 8;
        trace[at] = life_s[from];
        if (life_sub) trace[kLifeCtas * CW * kLifeTiles * 8 + at] = life_s[from + 8];
      }
  }
  stamp(2);
#endif
}

// dst[r, c] = src[r, c] for c < n16 (16-byte units; rows ldd / lds units apart): a prefix's columns into the row
// block before the GEMM's output (w4a4_gemm_2l_fo_ep), U rows per thread so that each has U loads in flight.
template <int U>
__global__ void copy_columns_kernel(uint4* __restrict__ dst, int64_t ldd, const uint4* __restrict__ src, int64_t lds,
                                    int64_t rows, int n16) {
  pdl_wait();
  pdl_trigger();  // (set_pdl) the GEMM after it may be scheduled as SMs free up
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= n16) return;
  for (int64_t r0 = (int64_t)blockIdx.y * U; r0 < rows; r0 += (int64_t)gridDim.y * U) {
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (r0 + u < rows) v[u] = __ldg(src + (r0 + u) * lds + c);
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (r0 + u < rows) dst[(r0 + u) * ldd + c] = v[u];
  }
}

bool g_tma_store = false;  // the epilogue's TMA store (off until measured)
long long g_late_launches = 0;  // launches with a late low-rank tile (tests: which path ran)
// the register-fragment kernels' low-rank tiles loaded by the producer warpgroup's idle warps rather than by the last
// consumer warpgroup (perf-notes v2.33; opt-in until measured)
bool g_lr_producer = false;
long long g_lr_producer_launches = 0;  // (tests: which path ran)
// the register-fragment kernels' producer asking L2 for the next tile's first stages halfway through each tile
// (perf-notes v2.33; opt-in until measured)
bool g_l2_prefetch = false;
long long g_l2_prefetch_launches = 0;  // (tests: which path ran)
bool g_life_no_store = false;  // set_gemm_2l_tile_life(.., no_store): the EP 12 / 19 kernels leave their output unwritten
bool g_life_sub = false;       // set_gemm_2l_tile_life(.., substeps): the EP 9 / 12 / 19 kernels stamp sub-steps too
// set_gemm_2l_tile_life(.., loop_probe): EP 21's loop probes, 1 no widening (EP 22), 2 no wgmmas (23), 3 no activation
// loads (24), 4 neither activation loads nor wgmmas (25), 5 each stage given back at the next one's third k-step (26),
// 6 the wgmmas' A operand from shared memory (27)
int g_life_probe = 0;
bool g_act_in_loop = false;    // set_gemm_2l_act_in_loop: the output staging as before v2.34 (A/B)
bool g_lr_unrolled = true;     // set_gemm_2l_lr_unrolled (perf-notes v2.34's g.47; the default since v2.35)
long long g_lr_unrolled_launches = 0;  // (tests: which path ran)
int g_release_step = 0;        // set_gemm_2l_release_step (perf-notes v2.35's g.49: 0 the default, 2 as before; v2.41:
                               // 2 for the unsplit one-warpgroup tiles too)
long long g_release_step_launches = 0;  // (tests: launches of the later-release instances, A/B)
// set_gemm_2l_out_pieces: the token pieces the output is staged in (2 by default since v2.36; 1 for A/B), [0] two
// warpgroups' unsplit 256-token tiles (g.51), [1] three warpgroups' 192-token tiles (g.50)
int g_out_pieces[2] = {2, 2};
long long g_out_halves_launches = 0;  // (tests: which path ran)
bool g_split_halves = true;            // set_gemm_2l_split_halves (g.54, the default since v2.37)
long long g_split_halves_launches = 0;  // (tests: which path ran)
thread_local Gemm2lLaunch g_last_launch;  // the last tile-GEMM launch (the binding learns the chain's rule from it)

template <typename T, int BT, int G, bool TR, bool W8, bool WS = false, bool PS = false, bool FO = false, int CW = 2,
          int EP = 0, int LR = 0>
cudaError_t launch_2l(const W4A4Gemm2lArgs& a, int splits, long long* trace, cudaStream_t stream, int num_sms = 0) {
  auto kern = w4a4_gemm_2l_sm90_kernel<T, BT, G, TR, W8, WS, PS, FO, CW, EP, LR>;
  using Cfg = Tile2l<BT, W8, WS, PS, FO, CW, LR, out_pieces(EP)>;
  constexpr int smem = Cfg::kSmem, rows = Cfg::kTileRows;
  CUtensorMap tm_x, tm_w, tm_s, tm_y = {};
  // tma_store: the output as bytes [M, 2 N], boxes of BT rows (PS split: 8, a token octet) x 128 bytes (64
  // elements), 128-byte swizzle (encoded only when used: each encoding is host time per call)
  const int64_t ldy = a.ldy ? a.ldy : a.N;
  constexpr int kBox = BT / out_pieces(EP);  // (set_gemm_2l_out_pieces) boxes of a piece's tokens
  if ((g_tma_store || PS) && !make_map(&tm_y, a.y, a.M, (uint64_t)a.N * 2, PS && splits > 1 ? 8 : kBox,
                                       128, CU_TENSOR_MAP_SWIZZLE_128B, (uint64_t)ldy * 2))
    return cudaErrorInvalidValue;
  const bool maps = make_map(&tm_x, a.xq, a.M, a.K, BT, kBK, CU_TENSOR_MAP_SWIZZLE_128B) &&
                    (W8 ? make_map(&tm_w, a.qweight, a.N, a.K, rows, kBK, CU_TENSOR_MAP_SWIZZLE_128B) &&
                              make_map(&tm_s, a.qweight, a.N, a.K, rows, kBK, CU_TENSOR_MAP_SWIZZLE_128B)
                        : make_map(&tm_w, a.qweight, a.N, a.K / 2, rows, kBK / 2, CU_TENSOR_MAP_SWIZZLE_64B) &&
                              make_map(&tm_s, a.wscales, a.K / G, a.N, kBK / G, rows, CU_TENSOR_MAP_SWIZZLE_NONE));
  if (!maps) return cudaErrorInvalidValue;
  static bool smem_set[64] = {};  // the attribute is per device: set once on each
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return e;
  if (dev >= 64 || !smem_set[dev]) {
    e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) return e;
    if (dev < 64) smem_set[dev] = true;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(a.N / rows, (a.M + BT - 1) / BT, splits);
  if constexpr (PS) {  // unsplit: one CTA per SM at most, each walking tiles blockIdx.x, + gridDim.x, ...; split (the
    // register-fragment loop): one tile per CTA, its K range by blockIdx.z
    const long tiles = (long)(a.N / rows) * ((a.M + BT - 1) / BT);
    cfg.gridDim = dim3((unsigned)(splits > 1 ? tiles : std::min<long>(tiles, num_sms > 0 ? num_sms : tiles)), 1, splits);
  }
  cfg.blockDim = dim3(Cfg::kThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = 1;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = splits;
  cfg.attrs = attr;
  g_last_launch = {(long)cfg.gridDim.x * cfg.gridDim.y * cfg.gridDim.z, PS};
  // late: after the chained down projection (set_lr_chain), launched programmatically whatever set_pdl says
  constexpr bool kExact = exact(EP);
  const int late = PS && kExact && a.lr_late && pdl_device() ? kFlagLrLate : 0;
  if (late) ++g_late_launches;
  const int lr_prod = PS && FO && kExact && g_lr_producer ? kFlagLrProducer : 0;
  if (lr_prod) ++g_lr_producer_launches;
  const int l2_prefetch = PS && FO && kExact && g_l2_prefetch ? kFlagL2Prefetch : 0;
  if (l2_prefetch) ++g_l2_prefetch_launches;
  const int no_store = stamped(EP) && g_life_no_store ? kFlagNoStore : 0;
  const int life_sub = (EP == 9 || stamped(EP)) && g_life_sub ? kFlagLifeSub : 0;
  const int act_in_loop = g_act_in_loop ? kFlagActInLoop : 0;
  const int lr_rolled = stamped(EP) && !g_lr_unrolled ? kFlagLrRolled : 0;
  constexpr bool kPipeEp = pipelined(EP) && EP != 14;  // the pipelined loop's kernels but EP 14 (rolled copies)
  if (PS && kPipeEp && !lr_rolled && !lr_prod && a.R == Cfg::kLrRank) ++g_lr_unrolled_launches;
  if (EP == 15 || EP == 16) ++g_release_step_launches;
  if (EP == 17 || EP == 19) ++g_out_halves_launches;
  if (EP == 18 || EP == 20) ++g_split_halves_launches;
  cfg.numAttrs = pdl_launch_attr(attr, splits > 1 ? 1 : 0, late);
  return cudaLaunchKernelEx(&cfg, kern, tm_x, tm_w, tm_s, tm_y, a.xscale, a.wchannel, static_cast<const T*>(a.lr),
                            static_cast<const T*>(a.proj_up), static_cast<const T*>(a.bias), static_cast<T*>(a.y),
                            a.M, a.N, a.K, a.R, trace, g_tma_store ? 1 : 0, ldy, a.act, a.ldlr ? a.ldlr : (int64_t)a.R,
                            late | lr_prod | l2_prefetch | no_store | life_sub | act_in_loop | lr_rolled);
}

long long* g_trace = nullptr;  // set: launch the tracing kernel (bfloat16, group 64 only)

template <typename T, int G, bool TR, bool W8 = false, bool WS = false, bool PS = false, bool FO = false, int LR = 0,
          int EP = 0>
cudaError_t launch_2l_tile(const W4A4Gemm2lArgs& a, Gemm2lPlan p, cudaStream_t stream, int num_sms = 0) {
  if constexpr (!PS || FO) {  // PS plans leave out 256 (its accumulators and loop state would spill), except the
    // register-fragment loop's (no A tiles; 3 stages)
    if (p.tile_tokens == 256)
      return launch_2l<T, 256, G, TR, W8, WS, PS, FO, 2, EP, LR>(a, p.splits, g_trace, stream, num_sms);
  }
  if (p.tile_tokens == 224)
    return launch_2l<T, 224, G, TR, W8, WS, PS, FO, 2, EP, LR>(a, p.splits, g_trace, stream, num_sms);
  if (p.tile_tokens == 128)
    return launch_2l<T, 128, G, TR, W8, WS, PS, FO, 2, EP, LR>(a, p.splits, g_trace, stream, num_sms);
  return launch_2l<T, 64, G, TR, W8, WS, PS, FO, 2, EP, LR>(a, p.splits, g_trace, stream, num_sms);
}

template <typename T, int G>
cudaError_t launch_2l_plan(const W4A4Gemm2lArgs& a, Gemm2lPlan p, cudaStream_t stream) {
  if constexpr (std::is_same_v<T, __nv_bfloat16> && G == 64) {
    if (g_trace && !a.frag) return launch_2l_tile<T, G, true>(a, p, stream);
  }
  if (a.frag) return launch_2l_tile<T, G, false, false, false, false, true>(a, p, stream);
  return launch_2l_tile<T, G, false>(a, p, stream);
}

int g_force_splits = 0;
bool g_w8_producer = false;  // the int8-weight GEMM's producer-warp loop (WS); off until measured
int g_persistent = -1;  // the persistent kernels (PS): 1 wherever they apply, 0 never, -1 where they pay
// Packed weights in fragment order (a.frag): the persistent kernel runs its register-fragment loop (RF), the others
// widen from that order into their A tiles. H200, perf-notes v2.14: an RF stage 0.630 us against 0.740 for the
// A-tile loop (the chain 0.90-0.93x at M = 4608); RF on canonical weights reordered in shared memory by the
// producer's warps gained nothing.
// A persistent tile's epilogue runs under the next tile's loads (~2.5-3 us less per tile), but its output
// staging and low-rank tile leave fewer stages: packed +0.03 us per stage (-6 % at 4608 x 3072 x 3072, within
// +-3 % at the larger FLUX.1 shapes), int8 weights +0.07 (break-even near 45 stages of K); H200, perf-notes v2.13
constexpr int kPsMaxK = 5120;
constexpr int kTiles[4] = {256, 224, 128, 64};  // the plan's candidates, in order of preference
int tile_bit(int bt) {
  for (int i = 0; i < 4; ++i)
    if (kTiles[i] == bt) return 1 << i;
  return 0;
}
int g_plan_tiles = 15;  // the token tiles the plan may choose (tests and benchmarks force or restrict)
bool g_rf_wide_lr = true;  // the register-fragment loop for branch ranks 33-64 (LR = 64), e.g. a LoRA on the branch
int g_rf_warpgroups = 0;  // the register-fragment loop: 0 the model picks 2 or 3 consumer warpgroups, 2 or 3 forced
int g_rf3_tile = 0;       // 128 or 192 forces the three-warpgroup loop's token tile (0: the model)
int g_rf1_tile = 256;     // set_gemm_2l_rf_warpgroups(1, tile): one warpgroup's token tile, 128 or 256 (g.56)
long long g_rf1_launches = 0;  // (tests: which path ran)
// one warpgroup's tiles also where rf_cost puts them 5 % below every other kernel, at M <= kOneMaxM (g.56 by the cost
// model, perf-notes v2.38; the default since v2.39: the chain 0.88x / 0.97x at 256 / 512 x 3072 x 3072, elsewhere the
// same picks; off: forced only)
bool g_rf1_auto = true;
constexpr int kOneMaxM = 512;  // (the token counts it was timed at: one or two 256-token tiles)
// the register-fragment loop, unsplit or split over a cluster, wherever its cost models beat the plan's kernel, not
// only where the plan is unsplit with two tiles per SM (H200, perf-notes v2.23: 0.84-0.93x the GEMM's time at M = 256 /
// 512 / 1024 where it differs, neutral elsewhere and on the whole model; on by default since)
bool g_rf_by_cost = true;
// the register-fragment loop with K split over a cluster, one tile per CTA (few tiles: M of a few hundred tokens):
// 0 where rf_cost with s > 1 beats the other kernels (with g_rf_by_cost), 1 never, 2-8 forced (tests, benchmarks)
int g_rf_splits = 0;
int g_gemm_probe = 0;     // 1-8: the persistent register-fragment kernel's probes (bfloat16, 224 tokens)
bool g_rf_lead = false;   // the unsplit two-warpgroup register-fragment loop at 224 tokens with leading turns (EP 8)
long long g_lead_launches = 0;  // (tests: which kernel ran)
long long* g_life = nullptr;    // set_gemm_2l_tile_life: the EP 9 / 12 / 19 kernels' stamps go here
// the register-fragment loop (two warpgroups: unsplit or split, any token tile; three: 128 / 192 tokens; branch rank
// <= 32) pipelined within each warpgroup (EP 10; perf-notes v2.31) rather than the warpgroups taking turns: on by
// default since v2.32 (H100: a 224-token stage 6 % shorter, the chain 0.95-1.01x at 4096 / 4608 tokens, the same bits)
bool g_rf_pipelined = true;
long long g_pipelined_launches = 0;  // (tests: which kernel ran)
int g_rf3_stage[2] = {0, 0};  // rf_cost's three-warpgroup stage cycles at 128 / 192 tokens (0: the model's)
// The three-warpgroup choice: 1 (v2.25, default) a stage of 1100 / 1250 cycles at 128 / 192 tokens (refitted to v2.23's
// sweep) and three warpgroups only where they beat the two-warpgroup loop's model; 0 (v2.24) the v2.15 fit (1290 /
// 1525), and where only set_gemm_2l_rf_by_cost made the loop persistent, against the plan's kernel instead. H200,
// perf-notes v2.25: 1 is 0.91-0.95x at 4608 x 3072 x 3072 / 12288 x 3072 and 512 x 3072 x 12288; the refit alone took
// three warpgroups at 512 x 3072 x 3072 too, 1.14x slower, which the comparison with the two-warpgroup model excludes.
int g_rf3_model = 1;

// The register-fragment loop's cost in cycles, fitted on H200 (perf-notes v2.15, gemm_2l_ksweep.py): two consumer
// warpgroups, a stage ~2 BT + 700 and a tile's fixed part ~1000 + 37 BT (--tile 224 / 128 / 64); three (192-row
// tiles), a stage ~1525 at 192 tokens (~1290 at 128) and ~11600 fixed (~7800), so per MAC no faster than two:
// they pay only where 192-row tiles fill the SMs better (M ~ 256, N = 9216 / 12288). One CTA per SM walks
// ceil(tiles / SMs) tiles at most. It also picks the two-warpgroup loop's token tile, 256 included (extrapolated from
// the fit; measured 0.84-0.94x the 224-token plan at M = 4096, neutral at 4608: perf-notes v2.18).
// Split over a cluster of s CTAs along K (two warpgroups, one tile per CTA): a CTA runs ceil(KT / s) stages, the tile's
// fixed part and the exchange of the int32 partials, ~2500 + 6 BT (s - 1) cycles; CTAs in waves of one per SM (fitted
// on H200, perf-notes v2.23, gemm_2l_fo_plans.py --splits at M = 256 / 512, where a one-tile CTA's stage was also ~2 BT
// + 700). One consumer warpgroup (64-row tiles, g.56; fitted on H100, perf-notes v2.38, benchmarks/rf_cost_fit.py
// --one-grid on gemm_2l_fo_plans.py at 256 / 512 tokens): a stage ~560 cycles at 128 tokens, ~740 at 256 (as
// few_token_fixed.py measured them), a tile's fixed part 4500 / 5400 (the middle of the fits that pick the best plan).
long rf_cost(int M, int N, int K, int num_sms, int cw, int bt, int s = 1, bool halves256 = false) {
  const long tiles = (long)(N / (64 * cw)) * ((M + bt - 1) / bt) * s;
  const long fit3 = g_rf3_model ? (bt == 192 ? 1250 : 1100) : (bt == 192 ? 1525 : 1290);
  const long stage3 = g_rf3_stage[bt == 192] ? g_rf3_stage[bt == 192] : fit3;
  // (halves256: two warpgroups' unsplit 256-token tile runs with its output in halves, g.51: ~1000, refitted in v2.36
  // to gemm_2l_fo_plans.py at 4608 / 4096 / 1024 tokens, where it takes 9-16 % less time than with three stages; the
  // split kernel in halves, g.54, keeps 2 BT + 700: the mirror, benchmarks/rf_cost_fit.py, picks the best timed plan
  // at all 25 shapes with any split stage from 1080 cycles up, v2.37)
  const long stage = cw == 1 ? (bt == 256 ? 740 : 560)
                     : cw == 3 ? stage3 : bt == 256 && s == 1 && halves256 ? 1000 : 2L * bt + 700;
  const long fixed = (cw == 1 ? (bt == 256 ? 5400 : 4500) : cw == 3 ? (bt == 192 ? 11600 : 7800) : 1000 + 37L * bt) +
                     (s > 1 ? 2500 + 6L * bt * (s - 1) : 0);
  return (tiles + num_sms - 1) / num_sms * ((K / kBK + s - 1) / s * stage + fixed);
}

}  // namespace

// Token tile and K split from a cost model fitted on H100 (benchmarks/gemm_2l_plan_sweep.py): a CTA costs
// ~0.72 us per 128-deep K stage whatever its token tile (the widening and the barriers, not the wgmmas,
// set a stage's pace) plus a fixed ~0.035 us per token of its tile (prologue, epilogue stores), ~0.065 us
// per token when split (the cluster exchange); CTAs run in waves of one per SM. The 224-token tile is for
// wave quantisation: 4608 tokens x 24 weight tiles are 432 tiles of 256 (3.3 waves of 132, so 4) or 504
// of 224 (3.8: also 4, each shorter by the fixed part).
static Gemm2lPlan plan_among(int M, int N, int K, int num_sms, int tile_mask, long* cost_ns = nullptr) {
  const int KT = K / kBK;
  Gemm2lPlan best{0, g_force_splits ? g_force_splits : 1};
  long best_cost = -1;
  for (int bt : kTiles) {
    if (!(tile_mask & tile_bit(bt))) continue;
    if (!best.tile_tokens) best.tile_tokens = bt;  // kept if no split fits (a forced split > K stages)
    const long tiles = (long)(N / kRows) * ((M + bt - 1) / bt);
    for (int s : {1, 2, 4, 8}) {
      if (s > KT || (g_force_splits && s != g_force_splits)) continue;
      const long waves = (tiles * s + num_sms - 1) / num_sms;
      const long cost = waves * ((s > 1 ? 65 : 35) * bt + 720 * ((KT + s - 1) / s));
      if (best_cost < 0 || cost < best_cost) best = {bt, s}, best_cost = cost;
    }
  }
  if (cost_ns) *cost_ns = best_cost;
  return best;
}

Gemm2lPlan gemm_2l_plan(int M, int N, int K, int num_sms) { return plan_among(M, N, K, num_sms, g_plan_tiles); }

void set_gemm_2l_tile_tokens(int bt) { g_plan_tiles = tile_bit(bt) ? tile_bit(bt) : 15; }
void set_gemm_2l_plan_tiles(const std::vector<int>& tiles) {
  int mask = 0;
  for (int bt : tiles) mask |= tile_bit(bt);
  g_plan_tiles = mask ? mask : 15;
}
void set_gemm_2l_splits(int s) { g_force_splits = (s == 1 || s == 2 || s == 4 || s == 8) ? s : 0; }
void set_gemm_2l_trace(long long* trace) { g_trace = trace; }
void set_gemm_2l_w8_producer(bool on) { g_w8_producer = on; }
void set_gemm_2l_tma_store(bool on) { g_tma_store = on; }
bool gemm_2l_tma_store() { return g_tma_store; }
bool gemm_2l_w8_producer() { return g_w8_producer; }
void set_gemm_2l_persistent(int mode) { g_persistent = mode < 0 ? -1 : (mode > 0 ? 1 : 0); }
int gemm_2l_persistent() { return g_persistent; }
void set_gemm_2l_rf_warpgroups(int cw, int tile) {
  g_rf_warpgroups = cw >= 1 && cw <= 3 ? cw : 0;
  g_rf3_tile = cw != 1 && (tile == 128 || tile == 192) ? tile : 0;
  g_rf1_tile = cw == 1 && tile == 128 ? 128 : 256;
}
long long gemm_2l_rf1_launches() { return g_rf1_launches; }
void set_gemm_2l_rf1_auto(bool on) { g_rf1_auto = on; }
bool gemm_2l_rf1_auto() { return g_rf1_auto; }
int gemm_2l_rf_warpgroups() { return g_rf_warpgroups; }
void set_gemm_2l_rf3_stage(int at128, int at192) {
  g_rf3_stage[0] = at128 > 0 ? at128 : 0;
  g_rf3_stage[1] = at192 > 0 ? at192 : 0;
}
std::vector<int> gemm_2l_rf3_stage() {
  return {g_rf3_stage[0] ? g_rf3_stage[0] : g_rf3_model ? 1100 : 1290,
          g_rf3_stage[1] ? g_rf3_stage[1] : g_rf3_model ? 1250 : 1525};
}
void set_gemm_2l_rf3_model(int version) { g_rf3_model = version == 0 ? 0 : 1; }
int gemm_2l_rf3_model() { return g_rf3_model; }
void set_gemm_2l_rf_wide_lr(bool on) { g_rf_wide_lr = on; }
bool gemm_2l_rf_wide_lr() { return g_rf_wide_lr; }
void set_gemm_2l_rf_by_cost(bool on) { g_rf_by_cost = on; }
bool gemm_2l_rf_by_cost() { return g_rf_by_cost; }
void set_gemm_2l_rf_splits(int s) { g_rf_splits = s >= 1 && s <= 8 ? s : 0; }
int gemm_2l_rf_splits() { return g_rf_splits; }
void set_gemm_2l_probe(int probe) { g_gemm_probe = probe >= 1 && probe <= 8 ? probe : 0; }
void set_gemm_2l_rf_lead(bool on) { g_rf_lead = on; }
bool gemm_2l_rf_lead() { return g_rf_lead; }
long long gemm_2l_rf_lead_launches() { return g_lead_launches; }
void set_gemm_2l_tile_life(long long* stamps, bool no_store, bool substeps, int loop_probe) {
  g_life = stamps;
  g_life_no_store = stamps && no_store;
  g_life_sub = stamps && substeps;
  g_life_probe = stamps && loop_probe >= 1 && loop_probe <= 6 ? loop_probe : 0;
}
void set_gemm_2l_rf_pipelined(bool on) { g_rf_pipelined = on; }
void set_gemm_2l_lr_by_producer(bool on) { g_lr_producer = on; }
void set_gemm_2l_act_in_loop(bool on) { g_act_in_loop = on; }
void set_gemm_2l_lr_unrolled(bool on) { g_lr_unrolled = on; }
bool gemm_2l_lr_unrolled() { return g_lr_unrolled; }
long long gemm_2l_lr_unrolled_launches() { return g_lr_unrolled_launches; }
void set_gemm_2l_release_step(int j) { g_release_step = j == 1 || j == 2 ? j : 0; }
int gemm_2l_release_step() { return g_release_step; }
long long gemm_2l_release_step_launches() { return g_release_step_launches; }
void set_gemm_2l_out_halves(bool on) { g_out_pieces[1] = on ? 2 : 1; }
bool gemm_2l_out_halves() { return g_out_pieces[1] == 2; }
long long gemm_2l_out_halves_launches() { return g_out_halves_launches; }
bool set_gemm_2l_out_pieces(int tile, int pieces) {
  if (tile == 256 && (pieces == 1 || pieces == 2)) return g_out_pieces[0] = pieces, true;
  if (tile == 192 && (pieces == 1 || pieces == 2)) return g_out_pieces[1] = pieces, true;
  return false;
}
int gemm_2l_out_pieces(int tile) { return tile == 256 ? g_out_pieces[0] : tile == 192 ? g_out_pieces[1] : 1; }
void set_gemm_2l_split_halves(bool on) { g_split_halves = on; }
bool gemm_2l_split_halves() { return g_split_halves; }
long long gemm_2l_split_halves_launches() { return g_split_halves_launches; }
bool gemm_2l_act_in_loop() { return g_act_in_loop; }
bool gemm_2l_lr_by_producer() { return g_lr_producer; }
long long gemm_2l_lr_by_producer_launches() { return g_lr_producer_launches; }
void set_gemm_2l_l2_prefetch(bool on) { g_l2_prefetch = on; }
bool gemm_2l_l2_prefetch() { return g_l2_prefetch; }
long long gemm_2l_l2_prefetch_launches() { return g_l2_prefetch_launches; }
// The two-warpgroup register-fragment loop (fragment order, branch rank <= 32) on the plan's token tile and K split:
// with turns (EP 0), or pipelined within each warpgroup (EP 10, set_gemm_2l_rf_pipelined)
static cudaError_t launch_rf(const W4A4Gemm2lArgs& a, Gemm2lPlan p, cudaStream_t stream, int num_sms) {
  const bool bf = a.dtype == DType::kBF16;
  if (g_rf_pipelined) {
    ++g_pipelined_launches;
    if (g_release_step > 0 && bf && p.tile_tokens == 224 && p.splits == 1)  // (its two-warpgroup instances)
      return g_release_step == 2
                 ? launch_2l<__nv_bfloat16, 224, 64, false, false, true, true, true, 2, 15>(a, 1, nullptr, stream, num_sms)
                 : launch_2l<__nv_bfloat16, 224, 64, false, false, true, true, true, 2, 16>(a, 1, nullptr, stream, num_sms);
    if (!g_lr_unrolled && bf && p.tile_tokens == 224 && p.splits == 1)  // (the rolled copies' two-warpgroup instance)
      return launch_2l<__nv_bfloat16, 224, 64, false, false, true, true, true, 2, 14>(a, 1, nullptr, stream, num_sms);
    if (g_life && bf && g_split_halves && p.tile_tokens == 256 && p.splits > 1 && !a.lr_late)  // (stamps, EP 20)
      return launch_2l<__nv_bfloat16, 256, 64, false, false, true, true, true, 2, 20>(a, p.splits, g_life, stream, num_sms);
    if (g_split_halves && p.tile_tokens == 256 && p.splits > 1)  // g.54: the split kernel's fourth stage (v2.37)
      return bf ? launch_2l<__nv_bfloat16, 256, 64, false, false, true, true, true, 2, 18>(a, p.splits, nullptr, stream, num_sms)
                : launch_2l<__half, 256, 64, false, false, true, true, true, 2, 18>(a, p.splits, nullptr, stream, num_sms);
    if (g_out_pieces[0] == 2 && p.tile_tokens == 256 && p.splits == 1)  // g.51: four stages, not three (v2.36)
      return bf ? launch_2l<__nv_bfloat16, 256, 64, false, false, true, true, true, 2, 17>(a, 1, nullptr, stream, num_sms)
                : launch_2l<__half, 256, 64, false, false, true, true, true, 2, 17>(a, 1, nullptr, stream, num_sms);
    return bf ? launch_2l_tile<__nv_bfloat16, 64, false, false, true, true, true, 0, 10>(a, p, stream, num_sms)
              : launch_2l_tile<__half, 64, false, false, true, true, true, 0, 10>(a, p, stream, num_sms);
  }
  return bf ? launch_2l_tile<__nv_bfloat16, 64, false, false, true, true, true>(a, p, stream, num_sms)
            : launch_2l_tile<__half, 64, false, false, true, true, true>(a, p, stream, num_sms);
}
bool gemm_2l_rf_pipelined() { return g_rf_pipelined; }
long long gemm_2l_rf_pipelined_launches() { return g_pipelined_launches; }
long long gemm_2l_late_launches() { return g_late_launches; }
Gemm2lLaunch gemm_2l_last_launch() { return g_last_launch; }
bool gemm_2l_plan_forced() {
  return g_plan_tiles != 15 || g_force_splits || g_persistent == 1 || g_rf_warpgroups || g_rf3_tile || g_gemm_probe ||
         g_rf_splits > 1 ||
         g_trace || g_tma_store || g_w8_producer;
}



cudaError_t launch_w4a4_gemm_2l(const W4A4Gemm2lArgs& a, int num_sms, cudaStream_t stream) {
  // ping-pong consumers (opt-in): the GEMMs its mode takes, unless a probe or trace kernel is asked for (with
  // set_gemm_2l_tile_life it stamps its tiles' steps)
  if (gemm_2l_rf_pingpong() && gemm_2l_pingpong_takes(a, num_sms) && !g_trace && !g_gemm_probe)
    return launch_w4a4_gemm_2l_pingpong(a, stream, num_sms, g_life);
  long plan_ns = 0;
  const Gemm2lPlan p = plan_among(a.M, a.N, a.K, num_sms, g_plan_tiles, &plan_ns);
  const bool bf = a.dtype == DType::kBF16;
  // persistent (int8 weights, or packed with group 64): unsplit plans, and branches whose low-rank tile fits
  // the memory set aside for it
  // auto: where the plan is unsplit anyway, at least two tiles per SM (a persistent CTA's first tile gains
  // nothing), and for int8 weights K <= kPsMaxK
  const bool w8 = a.group_size == 0;
  const int lr_rank = w8 ? Tile2l<64, true, true, true>::kLrRank : Tile2l<64, false, true, true>::kLrRank;
  constexpr int kWideLr = Tile2l<64, false, true, true, true, 2, 64>::kLrRank;
  const bool wide_lr = a.frag && g_rf_wide_lr && a.R > lr_rank && a.R <= kWideLr;  // e.g. a LoRA on the branch
  if (g_persistent != 0 && (w8 || (a.group_size == 64 && !g_trace)) && (a.R <= lr_rank || wide_lr)) {
    const int mask = g_plan_tiles & ~tile_bit(256);
    const Gemm2lPlan pp = plan_among(a.M, a.N, a.K, num_sms, mask ? mask : tile_bit(224));
    const long tiles = (long)(a.N / kRows) * ((a.M + pp.tile_tokens - 1) / pp.tile_tokens);
    const bool pays = p.splits == 1 && tiles >= 2L * num_sms && (!w8 || a.K <= kPsMaxK);
    bool persistent = pp.splits == 1 && (g_persistent > 0 || pays);
    // fragment order, persistent, two consumer warpgroups: the token tile by the register-fragment loop's own cost
    // model (256 included: no A tiles; at 4096 tokens 256-token tiles fill 2.9 waves of 132 SMs, 224 3.5)
    int bt2 = pp.tile_tokens;
    const bool persistent0 = persistent;  // before set_gemm_2l_rf_by_cost's widening
    // whether a 256-token tile would run launch_rf's instance with the output in halves (g.51): not the wide low-rank
    // tile's kernel (a LoRA's ranks), nor the turns of before v2.32
    const bool halves256 = !wide_lr && g_rf_pipelined && g_out_pieces[0] == 2;
    if (a.frag && (persistent || g_rf_by_cost)) {
      long c2 = -1;
      for (int bt : kTiles)
        if (g_plan_tiles & tile_bit(bt)) {
          const long c = rf_cost(a.M, a.N, a.K, num_sms, 2, bt, 1, halves256);
          if (c2 < 0 || c < c2) bt2 = bt, c2 = c;
        }
      // set_gemm_2l_rf_by_cost (default): also where the plan splits K or has fewer than two tiles per SM, wherever
      // the model puts the register-fragment loop below the plan's kernel (its model in ns, ~1.77 cycles each)
      if (g_rf_by_cost && g_persistent < 0 && g_force_splits <= 1 && c2 >= 0 && c2 * 100 < plan_ns * 177)
        persistent = true;
    }
    const long now = persistent ? rf_cost(a.M, a.N, a.K, num_sms, 2, bt2, 1, halves256) : plan_ns * 177 / 100;
    // fragment order: the register-fragment loop with K split over a cluster, one tile per CTA (few tiles), where
    // its cost beats what runs otherwise by 5 % (with set_gemm_2l_rf_by_cost), or forced
    int bts = 0, ss = 0;
    long cs = -1;
    if (a.frag && !w8 && g_force_splits <= 1 && (g_rf_splits > 1 || (g_rf_splits == 0 && g_rf_by_cost && g_persistent < 0))) {
      for (int bt : kTiles) {
        if (!(g_plan_tiles & tile_bit(bt))) continue;
        for (int sp = 2; sp <= 8; ++sp) {  // the model: 2 or 4 (clusters of 5 and 8 ran as two waves: v2.23)
          if ((g_rf_splits > 1 ? sp != g_rf_splits : sp != 2 && sp != 4) || sp > a.K / kBK || sp > bt / 8) continue;
          const long c = rf_cost(a.M, a.N, a.K, num_sms, 2, bt, sp);
          if (cs < 0 || c < cs) bts = bt, ss = sp, cs = c;
        }
      }
      if (ss && g_rf_splits == 0 && cs * 20 >= now * 19) ss = 0;
    }
    // (g.56) one consumer warpgroup on 64-row tiles of 128 / 256 tokens, pipelined: forced (set_gemm_2l_rf_warpgroups(1,
    // tile); persistent or split over a cluster, set_gemm_2l_rf_splits), or persistent at M <= kOneMaxM where its
    // model beats what runs otherwise and the three-warpgroup loop by 5 % (perf-notes v2.38: 256 / 512 x 3072 x 3072)
    int bt1 = g_rf1_tile;
    bool one = g_rf_warpgroups == 1;
    if (g_rf1_auto && g_rf_warpgroups == 0 && a.M <= kOneMaxM && g_plan_tiles == 15 && g_rf_splits <= 1 &&
        g_rf_by_cost && g_persistent < 0 && g_force_splits <= 1 && !g_trace && !g_gemm_probe) {
      long c1 = -1;
      for (int bt : {128, 256}) {
        const long c = rf_cost(a.M, a.N, a.K, num_sms, 1, bt);
        if (c1 < 0 || c < c1) bt1 = bt, c1 = c;
      }
      long rival = ss ? std::min(now, cs) : now;
      if (a.N % 192 == 0)
        for (int bt : {192, 128}) rival = std::min(rival, rf_cost(a.M, a.N, a.K, num_sms, 3, bt));
      one = c1 * 20 < rival * 19;
    }
    if (a.frag && !wide_lr && !w8 && one && g_rf_pipelined) {
      const int s1 = g_rf_splits > 1 ? std::min(g_rf_splits, std::min(a.K / kBK, bt1 / 8)) : 1;
      ++g_pipelined_launches;
      ++g_rf1_launches;
      // the bfloat16 instances of variant EP on the token tile (stamps, probes, A/B)
      auto bf16_instance = [&](auto ep, int splits, long long* life) {
        constexpr int E = decltype(ep)::value;
        using B = __nv_bfloat16;
        return bt1 == 128 ? launch_2l<B, 128, 64, false, false, true, true, true, 1, E>(a, splits, life, stream, num_sms)
                          : launch_2l<B, 256, 64, false, false, true, true, true, 1, E>(a, splits, life, stream, num_sms);
      };
      using std::integral_constant;
      if (g_life && bf && !a.lr_late && g_life_probe && s1 == 1) {  // (stamps, EP 22-27: the loop probes)
        if (g_life_probe == 1) return bf16_instance(integral_constant<int, 22>{}, 1, g_life);
        if (g_life_probe == 2) return bf16_instance(integral_constant<int, 23>{}, 1, g_life);
        if (g_life_probe == 3) return bf16_instance(integral_constant<int, 24>{}, 1, g_life);
        if (g_life_probe == 4) return bf16_instance(integral_constant<int, 25>{}, 1, g_life);
        if (g_life_probe == 6) return bf16_instance(integral_constant<int, 27>{}, 1, g_life);
        return bf16_instance(integral_constant<int, 26>{}, 1, g_life);
      }
      if (g_life && bf && !a.lr_late) return bf16_instance(integral_constant<int, 21>{}, s1, g_life);  // (stamps)
      if (g_release_step == 2 && bf && s1 == 1)  // (A/B, v2.41: each stage given back at the next one's third k-step)
        return bf16_instance(integral_constant<int, 15>{}, 1, nullptr);
      if (bt1 == 128)
        return bf ? launch_2l<__nv_bfloat16, 128, 64, false, false, true, true, true, 1, 10>(a, s1, nullptr, stream, num_sms)
                  : launch_2l<__half, 128, 64, false, false, true, true, true, 1, 10>(a, s1, nullptr, stream, num_sms);
      return bf ? launch_2l<__nv_bfloat16, 256, 64, false, false, true, true, true, 1, 10>(a, s1, nullptr, stream, num_sms)
                : launch_2l<__half, 256, 64, false, false, true, true, true, 1, 10>(a, s1, nullptr, stream, num_sms);
    }
    // fragment order, N a multiple of 192: three consumer warpgroups (192-row tiles) where the model says they
    // beat what runs otherwise by 5 % (the two-warpgroup loop, or the plan's kernel: its model in ns, ~1.77 cycles
    // each)
    // (a plan restricted to some token tiles by a test or benchmark keeps two, unless three are forced)
    // (set_gemm_2l_rf_pipelined: three warpgroups pipelined too, EP 10)
    if (a.frag && !wide_lr && a.N % 192 == 0 &&
        (g_rf_warpgroups == 3 || (g_rf_warpgroups == 0 && g_plan_tiles == 15 && g_rf_splits <= 1))) {
      int bt3 = 0;
      long c3 = -1;
      for (int bt : {192, 128}) {
        const long c = rf_cost(a.M, a.N, a.K, num_sms, 3, bt);
        if ((!g_rf3_tile || bt == g_rf3_tile) && (c3 < 0 || c < c3)) bt3 = bt, c3 = c;
      }
      // (g_rf3_model 0: against the plan's kernel where only set_gemm_2l_rf_by_cost made the loop persistent: with the
      // v2.15 fit the two-warpgroup model favoured itself, e.g. 1.08x slower than three at M = 256 x 12288, v2.23)
      const long now3 = g_rf3_model || persistent0 || !persistent ? now : plan_ns * 177 / 100;
      if (g_rf_warpgroups == 3 || c3 * 20 < (ss ? std::min(now3, cs) : now3) * 19) {
        if (g_rf_pipelined && bf && g_life && !a.lr_late) {  // a tile's life by clock64 stamps (benchmarks)
          if (bt3 == 192)
            return g_out_pieces[1] == 2
                       ? launch_2l<__nv_bfloat16, 192, 64, false, false, true, true, true, 3, 19>(a, 1, g_life, stream, num_sms)
                       : launch_2l<__nv_bfloat16, 192, 64, false, false, true, true, true, 3, 12>(a, 1, g_life, stream, num_sms);
          return launch_2l<__nv_bfloat16, 128, 64, false, false, true, true, true, 3, 12>(a, 1, g_life, stream, num_sms);
        }
        if (g_rf_pipelined) {
          ++g_pipelined_launches;
          if (g_release_step > 0 && bf && bt3 == 192)  // (its three-warpgroup instances)
            return g_release_step == 2
                       ? launch_2l<__nv_bfloat16, 192, 64, false, false, true, true, true, 3, 15>(a, 1, nullptr, stream, num_sms)
                       : launch_2l<__nv_bfloat16, 192, 64, false, false, true, true, true, 3, 16>(a, 1, nullptr, stream, num_sms);
          if (!g_lr_unrolled && bf && bt3 == 192)  // (the rolled copies' three-warpgroup instance)
            return launch_2l<__nv_bfloat16, 192, 64, false, false, true, true, true, 3, 14>(a, 1, nullptr, stream, num_sms);
          if (g_out_pieces[1] == 2 && bt3 == 192)  // (the A/B switches of older kernels above first)
            return bf ? launch_2l<__nv_bfloat16, 192, 64, false, false, true, true, true, 3, 17>(a, 1, nullptr, stream, num_sms)
                      : launch_2l<__half, 192, 64, false, false, true, true, true, 3, 17>(a, 1, nullptr, stream, num_sms);
          if (bt3 == 192)
            return bf ? launch_2l<__nv_bfloat16, 192, 64, false, false, true, true, true, 3, 10>(a, 1, nullptr, stream, num_sms)
                      : launch_2l<__half, 192, 64, false, false, true, true, true, 3, 10>(a, 1, nullptr, stream, num_sms);
          return bf ? launch_2l<__nv_bfloat16, 128, 64, false, false, true, true, true, 3, 10>(a, 1, nullptr, stream, num_sms)
                    : launch_2l<__half, 128, 64, false, false, true, true, true, 3, 10>(a, 1, nullptr, stream, num_sms);
        }
        if (bt3 == 192)
          return bf ? launch_2l<__nv_bfloat16, 192, 64, false, false, true, true, true, 3>(a, 1, nullptr, stream, num_sms)
                    : launch_2l<__half, 192, 64, false, false, true, true, true, 3>(a, 1, nullptr, stream, num_sms);
        return bf ? launch_2l<__nv_bfloat16, 128, 64, false, false, true, true, true, 3>(a, 1, nullptr, stream, num_sms)
                  : launch_2l<__half, 128, 64, false, false, true, true, true, 3>(a, 1, nullptr, stream, num_sms);
      }
    }
    if (ss) {  // split (one tile per CTA)
      if (wide_lr)
        return bf ? launch_2l_tile<__nv_bfloat16, 64, false, false, true, true, true, 64>(a, {bts, ss}, stream, num_sms)
                  : launch_2l_tile<__half, 64, false, false, true, true, true, 64>(a, {bts, ss}, stream, num_sms);
      return launch_rf(a, {bts, ss}, stream, num_sms);
    }
    if (persistent) {
      if (w8)
        return bf ? launch_2l_tile<__nv_bfloat16, 64, false, true, true, true>(a, pp, stream, num_sms)
                  : launch_2l_tile<__half, 64, false, true, true, true>(a, pp, stream, num_sms);
      if (a.frag && bf && g_gemm_probe && bt2 == 224 && !wide_lr) {  // timing probes (wrong results)
        using B = __nv_bfloat16;
        if (g_gemm_probe == 1) return launch_2l<B, 224, 64, false, false, true, true, true, 2, 1>(a, 1, nullptr, stream, num_sms);
        if (g_gemm_probe == 2) return launch_2l<B, 224, 64, false, false, true, true, true, 2, 2>(a, 1, nullptr, stream, num_sms);
        if (g_gemm_probe == 4) return launch_2l<B, 224, 64, false, false, true, true, true, 2, 4>(a, 1, nullptr, stream, num_sms);
        if (g_gemm_probe == 5) return launch_2l<B, 224, 64, false, false, true, true, true, 2, 5>(a, 1, nullptr, stream, num_sms);
        if (g_gemm_probe == 6) return launch_2l<B, 224, 64, false, false, true, true, true, 2, 6>(a, 1, nullptr, stream, num_sms);
        if (g_gemm_probe == 7) return launch_2l<B, 224, 64, false, false, true, true, true, 2, 7>(a, 1, nullptr, stream, num_sms);
        if (g_gemm_probe == 8) return launch_2l<B, 224, 64, false, false, true, true, true, 2, 11>(a, 1, nullptr, stream, num_sms);
        return launch_2l<B, 224, 64, false, false, true, true, true, 2, 3>(a, 1, nullptr, stream, num_sms);
      }
      if (wide_lr) {  // a LoRA's ranks: since v2.36 the pipelined loop too (g.53), 224-token tiles in halves (4 stages)
        if (!g_rf_pipelined)
          return bf ? launch_2l_tile<__nv_bfloat16, 64, false, false, true, true, true, 64>(a, {bt2, 1}, stream, num_sms)
                    : launch_2l_tile<__half, 64, false, false, true, true, true, 64>(a, {bt2, 1}, stream, num_sms);
        ++g_pipelined_launches;
        if (bt2 == 224)
          return bf ? launch_2l<__nv_bfloat16, 224, 64, false, false, true, true, true, 2, 17, 64>(a, 1, nullptr, stream, num_sms)
                    : launch_2l<__half, 224, 64, false, false, true, true, true, 2, 17, 64>(a, 1, nullptr, stream, num_sms);
        return bf ? launch_2l_tile<__nv_bfloat16, 64, false, false, true, true, true, 64, 10>(a, {bt2, 1}, stream, num_sms)
                  : launch_2l_tile<__half, 64, false, false, true, true, true, 64, 10>(a, {bt2, 1}, stream, num_sms);
      }
      if (a.frag && bf && g_life && bt2 == 256 && g_rf_pipelined && g_out_pieces[0] == 2 && !a.lr_late)  // (stamps)
        return launch_2l<__nv_bfloat16, 256, 64, false, false, true, true, true, 2, 19>(a, 1, g_life, stream, num_sms);
      if (a.frag && bf && g_life && bt2 == 224 && !a.lr_late) {  // a tile's life by clock64 stamps (benchmarks)
        if (g_rf_pipelined)
          return launch_2l<__nv_bfloat16, 224, 64, false, false, true, true, true, 2, 12>(a, 1, g_life, stream, num_sms);
        return launch_2l<__nv_bfloat16, 224, 64, false, false, true, true, true, 2, 9>(a, 1, g_life, stream, num_sms);
      }
      // leading turns (opt-in; 224-token tiles only: at 256 the three-stage ring allows a lead of one stage, measured
      // 1.11-1.17x slower at 4096 tokens, perf-notes v2.30b)
      if (a.frag && g_rf_lead && bt2 == 224 && !a.lr_late) {
        ++g_lead_launches;
        return bf ? launch_2l<__nv_bfloat16, 224, 64, false, false, true, true, true, 2, 8>(a, 1, nullptr, stream, num_sms)
                  : launch_2l<__half, 224, 64, false, false, true, true, true, 2, 8>(a, 1, nullptr, stream, num_sms);
      }
      if (a.frag)  // fragment order: the register-fragment loop
        return launch_rf(a, {bt2, 1}, stream, num_sms);
      return bf ? launch_2l_tile<__nv_bfloat16, 64, false, false, true, true>(a, pp, stream, num_sms)
                : launch_2l_tile<__half, 64, false, false, true, true>(a, pp, stream, num_sms);
    }
  }
  if (w8) {  // int8 weights
    if (g_w8_producer)
      return bf ? launch_2l_tile<__nv_bfloat16, 64, false, true, true>(a, p, stream)
                : launch_2l_tile<__half, 64, false, true, true>(a, p, stream);
    return bf ? launch_2l_tile<__nv_bfloat16, 64, false, true>(a, p, stream)
              : launch_2l_tile<__half, 64, false, true>(a, p, stream);
  }
  switch (a.group_size) {
    case 32:
      return bf ? launch_2l_plan<__nv_bfloat16, 32>(a, p, stream) : launch_2l_plan<__half, 32>(a, p, stream);
    case 64:
      return bf ? launch_2l_plan<__nv_bfloat16, 64>(a, p, stream) : launch_2l_plan<__half, 64>(a, p, stream);
    case 128:
      return bf ? launch_2l_plan<__nv_bfloat16, 128>(a, p, stream) : launch_2l_plan<__half, 128>(a, p, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t launch_copy_columns(void* dst, int64_t ldd_bytes, const void* src, int64_t lds_bytes, int64_t rows,
                                int64_t row_bytes, cudaStream_t stream) {
  if (rows == 0 || row_bytes == 0) return cudaSuccess;
  if (reinterpret_cast<uintptr_t>(dst) % 16 || reinterpret_cast<uintptr_t>(src) % 16 || ldd_bytes % 16 ||
      lds_bytes % 16 || row_bytes % 16)
    return cudaMemcpy2DAsync(dst, ldd_bytes, src, lds_bytes, row_bytes, rows, cudaMemcpyDeviceToDevice, stream);
  constexpr int kU = 4, kThreads = 128;
  const int n16 = (int)(row_bytes / 16);
  const dim3 grid((n16 + kThreads - 1) / kThreads, (unsigned)std::min<int64_t>((rows + kU - 1) / kU, 4096));
  copy_columns_kernel<kU><<<grid, kThreads, 0, stream>>>(static_cast<uint4*>(dst), ldd_bytes / 16,
                                                          static_cast<const uint4*>(src), lds_bytes / 16, rows, n16);
  return cudaGetLastError();
}

}  // namespace svdq

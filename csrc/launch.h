// Host launchers of the svdquant kernels: raw pointers + stream, no torch types (the torch
// binding in bindings.cpp checks shapes/dtypes/devices and calls these).
#pragma once
#include <vector>
#include <cuda_runtime.h>
#include <stdint.h>

namespace svdq {

enum class DType : int { kBF16 = 0, kFP16 = 1 };

struct QuantizeActArgs {
  DType dtype;
  const void* x;          // [M, K]
  const void* smooth;     // [K]
  const void* proj_down;  // [K, R]
  int8_t* xq;             // [M, K] values in [-8, 7]
  void* ascales;          // [M, K / group_size]
  void* lr;               // [M, R]
  int M, K, R, group_size;
  int splits;             // blocks along K (quantize_act_splits); > 1 needs the two buffers below
  float* lr_ws;           // quantize_act_workspace_floats(M, R, splits) floats
  int* lr_cnt;            // ceil(M / 16) ints, zero before the first launch (the kernel resets them)
};

struct W4A4GemmArgs {
  DType dtype;
  const int8_t* xq;       // [M, K]
  const void* ascales;    // [M, K / G]
  const int8_t* qweight;  // [N, K / 2]
  const void* wscales;    // [K / G, N]
  const void* lr;         // [M, R]
  const void* proj_up;    // [N, R]
  const void* bias;       // [N] or nullptr
  void* y;                // [M, N]
  int M, N, K, R, group_size;
};

// Two-level INT4 (int4_2l): activations as int8 q * s_int with one fp32 scale per token.
struct QuantizeAct2lArgs {
  DType dtype;
  const void* x;       // [M, K]
  const void* smooth;  // [K]
  float* rcp;          // [K]: 1 / smooth (workspace, computed by the launch unless rcp_ready)
  int8_t* xq;          // [M, K] values q * s_int in [-128, 112]
  float* xscale;       // [M]
  int M, K, group_size;
  const void* proj_down = nullptr;  // [K, R]: the fused kernel (Hopper) computes lr = x @ proj_down too
  void* lr = nullptr;               // [M, R]
  int R = 0;
  // the per-row and fixed-column kernels: the rows are cat([x [M, K1], x2 [M, K - K1]]), K1 % 8 == 0
  const void* x2 = nullptr;
  int K1 = 0;
  bool rcp_ready = false;  // rcp already holds 1 / smooth (cached per smoothing factor by the binding)
  float leave = 0.f;  // persistent grid: this share of the CTAs that fit is left to a kernel beside it (side stream)
  int* ready = nullptr;  // per 64-row block, +1 per row once read (the down projection beside it follows these)
};

struct W4A4Gemm2lArgs {
  DType dtype;
  const int8_t* xq;         // [M, K]
  const float* xscale;      // [M]
  const int8_t* qweight;    // [N, K / 2]
  const uint8_t* wscales;   // [K / G, N] integer group scales in [1, 16]
  const float* wchannel;    // [N]
  const void* lr;           // [M, R], R % 16 == 0, rows ldlr elements apart
  const void* proj_up;      // [N, R]
  const void* bias;         // [N] or nullptr
  void* y;                  // [M, N]
  int M, N, K, R, group_size;
  bool frag = false;        // qweight in fragment order (svdquant_hf/ops/layout_2l.py), else canonical
  int64_t ldy = 0;          // y's row stride in elements (0: N); y may be a column block of a wider matrix
  int act = 0;              // epilogue activation after the bias: 0 none, 1 GELU (tanh approximation)
  int64_t ldlr = 0;         // lr's row stride in elements (0: R; a multiple of 8): a column block of a wider matrix
  bool lr_late = false;     // lr comes from the chained down projection just before (set_lr_chain): the persistent
                            // kernels start at once and wait for lr only before their epilogue
};

// Per-head RMSNorm (weight) then rotary embedding (pairs (2i, 2i+1)): FLUX's q / k after their projections
// (rms_norm_rope.cu). Output y [B, S, H, D] (rows = B S H), position s of cos / sin [S, D] (fp32); positions s < S0
// come from front [B, S0, H, D] with front_weight, the others from x [B, S - S0, H, D] with weight.
struct RmsNormRopeArgs {
  DType dtype;
  const void* x;       // [B, S - S0, H, D]
  const void* weight;  // [D]
  const float* cos;    // [S, D]
  const float* sin;    // [S, D]
  void* y;             // [B, S, H, D]
  int64_t rows;
  int S, H, D;
  float eps;
  const void* front = nullptr;         // [B, S0, H, D] or null (S0 = 0)
  const void* front_weight = nullptr;  // [D]
  int S0 = 0;
};
bool rms_norm_rope_supported(int D);
void set_rms_norm_rope_version(int v);  // 4 (default): a warp per token, 16-byte rows; 3: the previous kernel
int rms_norm_rope_version();
cudaError_t launch_rms_norm_rope(const RmsNormRopeArgs& a, int num_sms, cudaStream_t stream);

// Programmatic dependent launch (pdl.cuh; sm_90+, opt-in: measured no faster on the model, perf-notes v2.25): the int4_2l GEMM, the few-token
// weight stream, the per-row quantizer and the few-token down projection are launched so that each may start under the
// tail of the kernel before it on the stream (their set-up, and the weight stream's first weights, before they wait for
// that kernel's writes); the quantizer, the down projection, the prefix copy and the GEMM signal at their start. Off:
// plain stream order (the default).
void set_pdl(bool on);
bool pdl();
bool pdl_device();  // whether the current device can take it (compute capability 9.0 or newer; cached per device)

// Largest rank the fused down projection handles; larger ranks are computed outside the kernel.
constexpr int kMaxFusedRank = 128;

int quantize_act_splits(int M, int K, int group_size, int R);
size_t quantize_act_workspace_floats(int M, int R, int splits);
cudaError_t launch_quantize_act(const QuantizeActArgs& a, cudaStream_t stream);
cudaError_t launch_w4a4_gemm(const W4A4GemmArgs& a, cudaStream_t stream);
void set_gemm_tile_rows(int bm);  // 64 or 128 forces the tile height (benchmarks); 0 restores the heuristic
// The int4 GEMM's MMA: 0 = native 4-bit where the GPU has it (sm_80/86/87/89), 1 = 4-bit everywhere (tests;
// emulated on sm_90), 2 = int8 everywhere; 0 is the default. gemm_int4_mma(G): whether the next launch
// uses the 4-bit MMA.
void set_gemm_int4_mma(int mode);
int gemm_int4_mma_mode();
bool gemm_int4_mma(int group_size);

bool quantize_act_2l_supported(int K);  // K % 8 == 0 and a row fits one CTA (K <= 32768)
cudaError_t launch_quantize_act_2l(const QuantizeAct2lArgs& a, cudaStream_t stream);
// rcp[k] = 1 / smooth[k] (fp32, round to nearest), the quantizer's prep launch
cudaError_t launch_smooth_rcp(DType dtype, const void* smooth, float* rcp, int K, cudaStream_t stream);
// benchmarks / tests: on = 0 launches one CTA per row (the kernel before v2.17); max_ctas > 0 caps the persistent grid
void set_quantize_act_2l_persistent(int on, int max_ctas);
int quantize_act_2l_last_ctas();  // CTAs of the last per-row launch
// The per-row kernel's lean form (the default since v2.25, perf-notes v2.24-v2.25): a row's 16 possible 1 / (s_row s_int) computed
// once (a lane each) and looked up by shuffle instead of a reciprocal per 8 values, and no clamp where it cannot bind
// (finite rows with amax >= 2^-100); bit-identical to the reference by construction, ~20 % fewer instructions (counted)
void set_quantize_act_2l_lean(bool on);
bool quantize_act_2l_lean();
// Hopper: x read once for the quantization and the down projection (quantize_act_2l_fused_sm90.cu)
bool quantize_act_2l_fused_supported(int M, int K, int R, int group_size, int num_sms);
cudaError_t launch_quantize_act_2l_fused(const QuantizeAct2lArgs& a, int num_sms, cudaStream_t stream);
// mode 0 off, 1 (q.7) or 2 (the fixed-column kernel) where a shape exists; cluster 0: the cost model's / the rule's;
// probe > 0 (mode 1), cap_clusters > 0: benchmarks (the PROBE kernels; at most that many clusters launched)
void set_quantize_act_2l_fused(int mode, int cluster, int probe, int cap_clusters);
int quantize_act_2l_fused_mode();
int quantize_act_2l_fused_last_grid();  // CTAs of the last fused launch (benchmarks)
struct Q2lfShape {
  int C = 0, S = 0;  // cluster size (C = 0: no shape), x stages in shared memory
  size_t smem = 0;
};
Q2lfShape q2lf_shape(int M, int K, int R, int group_size, int num_sms);
// Hopper, the fused quantizer with threads on fixed columns (quantize_act_2l_cols_sm90.cu; set_quantize_act_2l_fused
// mode 2): cluster size C (0: no shape), threads, the warps taking the down projection's mma, shared bytes per CTA
struct Q2lcShape {
  int C = 0, threads = 0, mma_warps = 0;
  size_t smem = 0;
};
Q2lcShape q2lc_shape(int M, int K, int R, int group_size, int force_cluster);
bool quantize_act_2l_cols_supported(int M, int K, int R, int group_size, int num_sms, int force_cluster);
// benchmarks: thread 0 of each CTA writes clock64 at each step of its first blocks into stamps (nullptr: off);
// layout: blocks * 100 + steps, stamps[(cta * blocks + block) * steps + step]
void set_quantize_act_2l_cols_stamps(long long* stamps);
int quantize_act_2l_cols_stamp_layout();
// benchmarks (perf-notes v2.50): cluster c starts its loads (c % stagger_phases) x stagger_cycles late; probe 1 leaves
// xq unwritten (WRONG results: a timing diagnostic); mma_sets 4 runs rank <= 32's down projection on four accumulator
// sets (0: two, the default)
struct Q2lcTuning {
  int stagger_cycles = 0, stagger_phases = 1, probe = 0, mma_sets = 0;
};
void set_quantize_act_2l_cols_tuning(const Q2lcTuning& t);
Q2lcTuning quantize_act_2l_cols_tuning();
// Hopper, the fused quantizer for K <= 3072 in CTA pairs (quantize_act_2l_pairs_sm90.cu; set_quantize_act_2l_fused
// mode 3): threads, the warps taking the down projection's mma, shared bytes per CTA (threads 0: no shape)
struct Q2lpShape {
  int threads = 0, mma_warps = 0;
  size_t smem = 0;
};
Q2lpShape q2lp_shape(int M, int K, int R, int group_size);
bool quantize_act_2l_pairs_supported(int M, int K, int R, int group_size);
void set_quantize_act_2l_pairs_stamps(long long* stamps);  // benchmarks (0: off)
int quantize_act_2l_pairs_stamp_layout();
void set_quantize_act_2l_pairs_mma_warps(int n);  // benchmarks: at most n mma warps (0: the rule's 8)
// v3: proj_down's columns by TMA, read by ldmatrix.trans (false: v2's transposing prologue, the default)
void set_quantize_act_2l_pairs_pd_tma(bool on);
bool quantize_act_2l_pairs_pd_tma();
// rank 32: the down projection transposed, lr^T = proj_down^T x^T (one full mma a k-step; false: two half-zero ones)
void set_quantize_act_2l_pairs_lr_t(bool on);
bool quantize_act_2l_pairs_lr_t();
// benchmarks (perf-notes v2.52): x's block as one 3-D TMA box instead of a box a unit; blocks brought into L2 `ahead`
// of their loads (0: none)
void set_quantize_act_2l_pairs_loads(bool box3d, int ahead);
bool quantize_act_2l_pairs_box3d();
int quantize_act_2l_pairs_ahead();
// benchmarks (perf-notes v2.53): xq's stores, 0 thread 0's bulk copy a staged row, 1 each unit thread its own bytes
// (no staging), 2 the staged rows copied out by all unit threads; a row's maximum by shuffles within each unit warp
// (one shared-memory maximum a warp instead of one a unit)
void set_quantize_act_2l_pairs_units(int stores, bool warp_max);
int quantize_act_2l_pairs_stores();
bool quantize_act_2l_pairs_warp_max();
// set_quantize_act_2l_fused mode -1 takes q.9 from this many tokens
void set_quantize_act_2l_pairs_min_tokens(int m);
int quantize_act_2l_pairs_min_tokens();
// grid: 2 x the pairs launched (one CTA an SM, at most cap_pairs > 0 pairs)
cudaError_t launch_quantize_act_2l_pairs(const QuantizeAct2lArgs& a, int num_sms, int cap_pairs, int* grid,
                                         cudaStream_t stream);
// grid: the CTAs launched (clusters that fit, at most cap_clusters > 0, times C)
cudaError_t launch_quantize_act_2l_cols(const QuantizeAct2lArgs& a, int num_sms, int force_cluster, int cap_clusters,
                                        int* grid, cudaStream_t stream);
// sm_90a only (N % 128 == 0, K % 128 == 0, R % 16 == 0, R <= kMaxRank2l)
cudaError_t launch_w4a4_gemm_2l(const W4A4Gemm2lArgs& a, int num_sms, cudaStream_t stream);
struct Gemm2lPlan {
  int tile_tokens;  // 64, 128, 224 or 256
  int splits;       // K split over a cluster of this many CTAs (1, 2, 4, 8)
};
Gemm2lPlan gemm_2l_plan(int M, int N, int K, int num_sms);
void set_gemm_2l_plan_tiles(const std::vector<int>& tiles);  // the tiles the plan may pick ({}: all)
void set_gemm_2l_tile_tokens(int bt);  // 64/128/224/256 forces the token tile (benchmarks, tests); 0: heuristic
void set_gemm_2l_splits(int s);        // 1/2/4/8 forces the K split; 0: heuristic
// benchmarks/gemm_2l_trace.py: launch the tracing kernel (bfloat16, group 64) writing to `trace`; nullptr: off
void set_gemm_2l_trace(long long* trace);
void set_gemm_2l_w8_producer(bool on);  // the int8-weight GEMM's producer-warp main loop (default off)
bool gemm_2l_w8_producer();
// the persistent kernels (int8 weights, or packed group 64; unsplit plans): one CTA per SM walks the tiles.
// 1: wherever they apply, 0: never, -1 (default): where the plan is unsplit with >= 2 tiles per SM (int8
// weights: and K <= 5120)
void set_gemm_2l_persistent(int mode);
int gemm_2l_persistent();
// Weights in fragment order, persistent: the register-fragment loop's consumer warpgroups (0: the cost model picks
// 2 or 3, 2 or 3 forced; 3 needs N % 192 == 0) and, with three, the token tile (128 or 192; 0: the model). 1 (g.56,
// forced): one consumer warpgroup on 64-row tiles of `tile` tokens (128, else 256), for branch ranks <= 32, persistent
// or split over a cluster by set_gemm_2l_rf_splits; the same bits.
void set_gemm_2l_rf_warpgroups(int cw, int tile);
int gemm_2l_rf_warpgroups();
long long gemm_2l_rf1_launches();  // (tests)
// (g.56) one warpgroup's tiles also chosen by the cost model at M <= 512 (perf-notes v2.38; on by default since v2.39)
void set_gemm_2l_rf1_auto(bool on);
bool gemm_2l_rf1_auto();
// rf_cost's stage of the three-warpgroup loop in cycles at 128 / 192 tokens (0: the model's, set_gemm_2l_rf3_model:
// 1100 / 1250 since v2.25, the v2.15 fit 1290 / 1525 before), and the values in use
void set_gemm_2l_rf3_stage(int at128, int at192);
std::vector<int> gemm_2l_rf3_stage();
// the three-warpgroup choice (1: v2.25's refit against the two-warpgroup model, the default; 0: v2.24's)
void set_gemm_2l_rf3_model(int version);
int gemm_2l_rf3_model();
// The register-fragment loop for branch ranks 33-64 (a LoRA on the rank-32 branch; instances with a 64-wide low-rank
// tile); off: those ranks take the non-persistent kernels. Off by default until GPU-tested (perf-notes v2.19).
void set_gemm_2l_rf_wide_lr(bool on);
bool gemm_2l_rf_wide_lr();
// Fragment order: the register-fragment loop wherever its cost models (unsplit, or K split over a cluster) beat the
// plan's kernel (default on; off: only where the plan is unsplit with two tiles per SM).
void set_gemm_2l_rf_by_cost(bool on);
bool gemm_2l_rf_by_cost();
// The register-fragment loop with K split over a cluster of CTAs, one tile each (a few hundred tokens): 0 where its
// cost model says so (with set_gemm_2l_rf_by_cost), 1 never, 2-8 forced.
void set_gemm_2l_rf_splits(int s);
int gemm_2l_rf_splits();
// The low-rank down projection lr = x @ proj_down at a few tokens (lowrank_down_sm90.cu, sm_90a): one kernel instead of
// cuBLAS's split-K GEMM and reduction. Takes M <= the limit (default 256; 0: never), K % 128 == 0, K <= 4096 and R <= 64
// by default (R 16 / 32 / 48 / 64; 96 and 128 too, and any K, where the limit is set explicitly: the kernel reads
// proj_down once per 16 tokens, so cuBLAS wins at large K x R); x
// [M, K], proj_down [K, R] and lr [M, R] contiguous, 16-byte aligned.
bool lowrank_down_takes(int M, int K, int R);
void set_lowrank_down_max_tokens(int m, bool wide = false);
int lowrank_down_max_tokens();
void set_lowrank_down_deep(bool on);  // up to 8 stages in flight instead of 4 (opt-in: mixed, perf-notes v2.29)
bool lowrank_down_deep();
void set_lowrank_down_splits(int s);  // the cluster size along K forced (1, 2, 4, 8; 0: the rule)
int lowrank_down_splits();
cudaError_t launch_lowrank_down(DType dtype, const void* x, const void* pd, void* lr, int M, int K, int R, int num_sms,
                                cudaStream_t stream);
// The chained down projection (perf-notes v2.29): at M <= 256 (Hopper, K % 128 == 0, R 16 / 32 / 48 / 64 / 96 / 128)
// the quantizer's down projection follows it on the same stream instead of a side stream, on at most max_ctas CTAs,
// launched programmatically so that it runs beside the quantizer (the side path's K slices, num_sms deciding them, folded
// onto fewer CTAs: the same lr bits); it lets the GEMM after it start once the quantizer
// is done, and that GEMM (W4A4Gemm2lArgs::lr_late, the persistent kernels) waits for lr only before its epilogue, so
// the down projection runs under the GEMM's main loop on SMs the GEMM leaves free instead of before it.
// set_lr_chain: -1 (default) where the binding's rule says it pays, 0 never, 1 wherever the shape allows (32 CTAs).
void set_lr_chain(int mode);
int lr_chain();
void set_lr_chain_pipes(int pipes);  // (g.59) the chained down projection's groups of four warps per CTA: 2 (default) or 1
int lr_chain_pipes();
long long lr_chain_pipes_launches();  // (tests)
bool lowrank_down_chain_takes(int M, int K, int R);  // the mode is not 0 and the shape fits
// The down projection beside the persistent quantizer at many tokens (lowrank_down_sm90.cu; perf-notes v2.30): on the
// CTAs the quantizer leaves free, each 64-row block once the quantizer has read it (x from L2). x2 / K1: the rows are
// cat([x, x2]) (K1 = K: x alone; K1 % 128 == 0). set_lowrank_down_beside: -1 the rule (K >= 8192, x larger than L2),
// 0 never (cuBLAS on the side stream), 1 wherever the shape fits (tests); share: the quantizer's CTAs left free;
// ctas > 0 forces the down projection's CTAs.
bool lowrank_down_beside_takes(int M, int K, int K1, int R, int64_t x_bytes, int64_t l2_bytes);
void set_lowrank_down_beside(int mode, double share, int ctas);
int lowrank_down_beside();
float lowrank_down_beside_share();
int lowrank_down_beside_ctas(int num_sms);
int lowrank_down_beside_items(int K);   // K-ranges per 64-row block (the partials' workspace is [items, M, R] fp32)
int lowrank_down_beside_blocks(int M);  // 64-row blocks: counters holds 2 x this many ints, zeroed before the call
long long lowrank_down_beside_launches();  // launches so far (tests)
cudaError_t launch_lowrank_down_beside(DType dtype, const void* x, const void* x2, int K1, const void* pd, void* lr,
                                       float* part, int* counters, int M, int K, int R, int ctas,
                                       cudaStream_t stream);
cudaError_t launch_lowrank_down_chain(DType dtype, const void* x, const void* pd, void* lr, int M, int K, int R,
                                      int num_sms, int max_ctas, cudaStream_t stream);
// the last int4_2l tile-GEMM launch (this thread): its CTAs and whether it was a persistent kernel (which can take lr
// late)
struct Gemm2lLaunch {
  long ctas = 0;
  bool persistent = false;
};
Gemm2lLaunch gemm_2l_last_launch();
long long gemm_2l_late_launches();  // host-side count of GEMM launches with lr_late taken (tests)
void set_gemm_2l_probe(int probe);
// The unsplit two-warpgroup register-fragment loop at 224 tokens with leading turns (opt-in; perf-notes v2.30b):
// per-warp counts of stages issued instead of named barriers, warpgroup 0 up to NS - 2 stages ahead, so each runs on
// alone through the other's epilogue. The same bits.
void set_gemm_2l_rf_lead(bool on);
bool gemm_2l_rf_lead();
long long gemm_2l_rf_lead_launches();  // (tests)
// The register-fragment loop pipelined within each warpgroup (the default since perf-notes v2.32; off: the warpgroups
// take turns): each k-step's wgmma its own commit group, the next k-step widened under the three in flight; wherever that loop runs with a branch of rank <= 32 (two warpgroups at any token tile, unsplit or split
// over a cluster, after the chained down projection too; three warpgroups; the 64-wide low-rank tile keeps its turns).
// The same bits.
void set_gemm_2l_rf_pipelined(bool on);
bool gemm_2l_rf_pipelined();
long long gemm_2l_rf_pipelined_launches();  // (tests)
// The register-fragment kernels' low-rank tiles and token scales loaded by the producer warpgroup's idle warps 1-3
// (after every consumer's low-rank step) rather than by the last consumer warpgroup, whose copies its output's proxy
// fence would wait for (opt-in until measured, perf-notes v2.33). The same bits.
void set_gemm_2l_lr_by_producer(bool on);
bool gemm_2l_lr_by_producer();
long long gemm_2l_lr_by_producer_launches();  // (tests)
// The tile kernels' output staging as before perf-notes v2.34 (GELU or not tested per octet, each GELU body inline
// between the octets), for A/B against the default (the test made once, two straight-line bodies). The same bits.
void set_gemm_2l_act_in_loop(bool on);
bool gemm_2l_act_in_loop();
// The persistent kernels' last consumer warpgroup issues the next tile's low-rank copies unrolled, with the chunk
// count fixed by the tile's rank (the same copies in the same order; opt-in until measured, perf-notes v2.34 g.47):
// instances of the pipelined loop at bfloat16 224-token two-warpgroup and 192-token three-warpgroup tiles, unsplit,
// and the stamped kernel (set_gemm_2l_tile_life); other plans run as without it.
void set_gemm_2l_lr_unrolled(bool on);
bool gemm_2l_lr_unrolled();
long long gemm_2l_lr_unrolled_launches();  // (tests)
// the pipelined kernels give each stage back after the next stage's k-step j (0, the default, v2.35), or 2 / 1 (A/B:
// bfloat16 224-token two-warpgroup and 192-token three-warpgroup tiles, unsplit; 2 also the one-warpgroup tiles, v2.41)
void set_gemm_2l_release_step(int j);
int gemm_2l_release_step();
long long gemm_2l_release_step_launches();  // (tests)
void set_gemm_2l_out_halves(bool on);
bool gemm_2l_out_halves();
long long gemm_2l_out_halves_launches();  // (tests)
bool set_gemm_2l_out_pieces(int tile, int pieces);
int gemm_2l_out_pieces(int tile);
// Two warpgroups' 256-token register-fragment kernel with K split over a cluster staging its output in halves, each
// CTA storing only its own octets, which gives it a fourth stage (g.54; opt-in until measured, perf-notes v2.36). The
// same bits.
void set_gemm_2l_split_halves(bool on);
bool gemm_2l_split_halves();
long long gemm_2l_split_halves_launches();  // (tests)
// The register-fragment kernels' producer asking L2 for the next tile's first stages (cp.async.bulk.prefetch) halfway
// through each tile, so they are there when the ring frees their slots at the tile's end (opt-in until measured,
// perf-notes v2.33). The same bits.
void set_gemm_2l_l2_prefetch(bool on);
bool gemm_2l_l2_prefetch();
long long gemm_2l_l2_prefetch_launches();  // (tests)
// The pipelined register-fragment loop's output (unsplit) stored in 32-token pieces, one per stage of the warpgroup's
// next tile, rather than by one TMA store at the tile's end, when every CTA's tile ends at about the same time (opt-in
// until measured, perf-notes v2.33; its instances: bfloat16, two warpgroups on 224-token tiles or three on 192, and
// the stamped kernel). The same bits.
// The GEMM with its two consumer warpgroups in ping-pong over 128 x 128 tiles (w4a4_gemm_2l_pingpong_sm90.cu; opt-in,
// measured 1.26-1.41x slower than the default on the H100, perf-notes v2.32). set_gemm_2l_rf_pingpong: 0 off (the default), 1 every tile GEMM it takes (fragment
// order, group 64, N % 128 == 0, branch rank 0 / 16 / 32, lr not late), 2 those with at least two tiles per SM (a tile
// for each warpgroup of every CTA). The same bits as the two-warpgroup kernel.
void set_gemm_2l_rf_pingpong(int mode);
int gemm_2l_rf_pingpong();
long long gemm_2l_rf_pingpong_launches();  // (tests)
bool gemm_2l_pingpong_takes(const W4A4Gemm2lArgs& a, int num_sms);  // (with the mode set)
// life: nullptr, or int64 [4 CTAs][2 warpgroups][8 tiles][8 steps] for clock64 stamps (set_gemm_2l_tile_life)
cudaError_t launch_w4a4_gemm_2l_pingpong(const W4A4Gemm2lArgs& a, cudaStream_t stream, int num_sms,
                                         long long* life = nullptr);
// benchmarks/gemm_2l_tile_life.py: the persistent register-fragment GEMM (bfloat16; two warpgroups on 224-token tiles, or
// three) stamping clock64 at its tiles' steps into this int64 buffer (4 CTAs x its warpgroups x 8 tiles x 8; nullptr:
// off). The same bits; no_store (a timing probe): the pipelined loop's stamped kernel leaves its output unwritten;
// substeps: the buffer is twice that, and its second half gets the epilogue's sub-steps (8 .. 15 as 0 .. 7);
// loop_probe (timing probes, wrong results): the one-warpgroup persistent kernel's loop without widening (1, EP 22),
// without its wgmmas (2, EP 23), without its activation tiles' loads (3, EP 24) or without both (4, EP 25); 5 (EP 26,
// exact): its stages given back at the next stage's third k-step rather than its first; 6 (EP 27) its wgmmas' A operand
// from shared memory.
void set_gemm_2l_tile_life(long long* stamps, bool no_store = false, bool substeps = false, int loop_probe = 0);
// whether a test or benchmark has forced or restricted the tile GEMM's plan or kernel (then a few tokens take it too)
bool gemm_2l_plan_forced();
void set_gemm_2l_tma_store(bool on);  // the int4_2l GEMM epilogue's output by TMA store (default off)
bool gemm_2l_tma_store();
constexpr int kMaxRank2l = 256;
// A few tokens (w4a4_gemv_2l.cu, any architecture): a weight stream with dp4a instead of the tile GEMM; packed weights
// with group 64, canonical or fragment order. set_gemv_2l_mode: -1 (default) where it was measured faster, 0 never,
// m in 1..kGemvMaxTokens every M <= m (tests, benchmarks)
constexpr int kGemvMaxTokens = 8;
bool gemv_2l_takes(const W4A4Gemm2lArgs& a);
cudaError_t launch_w4a4_gemv_2l(const W4A4Gemm2lArgs& a, cudaStream_t stream);
void set_gemv_2l_mode(int m);
int gemv_2l_mode();
long long gemv_2l_launches();  // host-side count of its launches (tests: which kernel ran)
// rows x row_bytes from src (rows lds_bytes apart) into dst (rows ldd_bytes apart): 16-byte vectors where aligned
cudaError_t launch_copy_columns(void* dst, int64_t ldd_bytes, const void* src, int64_t lds_bytes, int64_t rows,
                                int64_t row_bytes, cudaStream_t stream);

}  // namespace svdq

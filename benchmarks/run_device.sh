#!/usr/bin/env bash
# One GPU-machine call: build the kernels (AOT, timed), resource usage, GPU tests (incl. compute-sanitizer),
# then the GEMM benchmark. Logs go to $OUT; the short table prints last.
# usage (repo root): bash benchmarks/run_device.sh [tests|bench|tb|ncu|all|2l|ab|cpp|trace|tile|w8]   (carry .bnbwhl for NF4 + diffusers;
#   carry .prebuilt, from benchmarks/prebuild_device.sh, to skip the build when it matches the tree)
#   2l: the int4_2l kernels only (tests/gpu/test_kernels_2l.py, compute-sanitizer, the benchmark's int4_2l rows;
#       LORA=1 adds benchmarks/lora_overhead.py --format int4_2l)
#   ab: benchmarks/ab_2l.py (int4_2l chain, previous version vs now vs cuBLAS bf16) + gemm_2l_plan_sweep.py
#   cpp: the 2l tests + compute-sanitizer, benchmarks/op_host_overhead.py, then what ab does
#   w8: the GEMM on int8-stored weights (w8a4_gemm_2l: shared loop, producer loop, persistent) and the TMA-store
#       epilogue: their tests (-k "int8_weights or tma_store"), the other 2l tests, compute-sanitizer, ab_2l.py
#       (BENCH_MS, ROUNDS) with its np, ps, ts, w8, w8p, w8ps and w8a columns, then benchmarks/gemm_2l_ksweep.py
#   trace: test_quantize_act_2l_$FIRST_TEST alone, the other 2l tests, compute-sanitizer, benchmarks/gemm_2l_trace.py (TRACE_MS)
#   tile: gemm_2l_trace.py (a tile's life: stages, then the epilogue's steps) and gemm_2l_ksweep.py at M = 4608 and 256
#   verify: the fragment-order and persistent tests, compute-sanitizer, benchmarks/chain_breakdown.py (PROBE_MS)
#   probe: no tests; benchmarks/chain_breakdown.py (PROBE_MS, default 256,1024), gemm_2l_plan_sweep.py at M = 256,
#       gemm_2l_ksweep.py with the token tile forced to 128 and to 64 (KSWEEP_TILES)
#   qsweep: benchmarks/quantize_2l_sweep.py (the fused quantizer's cluster size forced, M swept, timing-only probes
#       without its exchange / down projection); qncu: Nsight
#       Compute on the fused and the per-row quantizer (benchmarks/quantize_2l_ncu.py, QNCU_K; QNCU_REGEX picks the
#       kernels, QNCU_COUNT how many launches, QNCU_DETAILS=1 prints every section's details, e.g. the stall reasons)
#   q8: the persistent per-row quantizer (its tests, the other 2l tests, sanitizer, chain_breakdown.py; E2E=1 with
#       WHEELS=.e2ewhl: the whole model, bf16 / fp8 / int4_2l at 1024 px batch 1)
#   q: the quantizer with the down projection fused: the quantizer tests first, the other 2l tests, compute-sanitizer,
#       benchmarks/chain_breakdown.py (PROBE_MS, default 4608,256: fused vs per-row columns)
#   ep: the GEMM's epilogue probes (their test, or the tests -k "$EP_TESTS" and compute-sanitizer; gemm_2l_ksweep.py
#       --probes; KSWEEP=0: not), TILES=4096,4608: gemm_2l_tiles.py (256-token tiles or not), op_host_overhead.py
#       --profile (OP_HOST=0: not), OVERLAP=1: quantize_2l_overlap.py; E2E=1 with
#       WHEELS: the whole model, each forward alone, back to back and as one CUDA graph (_cg variants; E2E_VARIANTS)
#   epi: the epilogue tests (GELU, prefix), the other 2l tests, memcheck, usage docs, then (E2E=1) the model fused / not
#   cmd: the command in $CMD, after the set-up (kernels loaded or built, PYTHONPATH, wheels)
#   s40: q.9, the fused quantizer in CTA pairs (set_quantize_act_2l_fused(3), perf-notes v2.50): its tests,
#       chain_breakdown.py --fused 3 --fp8 at 4608, 1024 and 256 tokens, memcheck, then everything knobs runs
#       (S40_KNOBS=0: only the q.8 tuning tests instead); S40_MS (default 4608,1024,256); S40_SUITE="-1 0": then the
#       whole tests/gpu suite with SVDQ_TEST_FUSED_QUANT at each of those modes (tests/gpu/conftest.py). Since the
#       forty-first session the chain has q.9's other forms' columns too (chain_breakdown.py --pairs-forms S41_FORMS,
#       default v3,t,v3t: proj_down by TMA, the down projection transposed, both), and after it
#       benchmarks/quantize_pairs_stamps.py runs at S41_STAMP_MS (default 4608,1024) with S41_MW mma warps (default
#       0,4,2), each form of S42_STAMP_FORMS (default v2,v3,t,v3t); S41_V3=1 / S41_LRT=1 / S42_LOADS=box3d,ahead /
#       S43_UNITS=stores,warp_max: the suites with those forms (conftest.py's SVDQ_TEST_PAIRS_V3 / _LRT / _LOADS /
#       _UNITS; the loads: perf-notes v2.52; the units: v2.53)
#   knobs: the fixed-column quantizer's tuning (set_quantize_act_2l_cols_tuning, perf-notes v2.50): its tests, then
#       benchmarks/quantize_cols_knobs.py (KNOBS_MS, default 4608,1024; KNOBS_VARIANTS; KNOBS_ROUNDS) and
#       quantize_cols_stamps.py with the default tuning and each of KNOBS_STAMPS (stagger_cycles,phases,probe,mma_sets),
#       chain_breakdown.py --fused 2 --fp8 at 4608 tokens under KNOBS_CHAIN (default 4000,2,0,0)
#   cols: the fixed-column fused quantizer (set_quantize_act_2l_fused(2), perf-notes v2.47): its tests
#       (tests/gpu/test_quantize_cols.py; nothing timed if one hangs), q.7's tests, quantize_2l_sweep.py --mode 2 at
#       K = 3072, 12288, 15360 (COLS_MS, default 16,1024,4608), quantize_cols_stamps.py (a block's steps in cycles),
#       chain_breakdown.py --fused 2 --fp8 at 4608 tokens,
#       ab_2l.py (COLS_AB_MS, default 4608,1024; fo, fo_fc, bf16, fp8d); COLS_NCU=1: then Nsight Compute's stalls by
#       SASS instruction at K = 12288 (quantize_2l_ncu.py --mode 2, ncu_sass_stalls.py)
#   v224: what the thirteenth session wrote without a GPU (perf-notes v2.24): programmatic dependent launch (set_pdl)
#       and the lean quantizer (set_quantize_act_2l_lean). Their tests first (tests/gpu/test_pdl.py, the 2l tests -k
#       lean; nothing more if they fail), the other 2l / epilogue / norm-RoPE tests, memcheck with PDL off and on,
#       ab_2l.py (BENCH_MS, default 1,256,512,4608; ROUNDS) with fo_pdl, fo_r3 and fo_ql (now fo_m0 and fo_nql: both became defaults), quantize_2l_rows.py at
#       4608 tokens, gemv_2l.py --ms 1 --hot --orders; E2E=1 with WHEELS: the model plain, _pdl, _ql, _pdl_ql, fp8 and
#       bf16 regional, each as one CUDA graph (E2E_VARIANTS for others, e.g. the _ipdl ones: Inductor's own PDL)
#   v225: the quantizer at any K that is a multiple of 8 (the block's last warp past the row) and the lean form by
#       default: the quantizer / linear / few-token / auto-warpgroup tests at the new K first (nothing more if they
#       fail), the other 2l / epilogue / norm-RoPE / PDL tests, memcheck with the defaults and with PDL on and the plain
#       form, ab_2l.py on SD3.5 Large's and PixArt's shapes (now, fo, fo_rq: the reference quantizer those K ran before,
#       fo_nql, bf16, fp8d) and on FLUX.1's at 256 and 4608 tokens (fo, fo_nql, bf16, fp8d)
#   rf3: the three-warpgroup choice of v2.25 (set_gemm_2l_rf3_model): its tests and the other warpgroup / cost-model
#       tests, ab_2l.py at 512, 1024, 4096 and 4608 tokens (fo against fo_m0, v2.24's choice; bf16, fp8d), then the model
#       (default, _m0, fp8, bf16 regional, each as one CUDA graph)
#   v226: layers padded to the GEMM's 128-wide tiles (set_fragment_order): their GPU tests and the linear ones,
#       then benchmarks/linear_padded.py (padded against the reference GEMM they ran before, bf16) and
#       benchmarks/chain_timeline.py (each kernel of a graph-replayed chain, by torch.profiler; TIMELINE_MS)
#   v227: the quantizer and its down projection in row chunks (set_quantize_act_2l_chunk_bytes, opt-in): its tests and
#       the side-stream ones, ab_2l.py at 4608 and 1024 tokens (fo against fo_qc12 / fo_qc24; bf16, fp8d), then
#       benchmarks/lowrank_down_sweep.py (the few-token down projection's cluster size and depth against cuBLAS)
#   v228: v227's tests, ab_2l.py at 4608 tokens (BENCH_MS; fo, fo_qc24, bf16, fp8d), then the whole model at 1024 px
#       (WHEELS=.slimwhl; default, bf16 eager, bf16 / fp8 regional, _qc24; E2E_VARIANTS) in what is left of V228_LIMIT s
#   v229: the chained down projection (set_lr_chain; perf-notes v2.29): its tests first (tests/gpu/test_lr_chain.py;
#       nothing more if they fail), the whole tests/gpu suite, ab_2l.py at BENCH_MS (default 256,128; fo with the
#       default rule, fo_lc forced, fo_nlc off, bf16, fp8d), chain_timeline.py at 256 tokens with the chain off and by its
#       rule, memcheck with it forced (SANITIZE_CHAIN=1), the GPU memory test of a full-size FLUX.1 block (WHEELS=.slimwhl)
#   v229b: v229 after a change to the down projection's kernel: its tests, the few-token / side-stream / PDL / padded
#       tests, memcheck with the chain forced, ab_2l.py (V229_COLS, default fo, fo_ld: deep instances, fo_lc, fo_nlc,
#       bf16, fp8d), chain_timeline.py at 256 tokens by the rule
#   v231: the final build of v2.29 verified (chain tests, tests/gpu, memcheck with the chain forced), then
#       benchmarks/quantize_2l_cap.py (the persistent quantizer with fewer CTAs than fit, alone and with its down projection)
#   v232: the down projection beside the persistent quantizer (set_lowrank_down_beside): its tests (nothing more if they
#       fail), the whole tests/gpu suite, memcheck, benchmarks/down_beside_sweep.py, ab_2l.py at 4608 tokens (fo, fo_bs,
#       fo_nbs, bf16, fp8d)
#   v232b: v232's tests after a fix of the sanitizer case (beside, chain, test_kernels.py with its sanitizer test), memcheck
#   v232c: memcheck with the beside case, then benchmarks/chain_breakdown.py --ms 4608 --fp8 (the chain's parts against
#       fp8's cast and _scaled_mm)
#   v233: the register-fragment loop's leading turns (set_gemm_2l_rf_lead): its tests (nothing more if they fail), the
#       fragment-order tests, memcheck, ab_2l.py at 4608 / 4096 tokens (fo, fo_lead, bf16, fp8d)
#   v233b: the final tree: the lead and beside tests, memcheck, then (WHEELS=.slimwhl) the model with and without the
#       leading turns (flux_e2e.py _lead)
#   v252: perf-notes v2.37's g.56 (set_gemm_2l_rf_warpgroups(1, tile), opt-in: one consumer warpgroup on 64-row tiles,
#       #4's few-token candidate): its tests (nothing timed if they fail), ab_2l.py (BENCH_MS, default 512,256; fo,
#       fo_1w, fo_1w2, bf16, fp8d), few_token_fixed.py at 256 x 3072 (auto, rs128x2, rs256x4 and the one-warpgroup
#       plans), gemm_2l_fo_plans.py --splits --one (PLANS_MS, default 512,256), the tile life at 256 x 3072 x 3072 of
#       one warpgroup (persistent and split over 2) and of the two-warpgroup split over 2 (LIFE=0: not), memcheck,
#       the whole tests/gpu
#   v255: perf-notes v2.38's g.56 by the cost model (set_gemm_2l_rf1_auto, opt-in: one warpgroup's tiles at M <=
#       512 where rf_cost puts them 5 % below the rest): its tests (nothing timed if they fail), ab_2l.py (BENCH_MS,
#       default 512,256; fo, fo_1wa, bf16, fp8d; ROUNDS, default 3), the whole tests/gpu (SUITE=0: not),
#       gemm_2l_fo_plans.py --splits --one (PLANS_MS, default 512,256: auto against the best plan)
#   (v268, as run at commit 417e0e4 with MEMCHECK=0: v266 with v2.42's deep ring (set_gemm_2l_rf1_stages(0)) and the
#       activations' multicast over clusters of 2 / 4 CTAs (set_gemm_2l_rf1_multicast), also both at once: their tests,
#       the tile life with --probe deep / mc / mc4, ab_2l.py fo_deep / fo_mc / fo_mc4 / fo_dmc / fo_dmc4; all slower,
#       removed in v2.43; v267 and v268s were its subsets)
#   (v271 / v272, as run at commits 4a50ce9, a33b5d9 and 4750c3b: g.69, one warpgroup's tiles as stream-K, in the
#       chain by ab_2l.py and alone by benchmarks/stream_k_sweep.py with its no-exchange probe and stamps; measured
#       slower and removed in perf-notes v2.46)
#   v270: perf-notes v2.44's g.66 (the fragment order's nibbles interleaved so one word widens in 9 integer instructions
#       instead of 11, the GEMV's fragment path without its byte permutes): the whole tests/gpu on this build (nothing
#       timed if it fails), then this build against another tree's, kernels and Python package (carry .pbother: there
#       `tar -cJf .pbother/prebuilt.tar.xz .prebuilt svdquant_hf`): ab_2l.py (BENCH_MS, default 256,512,4608; fo,
#       bf16) AB_ROUNDS (default 2) times each, alternating, and the one-warpgroup tile life at 256 / 512 x 3072 x 3072
#       for both; then v269's probes (ss-a, no-act-mma) and the stall sampling on this build (~5 minutes; as run at
#       commit 9e10b78 with AB_ROUNDS=1 and the older package's import failing, and at a7520f3 with g.68's probes
#       early / early-loads, EP 28 / 29, since removed)
#   v269: what couples the one-warpgroup loop's wgmmas to its warps (perf-notes v2.43): the tile life at 256 / 512 x
#       3072 x 3072 as it is and with the loop probes ss-a (EP 27: the wgmmas' A operand from shared memory, the
#       widening kept) and no-act-mma, then the stall sampling with NCU_PIPES=1 at STALL_SHAPE (default 256 3072 3072)
#       (~2-3 minutes)
#   v266: what paces the one-warpgroup loop (perf-notes v2.41): the stamped-kernel tests (nothing timed if they fail),
#       then its tile life at 256 x 3072 x 3072 (128-token tiles) and 512 x 3072 x 3072 (256-token tiles), as it is and
#       with the loop probes no-act, no-mma and no-act-mma (EP 24 / 23 / 25: the stages without their activation
#       tiles, without wgmmas (its widening now kept), without both) and rel2 (EP 26, exact: each stage given back at
#       the next one's third k-step); then ab_2l.py (BENCH_MS, default 256,512; fo, fo_rel2: set_gemm_2l_release_step(2),
#       which now takes the one-warpgroup tiles too, bf16, fp8d; ROUNDS, default 2) and memcheck (MEMCHECK=0: not)
#   (v265 / v265b, as run at commits f1b5940 / 419c469: the tile life with the probes no-widen and no-mma, then g.61
#       and g.62 (set_gemm_2l_rf1_widening / _ksplit): their tests, ab_2l.py with fo_ww / fo_ks, memcheck; both
#       measured slower and removed in v2.41. v264, the same without g.62, never ran)
#   (v263, as run at commit 0b96ce6: the same with the probes as runtime branches in every stamped kernel, which
#       slowed their loops by 17-49 %; replaced by EP 22 / 23)
#   v262: perf-notes v2.40's tree after g.60's removal (g.59 the default): test_lr_chain.py and test_one_warpgroup.py
#       (nothing timed if they fail), ab_2l.py (BENCH_MS, default 256,128; fo, fo_lp1, bf16, fp8d; ROUNDS, default 2),
#       the one-warpgroup default GEMM's tile life with sub-steps at 256 x 3072 x 3072 (128-token tiles) and 512 x
#       3072 x 3072 (256-token tiles), memcheck with the chain forced, the whole tests/gpu (SUITE=0: not)
#   (v261, as run at commit 7ffd41e: v2.40's g.59 as the default and g.60, the chained GEMM started under the quantizer,
#       measured neutral and removed: column fo_early, chain_timeline.py --early, the suite a second time with g.60 on)
#   v260: perf-notes v2.39's g.59 (set_lr_chain_pipes(2): the chained down projection's CTAs on two rings at once):
#       test_lr_chain.py and test_one_warpgroup.py (nothing timed if they fail), ab_2l.py (BENCH_MS, default 256,128;
#       fo, fo_lp2, fo_nlc, bf16, fp8d; ROUNDS, default 3), chain_timeline.py at 256 tokens (3072 x 3072, 3072 x
#       9216) with one and two rings, memcheck with the chain forced, the whole tests/gpu (SUITE=0: not; with it, the
#       suite under g.56's default, which v2.39 could not run)
#   (v258, as run at commit e022abd with SUITE=0: v255's g.56-by-the-cost-model with g.58, one warpgroup's tiles two
#       CTAs to an SM, measured neutral and removed in v2.39: columns fo_1x64 / fo_1x128, plans rf1d_64 / rf1d_128)
#   (v253, as run at commit 24c1ac4 with SUITE=0: v252 with g.57, the split exchange through L2, measured slower and
#       removed in v2.38: column fo_l2x, plans rs256x{2,4}l)
#   abbuilds: two kernel builds against each other in one call (perf-notes v2.37's call 3): the tree's .prebuilt (build
#       "this") and another tree's, packed there as `tar -cJf .pbother/prebuilt.tar.xz .prebuilt` (~8 MB; carry both
#       .prebuilt and .pbother), ab_2l.py (BENCH_MS, default 4608,4096,256; fo, bf16) three times per build,
#       alternating, the build chosen by SVDQUANT_HF_KERNELS_DIR, then benchmarks/ab_builds_table.py (fo: this / other)
#   splitlife: a split CTA's whole life (perf-notes v2.37's Next 1: EP 20, the 256-token split kernel stamped):
#       tests/gpu/test_out_pieces.py (nothing timed if it fails), gemm_2l_tile_life.py --splits 2 and 4 at
#       SPLIT_SHAPES (default 256x3072x3072,256x12288x3072,512x12288x3072), the whole tests/gpu
#   splitncu: Nsight Compute on the GEMM alone at 256 x K x 3072 (K 512 and 3072) for rf2_64, rs128x2 and rs256x4
#       (benchmarks/chain_ncu.py --plan): duration, elapsed and SM-active cycles, launch and cluster occupancy, the
#       lines into $OUT/ncu_<plan>_<K>.log (perf-notes v2.37's call 6: where the split plans' fixed part is not)
#   (v251, as run at commit d90dce6, timed g.55, the split exchange by bulk reductions: no gain, removed in v2.37)
#   v250: g.54 the default (perf-notes v2.37: the 256-token split kernel's output in halves, a fourth stage): its tests,
#       g.51's and the split register-loop tests (nothing timed if they fail), ab_2l.py (BENCH_MS, default 512,256; fo,
#       fo_sw, bf16, fp8d), gemm_2l_fo_plans.py --splits --pieces (PLANS_MS, default 512,256), memcheck, the whole
#       tests/gpu (v249, as run at commit 3da84be, timed g.54 while opt-in, columns fo_sh / rs256x{2,4}h, and the tile
#       life of the default kernels on EP 19)
#   v247: perf-notes v2.36's g.53 (a LoRA's ranks 33-64 on the pipelined loop, the 224-token tile in halves): the wide
#       low-rank tile's tests with g.50's and g.51's (nothing timed if they fail), ab_2l.py --rank 64 (BENCH_MS, default
#       4608,4096,1024,256; fo, fo_turns, fp8d), memcheck, the whole tests/gpu
#   v246: g.51 the default with the cost model's 256-token stage refitted (perf-notes v2.36): g.51's, g.50's and the 2l
#       kernel tests (nothing timed if they fail), ab_2l.py (BENCH_MS, default 4608,4096,1024,512,256; fo, fo_256w, bf16,
#       fp8d), gemm_2l_fo_plans.py --pieces (PLANS_MS, default 512,256), memcheck, the whole tests/gpu
#       (v245 timed g.51 while opt-in and g.52, the three-warpgroup tile in quarters, 1-3 % slower and removed: columns
#       fo_oh256 / fo_oq and plans rf2_256h / rf3_192q; the target is gone with them)
#   v244: g.50 as the default (branch g50-default, perf-notes v2.35's Next 1): the halves, low-rank-copy, release,
#       staging and 2l kernel tests (nothing timed if they fail), ab_2l.py (BENCH_MS, default 4608,256; fo, fo_3s, bf16,
#       fp8d), memcheck, the whole tests/gpu
#   v243: perf-notes v2.35's g.50 (set_gemm_2l_out_halves: the three-warpgroup 192-token kernel's output staged in two
#       halves, a fourth stage): its tests (nothing timed if they fail), ab_2l.py (BENCH_MS, default 4608,256; fo,
#       fo_oh, fp8d), memcheck, the whole tests/gpu (SUITE=0: not the suite)
#   v242: after v241's unfinished suite: tests/gpu/test_rf_pingpong.py alone (pytest-timeout's thread method, so a hang
#       names its test), ab_2l.py at 4608 tokens (fo, fo_rel2), then the whole tests/gpu
#   v241: perf-notes v2.35's g.49 as the default (each stage released after the next stage's first k-step): the release
#       tests, the 2l kernel tests, ab_2l.py (BENCH_MS, default 4608,256; fo, fo_rel2, bf16, fp8d), the tile life with
#       --substeps of both default kernels, memcheck, the stall sampling (stalls), the whole tests/gpu
#       (v240 timed g.49 while opt-in, columns fo_rel1 / fo_rel0, and v239 at commit 2a19983 g.48, the weight words in
#       halves, 16-23 % slower and since removed; both targets are gone with their switches)
#   v238: perf-notes v2.34's g.47 (the last warpgroup's low-rank copies unrolled) and the stall sampling: g.47's tests
#       (nothing timed if they fail), the tile life with --substeps of both default kernels with and without g.47
#       (--lr-rolled: the default since v2.35), ab_2l.py (BENCH_MS, default 4608,256; fo, fo_lrr, fp8d), memcheck, the
#       stalls target below, the whole tests/gpu (as run in v2.35 at commit b5ccdec, g.47 was opt-in: --lr-unrolled, fo_lru)
#   stalls: where the default GEMM's warps stall, per SASS instruction (perf-notes v2.34's next step 1): Nsight Compute's
#       SourceCounters and WarpStateStats on benchmarks/chain_ncu.py at STALL_SHAPE (default 4608 3072 3072), clocks not
#       locked, its source page as CSV, then benchmarks/ncu_sass_stalls.py (by opcode, by reason, the hottest lines);
#       NCU_PIPES=1: also the issue slots, each pipe's utilization and the shared-memory throughput
#       (ComputeWorkloadAnalysis, InstructionStats, SchedulerStats, MemoryWorkloadAnalysis)
#   v237: perf-notes v2.34's g.46 (the output staging with GELU-or-not decided once): its tests and the GELU epilogue
#       test (nothing timed if they fail), the tile life with --substeps of both default kernels with and without
#       --act-in-loop, ab_2l.py (BENCH_MS, default 4608,256; fo, fo_ail, bf16, fp8d), memcheck, the whole tests/gpu
#   v236: perf-notes v2.34's store step by sub-steps: the tile-life tests, then gemm_2l_tile_life.py --substeps at
#       4608 x 3072 x 3072 for both default kernels, each also with --lr-producer and --no-store, and the
#       three-warpgroup kernel at 4608 x 12288 x 3072 (as run in v2.34 at commit e850666 it also timed g.45, since
#       removed)
#   v235 (as run at commit 2954bff; g.44, set_gemm_2l_spread_store, removed in v2.35, so now without its parts):
#       perf-notes v2.33's opt-in switches at the tile boundary (set_gemm_2l_l2_prefetch, set_gemm_2l_spread_store,
#       set_gemm_2l_lr_by_producer): their tests (nothing timed if they fail), the tile life at 4608 x 3072 x 3072 of both
#       default kernels with each and with the no-output probe, ab_2l.py (BENCH_MS, default 4608; fo, fo_pf, fo_ss,
#       fo_lrp, bf16, fp8d), memcheck, then the whole tests/gpu suite
#   life: benchmarks/gemm_2l_tile_life.py (the persistent register-fragment GEMM's tile steps by clock64 stamps)
#   v234: the register-fragment loop pipelined within each warpgroup (set_gemm_2l_rf_pipelined) and the ping-pong GEMM
#       (set_gemm_2l_rf_pingpong), perf-notes v2.31: their tests (a kernel whose tests fail is not timed), ab_2l.py at
#       4608 / 4096 tokens (fo, fo_pipe, fo_pp, bf16, fp8d), gemm_2l_ksweep.py --pipelined --tile 224 (a stage and a
#       tile's fixed part with and without turns, one warpgroup alone, ping-pong); v234c: ab_2l.py at 256 / 1024 tokens,
#       the tile life (gemm_2l_tile_life.py, also --pingpong), every GEMM plan at 256 tokens with and without the
#       pipelined loop (gemm_2l_fo_plans.py --splits --pipelined), memcheck; v234b: the whole tests/gpu suite; v234m: (WHEELS=.slimwhl) the
#       model by default, with each (flux_e2e.py _pipe, _pp) and fp8 compiled
#   v230: benchmarks/quantize_2l_overlap.py (the quantizer with its side-stream down projection against the quantizer
#       alone at 4608 tokens: what a down projection off the critical path would save)
#   chainncu: ab_2l.py at 512 tokens (fo against fo_cb: the few-token down projection's limit), then Nsight Compute on
#       each kernel of the default chain (benchmarks/chain_ncu.py) at NCU_SHAPES (default 256 tokens, 3072 x 3072 and
#       3072 x 9216), clocks not locked
#   gpumarked: (WHEELS=.slimwhl: diffusers) the gpu-marked tests outside tests/gpu (diffusers pipelines on the GPU,
#       epilogues, memory, calibration), each failure's reason listed (-rfE), then the epilogue probe test
#   rf: the register-fragment kernel on weights stored in fragment order: its tests and the persistent ones first,
#       the other 2l tests, compute-sanitizer, ab_2l.py (BENCH_MS, ROUNDS; no TMA-store column), gemm_2l_ksweep.py
set -uo pipefail
what=${1:-all}
OUT=${OUT:-/tmp/svdq_out}
mkdir -p "$OUT"
memcheck() {  # compute-sanitizer memcheck of tests/gpu/sanitize_case.py into the log $1 (SANITIZE_PDL=1: with set_pdl and
  # the lean quantizer)
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 python3 tests/gpu/sanitize_case.py > "$1" 2>&1
  echo "compute-sanitizer memcheck rc=$? $(grep -E 'ERROR SUMMARY' "$1" | tail -1)"
}
rf_tests() {  # the fragment-order and persistent int4_2l tests (extra pytest flags: $@); returns their rc
  timeout 200 python3 -X faulthandler -m pytest -q "$@" -p no:cacheprovider tests/gpu/test_kernels_2l.py \
    -m "gpu or not gpu" -o addopts="" -k "fragment_order or packed_persistent" --timeout 60 > "$OUT/tests_rf.log" 2>&1
  local rc=$?
  echo "fragment-order tests rc=$rc"; grep -E "passed|failed|Error|assert|Timeout" "$OUT/tests_rf.log" | tail -12
  return $rc
}
quant_tests() {  # the quantizer GPU tests -k "$1", stopping at the first failure; returns their rc
  timeout 150 python3 -X faulthandler -m pytest -q -x -p no:cacheprovider tests/gpu/test_kernels_2l.py -m "gpu or not gpu" \
    -o addopts="" -k "$1" --timeout 60 > "$OUT/tests_q.log" 2>&1
  local rc=$?; echo "quantizer tests rc=$rc"; grep -E "passed|failed|Error|assert|Timeout" "$OUT/tests_q.log" | tail -8
  return $rc
}
q_tests() {  # quant_tests "$1" first, then, if they pass, the other 2l tests and compute-sanitizer
  quant_tests "$1" || return
  timeout 240 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_2l.py -m "gpu or not gpu" -o addopts="" \
    -k "not quantize_act_2l and not int8_weights" --timeout 60 > "$OUT/tests_2l.log" 2>&1
  echo "2l tests rc=$?"; grep -E "passed|failed|Error|assert" "$OUT/tests_2l.log" | tail -6
  memcheck "$OUT/sanitize_memcheck.log"
}
ncu_quant() {  # Nsight Compute on benchmarks/quantize_2l_ncu.py --k $1: kernels matching $2, $3 launches, into $4
  local k=$1 regex=$2 count=$3 log=$4; shift 4  # (further ncu flags after them)
  (cd benchmarks && timeout 120 ncu --kernel-name regex:"$regex" --launch-skip 1 --launch-count "$count" \
    --section SpeedOfLight --section WarpStateStats --section Occupancy --section LaunchStats "$@" \
    python3 quantize_2l_ncu.py --k "$k" > "$log" 2>&1)
  echo "ncu K=$k rc=$?"
}
flux_e2e_1024() {  # benchmarks/flux_e2e.py at 1024 px, batch 1: timeout $1, variants $2, further flags after them
  local limit=$1 variants=$2; shift 2
  timeout "$limit" python3 benchmarks/flux_e2e.py --out "$OUT/flux_e2e.json" --res 1024 --batch 1 --variants "$variants" \
    "$@" > "$OUT/e2e.log" 2>&1
  echo "e2e rc=$?"; grep -vE "^\{" "$OUT/e2e.log" | tail -16
}
plans_table() {  # the rows of a gemm_2l_fo_plans.py log $1 with only the candidates named after it, and the best
  local log=$1; shift
  grep -E "^M=" "$log" | python3 -c "
import re, sys
for line in sys.stdin:
    head, row, tail = line.split('|')
    d = {k: float(v) for k, v in re.findall(r'(\S+)=([\d.]+)', row)}
    print(head.strip(), ' '.join(f'{k}={d[k]:.1f}' for k in sys.argv[1:] if k in d), '|', tail.strip())" "$@"
}
tests_then_ab() {  # $1 a target's name, $2 its test paths (space-separated), the rest ab_2l.py's arguments: the tests
  # into $OUT/tests_$1.log (-x), and only if they pass ab_2l.py into $OUT/ab_$1.log; returns the tests' rc
  local name=$1 paths=$2 rc; shift 2
  timeout 300 python3 -m pytest -q -x -p no:cacheprovider $paths -m "gpu or not gpu" -o addopts="" --timeout 60 \
    --timeout-method=thread > "$OUT/tests_$name.log" 2>&1
  rc=$?; echo "$name tests rc=$rc"; grep -E "^(FAILED|ERROR)|passed|failed|Error|Timeout" "$OUT/tests_$name.log" | tail -6
  [ $rc -eq 0 ] || return $rc
  timeout 240 python3 benchmarks/ab_2l.py "$@" > "$OUT/ab_$name.log" 2>&1
  echo "ab rc=$?"; grep -vE "^\{" "$OUT/ab_$name.log" | grep -E "^ +[0-9]|M +K" | cut -c1-170
}
gpu_suite() {  # the whole tests/gpu suite into $OUT/tests.log (timeout $1 s, default 200); returns its rc
  timeout "${1:-200}" python3 -m pytest -q --maxfail=10 -p no:cacheprovider tests/gpu -m "gpu or not gpu" -o addopts="" \
    --timeout 120 > "$OUT/tests.log" 2>&1
  local rc=$?
  echo "tests/gpu rc=$rc"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -6
  return $rc
}
other_build() {  # .pbother/prebuilt.tar.xz (another tree's .prebuilt, and its svdquant_hf if packed) into /tmp/pbother
  mkdir -p /tmp/pbother && tar -xJf .pbother/prebuilt.tar.xz -C /tmp/pbother
  if [ -d /tmp/pbother/svdquant_hf ]; then  # its package-dir mapping, as above (these parts from this tree)
    for d in quantizers csrc:_csrc hub_scripts; do
      [ -e "/tmp/pbother/svdquant_hf/${d#*:}" ] || ln -s "$PWD/${d%%:*}" "/tmp/pbother/svdquant_hf/${d#*:}"
    done
  fi
}
with_build() {  # the command after $1 with build $1's kernels (this | other), and the other tree's package if packed
  local b=$1; shift
  if [ "$b" = other ]; then
    (export SVDQUANT_HF_KERNELS_DIR=/tmp/pbother/.prebuilt
     [ -d /tmp/pbother/svdquant_hf ] && export PYTHONPATH=/tmp/pbother:$PYTHONPATH
     "$@")
  else
    (export SVDQUANT_HF_KERNELS_DIR=$PWD/.prebuilt; "$@")
  fi
}
ab_builds() {  # ab_2l.py (fo, bf16) at token counts $2, $1 rounds of both builds alternating, then their table
  local r b
  mkdir -p "$OUT/ab_builds"
  for r in $(seq "$1"); do
    for b in this other; do
      with_build $b timeout 150 python3 benchmarks/ab_2l.py --ms "$2" --cols fo,bf16 --rounds 1 \
        > "$OUT/ab_builds/abx_${b}_$r.log" 2>&1
      echo "ab $b $r rc=$?"
    done
  done
  python3 benchmarks/ab_builds_table.py "$OUT/ab_builds" --builds this,other > "$OUT/ab_builds.txt"
  cat "$OUT/ab_builds.txt"
}
life_runs() {  # benchmarks/gemm_2l_tile_life.py with flags $2 once per variant after them (at 4608 x 3072 x 3072 unless
  # the variant names --shapes), each printed and all appended to $OUT/$1
  local log=$1 flags=$2 a sh; shift 2
  for a in "$@"; do
    case "$a" in *--shapes*) sh="" ;; *) sh="--shapes 4608x3072x3072" ;; esac
    (cd benchmarks && timeout 40 python3 gemm_2l_tile_life.py $flags $sh $a > "$OUT/life.log" 2>&1)
    echo "life [$a] rc=$?"; tail -n +3 "$OUT/life.log" | cut -c1-160; cat "$OUT/life.log" >> "$OUT/$log"
  done
}
gemm_stalls() {  # Nsight Compute's per-instruction stall sampling of the default GEMM at STALL_SHAPE, summarized
  # (NCU_PIPES=1: also the issue slots, each pipe's utilization and the memory (shared-memory) throughput, printed)
  local extra=""
  [ "${NCU_PIPES:-0}" = 1 ] && extra="--section ComputeWorkloadAnalysis --section InstructionStats --section SchedulerStats --section MemoryWorkloadAnalysis"
  (cd benchmarks && timeout 200 ncu --clock-control none --kernel-name regex:"w4a4_gemm_2l" --launch-skip 2 \
    --launch-count 1 --section SourceCounters --section WarpStateStats $extra -f -o "$OUT/gemm_stalls" \
    python3 chain_ncu.py ${STALL_SHAPE:-4608 3072 3072} > "$OUT/ncu_stalls.log" 2>&1)
  echo "ncu rc=$?"; tail -3 "$OUT/ncu_stalls.log"
  ncu --import "$OUT/gemm_stalls.ncu-rep" --page source --csv --print-source sass > "$OUT/gemm_stalls_sass.csv" 2>&1
  echo "source page rc=$? ($(wc -l < "$OUT/gemm_stalls_sass.csv") lines)"; head -c 600 "$OUT/gemm_stalls_sass.csv"; echo
  ncu --import "$OUT/gemm_stalls.ncu-rep" --page details --section WarpStateStats > "$OUT/gemm_stalls_details.txt" 2>&1
  grep -E "Stall|Warp Cycles" "$OUT/gemm_stalls_details.txt" | head -20
  if [ -n "$extra" ]; then
    ncu --import "$OUT/gemm_stalls.ncu-rep" --page details --print-details all > "$OUT/gemm_pipes_details.txt" 2>&1
    ncu --import "$OUT/gemm_stalls.ncu-rep" --page raw --csv > "$OUT/gemm_pipes_raw.csv" 2>&1
    grep -iE "issue|ipc|pipe|utiliz|eligible|active warps|executed instructions|shared|bank" \
      "$OUT/gemm_pipes_details.txt" | head -50
    python3 - "$OUT/gemm_pipes_raw.csv" <<'PYEOF'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
if len(rows) >= 3:
    names, vals = rows[0], rows[2]
    def num(v):
        try:
            return float(v.replace(",", ""))
        except ValueError:
            return None
    keep = [(n, num(v)) for n, v in zip(names, vals) if "pipe" in n and "pct_of_peak_sustained_active" in n]
    for n, v in sorted([k for k in keep if k[1]], key=lambda t: -t[1])[:16]:
        print(f"  {n}: {v:.1f} %")
PYEOF
  fi
  python3 benchmarks/ncu_sass_stalls.py "$OUT/gemm_stalls_sass.csv" --top 50
}
v227_tests() {  # the chunked quantizer's tests and the side-stream ones; returns their rc
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_2l.py -m "gpu or not gpu" -o addopts="" \
    -k "in_row_chunks or side_stream or cat_reads" --timeout 60 > "$OUT/tests_v227.log" 2>&1
  local rc=$?; echo "v227 tests rc=$rc"; grep -E "passed|failed|Error|assert" "$OUT/tests_v227.log" | tail -5
  return $rc
}
chain_tests() {  # tests/gpu/test_lr_chain.py (the chained down projection), stopping at the first failure; returns their rc
  timeout 200 python3 -X faulthandler -m pytest -q -x -p no:cacheprovider tests/gpu/test_lr_chain.py -m "gpu or not gpu" \
    -o addopts="" --timeout 60 > "$OUT/tests_v229.log" 2>&1
  local rc=$?; echo "chain tests rc=$rc"; grep -E "passed|failed|Error|assert" "$OUT/tests_v229.log" | tail -8
  return $rc
}
chain_breakdown() {  # benchmarks/chain_breakdown.py at the token counts $1
  timeout 150 python3 benchmarks/chain_breakdown.py --ms "$1" > "$OUT/chain_breakdown.log" 2>&1
  echo "breakdown rc=$?"; tail -16 "$OUT/chain_breakdown.log"
}
export PYTHONUNBUFFERED=1 SVDQUANT_HF_CACHE=/tmp/svdq_cache
# package layout without installing: the setuptools package-dir mapping, by symlinks in this copy
[ -e svdquant_hf/quantizers ] || ln -s ../quantizers svdquant_hf/quantizers
[ -e svdquant_hf/_csrc ] || ln -s ../csrc svdquant_hf/_csrc
[ -e svdquant_hf/hub_scripts ] || ln -s ../hub_scripts svdquant_hf/hub_scripts
WHEELS=${WHEELS:-.bnbwhl}
if [ -d "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    > /tmp/pip.log 2>&1 || { echo "wheel install failed"; tail -3 /tmp/pip.log; }
  export PYTHONPATH=$PWD:/tmp/site
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > /tmp/env.log 2>&1
python3 -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" >> /tmp/env.log 2>&1
nvcc --version | tail -1 >> /tmp/env.log
cat /tmp/env.log

. benchmarks/device_build.sh  # the carried .prebuilt kernels if they match the tree, else an AOT build here
grep -iE "error|warning C75" "$OUT/build.log" | head -20
so=$(ls ${SVDQUANT_HF_KERNELS_DIR:-/tmp/svdq_cache/kernels/*}/svdquant_hf_kernels.so 2>/dev/null | head -1)
if [ -n "$so" ]; then
  cuobjdump -res-usage "$so" 2>/dev/null | grep -E "Function|REG" | paste - - | sed -E 's/Function ([^:]*):.*REG:([0-9]+).*SHARED:([0-9]+).*LOCAL:([0-9]+).*/\1 REG=\2 SHARED=\3 LOCAL=\4/' \
    | sed -E 's/_ZN4svdq[^_]*_GLOBAL__N__[0-9a-f_]*//' > /tmp/resusage.log
  grep -E "Li128ELi2E|Li2ELi2E|Li64ELi2E" /tmp/resusage.log
  cuobjdump -sass "$so" > /tmp/sass.txt 2>/dev/null
  # SASS of the two kernels that the benchmark's main shape uses (bf16, group 64, rank 32, 128-row tiles)
  SASS_OUT=$OUT; [ "$what" = all ] || [ "$what" = ncu ] || SASS_OUT=/tmp
  awk '/Function : .*w4a4_gemm_kernelI13__nv_bfloat16Li128ELi2E/{f=1} /Function : /{if(!/w4a4_gemm_kernelI13__nv_bfloat16Li128ELi2E/)f=0} f' /tmp/sass.txt > "$SASS_OUT/sass_gemm.txt"
  awk '/Function : .*quantize_act_kernelI13__nv_bfloat16Li2ELi2E/{f=1} /Function : /{if(!/quantize_act_kernelI13__nv_bfloat16Li2ELi2E/)f=0} f' /tmp/sass.txt > "$SASS_OUT/sass_quant.txt"
  for k in gemm quant; do
    echo "sass $k: $(wc -l < "$SASS_OUT/sass_$k.txt") lines; $(grep -oE '^\s+/\*[0-9a-f]+\*/\s+[A-Z0-9_.]+' "$SASS_OUT/sass_$k.txt" | awk '{print $2}' | sed 's/\..*//' | sort | uniq -c | sort -rn | head -14 | awk '{printf "%s=%s ", $2, $1}')"
  done
  echo "sass all: LDL=$(grep -c LDL /tmp/sass.txt) I2F=$(grep -c I2F /tmp/sass.txt)"
fi

if [ "$what" = tests ] || [ "$what" = all ] || [ "$what" = tb ]; then
  t0=$(date +%s)
  timeout 240 python3 -m pytest -q --maxfail=20 -p no:cacheprovider tests/gpu -m "gpu or not gpu" --timeout 230 \
    -o addopts="" > "$OUT/tests.log" 2>&1
  echo "tests rc=$? in $(( $(date +%s) - t0 )) s"
  grep -E "passed|failed|error|Error|assert" "$OUT/tests.log" | tail -15
fi
if [ "$what" = 2l ] || [ "$what" = cpp ]; then
  t0=$(date +%s)
  timeout 300 python3 -m pytest -q -x --maxfail=5 -p no:cacheprovider tests/gpu/test_kernels_2l.py -m "gpu or not gpu" \
    -o addopts="" > "$OUT/tests_2l.log" 2>&1
  echo "tests 2l rc=$? in $(( $(date +%s) - t0 )) s"
  grep -E "passed|failed|error|Error|assert" "$OUT/tests_2l.log" | tail -15
  memcheck "$OUT/sanitize_2l.log"
  if [ "$what" = 2l ]; then
    timeout 200 python3 benchmarks/gemm_bench.py --formats int4_2l --ms ${BENCH_MS:-4608,256} --json "$OUT/gemm_bench_2l.json" \
      > "$OUT/bench_2l.log" 2>&1
    echo "bench rc=$?"
    tail -14 "$OUT/bench_2l.log"
  fi
  if [ -n "${LORA:-}" ]; then
    timeout 200 python3 benchmarks/lora_overhead.py --format int4_2l --json "$OUT/lora_overhead_2l.json" \
      > "$OUT/lora_2l.log" 2>&1
    echo "lora rc=$?"
    tail -4 "$OUT/lora_2l.log"
  fi
fi
if [ "$what" = q ]; then  # the fused quantizer: its tests first (a hang or fault there stops the call early)
  grep -E "quantize_act_2l_fused" /tmp/resusage.log | sed -E 's/.*kernelI//' | head -24
  q_tests "quantize_act_2l" && chain_breakdown "${PROBE_MS:-4608,256}"
fi
if [ "$what" = q8 ]; then  # the persistent per-row quantizer: its tests, the other 2l tests, sanitizer, the chain by
  # part, then (E2E=1, wheels in .e2ewhl) the whole model at 1024 px batch 1
  if q_tests "quantize_act_2l and not fused"; then
    timeout 90 python3 benchmarks/quantize_2l_rows.py > "$OUT/quantize_2l_rows.log" 2>&1
    echo "rows rc=$?"; tail -10 "$OUT/quantize_2l_rows.log"
    chain_breakdown "${PROBE_MS:-4608,256}"
    if [ -n "${E2E:-}" ]; then  # (needs WHEELS=.e2ewhl: diffusers, installed above)
      flux_e2e_1024 280 "${E2E_VARIANTS:-bf16,bf16_regional,fp8mm_regional,svdq2l_fo_q1r_regional,svdq2l_fo_regional}" \
        --iters 5 --warmup 1
    fi
  fi
fi
if [ "$what" = ep ]; then  # the GEMM tile's fixed part by epilogue probe, host time per op pair, then (E2E=1, wheels
  # in WHEELS) the whole model each forward timed alone, back to back and as one CUDA graph (E2E_VARIANTS)
  timeout 200 python3 -X faulthandler -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_2l.py -m "gpu or not gpu" \
    -o addopts="" -k "${EP_TESTS:-gemm_probes}" --timeout 60 > "$OUT/tests_probe.log" 2>&1
  echo "tests (-k ${EP_TESTS:-gemm_probes}) rc=$?"; grep -E "passed|failed|Error|assert|differ" "$OUT/tests_probe.log" | tail -12
  if [ -n "${EP_TESTS:-}" ]; then
    memcheck "$OUT/sanitize_memcheck.log"
    timeout 150 compute-sanitizer --tool synccheck --error-exitcode 9 python3 tests/gpu/sanitize_case.py \
      > "$OUT/sanitize_synccheck.log" 2>&1
    echo "compute-sanitizer synccheck rc=$? $(grep -E 'ERROR SUMMARY' "$OUT/sanitize_synccheck.log" | tail -1)"
  fi
  if [ "${KSWEEP:-1}" != 0 ]; then
    (cd benchmarks && timeout 120 python3 gemm_2l_ksweep.py --probes --ks 768,1536,3072,6144 > "$OUT/ksweep_probes.log" 2>&1)
    echo "ksweep probes rc=$?"; tail -12 "$OUT/ksweep_probes.log"
  fi
  if [ -n "${OVERLAP:-}" ]; then  # the quantizer's down projection beside it at large K, or after it
    (cd benchmarks && timeout 120 python3 quantize_2l_overlap.py > "$OUT/quantize_2l_overlap.log" 2>&1)
    echo "overlap rc=$?"; tail -7 "$OUT/quantize_2l_overlap.log"
  fi
  if [ -n "${TILES:-}" ]; then  # the register-fragment GEMM with and without 256-token tiles
    (cd benchmarks && timeout 150 python3 gemm_2l_tiles.py --ms "$TILES" > "$OUT/gemm_2l_tiles.log" 2>&1)
    echo "tiles rc=$?"; tail -18 "$OUT/gemm_2l_tiles.log"
  fi
  if [ "${OP_HOST:-1}" != 0 ]; then
    timeout 90 python3 benchmarks/op_host_overhead.py --profile > "$OUT/op_host.log" 2>&1
    echo "op_host rc=$?"; tail -30 "$OUT/op_host.log"
  fi
  if [ -n "${E2E:-}" ]; then
    flux_e2e_1024 360 "${E2E_VARIANTS:-svdq2l_fo_regional_cg,bf16_regional_cg,fp8mm_regional_cg,svdq2l_fo_regional}" \
      --iters 6 --warmup 2 --loop-too --profile
  fi
fi
if [ "$what" = epi ]; then  # the GEMM epilogue's GELU / prefix (fuse_epilogues): the int4_2l and epilogue tests, memcheck,
  # the usage docs' snippets (WHEELS=.slimwhl: diffusers), then (E2E=1) the whole model, fused against unfused
  timeout 240 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_2l.py tests/test_epilogues.py tests/test_rms_norm_rope.py \
    -m "gpu or not gpu" -o addopts="" > "$OUT/tests.log" 2>&1
  echo "tests rc=$?"; grep -E "passed|failed|Error|assert" "$OUT/tests.log" | tail -12
  memcheck "$OUT/memcheck.log"
  if [ "${DOCS:-1}" != 0 ]; then
    timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_diffusers_usage_docs.py -o addopts="" \
      > "$OUT/docs.log" 2>&1
    echo "docs rc=$?"; tail -2 "$OUT/docs.log"
  fi
  if [ -n "${E2E:-}" ]; then
    flux_e2e_1024 ${E2E_LIMIT:-400} "${E2E_VARIANTS:-svdq2l_fo_ep_regional_cg,bf16_regional_cg,fp8mm_regional_cg,svdq2l_fo_ep_lora_regional_cg,svdq2l_fo_ep_lora_nowlr_regional_cg}" \
      --iters 6 --warmup 2 --loop-too --profile
  fi
fi
if [ "$what" = cmd ]; then  # any command ($CMD) in this script's environment (kernels, PYTHONPATH, wheels)
  eval "$CMD"
fi
if [ "$what" = s40 ]; then  # the fortieth session (perf-notes v2.50): q.9's tests and chain, then what knobs runs
  timeout 300 python3 -X faulthandler -m pytest -q -p no:cacheprovider tests/gpu/test_quantize_pairs.py \
    -m "gpu or not gpu" -o addopts="" --timeout 60 --timeout-method=thread > "$OUT/tests_pairs.log" 2>&1
  rc=$?; echo "pairs tests rc=$rc"; grep -E "^(FAILED|ERROR)|passed|failed|Error|assert|Timeout" "$OUT/tests_pairs.log" | tail -10
  if [ $rc -ne 124 ] && ! grep -q "Timeout" "$OUT/tests_pairs.log"; then
    (cd benchmarks && timeout 240 python3 chain_breakdown.py --ms ${S40_MS:-4608,1024,256} --fused 3 --fp8 --reps 20 \
      --pairs-forms ${S41_FORMS:-v3,t,v3t}) \
      > "$OUT/breakdown_pairs.log" 2>&1
    echo "breakdown (pairs) rc=$?"; tail -16 "$OUT/breakdown_pairs.log" | cut -c1-320
    (cd benchmarks && timeout 120 python3 quantize_pairs_stamps.py --ms ${S41_STAMP_MS:-4608,1024} --ks 1024,3072 \
      --mma-warps ${S41_MW:-0,4,2} --forms ${S42_STAMP_FORMS:-v2,v3,t,v3t}) > "$OUT/stamps_pairs.log" 2>&1
    echo "stamps (pairs) rc=$?"; tail -26 "$OUT/stamps_pairs.log" | cut -c1-330
  fi
  memcheck "$OUT/memcheck.log"
  if [ "${S40_KNOBS:-1}" = 1 ]; then what=knobs; else
    timeout 120 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_quantize_cols.py -m "gpu or not gpu" \
      -o addopts="" -k "tuning or probe" --timeout 60 > "$OUT/tests_cols.log" 2>&1
    echo "cols tuning tests rc=$?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests_cols.log" | tail -4
  fi
  for mode in ${S40_SUITE:-}; do  # the whole tests/gpu suite starting from fused-quantizer mode $mode
    SVDQ_TEST_PAIRS_V3=${S41_V3:-0} SVDQ_TEST_PAIRS_LRT=${S41_LRT:-0} SVDQ_TEST_PAIRS_LOADS=${S42_LOADS:-} \
      SVDQ_TEST_PAIRS_UNITS=${S43_UNITS:-} \
      SVDQ_TEST_FUSED_QUANT=$mode gpu_suite 240
    mv "$OUT/tests.log" "$OUT/tests_mode$mode${S41_V3:+_v3$S41_V3}${S41_LRT:+_t$S41_LRT}${S42_LOADS:+_l${S42_LOADS/,/_}}${S43_UNITS:+_u${S43_UNITS/,/_}}.log"
  done
fi
if [ "$what" = knobs ]; then  # the fixed-column quantizer's tuning knobs (perf-notes v2.50): tests, times, stamps
  timeout 300 python3 -X faulthandler -m pytest -q -p no:cacheprovider tests/gpu/test_quantize_cols.py \
    -m "gpu or not gpu" -o addopts="" --timeout 60 --timeout-method=thread > "$OUT/tests_cols.log" 2>&1
  rc=$?; echo "cols tests rc=$rc"; grep -E "^(FAILED|ERROR)|passed|failed|Error|assert|Timeout" "$OUT/tests_cols.log" | tail -10
  if [ $rc -ne 124 ] && ! grep -q "Timeout" "$OUT/tests_cols.log"; then
    (cd benchmarks && timeout 240 python3 quantize_cols_knobs.py --ks 3072,12288,15360 --ms ${KNOBS_MS:-4608,1024} \
      --rounds ${KNOBS_ROUNDS:-3} ${KNOBS_VARIANTS:+--variants "$KNOBS_VARIANTS"}) > "$OUT/knobs.log" 2>&1
    echo "knobs rc=$?"
    for t in 0,1,0,0 ${KNOBS_STAMPS:-4000,2,0,0 0,1,0,4 0,1,1,0}; do
      (cd benchmarks && timeout 60 python3 quantize_cols_stamps.py --ks 3072,12288,15360 --tuning $t) \
        > "$OUT/stamps_${t//,/_}.log" 2>&1
      echo "== stamps $t rc=$?"; tail -3 "$OUT/stamps_${t//,/_}.log" | cut -c1-330
    done
    (cd benchmarks && timeout 150 python3 chain_breakdown.py --ms 4608 --fused 2 --fp8 --reps 20 \
      --cols-tuning ${KNOBS_CHAIN:-4000,2,0,0}) > "$OUT/breakdown_knobs.log" 2>&1
    echo "breakdown rc=$?"; tail -6 "$OUT/breakdown_knobs.log" | cut -c1-230
    grep -vE "^\{" "$OUT/knobs.log" | tail -24
  fi
fi
if [ "$what" = cols ]; then  # the fixed-column fused quantizer: its tests, then its speed beside the per-row pair
  timeout 300 python3 -X faulthandler -m pytest -q -p no:cacheprovider tests/gpu/test_quantize_cols.py \
    -m "gpu or not gpu" -o addopts="" --timeout 60 --timeout-method=thread > "$OUT/tests_cols.log" 2>&1
  rc=$?; echo "cols tests rc=$rc"; grep -E "^(FAILED|ERROR)|passed|failed|Error|assert|Timeout" "$OUT/tests_cols.log" | tail -10
  if [ $rc -ne 124 ] && ! grep -q "Timeout" "$OUT/tests_cols.log"; then  # (timed even where a test failed: no hang)
    quant_tests "quantize_act_2l_fused"
    (cd benchmarks && timeout 150 python3 quantize_2l_sweep.py --mode 2 --ks 3072,12288,15360 --ms ${COLS_MS:-16,1024,4608} \
      --reps 20) > "$OUT/qsweep_cols.log" 2>&1
    echo "sweep rc=$?"; grep -vE "^\{" "$OUT/qsweep_cols.log" | tail -30
    (cd benchmarks && timeout 100 python3 quantize_cols_stamps.py --ks 3072,12288,15360 --clusters 0,16) \
      > "$OUT/stamps_cols.log" 2>&1
    echo "stamps rc=$?"; tail -8 "$OUT/stamps_cols.log"
    (cd benchmarks && timeout 150 python3 chain_breakdown.py --ms 4608 --fused 2 --fp8 --reps 20) > "$OUT/breakdown_cols.log" 2>&1
    echo "breakdown rc=$?"; tail -8 "$OUT/breakdown_cols.log" | cut -c1-230
    timeout 200 python3 benchmarks/ab_2l.py --ms ${COLS_AB_MS:-4608,1024} --rounds 2 --cols fo,fo_fc,bf16,fp8d > "$OUT/ab_cols.log" 2>&1
    echo "ab rc=$?"; grep -vE "^\{" "$OUT/ab_cols.log" | tail -16 | cut -c1-200
    if [ "${COLS_NCU:-0}" = 1 ]; then  # where its warps stall, per SASS instruction (K = 12288, 4608 tokens)
      (cd benchmarks && timeout 200 ncu --clock-control none --kernel-name regex:"quantize_act_2l_cols" --launch-skip 1 \
        --launch-count 1 --section SourceCounters --section WarpStateStats --section SpeedOfLight \
        --section MemoryWorkloadAnalysis --section LaunchStats --section Occupancy -f -o "$OUT/cols" \
        python3 quantize_2l_ncu.py --mode 2 --k 12288 > "$OUT/ncu_cols.log" 2>&1)
      echo "ncu rc=$?"
      ncu --import "$OUT/cols.ncu-rep" --page source --csv --print-source sass > "$OUT/cols_sass.csv" 2>&1
      ncu --import "$OUT/cols.ncu-rep" --page details > "$OUT/cols_details.txt" 2>&1
      grep -E "Duration|DRAM Throughput|Warp Cycles Per Issued|Registers Per|Achieved Active|Max Active Clusters" \
        "$OUT/cols_details.txt" | head -8
      python3 benchmarks/ncu_sass_stalls.py "$OUT/cols_sass.csv" --top 25 | head -14
    fi
  fi
fi
if [ "$what" = qsweep ]; then  # the fused quantizer's cost per row block (benchmarks/quantize_2l_sweep.py)
  quant_tests "quantize_act_2l_fused"
  timeout 200 python3 benchmarks/quantize_2l_sweep.py > "$OUT/quantize_2l_sweep.log" 2>&1
  echo "sweep rc=$?"; tail -60 "$OUT/quantize_2l_sweep.log"
  ncu_quant 3072 quantize_act_2l_fused 1 "$OUT/ncu_qf_3072.txt" --section SourceCounters
  grep -E "Duration|Cluster|Waves|stall|Stall|cycles being|Achieved Occ" "$OUT/ncu_qf_3072.txt" | head -24
fi
if [ "$what" = qncu ]; then  # Nsight Compute on the fused and the per-row quantizer (benchmarks/quantize_2l_ncu.py)
  for k in ${QNCU_K:-12288 3072}; do
    ncu_quant "$k" "${QNCU_REGEX:-quantize_act_2l}" "${QNCU_COUNT:-3}" "$OUT/ncu_q_$k.txt" --section MemoryWorkloadAnalysis \
      --section SchedulerStats $([ -n "${QNCU_DETAILS:-}" ] && echo --print-details all)
    grep -E "quantize_act_2l|fused shape|Duration|DRAM Throughput|Achieved Occupancy|Registers Per|Warp Cycles Per Issued|No Eligible|Issued Warp" \
      "$OUT/ncu_q_$k.txt" | sed -E 's/void svdq::\(anonymous namespace\)::([a-z0-9_]+)<([^>]*)>.*/\1<\2>/' | head -32
  done
fi
if [ "$what" = tile ]; then  # where a tile's time goes, no tests (the trace checks its output against the kernel's)
  timeout 200 python3 benchmarks/gemm_2l_trace.py --ms ${TRACE_MS:-256,4608} --json "$OUT/trace.json" \
    > "$OUT/trace.log" 2>&1
  echo "trace rc=$?"; grep -E "^M=|tile, cycles" "$OUT/trace.log" | tail -20
  for m in 4608 256; do
    (cd benchmarks && timeout 90 python3 gemm_2l_ksweep.py --m $m > "$OUT/ksweep_$m.log" 2>&1)
    echo "ksweep M=$m rc=$?"; tail -6 "$OUT/ksweep_$m.log"
  done
fi
if [ "$what" = trace ]; then  # the int4_2l tests (one test alone first), then benchmarks/gemm_2l_trace.py
  timeout 120 python3 -X faulthandler -m pytest -v -p no:cacheprovider tests/gpu/test_kernels_2l.py -m "gpu or not gpu" \
    -o addopts="" -k "${FIRST_TEST:-unsupported_k_falls_back}" > "$OUT/first_test.log" 2>&1
  echo "first test rc=$?"; grep -vE "^\s*$" "$OUT/first_test.log" | tail -25
  timeout 300 python3 -X faulthandler -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_2l.py -m "gpu or not gpu" \
    -o addopts="" --deselect "tests/gpu/test_kernels_2l.py::test_quantize_act_2l_${FIRST_TEST:-unsupported_k_falls_back}" \
    > "$OUT/tests_2l.log" 2>&1
  echo "tests 2l rc=$?"; grep -E "passed|failed|Error|File" "$OUT/tests_2l.log" | tail -15
  memcheck /tmp/sanitize_2l.log
  timeout 240 python3 benchmarks/gemm_2l_trace.py --ms ${TRACE_MS:-256,4608} --json "$OUT/trace.json" \
    > "$OUT/trace.log" 2>&1
  echo "trace rc=$?"; tail -40 "$OUT/trace.log"
fi
if [ "$what" = w8 ]; then  # the GEMM on weights stored widened to int8: its tests, the rest, sanitizer, A/B
  timeout 200 python3 -X faulthandler -m pytest -q -x -p no:cacheprovider tests/gpu/test_kernels_2l.py -m "gpu or not gpu" \
    -o addopts="" -k "int8_weights or tma_store" --timeout 60 > "$OUT/tests_w8.log" 2>&1
  w8rc=$?; echo "int8-weight tests rc=$w8rc"; grep -E "passed|failed|Error|assert|Timeout" "$OUT/tests_w8.log" | tail -12
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_2l.py -m "gpu or not gpu" -o addopts="" \
    -k "not int8_weights and not tma_store" --timeout 60 > "$OUT/tests_2l.log" 2>&1
  echo "2l tests rc=$?"; grep -E "passed|failed|Error|assert" "$OUT/tests_2l.log" | tail -8
  if [ "$w8rc" = 0 ]; then  # a failing (or hanging) int8-weight kernel would take the rest of the call with it
    memcheck "$OUT/sanitize_memcheck.log"
  fi
  timeout 280 python3 benchmarks/ab_2l.py --ms ${BENCH_MS:-4608,256} --rounds ${ROUNDS:-3} \
    $([ "$w8rc" = 0 ] || echo --no-w8 --no-ts) > "$OUT/ab_2l.log" 2>&1
  echo "ab rc=$?"; tail -12 "$OUT/ab_2l.log"
  (cd benchmarks && timeout 90 python3 gemm_2l_ksweep.py > "$OUT/ksweep.log" 2>&1)  # per K stage vs per tile
  echo "ksweep rc=$?"; tail -6 "$OUT/ksweep.log"
fi
if [ "$what" = rf ]; then
  rf_tests -x; rfrc=$?
  if [ "$rfrc" = 0 ]; then  # a hanging kernel would take the rest of the call with it
    memcheck "$OUT/sanitize_memcheck.log"
    (cd benchmarks && timeout 120 python3 gemm_2l_ksweep.py > "$OUT/ksweep.log" 2>&1)
    echo "ksweep rc=$?"; tail -8 "$OUT/ksweep.log"
    timeout 280 python3 benchmarks/ab_2l.py --ms ${BENCH_MS:-4608,256} --rounds ${ROUNDS:-3} --no-ts \
      > "$OUT/ab_2l.log" 2>&1
    echo "ab rc=$?"; tail -12 "$OUT/ab_2l.log"
    chain_breakdown "${PROBE_MS:-256,4608}"
  fi
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_2l.py -m "gpu or not gpu" -o addopts="" \
    -k "not fragment_order and not packed_persistent" --timeout 60 > "$OUT/tests_2l.log" 2>&1
  echo "2l tests rc=$?"; grep -E "passed|failed|Error|assert" "$OUT/tests_2l.log" | tail -8
fi
if [ "$what" = v224 ]; then  # PDL and the lean quantizer: correctness first, then the A/B
  timeout 240 python3 -X faulthandler -m pytest -q -x -p no:cacheprovider tests/gpu/test_pdl.py \
    tests/gpu/test_kernels_2l.py -k "pdl or lean" -m "gpu or not gpu" -o addopts="" --timeout 90 > "$OUT/tests_new.log" 2>&1
  newrc=$?; echo "new tests rc=$newrc"; grep -E "passed|failed|Error|assert|Timeout" "$OUT/tests_new.log" | tail -8
  if [ "$newrc" = 0 ]; then
    timeout 260 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_2l.py tests/test_epilogues.py \
      tests/test_rms_norm_rope.py -m "gpu or not gpu" -o addopts="" -k "not lean" > "$OUT/tests_2l.log" 2>&1
    echo "2l tests rc=$?"; grep -E "passed|failed|Error|assert" "$OUT/tests_2l.log" | tail -6
    memcheck "$OUT/sanitize_memcheck.log"
    SANITIZE_PDL=1 memcheck "$OUT/sanitize_memcheck_pdl.log"
    timeout 300 python3 benchmarks/ab_2l.py --ms ${BENCH_MS:-1,256,512,4608} --rounds ${ROUNDS:-2} \
      --cols now,fo,fo_pdl,fo_m0,fo_nql,bf16,fp8d > "$OUT/ab_2l.log" 2>&1
    echo "ab rc=$?"; tail -21 "$OUT/ab_2l.log"
    timeout 120 python3 benchmarks/quantize_2l_rows.py --ms 4608 > "$OUT/quantize_2l_rows.log" 2>&1
    echo "rows rc=$?"; tail -4 "$OUT/quantize_2l_rows.log"
    (cd benchmarks && timeout 90 python3 gemv_2l.py --ms 1 --hot --orders > "$OUT/gemv_2l_hot.log" 2>&1)
    echo "gemv hot rc=$?"; tail -7 "$OUT/gemv_2l_hot.log"
    if [ -n "${E2E:-}" ]; then
      flux_e2e_1024 330 "${E2E_VARIANTS:-svdq2l_fo_ep_regional_cg,svdq2l_fo_ep_pdl_regional_cg,svdq2l_fo_ep_nql_regional_cg,svdq2l_fo_ep_pdl_nql_regional_cg,fp8mm_regional_cg,bf16_regional_cg}" \
        --iters 5 --warmup 1
    fi
  fi
fi
if [ "$what" = v225 ]; then  # the quantizer at any K % 8 == 0, the lean form by default
  timeout 200 python3 -X faulthandler -m pytest -q -x -p no:cacheprovider tests/gpu/test_kernels_2l.py -m "gpu or not gpu" \
    -o addopts="" -k "quantize_act_2l and not fused or linear_2l or gemv_2l or auto_warpgroups" --timeout 90 \
    > "$OUT/tests_new.log" 2>&1
  newrc=$?; echo "new tests rc=$newrc"; grep -E "passed|failed|Error|assert|Timeout" "$OUT/tests_new.log" | tail -8
  if [ "$newrc" = 0 ]; then
    timeout 230 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_2l.py tests/gpu/test_pdl.py \
      tests/test_epilogues.py tests/test_rms_norm_rope.py -m "gpu or not gpu" -o addopts="" --timeout 90 \
      -k "not (quantize_act_2l and not fused or linear_2l or gemv_2l or auto_warpgroups)" > "$OUT/tests_2l.log" 2>&1
    echo "other tests rc=$?"; grep -E "passed|failed|Error|assert" "$OUT/tests_2l.log" | tail -6
    memcheck "$OUT/sanitize_memcheck.log"
    SANITIZE_PDL=1 memcheck "$OUT/sanitize_memcheck_pdl.log"
    if [ -z "${NO_BENCH:-}" ]; then
      timeout 200 python3 benchmarks/ab_2l.py --ms 256,4096 --rounds 2 --cols now,fo,fo_rq,fo_nql,bf16,fp8d \
        --shapes 2432:2432,2432:9728,9728:2432,1152:1152,1152:4608,4608:1152 > "$OUT/ab_2l_sd35_pixart.log" 2>&1
      echo "ab sd3.5/pixart rc=$?"; tail -13 "$OUT/ab_2l_sd35_pixart.log"
      timeout 150 python3 benchmarks/ab_2l.py --ms 256,4608 --rounds 2 --cols now,fo,fo_nql,bf16,fp8d \
        > "$OUT/ab_2l_flux.log" 2>&1
      echo "ab flux rc=$?"; tail -11 "$OUT/ab_2l_flux.log"
    fi
  fi
fi
if [ "$what" = rf3 ]; then  # v2.25's three-warpgroup choice against v2.24's
  timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_kernels_2l.py -m "gpu or not gpu" -o addopts="" \
    -k "rf3_models or auto_warpgroups or rf_by_cost or three_warpgroups or rf_warpgroups" --timeout 90 > "$OUT/tests_rf3.log" 2>&1
  rc=$?; echo "rf3 tests rc=$rc"; grep -E "passed|failed|Error|assert" "$OUT/tests_rf3.log" | tail -5
  if [ "$rc" = 0 ]; then
    timeout 150 python3 benchmarks/ab_2l.py --ms ${BENCH_MS:-512,1024,4096,4608} --rounds ${ROUNDS:-3} \
      --cols now,fo,fo_m0,bf16,fp8d > "$OUT/ab_2l_rf3.log" 2>&1
    echo "ab rc=$?"; tail -21 "$OUT/ab_2l_rf3.log"
    flux_e2e_1024 300 "${E2E_VARIANTS:-svdq2l_fo_ep_regional_cg,svdq2l_fo_ep_m0_regional_cg,fp8mm_regional_cg,bf16_regional_cg}" \
      --iters 5 --warmup 1
  fi
fi
if [ "$what" = v226 ]; then  # layers padded to the GEMM's tiles; where a chain's time goes (kernel timeline)
  timeout 240 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_2l.py -m "gpu or not gpu" -o addopts="" \
    -k "padded or shape_rules or unsupported_k or linear_2l" --timeout 90 > "$OUT/tests_v226.log" 2>&1
  rc=$?; echo "v226 tests rc=$rc"; grep -E "passed|failed|Error|assert" "$OUT/tests_v226.log" | tail -5
  if [ "$rc" = 0 ] && [ -z "${NO_BENCH:-}" ]; then
    (cd benchmarks && timeout 150 python3 linear_padded.py --ms ${PAD_MS:-1024,4096} > "$OUT/linear_padded.log" 2>&1)
    echo "linear_padded rc=$?"; tail -6 "$OUT/linear_padded.log"
    (cd benchmarks && timeout 200 python3 chain_timeline.py --ms ${TIMELINE_MS:-256,512,4608} > "$OUT/chain_timeline.log" 2>&1)
    echo "timeline rc=$?"; tail -17 "$OUT/chain_timeline.log"
  fi
fi
if [ "$what" = v227 ]; then  # the quantizer in row chunks; the few-token down projection's sweep
  v227_tests; rc=$?
  if [ "$rc" = 0 ] && [ -z "${NO_BENCH:-}" ]; then
    (cd benchmarks && timeout 220 python3 ab_2l.py --ms ${BENCH_MS:-4608,1024} --rounds ${ROUNDS:-3} \
      --cols ${V227_COLS:-now,fo,fo_qc12,fo_qc24,bf16,fp8d} > "$OUT/ab_2l_v227.log" 2>&1)
    echo "ab_2l rc=$?"; grep -vE "Profiler|warn" "$OUT/ab_2l_v227.log" | tail -12
    (cd benchmarks && timeout 130 python3 lowrank_down_sweep.py --ms ${SWEEP_MS:-256,512} 2>&1 \
      | grep -v "Profiler clears\|_warn_once" > "$OUT/lowrank_down_sweep.log")
    echo "sweep rc=$?"; tail -7 "$OUT/lowrank_down_sweep.log"
  fi
fi
if [ "$what" = v228 ]; then  # v227's tests and A/B at 4608 tokens, then the model with bf16 eager (#7's goals, this GPU)
  t0=$SECONDS
  v227_tests; rc=$?
  variants=${E2E_VARIANTS:-svdq2l_fo_ep_regional_cg,bf16,bf16_regional_cg,fp8mm_regional_cg,svdq2l_fo_ep_qc24_regional_cg}
  if [ "$rc" = 0 ]; then
    (cd benchmarks && timeout 150 python3 ab_2l.py --ms ${BENCH_MS:-4608} --rounds ${ROUNDS:-2} \
      --cols ${V227_COLS:-fo,fo_qc24,bf16,fp8d} > "$OUT/ab_2l_v227.log" 2>&1)
    echo "ab_2l rc=$?"; grep -vE "Profiler|warn" "$OUT/ab_2l_v227.log" | tail -8
  else
    variants=${variants//,svdq2l_fo_ep_qc24_regional_cg/}
  fi
  flux_e2e_1024 $(( ${V228_LIMIT:-540} - (SECONDS - t0) )) "$variants" --iters 5 --warmup 1
fi
if [ "$what" = chainncu ]; then  # the down projection's token limit at 512; each kernel of the chain at 256 tokens
  (cd benchmarks && timeout 100 python3 ab_2l.py --ms ${BENCH_MS:-512} --rounds ${ROUNDS:-3} \
    --cols ${AB_COLS:-fo,fo_cb,bf16,fp8d} > "$OUT/ab_2l_512.log" 2>&1)
  echo "ab_2l rc=$?"; grep -vE "Profiler|warn" "$OUT/ab_2l_512.log" | tail -7
  for shape in ${NCU_SHAPES:-256,3072,3072 256,3072,9216}; do
    log="$OUT/ncu_chain_${shape//,/x}.txt"
    (cd benchmarks && timeout 120 ncu --clock-control none --kernel-name regex:"lowrank_down|quantize_act_2l|w4a4_gemm_2l" \
      --launch-skip 6 --launch-count 3 --section SpeedOfLight --section LaunchStats --section Occupancy \
      --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis \
      python3 chain_ncu.py ${shape//,/ } > "$log" 2>&1)
    echo "ncu $shape rc=$?"
    grep -E "^  [a-z_0-9:]+.*\(|Duration|Elapsed Cycles|Compute \(SM\) Throughput|DRAM Throughput|Grid Size|Cluster Size|Achieved Occupancy|Warp Cycles Per Issued|No Eligible" "$log" \
      | sed -E 's/void svdq::\(anonymous namespace\)::([a-z0-9_]+)<([^>]*)>.*/\1/' | head -36
  done
fi
if [ "$what" = v229 ]; then  # the chained down projection: its tests, the whole GPU suite, then A/B at a few hundred tokens
  if chain_tests; then
    t0=$(date +%s)
    timeout 250 python3 -m pytest -q --maxfail=20 -p no:cacheprovider tests/gpu -m "gpu or not gpu" --timeout 230 \
      -o addopts="" > "$OUT/tests.log" 2>&1
    echo "tests/gpu rc=$? in $(( $(date +%s) - t0 )) s"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -8
    timeout 150 python3 benchmarks/ab_2l.py --ms ${BENCH_MS:-256,128} --rounds ${ROUNDS:-3} \
      --cols ${V229_COLS:-fo,fo_lc,fo_nlc,bf16,fp8d} > "$OUT/ab_2l_v229.log" 2>&1
    echo "ab_2l rc=$?"; tail -11 "$OUT/ab_2l_v229.log"
    timeout 60 python3 benchmarks/chain_timeline.py --ms 256 --lr-chain 0 > "$OUT/chain_timeline_v229.log" 2>&1
    timeout 60 python3 benchmarks/chain_timeline.py --ms 256 --lr-chain -1 > "$OUT/chain_timeline_v229_lc.log" 2>&1
    echo "timeline rc=$?"; tail -5 "$OUT/chain_timeline_v229.log"; tail -5 "$OUT/chain_timeline_v229_lc.log"
    SANITIZE_CHAIN=1 memcheck "$OUT/sanitize_memcheck_chain.log"
    grep -E "chained down projection case" "$OUT/sanitize_memcheck_chain.log" | tail -1
    timeout 80 python3 -m pytest -q -rfE -p no:cacheprovider tests/test_memory.py -m gpu -o addopts="" --timeout 70 \
      > "$OUT/tests_memory_gpu.log" 2>&1
    echo "memory gpu test rc=$?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests_memory_gpu.log" | tail -3
  fi
fi
if [ "$what" = v229b ]; then  # the chained down projection after a change to its kernel: its tests, the few-token down
  # projection's and the side stream's, memcheck, then the A/B at a few hundred tokens and the timeline by the rule
  if chain_tests; then
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_pdl.py tests/gpu/test_kernels_2l.py \
      -m "gpu or not gpu" -o addopts="" -k "pdl or few_token_down or side_stream or in_row_chunks or padded" \
      --timeout 60 > "$OUT/tests_v229b.log" 2>&1
    echo "pdl / down / side-stream tests rc=$?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests_v229b.log" | tail -5
    SANITIZE_CHAIN=1 memcheck "$OUT/sanitize_memcheck_chain.log"
    timeout 150 python3 benchmarks/ab_2l.py --ms ${BENCH_MS:-256,128} --rounds ${ROUNDS:-3} \
      --cols ${V229_COLS:-fo,fo_ld,fo_lc,fo_nlc,bf16,fp8d} > "$OUT/ab_2l_v229.log" 2>&1
    echo "ab_2l rc=$?"; tail -11 "$OUT/ab_2l_v229.log"
    timeout 60 python3 benchmarks/chain_timeline.py --ms 256 --lr-chain -1 > "$OUT/chain_timeline_v229_lc.log" 2>&1
    echo "timeline rc=$?"; tail -5 "$OUT/chain_timeline_v229_lc.log"
  fi
fi
if [ "$what" = v230 ]; then  # perf-notes v2.29's next step 1, its first measurement: at 4608 tokens, what the quantizer's
  # down projection costs the pair (quantize_2l_overlap.py's "alone": rank 0), on this GPU
  timeout 200 python3 benchmarks/quantize_2l_overlap.py > "$OUT/quantize_2l_overlap.log" 2>&1
  echo "overlap rc=$?"; tail -6 "$OUT/quantize_2l_overlap.log"
fi
if [ "$what" = v231 ]; then  # the twentieth session's first call: the final build of v2.29 verified (the chain tests, the whole
  # GPU suite, memcheck with the chain forced), then the persistent quantizer's grid capped (quantize_2l_cap.py)
  chain_tests
  t0=$(date +%s)
  timeout 260 python3 -m pytest -q --maxfail=20 -p no:cacheprovider tests/gpu -m "gpu or not gpu" --timeout 230 \
    -o addopts="" > "$OUT/tests.log" 2>&1
  echo "tests/gpu rc=$? in $(( $(date +%s) - t0 )) s"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -8
  SANITIZE_CHAIN=1 memcheck "$OUT/sanitize_memcheck_chain.log"
  (cd benchmarks && timeout 120 python3 quantize_2l_cap.py > "$OUT/quantize_2l_cap.log" 2>&1)
  echo "cap rc=$?"; tail -12 "$OUT/quantize_2l_cap.log"
fi
if [ "$what" = v232 ]; then  # the down projection beside the persistent quantizer (perf-notes v2.30): its tests first
  # (nothing more if they fail), the whole GPU suite, memcheck, then the sweep and the chain at 4608 tokens
  timeout 200 python3 -X faulthandler -m pytest -q -x -p no:cacheprovider tests/gpu/test_down_beside.py -m "gpu or not gpu" \
    -o addopts="" --timeout 60 > "$OUT/tests_beside.log" 2>&1
  rc=$?; echo "beside tests rc=$rc"; grep -E "^(FAILED|ERROR)|passed|failed|Error|assert" "$OUT/tests_beside.log" | tail -8
  if [ $rc = 0 ]; then
    t0=$(date +%s)
    timeout 260 python3 -m pytest -q --maxfail=20 -p no:cacheprovider tests/gpu -m "gpu or not gpu" --timeout 230 \
      -o addopts="" > "$OUT/tests.log" 2>&1
    echo "tests/gpu rc=$? in $(( $(date +%s) - t0 )) s"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -8
    memcheck "$OUT/sanitize_memcheck.log"
    grep -E "beside the quantizer done" "$OUT/sanitize_memcheck.log" | tail -1
    (cd benchmarks && timeout 150 python3 down_beside_sweep.py ${SWEEP_ARGS:-} > "$OUT/down_beside_sweep.log" 2>&1)
    echo "sweep rc=$?"; tail -5 "$OUT/down_beside_sweep.log"
    timeout 200 python3 benchmarks/ab_2l.py --ms ${BENCH_MS:-4608} --rounds ${ROUNDS:-2} \
      --cols ${V232_COLS:-fo,fo_bs,fo_nbs,bf16,fp8d} > "$OUT/ab_2l_v232.log" 2>&1
    echo "ab_2l rc=$?"; tail -8 "$OUT/ab_2l_v232.log"
  fi
fi
if [ "$what" = v232b ]; then  # v232's tests again after a test fix: the beside tests, the chain tests, memcheck
  timeout 200 python3 -X faulthandler -m pytest -q -p no:cacheprovider tests/gpu/test_down_beside.py \
    tests/gpu/test_lr_chain.py tests/gpu/test_kernels.py -m "gpu or not gpu" -o addopts="" --timeout 120 \
    > "$OUT/tests_beside.log" 2>&1
  echo "beside / chain / sanitizer tests rc=$?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests_beside.log" | tail -6
  memcheck "$OUT/sanitize_memcheck.log"
  grep -E "beside the quantizer done" "$OUT/sanitize_memcheck.log" | tail -1
fi
if [ "$what" = v232c ]; then  # memcheck with the beside case (after the sanitizer case's fix), then #7's peer by part
  # at 4608 tokens: the chain's parts against fp8's cast and _scaled_mm (chain_breakdown.py --fp8)
  memcheck "$OUT/sanitize_memcheck.log"
  grep -E "beside the quantizer done|Error|assert" "$OUT/sanitize_memcheck.log" | tail -3
  (cd benchmarks && timeout 200 python3 chain_breakdown.py --ms 4608 --fp8 --reps 20 > "$OUT/chain_breakdown_4608.log" 2>&1)
  echo "breakdown rc=$?"; tail -7 "$OUT/chain_breakdown_4608.log"
fi
if [ "$what" = v233 ]; then  # the register-fragment loop's leading turns (set_gemm_2l_rf_lead, perf-notes v2.30): its
  # tests first (nothing more if they fail), the fragment-order tests, memcheck, then the chain at 4608 / 4096 tokens
  timeout 200 python3 -X faulthandler -m pytest -q -x -p no:cacheprovider tests/gpu/test_rf_lead.py -m "gpu or not gpu" \
    -o addopts="" --timeout 60 > "$OUT/tests_lead.log" 2>&1
  rc=$?; echo "lead tests rc=$rc"; grep -E "^(FAILED|ERROR)|passed|failed|Error|assert" "$OUT/tests_lead.log" | tail -6
  if [ $rc = 0 ]; then
    rf_tests
    memcheck "$OUT/sanitize_memcheck.log"
    grep -E "leading turns done|Error" "$OUT/sanitize_memcheck.log" | tail -2
    timeout 240 python3 benchmarks/ab_2l.py --ms ${BENCH_MS:-4608,4096} --rounds ${ROUNDS:-3} \
      --cols ${V233_COLS:-fo,fo_lead,bf16,fp8d} > "$OUT/ab_2l_v233.log" 2>&1
    echo "ab_2l rc=$?"; tail -12 "$OUT/ab_2l_v233.log"
  fi
fi
if [ "$what" = v233b ]; then  # the final tree (leading turns at 224-token tiles only): the lead and beside tests, memcheck,
  # then (WHEELS=.slimwhl) the model with and without the leading turns
  timeout 200 python3 -X faulthandler -m pytest -q -p no:cacheprovider tests/gpu/test_rf_lead.py tests/gpu/test_down_beside.py \
    -m "gpu or not gpu" -o addopts="" --timeout 60 > "$OUT/tests_final.log" 2>&1
  echo "lead / beside tests rc=$?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests_final.log" | tail -4
  memcheck "$OUT/sanitize_memcheck.log"
  grep -E "leading turns done|beside the quantizer done" "$OUT/sanitize_memcheck.log" | tail -2
  flux_e2e_1024 ${E2E_LIMIT:-200} svdq2l_fo_ep_regional_cg,svdq2l_fo_ep_lead_regional_cg --iters ${E2E_ITERS:-10} --warmup 2
fi
if [ "$what" = v234 ]; then  # the register-fragment loop pipelined within each warpgroup and the ping-pong GEMM (perf-notes
  # v2.31): each one's tests first (a kernel whose tests fail is not timed), the chain side by side, the K sweep, the tile
  # life, memcheck
  timeout 200 python3 -X faulthandler -m pytest -q -x -p no:cacheprovider tests/gpu/test_rf_pipelined.py \
    -m "gpu or not gpu" -o addopts="" --timeout 60 > "$OUT/tests_pipelined.log" 2>&1
  rc1=$?; echo "pipelined tests rc=$rc1"; grep -E "^(FAILED|ERROR)|passed|failed|Error|assert" "$OUT/tests_pipelined.log" | tail -5
  timeout 200 python3 -X faulthandler -m pytest -q -x -p no:cacheprovider tests/gpu/test_rf_pingpong.py \
    -m "gpu or not gpu" -o addopts="" --timeout 60 > "$OUT/tests_pingpong.log" 2>&1
  rc2=$?; echo "ping-pong tests rc=$rc2"; grep -E "^(FAILED|ERROR)|passed|failed|Error|assert" "$OUT/tests_pingpong.log" | tail -5
  cols=fo; [ $rc1 = 0 ] && cols=$cols,fo_pipe; [ $rc2 = 0 ] && cols=$cols,fo_pp
  timeout 200 python3 benchmarks/ab_2l.py --ms ${BENCH_MS:-4608,4096} --rounds ${ROUNDS:-2} \
    --cols ${V234_COLS:-$cols,bf16,fp8d} > "$OUT/ab_2l_v234.log" 2>&1
  echo "ab_2l rc=$?"; tail -12 "$OUT/ab_2l_v234.log"
  if [ $rc1 = 0 ] && [ $rc2 = 0 ]; then
    (cd benchmarks && timeout 100 python3 gemm_2l_ksweep.py --pipelined --tile 224 > "$OUT/ksweep_pipelined.log" 2>&1)
    echo "ksweep rc=$?"; tail -6 "$OUT/ksweep_pipelined.log"
  fi
fi
if [ "$what" = v234c ]; then  # v234's second call: the chain at 256 / 1024 tokens, the tile life, memcheck
  timeout 200 python3 benchmarks/ab_2l.py --ms ${BENCH_MS:-256,1024} --rounds ${ROUNDS:-2} \
    --cols ${V234_COLS:-fo,fo_pipe,fo_pp,bf16,fp8d} > "$OUT/ab_2l_v234c.log" 2>&1
  echo "ab_2l rc=$?"; tail -12 "$OUT/ab_2l_v234c.log"
  (cd benchmarks && timeout 100 python3 gemm_2l_tile_life.py ${LIFE_ARGS:-} > "$OUT/tile_life.log" 2>&1)
  echo "tile life rc=$?"; tail -8 "$OUT/tile_life.log"
  (cd benchmarks && timeout 100 python3 gemm_2l_tile_life.py --pingpong > "$OUT/tile_life_pingpong.log" 2>&1)
  echo "ping-pong tile life rc=$?"; tail -8 "$OUT/tile_life_pingpong.log"
  (cd benchmarks && timeout 150 python3 gemm_2l_fo_plans.py --ms 256 --rounds 2 --splits --pipelined \
    > "$OUT/fo_plans_256_pipelined.log" 2>&1)
  echo "plans rc=$?"; cut -c1-40,400- "$OUT/fo_plans_256_pipelined.log" | tail -6
  memcheck "$OUT/sanitize_memcheck.log"
  grep -E "pipelined register-fragment loop done|ping-pong GEMM done|Error" "$OUT/sanitize_memcheck.log" | tail -3
fi
if [ "$what" = v234b ]; then  # the whole GPU suite on the tree with the pipelined loop
  t0=$(date +%s)
  timeout 500 python3 -m pytest -q --maxfail=20 -p no:cacheprovider tests/gpu -m "gpu or not gpu" --timeout 230 \
    -o addopts="" > "$OUT/tests.log" 2>&1
  echo "tests/gpu rc=$? in $(( $(date +%s) - t0 )) s"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -8
fi
if [ "$what" = v234m ]; then  # the model with and without the pipelined register-fragment loop
  flux_e2e_1024 ${E2E_LIMIT:-450} ${V234M_VARIANTS:-svdq2l_fo_ep_regional_cg,svdq2l_fo_ep_pipe_regional_cg,svdq2l_fo_ep_pp_regional_cg,fp8mm_regional_cg} \
    --iters ${E2E_ITERS:-10} --warmup 2
fi
if [ "$what" = v235 ]; then  # perf-notes v2.33's opt-in switches at the tile boundary, then the whole suite
  timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_l2_prefetch.py \
    tests/gpu/test_lr_producer.py -m "gpu or not gpu" -o addopts="" --timeout 60 > "$OUT/tests_v235.log" 2>&1
  rc=$?; echo "v235 tests rc=$rc"; grep -E "^(FAILED|ERROR)|passed|failed|Error" "$OUT/tests_v235.log" | tail -6
  if [ $rc -eq 0 ]; then
    life_runs tile_life_v235.log "" "" "--l2-prefetch" "--no-store" "--warpgroups 3" \
      "--warpgroups 3 --l2-prefetch" "--warpgroups 3 --no-store"
    timeout 200 python3 benchmarks/ab_2l.py --ms ${BENCH_MS:-4608} --cols fo,fo_pf,fo_lrp,bf16,fp8d --rounds 3 \
      > "$OUT/ab_v235.log" 2>&1
    echo "ab rc=$?"; grep -vE "^\{" "$OUT/ab_v235.log" | tail -8 | cut -c1-190
    memcheck "$OUT/sanitize_memcheck.log"
    grep -E "prefetch done|pieces done|Error" "$OUT/sanitize_memcheck.log" | tail -3
  fi
  gpu_suite
fi
if [ "$what" = v252 ]; then  # g.56 (opt-in), then the whole suite
  if tests_then_ab v252 "tests/gpu/test_one_warpgroup.py" --ms ${BENCH_MS:-512,256} --cols fo,fo_1w,fo_1w2,bf16,fp8d \
      --rounds 3; then
    (cd benchmarks && timeout 120 python3 few_token_fixed.py \
      --plans auto,rs128x2,rs256x4,rf1_128,rf1_256,rs1_128x2,rs1_256x2,rs1_256x4 > "$OUT/few_token_fixed_v252.log" 2>&1)
    echo "few-token rc=$?"; tail -12 "$OUT/few_token_fixed_v252.log"
    (cd benchmarks && timeout 150 python3 gemm_2l_fo_plans.py --ms ${PLANS_MS:-512,256} --rounds 2 --splits --one \
      > "$OUT/fo_plans_v252.log" 2>&1)
    echo "plans rc=$?"; plans_table "$OUT/fo_plans_v252.log" auto rs128x2 rs256x4 rf1_128 rf1_256 rs1_256x2 rs1_256x4
    [ "${LIFE:-1}" = 0 ] || life_runs tile_life_v252.log --substeps "--warpgroups 1 --tile 256 --shapes 256x3072x3072" \
      "--warpgroups 1 --tile 256 --splits 2 --shapes 256x3072x3072" "--splits 2 --shapes 256x3072x3072"
    memcheck "$OUT/sanitize_memcheck.log"
    grep -E "one warpgroup done|Error" "$OUT/sanitize_memcheck.log" | tail -3
  fi
  gpu_suite
fi
if [ "$what" = v255 ]; then  # g.56 by the cost model at M <= 512, the whole suite, then the plans
  if tests_then_ab v255 "tests/gpu/test_one_warpgroup.py" --ms ${BENCH_MS:-512,256} --cols fo,fo_1wa,bf16,fp8d \
      --rounds ${ROUNDS:-3}; then
    [ "${SUITE:-1}" = 0 ] || gpu_suite
    (cd benchmarks && timeout 150 python3 gemm_2l_fo_plans.py --ms ${PLANS_MS:-512,256} --rounds 2 --splits --one \
      > "$OUT/fo_plans_v255.log" 2>&1)
    echo "plans rc=$?"; plans_table "$OUT/fo_plans_v255.log" auto nrbc rs128x2 rf1_128 rf1_256
  fi
fi
if [ "$what" = v270 ]; then  # g.66: the interleaved fragment order against main's build, then v269's probes
  if gpu_suite 280; then
    other_build
    ab_builds ${AB_ROUNDS:-2} ${BENCH_MS:-256,512,4608}
    for b in this other; do
      for run in "--warpgroups 1 --tile 128:256x3072x3072" "--warpgroups 1 --tile 256:512x3072x3072"; do
        sh="--shapes ${run#*:}"
        echo "== tile life, build $b"
        with_build $b life_runs tile_life_v270.log "${run%%:*}" "$sh"
      done
    done
    for run in "--warpgroups 1 --tile 128:256x3072x3072" "--warpgroups 1 --tile 256:512x3072x3072"; do
      sh="--shapes ${run#*:}"
      life_runs tile_life_v270.log "${run%%:*}" "$sh --probe ss-a" "$sh --probe no-act-mma"
    done
    rm -f "$OUT/life.log"
    STALL_SHAPE=${STALL_SHAPE:-256 3072 3072} NCU_PIPES=1 gemm_stalls
    rm -f "$OUT/gemm_pipes_raw.csv" "$OUT/gemm_stalls.ncu-rep"
  fi
fi
if [ "$what" = v269 ]; then  # perf-notes v2.43: the one-warpgroup stage's coupling: the ss-a probe, then the stall sampling
  for run in "--warpgroups 1 --tile 128:256x3072x3072" "--warpgroups 1 --tile 256:512x3072x3072"; do
    sh="--shapes ${run#*:}"
    life_runs tile_life_v269.log "${run%%:*}" "$sh" "$sh --probe ss-a" "$sh --probe no-act-mma"
  done
  rm -f "$OUT/life.log"
  STALL_SHAPE=${STALL_SHAPE:-256 3072 3072} NCU_PIPES=1 gemm_stalls
  rm -f "$OUT/gemm_pipes_raw.csv"  # (parsed above; at most 8 files come back)
fi
if [ "$what" = v266 ]; then  # what paces the one-warpgroup loop: the probes; the later release on one warpgroup
  timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_one_warpgroup.py tests/gpu/test_out_pieces.py \
    tests/gpu/test_release_step.py -m "gpu or not gpu" -o addopts="" --timeout 60 > "$OUT/tests_v266.log" 2>&1
  rc=$?; echo "v266 tests rc=$rc"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests_v266.log" | tail -4
  if [ $rc -eq 0 ]; then
    for run in "--warpgroups 1 --tile 128:256x3072x3072" "--warpgroups 1 --tile 256:512x3072x3072"; do
      sh="--shapes ${run#*:}"
      life_runs tile_life_v266.log "${run%%:*}" "$sh" "$sh --probe no-act" "$sh --probe no-mma" \
        "$sh --probe no-act-mma" "$sh --probe rel2"
    done
    timeout 240 python3 benchmarks/ab_2l.py --ms ${BENCH_MS:-256,512} --cols fo,fo_rel2,bf16,fp8d --rounds ${ROUNDS:-2} \
      > "$OUT/ab_v266.log" 2>&1
    echo "ab rc=$?"; grep -vE "^\{" "$OUT/ab_v266.log" | grep -E "^ +[0-9]|M +K" | cut -c1-170
    if [ "${MEMCHECK:-1}" != 0 ]; then
      memcheck "$OUT/sanitize_memcheck.log"
      grep -E "later release done|Error" "$OUT/sanitize_memcheck.log" | tail -2
    fi
  fi
fi
if [ "$what" = v262 ]; then  # g.59 the default, g.60 removed; where the one-warpgroup tile's fixed part goes
  if tests_then_ab v262 "tests/gpu/test_lr_chain.py tests/gpu/test_one_warpgroup.py" --ms ${BENCH_MS:-256,128} \
      --cols fo,fo_lp1,bf16,fp8d --rounds ${ROUNDS:-2}; then
    life_runs tile_life_v262.log "--warpgroups 1 --substeps" "--tile 128 --shapes 256x3072x3072" \
      "--tile 256 --shapes 512x3072x3072"
    SANITIZE_CHAIN=1 memcheck "$OUT/sanitize_memcheck_chain.log"
    grep -E "in two groups done|Error" "$OUT/sanitize_memcheck_chain.log" | tail -2
    [ "${SUITE:-1}" = 0 ] || gpu_suite
  fi
fi
if [ "$what" = v260 ]; then  # g.59: the chained down projection on two rings per CTA
  if tests_then_ab v260 "tests/gpu/test_lr_chain.py tests/gpu/test_one_warpgroup.py" --ms ${BENCH_MS:-256,128} \
      --cols fo,fo_lp2,fo_nlc,bf16,fp8d --rounds ${ROUNDS:-3}; then
    for p in 1 2; do
      (cd benchmarks && timeout 60 python3 chain_timeline.py --ms 256 --shapes 3072:3072,3072:9216 --pipes $p 2>&1 \
        | grep -v "Profiler clears\|_warn_once" >> "$OUT/chain_timeline_v260.log")
      echo "timeline [pipes $p] rc=$?"; grep -E "^ +256" "$OUT/chain_timeline_v260.log" | tail -2
    done
    SANITIZE_CHAIN=1 memcheck "$OUT/sanitize_memcheck_chain.log"
    grep -E "in two groups done" "$OUT/sanitize_memcheck_chain.log" | tail -1
    [ "${SUITE:-1}" = 0 ] || gpu_suite
  fi
fi
if [ "$what" = abbuilds ]; then  # this tree's kernels against another build's, alternating in one call
  other_build
  ab_builds 3 ${BENCH_MS:-4608,4096,256}
fi
if [ "$what" = splitlife ]; then  # where a split CTA's life goes, by its stamps, then the whole suite
  timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_out_pieces.py -m "gpu or not gpu" -o addopts="" \
    --timeout 60 > "$OUT/tests_splitlife.log" 2>&1
  rc=$?; echo "splitlife tests rc=$rc"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests_splitlife.log" | tail -4
  if [ $rc -eq 0 ]; then
    for s in 2 4; do
      (cd benchmarks && timeout 90 python3 gemm_2l_tile_life.py --splits $s \
        --shapes ${SPLIT_SHAPES:-256x3072x3072,256x12288x3072,512x12288x3072} > "$OUT/split_life_$s.log" 2>&1)
      echo "split life x$s rc=$?"; cat "$OUT/split_life_$s.log" | cut -c1-170
    done
  fi
  gpu_suite
fi
if [ "$what" = splitncu ]; then  # where a split plan's fixed part goes: Nsight Compute, GEMM alone, three plans
  for plan in rf2_64 rs128x2 rs256x4; do
    for K in 512 3072; do
      (cd benchmarks && timeout 90 ncu --clock-control none --kernel-name regex:"w4a4_gemm_2l" --launch-skip 2 \
        --launch-count 1 --section SpeedOfLight --section LaunchStats --section Occupancy \
        --metrics sm__cycles_active.avg,sm__cycles_active.max,sm__cycles_elapsed.max,sm__ctas_launched.sum \
        python3 chain_ncu.py 256 $K 3072 --plan $plan --calls 4 > "$OUT/ncu_${plan}_$K.log" 2>&1)
      echo "== $plan K=$K rc=$?"
      grep -E "Duration|Elapsed Cycles|sm__cycles_active|Cluster Size|Max Active Clusters|Grid Size" \
        "$OUT/ncu_${plan}_$K.log" | sed 's/  */ /g'
    done
  done
fi
if [ "$what" = v250 ]; then  # g.54 the default, then the whole suite
  if tests_then_ab v250 "tests/gpu/test_out_pieces.py
      tests/gpu/test_kernels_2l.py::test_gemm_2l_fragment_order_split_register_loop_bit_identical" \
      --ms ${BENCH_MS:-512,256} --cols fo,fo_sw,bf16,fp8d --rounds 3; then
    (cd benchmarks && timeout 150 python3 gemm_2l_fo_plans.py --ms ${PLANS_MS:-512,256} --rounds 2 --splits --pieces \
      > "$OUT/fo_plans_v250.log" 2>&1)
    echo "plans rc=$?"; plans_table "$OUT/fo_plans_v250.log" auto rs256x2 rs256x2w rs256x4 rs256x4w
    memcheck "$OUT/sanitize_memcheck.log"
    grep -E "split kernel in halves done|Error" "$OUT/sanitize_memcheck.log" | tail -3
  fi
  gpu_suite
fi
if [ "$what" = v247 ]; then  # g.53: a LoRA's ranks on the pipelined loop, then the whole suite
  if tests_then_ab v247 "tests/gpu/test_kernels_2l.py::test_gemm_2l_fragment_order_wide_low_rank_tile_bit_identical
      tests/gpu/test_out_pieces.py tests/gpu/test_out_halves.py" --rank 64 --ms ${BENCH_MS:-4608,4096,1024,256} \
      --cols fo,fo_turns,fp8d --rounds 3; then
    memcheck "$OUT/sanitize_memcheck.log"
    grep -E "wide low-rank case done|Error" "$OUT/sanitize_memcheck.log" | tail -3
  fi
  gpu_suite
fi
if [ "$what" = v246 ]; then  # g.51 the default, the cost model refitted, then the whole suite
  if tests_then_ab v246 "tests/gpu/test_out_pieces.py tests/gpu/test_out_halves.py tests/gpu/test_kernels_2l.py" \
      --ms ${BENCH_MS:-4608,4096,1024,512,256} --cols fo,fo_256w,bf16,fp8d --rounds 3; then
    (cd benchmarks && timeout 120 python3 gemm_2l_fo_plans.py --ms ${PLANS_MS:-512,256} --rounds 2 --pieces \
      > "$OUT/fo_plans_v246.log" 2>&1)
    echo "plans rc=$?"; plans_table "$OUT/fo_plans_v246.log" auto rf2_256 rf2_256w rf3_128 rf3_192
    memcheck "$OUT/sanitize_memcheck.log"
    grep -E "output in pieces done|Error" "$OUT/sanitize_memcheck.log" | tail -3
  fi
  gpu_suite
fi
if [ "$what" = v244 ]; then  # g.50 as the default, then the whole suite
  if tests_then_ab v244 "tests/gpu/test_out_halves.py tests/gpu/test_lr_unrolled.py tests/gpu/test_release_step.py
      tests/gpu/test_act_hoisted.py tests/gpu/test_kernels_2l.py" --ms ${BENCH_MS:-4608,256} --cols fo,fo_3s,bf16,fp8d \
      --rounds 3; then
    memcheck "$OUT/sanitize_memcheck.log"
    grep -E "output in halves done|Error" "$OUT/sanitize_memcheck.log" | tail -3
  fi
  gpu_suite
fi
if [ "$what" = v243 ]; then  # perf-notes v2.35's g.50, then the whole suite
  timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_out_halves.py -m "gpu or not gpu" \
    -o addopts="" --timeout 60 --timeout-method=thread > "$OUT/tests_v243.log" 2>&1
  rc=$?; echo "v243 tests rc=$rc"; grep -E "^(FAILED|ERROR)|passed|failed|Error|Timeout" "$OUT/tests_v243.log" | tail -6
  if [ $rc -eq 0 ]; then
    timeout 200 python3 benchmarks/ab_2l.py --ms ${BENCH_MS:-4608,256} --cols fo,fo_oh,fp8d --rounds 3 \
      > "$OUT/ab_v243.log" 2>&1
    echo "ab rc=$?"; grep -vE "^\{" "$OUT/ab_v243.log" | grep -E "^ +[0-9]|M +K" | cut -c1-160
    memcheck "$OUT/sanitize_memcheck.log"
    grep -E "output in halves done|Error" "$OUT/sanitize_memcheck.log" | tail -3
  fi
  [ "${SUITE:-1}" = 1 ] && gpu_suite
fi
if [ "$what" = v242 ]; then  # the ping-pong tests alone, one more A/B of g.49, the whole suite
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_rf_pingpong.py -m "gpu or not gpu" -o addopts="" \
    --timeout 60 --timeout-method=thread > "$OUT/tests_pingpong.log" 2>&1
  echo "pingpong tests rc=$?"; grep -E "^(FAILED|ERROR)|passed|failed|Timeout|File .*test_" "$OUT/tests_pingpong.log" | tail -8
  timeout 150 python3 benchmarks/ab_2l.py --ms 4608 --cols fo,fo_rel2 --rounds 3 > "$OUT/ab_v242.log" 2>&1
  echo "ab rc=$?"; grep -vE "^\{" "$OUT/ab_v242.log" | grep -E "^ +[0-9]|M +K" | cut -c1-140
  gpu_suite
fi
if [ "$what" = v241 ]; then  # perf-notes v2.35's g.49 as the default, then the stall sampling and the whole suite
  timeout 300 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_release_step.py tests/gpu/test_lr_unrolled.py \
    tests/gpu/test_kernels_2l.py -m "gpu or not gpu" -o addopts="" --timeout 90 > "$OUT/tests_v241.log" 2>&1
  rc=$?; echo "v241 tests rc=$rc"; grep -E "^(FAILED|ERROR)|passed|failed|Error" "$OUT/tests_v241.log" | tail -6
  if [ $rc -eq 0 ]; then
    timeout 240 python3 benchmarks/ab_2l.py --ms ${BENCH_MS:-4608,256} --cols fo,fo_rel2,bf16,fp8d --rounds 3 \
      > "$OUT/ab_v241.log" 2>&1
    echo "ab rc=$?"; grep -vE "^\{" "$OUT/ab_v241.log" | grep -E "^ +[0-9]|M +K" | cut -c1-180
    life_runs tile_life_v241.log --substeps "" "--warpgroups 3"
    memcheck "$OUT/sanitize_memcheck.log"
    grep -E "later release done|Error" "$OUT/sanitize_memcheck.log" | tail -3
    gemm_stalls
  fi
  gpu_suite
fi
if [ "$what" = v238 ]; then  # perf-notes v2.34's g.47, then the stall sampling and the whole suite
  timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_lr_unrolled.py -m "gpu or not gpu" \
    -o addopts="" --timeout 90 > "$OUT/tests_v238.log" 2>&1
  rc=$?; echo "v238 tests rc=$rc"; grep -E "^(FAILED|ERROR)|passed|failed|Error" "$OUT/tests_v238.log" | tail -6
  if [ $rc -eq 0 ]; then
    life_runs tile_life_v238.log --substeps "" "--lr-rolled" "--warpgroups 3" "--warpgroups 3 --lr-rolled"
    timeout 200 python3 benchmarks/ab_2l.py --ms ${BENCH_MS:-4608,256} --cols fo,fo_lrr,fp8d --rounds 3 \
      > "$OUT/ab_v238.log" 2>&1
    echo "ab rc=$?"; grep -vE "^\{" "$OUT/ab_v238.log" | grep -E "^ +[0-9]|M +K" | cut -c1-160
    memcheck "$OUT/sanitize_memcheck.log"
    grep -E "copies unrolled done|Error" "$OUT/sanitize_memcheck.log" | tail -2
  fi
  gemm_stalls
  gpu_suite
fi
if [ "$what" = stalls ]; then  # per-instruction stall sampling of the default GEMM
  gemm_stalls
fi
if [ "$what" = v237 ]; then  # perf-notes v2.34's g.46, then the whole suite
  timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_act_hoisted.py tests/gpu/test_kernels_2l.py \
    -m "gpu or not gpu" -o addopts="" -k "same_bits or act_in_loop or epilogue_gelu" --timeout 90 > "$OUT/tests_v237.log" 2>&1
  rc=$?; echo "v237 tests rc=$rc"; grep -E "^(FAILED|ERROR)|passed|failed|Error" "$OUT/tests_v237.log" | tail -6
  if [ $rc -eq 0 ]; then
    life_runs tile_life_v237.log --substeps "" "--act-in-loop" "--warpgroups 3" "--warpgroups 3 --act-in-loop"
    timeout 200 python3 benchmarks/ab_2l.py --ms ${BENCH_MS:-4608,256} --cols fo,fo_ail,bf16,fp8d --rounds 3 \
      > "$OUT/ab_v237.log" 2>&1
    echo "ab rc=$?"; grep -vE "^\{" "$OUT/ab_v237.log" | grep -E "^ +[0-9]|M +K" | cut -c1-160
    memcheck "$OUT/sanitize_memcheck.log"
  fi
  gpu_suite
fi
if [ "$what" = v236 ]; then  # perf-notes v2.34: the store step by its sub-steps
  timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/gpu/test_l2_prefetch.py tests/gpu/test_lr_producer.py \
    -m "gpu or not gpu" -o addopts="" -k "tile_life" --timeout 60 > "$OUT/tests_v236.log" 2>&1
  rc=$?; echo "tile-life tests rc=$rc"; grep -E "^(FAILED|ERROR)|passed|failed|Error" "$OUT/tests_v236.log" | tail -6
  if [ $rc -eq 0 ]; then
    life_runs tile_life_v236.log --substeps "" "--lr-producer" "--no-store" "--warpgroups 3" "--warpgroups 3 --lr-producer" \
      "--warpgroups 3 --no-store" "--warpgroups 3 --shapes 4608x12288x3072"
  fi
fi
if [ "$what" = life ]; then  # a persistent tile's life (benchmarks/gemm_2l_tile_life.py: clock64 stamps per step)
  (cd benchmarks && timeout 120 python3 gemm_2l_tile_life.py ${LIFE_ARGS:-} > "$OUT/tile_life.log" 2>&1)
  echo "tile life rc=$?"; tail -8 "$OUT/tile_life.log"
fi
if [ "$what" = gpumarked ]; then  # the gpu-marked tests outside tests/gpu, with each failure's reason
  timeout ${GPUMARKED_LIMIT:-400} python3 -m pytest -q -rfE -p no:cacheprovider tests -m gpu --ignore=tests/gpu \
    -o addopts="" --timeout 180 > "$OUT/tests_gpu_marked.log" 2>&1
  echo "gpu-marked tests rc=$?"; grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests_gpu_marked.log" | tail -12
  timeout 100 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernels_2l.py -m "gpu or not gpu" -o addopts="" \
    -k "gemm_probes" --timeout 60 > "$OUT/tests_probes.log" 2>&1
  echo "probe test rc=$?"; grep -E "passed|failed|Error" "$OUT/tests_probes.log" | tail -3
fi
if [ "$what" = verify ]; then  # the fragment-order / persistent tests, compute-sanitizer, the chain by part
  rf_tests
  memcheck "$OUT/sanitize_memcheck.log"
  chain_breakdown "${PROBE_MS:-256,1024,4608}"
fi
if [ "$what" = probe ]; then  # where the time goes, no kernel change: chain parts, plans at M = 256, forced tiles
  chain_breakdown "${PROBE_MS:-256,1024}"
  timeout 150 python3 benchmarks/gemm_2l_plan_sweep.py --ms 256 --json "$OUT/sweep.json" > "$OUT/sweep.log" 2>&1
  echo "sweep rc=$?"; grep "^M=" "$OUT/sweep.log" | cut -d'|' -f1-2
  for t in ${KSWEEP_TILES:-128 64}; do
    (cd benchmarks && timeout 100 python3 gemm_2l_ksweep.py --tile $t > "$OUT/ksweep_tile$t.log" 2>&1)
    echo "ksweep tile $t rc=$?"; tail -8 "$OUT/ksweep_tile$t.log"
  done
fi
if [ "$what" = cpp ]; then
  timeout 60 python3 benchmarks/op_host_overhead.py > "$OUT/op_host.log" 2>&1
  echo "op_host rc=$?"; tail -4 "$OUT/op_host.log"
fi
if [ "$what" = ab ] || [ "$what" = cpp ]; then  # int4_2l: interleaved A/B against the previous version, and the tile/split sweep
  timeout 260 python3 benchmarks/ab_2l.py --ms ${BENCH_MS:-4608,256} --rounds 5 > "$OUT/ab_2l.log" 2>&1
  echo "ab rc=$?"; tail -12 "$OUT/ab_2l.log"
  timeout 170 python3 benchmarks/gemm_2l_plan_sweep.py --ms ${SWEEP_MS:-256,1024} --json "$OUT/sweep.json" > "$OUT/sweep.log" 2>&1
  echo "sweep rc=$?"; grep "^M=" "$OUT/sweep.log" | cut -d'|' -f1-2
fi
if [ "$what" = bench ] || [ "$what" = all ] || [ "$what" = tb ]; then
  timeout 170 python3 benchmarks/gemm_bench.py --json "$OUT/gemm_bench.json" > "$OUT/bench.log" 2>&1
  echo "bench rc=$?"
  tail -22 "$OUT/bench.log"
fi
if [ "$what" = ncu ] || [ "$what" = all ]; then
  for shape in "4608 3072 3072" "256 3072 3072"; do
    timeout 120 ncu --kernel-name regex:"quantize_act_kernel|w4a4_gemm_kernel" --launch-skip 2 --launch-count 2 \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section SchedulerStats --section InstructionStats --section MemoryWorkloadAnalysis \
      python3 benchmarks/profile_kernels.py $shape > /tmp/ncu_one.txt 2>&1
    echo "ncu $shape rc=$?"; cat /tmp/ncu_one.txt >> "$OUT/ncu.txt"
    grep -E "w4a4_gemm_kernel|quantize_act_kernel|Duration|Compute \(SM\) Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Executed Ipc A|No Eligible|Warp Cycles Per Issued|Executed Instructions  " /tmp/ncu_one.txt | sed -E 's/void svdq::\(anonymous namespace\)::([a-z0-9_]+)<([^>]*)>.*/\1<\2>/' | head -30
  done
fi

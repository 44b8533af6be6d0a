"""Interleaved A/B timing of the int4_2l chain (quantize_act_2l + w4a4_gemm_2l): earlier versions vs now.

usage: python benchmarks/ab_2l.py [--ms 4608,256] [--rounds 5] [--reps 30] [--no-w8] [--no-ts] [--cols now,fo,bf16]
       [--shapes K:N,...]

Single timings of the fused chain drifted by up to 20 % within one run on H100 (clocks under a long
GEMM load); here each configuration is timed in alternation, --rounds times, and the medians compared.
Columns (us per call, CUDA graph):
  "v2.5"  K split over a cluster at small M and the down projection on a side stream while x fits in L2,
          token tiles 64/128/256, no persistent kernel, the per-row quantizer;
  "now"   the defaults: v2.5 with the 224-token tile, the persistent kernel on auto (where it applies: packed
          weights with group 64 and branch rank <= 32; and pays: unsplit plans with >= 2 tiles per SM);
  "np"    now with the persistent kernel off (set_gemm_2l_persistent(0)); "ps" with it wherever it applies (1);
  "fo"    the packed weights in fragment order (ops/layout_2l.py: SVDQuantLinear.set_fragment_order) through
          w4a4_gemm_2l_fo, default switches: the persistent kernel's register-fragment loop where it runs, with two
          or three consumer warpgroups as its cost model picks; "fo2" the same with two warpgroups only (v2.14);
          "fo_fq" fo with the quantizer that fuses the down projection (x read once; set_quantize_act_2l_fused: its lr
          differs from cuBLAS's in fp32 rounding, so fo_fq is checked within 1e-2 of now, not for bit identity); "fo_fc"
          the same with the fixed-column fused quantizer (set_quantize_act_2l_fused(2), perf-notes v2.47);
          "fo_nrbc" fo with set_gemm_2l_rf_by_cost(False) (the register-fragment loop only where the plan is unsplit
          with two tiles per SM; on by default since v2.23: unsplit or split over a cluster wherever its cost models
          beat the plan's kernel); "fo_cb" fo with the down projection by cuBLAS at every M
          (not our few-token kernel, lowrank_down_sm90.cu; its lr rounds differently, so checked within 1e-2); "fo_dw"
          fo with that kernel at every K and ranks 96 / 128 too (M <= 512; by default K <= 4096, rank <= 64); "fo_dw8"
          the same with up to 8 stages in flight (set_lowrank_down_deep, opt-in); "fo_pdl" fo with programmatic
          dependent launch (set_pdl, opt-in: each kernel may start under the previous one's tail, the graph's chains
          back to back included); "fo_m0" fo with v2.24's three-warpgroup choice (set_gemm_2l_rf3_model(0): the v2.15
          stage fit, 1290 / 1525 cycles at 128 / 192 tokens; v2.25 refitted it to 1100 / 1250 and compares against the
          two-warpgroup model); "fo_nql" fo with the per-row
          quantizer's plain form (set_quantize_act_2l_lean(False); the lean form, the same bits in fewer instructions, is
          the default since v2.25); "fo_rq" fo with the quantizer by the reference ops (what K not a multiple of 256 ran before v2.25);
          "fo_lc" / "fo_nlc" fo with the chained down projection forced / off (set_lr_chain 1 / 0: at M <= 256 the down
          projection after the quantizer on its stream, running under the GEMM's main loop; fo: its rule, -1; forced,
          its lr rounds differently where the side stream runs cuBLAS's); "fo_ld" fo with the few-token down
          projection's deep instances (set_lowrank_down_deep: up to 8 stages in flight), chained or not; "fo_bs" /
          "fo_nbs" fo with the down projection beside the persistent quantizer forced / off (set_lowrank_down_beside
          1 / 0: at many tokens our kernel on the CTAs the quantizer leaves free, reading x from L2 behind it);
          "fo_lead" fo with the register-fragment loop's leading turns (set_gemm_2l_rf_lead: each warpgroup runs on
          alone through the other's tile epilogue; the same bits); "fo_pipe" fo with the register-fragment loop
          pipelined within each warpgroup (set_gemm_2l_rf_pipelined: the next k-step widened under the warpgroup's own
          wgmmas, no turns; the same bits; the default since v2.32, so fo itself); "fo_turns" fo with the warpgroups
          taking turns instead (the default before v2.32); "fo_pp" fo with the GEMM's consumer warpgroups in ping-pong over 128 x 128
          tiles (set_gemm_2l_rf_pingpong: one's epilogue under the other's main loop; the same bits); "fo_lrp" fo with
          the low-rank tiles loaded by the producer warpgroup's idle warps (set_gemm_2l_lr_by_producer; the same bits);
          "fo_pf" fo with the producer asking L2 for the next tile's first stages halfway through each tile
          (set_gemm_2l_l2_prefetch; the same bits); "fo_ail" fo with the output staging as before v2.34
          (set_gemm_2l_act_in_loop: GELU tested per octet; the same bits); "fo_lrr" fo with the last warpgroup's
          low-rank copies in loops over runtime counts as before v2.35 (set_gemm_2l_lr_unrolled(False); the same bits); "fo_rel2" / "fo_rel1" fo
          releasing each stage at the next stage's third k-step as before v2.35 / its second (set_gemm_2l_release_step(2
          / 1; since v2.41 step 2 takes the one-warpgroup tiles too; the same bits); "fo_3s" fo with the three-warpgroup 192-token kernel on three stages, its output staged
          whole, as before v2.36 (set_gemm_2l_out_halves(False); the same bits); "fo_256w" fo with the two-warpgroup
          256-token tile on three stages, its output staged whole, as before v2.36 (set_gemm_2l_out_pieces(256, 1);
          the same bits); "fo_sw" fo with the 256-token split kernel on three stages, its output staged whole, as
          before v2.37 (set_gemm_2l_split_halves(False); the same bits); "fo_1w" / "fo_1w2" fo with one consumer
          warpgroup on 64-row tiles of 256 tokens, persistent / split over 2 CTAs, at every shape (g.56,
          set_gemm_2l_rf_warpgroups(1, 256); for a few hundred tokens; the same bits); "fo_1wa" fo with the
          cost model also taking one warpgroup's tiles at M <= 512 (set_gemm_2l_rf1_auto, v2.38; the default since
          v2.39, so fo itself), "fo_n1wa" fo without it, as before v2.39 (the same bits); "fo_lp2" fo with the
          chained down projection's CTAs streaming their slices on two rings at once (set_lr_chain_pipes(2), g.59; the
          default since v2.40, so fo itself), "fo_lp1" fo on one ring, as before v2.40 (the same bits);
  "ts"    now with the non-persistent epilogue's output written by TMA store;
  "w8"    the weights stored widened to int8 (w8a4_gemm_2l: 2x the weight bytes, no widening in the GEMM), the
          shared main loop, not persistent; "w8p" the same with its producer-warpgroup loop (full/empty barriers
          per stage, no CTA barrier in the loop); "w8ps" int8 weights persistent wherever it applies (one CTA
          per SM walking the tiles; branch rank <= 64); "w8a" int8 weights with the default switches (auto);
  peers in the same rounds: "bf16" cuBLAS x @ w.T + bias, "fp8" torch._scaled_mm rowwise (e4m3, fast
          accumulation; the activation cast not counted), "fp8d" the same with the activations' rowwise cast timed
          too (torch.compile'd amax + scale + cast, as a dynamic fp8 linear does; like for like with our chain,
          which quantizes its activations).
Then ratios of the medians (a/b > 1: b faster). Bit-identity of every configuration with "now" is checked on
every shape before timing.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

from cuda_timing import time_graph
from problems_2l import FLUX_SHAPES, gemm_switches, hopper_extension, random_2l

from svdquant_hf.ops.layout_2l import fragment_order
from svdquant_hf.ops.reference import quantize_act_2l_ref, weight_operand_2l

# (side-stream overlap, forced splits, token tiles the plan may pick, persistent kernels: 1, 0 or -1 auto, fused quantizer)
CONFIGS = {
    "v2.5": (True, 0, [64, 128, 256], 0, 0),
    "now": (True, 0, [], -1, 0),
}
# the columns timed under gemm_switches: (weights: packed, int8 or frag, gemm_switches' keywords)
SWITCHED = {
    "np": ("packed", {"persistent": 0}),
    "ps": ("packed", {"persistent": 1}),
    "fo": ("frag", {}),
    "fo2": ("frag", {"rf_warpgroups": 2}),
    "fo_fq": ("frag", {"fused_quant": 1}),
    "fo_fc": ("frag", {"fused_quant": 2}),
    "fo_nrbc": ("frag", {"rf_by_cost": False}),
    "fo_cb": ("frag", {"down_cublas": True}),
    "fo_dw": ("frag", {"down_wide": True}),
    "fo_dw8": ("frag", {"down_wide": True, "down_deep": True}),
    "fo_pdl": ("frag", {"pdl": True}),
    "fo_m0": ("frag", {"rf3_model": 0}),
    "fo_nql": ("frag", {"lean_quant": False}),
    "fo_qc12": ("frag", {"quant_chunk_bytes": 12 << 20}),
    "fo_qc24": ("frag", {"quant_chunk_bytes": 24 << 20}),
    "fo_lc": ("frag", {"lr_chain": 1}),
    "fo_nlc": ("frag", {"lr_chain": 0}),
    "fo_ld": ("frag", {"down_deep": True}),
    "fo_bs": ("frag", {"down_beside": 1}),
    "fo_nbs": ("frag", {"down_beside": 0}),
    "fo_lead": ("frag", {"rf_lead": True}),
    "fo_pipe": ("frag", {"rf_pipelined": True}),
    "fo_turns": ("frag", {"rf_pipelined": False}),
    "fo_pp": ("frag", {"rf_pingpong": True}),
    "fo_lrp": ("frag", {"lr_by_producer": True}),
    "fo_pf": ("frag", {"l2_prefetch": True}),
    "fo_ail": ("frag", {"act_in_loop": True}),
    "fo_lrr": ("frag", {"lr_unrolled": False}),
    "fo_rel2": ("frag", {"release_step": 2}),
    "fo_rel1": ("frag", {"release_step": 1}),
    "fo_3s": ("frag", {"out_halves": False}),
    "fo_256w": ("frag", {"out_pieces": (256, 1)}),
    "fo_sw": ("frag", {"split_halves": False}),
    "fo_1w": ("frag", {"rf_warpgroups": 1, "rf3_tile": 256}),
    "fo_1w2": ("frag", {"rf_warpgroups": 1, "rf3_tile": 256, "rf_splits": 2}),
    "fo_1wa": ("frag", {"rf1_auto": True}),
    "fo_n1wa": ("frag", {"rf1_auto": False}),
    "fo_lp2": ("frag", {"lr_chain_pipes": 2}),
    "fo_lp1": ("frag", {"lr_chain_pipes": 1}),
    "ts": ("packed", {"tma_store": True}),
    "w8": ("int8", {"persistent": 0}),
    "w8p": ("int8", {"producer": True, "persistent": 0}),
    "w8ps": ("int8", {"persistent": 1}),
    "w8a": ("int8", {}),
}
COLS = [*CONFIGS, *SWITCHED, "fo_rq", "bf16", "fp8", "fp8d"]
APPROX = {"fo_fq", "fo_fc", "fo_cb", "fo_dw", "fo_dw8", "fo_rq", "fo_qc12", "fo_qc24", "fo_lc", "fo_nlc", "fo_bs", "fo_nbs"}  # their lr rounds differently from cuBLAS's
RATIOS = [("now", "v2.5"), ("bf16", "now"), ("fp8", "now"), ("now", "np"), ("ps", "np"), ("fo", "now"), ("fo", "fo2"),
          ("fo", "fo_fq"), ("fo", "fo_fc"), ("fp8d", "fo_fc"), ("fo", "fo_nrbc"), ("fo", "fo_cb"), ("fo_dw", "fo_cb"), ("fo_dw8", "fo_cb"), ("fp8d", "fo"),
          ("fo_pdl", "fo"), ("fo_m0", "fo"), ("fo_nql", "fo"), ("fo_qc12", "fo"), ("fo_qc24", "fo"), ("fo_lc", "fo_nlc"), ("fo", "fo_nlc"), ("fo_ld", "fo"), ("fo_bs", "fo_nbs"), ("fo_lead", "fo"), ("fp8d", "fo_lead"), ("fo_pipe", "fo"), ("fp8d", "fo_pipe"), ("bf16", "fo_pipe"), ("fo_pp", "fo"), ("fp8d", "fo_pp"), ("fo_lrp", "fo"), ("fp8d", "fo_lrp"), ("fo_pf", "fo"), ("fo_ail", "fo"), ("fo_lrr", "fo"), ("fo_rel2", "fo"), ("fo_rel1", "fo"), ("fo_3s", "fo"), ("fo_256w", "fo"), ("fo_sw", "fo"), ("fo_1w", "fo"), ("fo_1w2", "fo"), ("fo_1wa", "fo"), ("fo_n1wa", "fo"), ("fo_lp2", "fo"), ("fo_lp1", "fo"), ("bf16", "fo_pp"), ("fo", "fo_nbs"), ("fp8d", "fo_bs"), ("bf16", "fo_lc"), ("fo_rq", "fo"), ("bf16", "fo_pdl"), ("bf16", "fo"), ("fp8", "fo"), ("bf16", "w8a"),
          ("fp8", "w8a"), ("bf16", "w8"), ("fp8", "w8"), ("w8ps", "w8"), ("w8a", "w8"), ("w8p", "w8")]


def round_order(cols: list[str], r: int) -> list[str]:
    """The columns in the order round r times them: odd rounds reversed, so no column always follows the same one
    (the first columns of a round read 5-14 % slow when the order was fixed: perf-notes v2.13)."""
    return list(cols) if r % 2 == 0 else list(cols)[::-1]


def configure(ext, overlap: bool, splits: int, tiles: list[int], persistent: int, fused: int) -> None:
    ext.set_quantize_act_2l_overlap(overlap)
    ext.set_quantize_act_2l_fused(fused, 0)
    ext.set_gemm_2l_splits(splits)
    ext.set_gemm_2l_plan_tiles(tiles)
    ext.set_gemm_2l_persistent(persistent)


def rowwise_e4m3(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t as float8 e4m3 with one fp32 scale per row ([rows, 1])."""
    s = t.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 448.0
    return (t.float() / s).to(torch.float8_e4m3fn), s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ms", default="4608,256")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--no-w8", action="store_true", help="leave out the int8-weight kernels (w8a4_gemm_2l)")
    ap.add_argument("--no-ts", action="store_true", help="leave out the TMA-store epilogue")
    ap.add_argument("--cols", default="", help="only these columns (comma-separated; default: all)")
    ap.add_argument("--shapes", default="", help="K:N pairs instead of FLUX.1's (e.g. 2432:2432,2432:9728 for SD3.5 "
                    "Large, 1152:1152,1152:4608 for PixArt)")
    ap.add_argument("--rank", type=int, default=32,
                    help="the low-rank branch's rank (48 or 64: a LoRA folded into the rank-32 branch, the 64-wide "
                         "low-rank tile's kernels)")
    args = ap.parse_args()
    ext = hopper_extension("ab_2l")
    if ext is None:
        return 2
    dt, R, gs = torch.bfloat16, args.rank, 64
    shapes = [tuple(int(v) for v in kn.split(":")) for kn in args.shapes.split(",")] if args.shapes else FLUX_SHAPES
    print(f"{torch.cuda.get_device_name()}: int4_2l chain (rank {R}), us per call (CUDA graph), median of {args.rounds} "
          f"interleaved rounds (odd ones in reverse order); bf16 = cuBLAS x @ w.T + bias, fp8 = _scaled_mm rowwise, same rounds")
    w8_on = not args.no_w8
    keep = set(args.cols.split(",")) - {""} or set(COLS)
    if "now" not in keep:
        keep.add("now")  # the bit-identity reference
    cols = [c for c in COLS if c in keep and not (c.startswith("w8") and args.no_w8) and not (c == "ts" and args.no_ts)]
    ratios = [(a, b) for a, b in RATIOS if a in cols and b in cols]
    # one compiled cast per activation shape (15 FLUX.1 shapes x M: past dynamo's default limit of 8 recompiles, which
    # fell back to eager for the last shapes in v2.23's first run)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    quant8 = torch.compile(rowwise_e4m3, dynamic=False) if "fp8d" in cols else None
    print(f"{'M':>5} {'K':>6} {'N':>6} | " + " ".join(f"{c:>8}" for c in cols) + " | " +
          " ".join(f"{a + '/' + b:>9}" for a, b in ratios))
    default = CONFIGS["now"]
    switched = {name: (wt, kw) for name, (wt, kw) in SWITCHED.items()
                if (w8_on or wt != "int8") and not (args.no_ts and kw.get("tma_store")) and name in cols}
    bad = 0
    for M in [int(m) for m in args.ms.split(",")]:
        for K, N in shapes:
            p = random_2l(M, K, N, R, gs)
            xs = [(x,) for x in p.xs]
            smooth, pd, pu, bias = p.smooth, p.proj_down, p.proj_up, p.bias
            qw, wsc, wch = p.qweight, p.wscales, p.wchannel
            w = torch.randn(N, K, device="cuda", dtype=dt) / K**0.5
            w8 = weight_operand_2l(qw, wsc, gs)
            qf = fragment_order(qw)

            def chain(x):
                xq, xsc, lr = ext.quantize_act_2l(x, smooth, pd, gs)
                return ext.w4a4_gemm_2l(xq, xsc, qw, wsc, wch, lr, pu, bias, gs)

            def chain_w8(x, w8=w8):
                xq, xsc, lr = ext.quantize_act_2l(x, smooth, pd, gs)
                return ext.w8a4_gemm_2l(xq, xsc, w8, wch, lr, pu, bias)

            def chain_fo(x, qf=qf):
                xq, xsc, lr = ext.quantize_act_2l(x, smooth, pd, gs)
                return ext.w4a4_gemm_2l_fo(xq, xsc, qf, wsc, wch, lr, pu, bias, gs)

            def chain_fo_rq(x, qf=qf):
                xq, xsc, lr = quantize_act_2l_ref(x, smooth, pd, gs)
                return ext.w4a4_gemm_2l_fo(xq, xsc, qf, wsc, wch, lr, pu, bias, gs)

            def run_switched(name: str, fn_of):
                """fn_of(the column's chain) under the column's switches (gemm_switches: defaults after)."""
                wt, kw = switched[name]
                with gemm_switches(ext, **kw):
                    return fn_of({"packed": chain, "int8": chain_w8, "frag": chain_fo}[wt])

            outs = {}
            for name, cfg in CONFIGS.items():
                if name not in cols:
                    continue
                configure(ext, *cfg)
                try:
                    outs[name] = chain(p.xs[0])
                finally:
                    configure(ext, *default)
            for name in switched:
                outs[name] = run_switched(name, lambda fn: fn(p.xs[0]))
            if "fo_rq" in cols:
                outs["fo_rq"] = chain_fo_rq(p.xs[0])
            for name, y in outs.items():
                if name in APPROX:
                    rel = ((y.float() - outs["now"].float()).norm() / outs["now"].float().norm()).item()
                    if not rel < 1e-2:
                        bad += 1
                        print(f"  {name} off now by {rel:.2e} (relative) at M={M} K={K} N={N}")
                elif not torch.equal(y, outs["now"]):
                    bad += 1
                    print(f"  {name} differs from now at M={M} K={K} N={N}: {(y != outs['now']).sum().item()} outputs")
            wf8, sw = rowwise_e4m3(w)
            x8s = [rowwise_e4m3(x) for x in p.xs]

            def fp8(x8, sx, wf8=wf8, sw=sw):
                return torch._scaled_mm(x8, wf8.t(), scale_a=sx, scale_b=sw.t(), out_dtype=dt, use_fast_accum=True)

            dense = lambda x, w=w: torch.nn.functional.linear(x, w, bias)  # noqa: E731

            def fp8d(x, wf8=wf8, sw=sw):
                x8, sx = quant8(x)
                return torch._scaled_mm(x8, wf8.t(), scale_a=sx, scale_b=sw.t(), out_dtype=dt, use_fast_accum=True)

            def timed(name: str) -> float:
                """us per call of column `name`, under its configuration or switches."""
                if name in CONFIGS:
                    configure(ext, *CONFIGS[name])
                    try:
                        return 1e3 * time_graph(chain, xs, args.reps)
                    finally:
                        configure(ext, *default)
                if name in SWITCHED:
                    return (float("nan") if name not in switched else
                            run_switched(name, lambda fn: 1e3 * time_graph(fn, xs, args.reps)))
                if name == "fp8d":
                    return 1e3 * time_graph(fp8d, xs, args.reps)
                if name == "fo_rq":
                    return 1e3 * time_graph(chain_fo_rq, xs, args.reps)
                return 1e3 * (time_graph(dense, xs, args.reps) if name == "bf16" else time_graph(fp8, x8s, args.reps))

            times: dict[str, list[float]] = {c: [] for c in cols}
            for r in range(args.rounds):
                for name in round_order(cols, r):
                    times[name].append(timed(name))
            med = {c: statistics.median(v) for c, v in times.items()}
            print(f"{M:>5} {K:>6} {N:>6} | " + " ".join(f"{med[c]:>8.1f}" for c in cols) + " | " +
                  " ".join(f"{med[a] / med[b]:>9.2f}" for a, b in ratios))
            del xs, w, p, x8s, w8, wf8, qf
            torch.cuda.empty_cache()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

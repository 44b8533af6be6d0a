"""Where the int4_2l chain's time goes at one M: each part timed alone under CUDA graphs, side by side.

usage: python benchmarks/chain_breakdown.py [--ms 256] [--reps 30] [--fused [MODE]] [--fp8] [--pairs-forms v3,t]

Per FLUX.1 shape (us per call, CUDA-graph device time, weights in fragment order, default switches):
  "chain"  quantize_act_2l + w4a4_gemm_2l_fo (what SVDQuantLinear runs on Hopper);
  "chain_1r": the chain with the per-row quantizer at one CTA per row (set_quantize_act_2l_persistent(0): the
           kernel before v2.17; the default streams each persistent CTA's next rows into a shared-memory ring);
  "quant"  quantize_act_2l alone (its 1 / smooth launch, the quantizer and, on a side stream while x fits in L2,
           cuBLAS's down projection); "q_1r" the same at one CTA per row;
  "q_only" the per-row quantizer alone (rank 0: no down projection), "qo_1r" at one CTA per row;
  "down" cuBLAS x @ proj_down alone;
  "gemm"   w4a4_gemm_2l_fo alone (its plan: two or three consumer warpgroups as the cost model picks, or not
           persistent);
  --fused [MODE] adds "chain_fq" / "q_fq": the chain / the quantizer with a Hopper cluster quantizer that fuses the
           down projection (set_quantize_act_2l_fused(MODE): 1, q.7, measured slower in perf-notes v2.16-v2.17; 2,
           threads on fixed columns, v2.47; --cols-tuning a,b,c,d: mode 2 under set_quantize_act_2l_cols_tuning,
           perf-notes v2.50; 3 / -1, q.9 in CTA pairs, v2.50-v2.53: --pairs-forms v3,t,b,bdw adds its other forms'
           columns, chain_<form> / q_<form>: quantize_pairs_stamps.FORMS);
  "empty"  one trivial kernel (a graph node's floor);
  "bf16"   cuBLAS x @ w.T + bias, the bar's peer;
  --fp8 adds #7's peer by part: "cast" the activations' rowwise e4m3 cast (torch.compile'd amax + scale + cast, as in
           ab_2l.py's fp8d), "fp8" torch._scaled_mm rowwise alone, "fp8d" the two together.
"""
from __future__ import annotations

import argparse

import torch

from cuda_timing import time_graph
from problems_2l import FLUX_SHAPES, gemm_switches, hopper_extension, random_2l
from quantize_pairs_stamps import FORMS as PAIR_FORMS, pair_form, set_pair_form

from svdquant_hf.ops.layout_2l import fragment_order

COLS = ["chain", "chain_1r", "quant", "q_1r", "q_only", "qo_1r", "down", "gemm", "empty", "bf16"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ms", default="256")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--fused", type=int, nargs="?", const=1, default=0,
                    help="add a fused (cluster) quantizer's columns: mode 1 (q.7) or 2 (fixed columns)")
    ap.add_argument("--fp8", action="store_true", help="add fp8 _scaled_mm's parts: the cast, the GEMM, both")
    ap.add_argument("--cols-tuning", default="",
                    help="stagger_cycles,stagger_phases,probe,mma_sets for the fused mode 2 columns")
    ap.add_argument("--pairs-forms", default="",
                    help="with --fused 3 / -1: add chain_<f> / q_<f> for each CTA-pair quantizer form f "
                         "(quantize_pairs_stamps.FORMS: v3, proj_down by TMA; t, the down projection transposed; b, "
                         "x's block as one 3-D box; p2, L2 prefetch two blocks ahead; d, the unit threads' own xq stores; c, "
                         "the staged xq copied out by the unit threads; w, a row's maximum by shuffles; their "
                         "combinations)")
    args = ap.parse_args()
    forms = [f for f in args.pairs_forms.split(",") if f]
    bad = [f for f in forms if f not in PAIR_FORMS]
    if bad:
        raise SystemExit(f"--pairs-forms: unknown {bad}; choose from {sorted(PAIR_FORMS)}")
    cols = COLS + (["chain_fq", "q_fq"] if args.fused else []) + [c for f in forms for c in (f"chain_{f}", f"q_{f}")]
    cols += ["cast", "fp8", "fp8d"] if args.fp8 else []
    quant8 = None
    if args.fp8:
        from ab_2l import rowwise_e4m3

        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        quant8 = torch.compile(rowwise_e4m3, dynamic=False)
    ext = hopper_extension("chain_breakdown")
    if ext is None:
        return 2
    print(f"{torch.cuda.get_device_name()}: int4_2l chain by part, us per call (CUDA graph), rank 32, group 64")
    print(f"{'M':>5} {'K':>6} {'N':>6} | " + " ".join(f"{c:>7}" for c in cols) + " | parts-sum  bf16/chain  q_only GB/s  qo_1r GB/s")
    for M in [int(m) for m in args.ms.split(",")]:
        for K, N in FLUX_SHAPES:
            p = random_2l(M, K, N)
            qw = fragment_order(p.qweight)
            gs = p.group_size
            w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / K**0.5
            pd0 = p.proj_down[:, :0].contiguous()
            pre = [ext.quantize_act_2l(x, p.smooth, p.proj_down, gs) for x in p.xs]
            xs = [(x,) for x in p.xs]

            def chain(x):
                xq, xsc, lr = ext.quantize_act_2l(x, p.smooth, p.proj_down, gs)
                return ext.w4a4_gemm_2l_fo(xq, xsc, qw, p.wscales, p.wchannel, lr, p.proj_up, p.bias, gs)

            fns = {
                "chain": (chain, xs),
                "quant": (lambda x: ext.quantize_act_2l(x, p.smooth, p.proj_down, gs), xs),
                "q_only": (lambda x: ext.quantize_act_2l(x, p.smooth, pd0, gs), xs),  # rank 0: per-row
                "down": (lambda x: x @ p.proj_down, xs),
                "gemm": (lambda xq, xsc, lr: ext.w4a4_gemm_2l_fo(xq, xsc, qw, p.wscales, p.wchannel, lr, p.proj_up,
                                                                  p.bias, gs), pre),
                "empty": (lambda x: x[:1].add_(0), xs),
                "bf16": (lambda x: torch.addmm(p.bias, x, w.t()), xs),
            }
            t = {c: 1e3 * time_graph(fn, a, args.reps) for c, (fn, a) in fns.items()}
            ext.set_quantize_act_2l_persistent(0)
            try:
                for c, f in (("chain_1r", "chain"), ("q_1r", "quant"), ("qo_1r", "q_only")):
                    t[c] = 1e3 * time_graph(fns[f][0], fns[f][1], args.reps)
            finally:
                ext.set_quantize_act_2l_persistent(1)
            if quant8 is not None:
                wf8, sw = rowwise_e4m3(w)

                def fp8(x8, sx, wf8=wf8, sw=sw):
                    return torch._scaled_mm(x8, wf8.t(), scale_a=sx, scale_b=sw.t(), out_dtype=torch.bfloat16,
                                            use_fast_accum=True)

                t["cast"] = 1e3 * time_graph(quant8, xs, args.reps)
                t["fp8"] = 1e3 * time_graph(fp8, [quant8(x) for x in p.xs], args.reps)
                t["fp8d"] = 1e3 * time_graph(lambda x: fp8(*quant8(x)), xs, args.reps)
            if args.fused:
                before = ext.quantize_act_2l_cols_tuning()
                if args.cols_tuning:
                    ext.set_quantize_act_2l_cols_tuning(*(int(v) for v in args.cols_tuning.split(",")))
                try:
                    with gemm_switches(ext, fused_quant=args.fused):
                        t["q_fq"] = 1e3 * time_graph(fns["quant"][0], xs, args.reps)
                        t["chain_fq"] = 1e3 * time_graph(chain, xs, args.reps)
                        form = pair_form(ext)
                        for f in forms:
                            set_pair_form(ext, PAIR_FORMS[f])
                            try:
                                t[f"q_{f}"] = 1e3 * time_graph(fns["quant"][0], xs, args.reps)
                                t[f"chain_{f}"] = 1e3 * time_graph(chain, xs, args.reps)
                            finally:
                                set_pair_form(ext, form)
                finally:
                    ext.set_quantize_act_2l_cols_tuning(*before)
            moved = M * K * 3 + M * 4  # x in, int8 out, the token scales out
            print(f"{M:>5} {K:>6} {N:>6} | " + " ".join(f"{t[c]:7.1f}" for c in cols)
                  + f" | {t['quant'] + t['gemm']:9.1f}  {t['bf16'] / t['chain']:9.2f}  {moved / t['q_only'] / 1e3:11.0f}"
                  + f"  {moved / t['qo_1r'] / 1e3:10.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

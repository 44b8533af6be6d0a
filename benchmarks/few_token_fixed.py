"""Where a few-token GEMM's time goes: fixed part against per-stage part (issue #4's 256 x 3072 x 3072).

usage: python benchmarks/few_token_fixed.py [--m 256] [--n 3072] [--ks 128,256,512,1024,2048,3072] [--plans ...]

Times w4a4_gemm_2l_fo alone (CUDA graph, rank 32) for each plan at one M and N over a sweep of K, with cuBLAS bf16
(x @ w.T) and an empty launch (a one-element add: the graph's per-kernel floor) beside it, in alternating order; then
fits time = fixed + per_stage x K / 128 per plan by least squares and prints both with the fit's worst residual. A
fixed part near the whole time means a few-token design has to cut launch, prologue, first-load, exchange and epilogue
costs, not the loop.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

from cuda_timing import time_graph
from gemm_2l_fo_plans import candidates, plan_forced
from problems_2l import hopper_extension, random_2l

from svdquant_hf.ops.layout_2l import fragment_order

DEFAULT_PLANS = "auto,rf2_64,rf2_128,rs64x2,rs128x2,rs128x4,rs256x4"


def fit_line(ks: list[int], ts: list[float]) -> tuple[float, float, float]:
    """(fixed, per_stage, worst |residual|) of ts = fixed + per_stage x k / 128 by least squares."""
    xs = [k / 128 for k in ks]
    mx, mt = statistics.fmean(xs), statistics.fmean(ts)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (t - mt) for x, t in zip(xs, ts)) / sxx if sxx else 0.0
    fixed = mt - slope * mx
    return fixed, slope, max(abs(t - fixed - slope * x) for x, t in zip(xs, ts))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, default=256)
    ap.add_argument("--n", type=int, default=3072)
    ap.add_argument("--ks", default="128,256,512,1024,2048,3072")
    ap.add_argument("--plans", default=DEFAULT_PLANS, help="gemm_2l_fo_plans.py's candidate names (with --splits --one)")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    ext = hopper_extension("few_token_fixed")
    if ext is None:
        return 2
    M, N, ks = args.m, args.n, [int(k) for k in args.ks.split(",")]
    by_name = {c[0]: c for c in candidates(N, splits=True, one=True)}
    unknown = [p for p in args.plans.split(",") if p not in by_name]
    if unknown:
        print(f"unknown plans {unknown}; known: {sorted(by_name)}", file=sys.stderr)
        return 2
    plans = [by_name[p] for p in args.plans.split(",")]
    cols = [p[0] for p in plans] + ["bf16", "empty"]
    times: dict[str, dict[int, list[float]]] = {c: {k: [] for k in ks} for c in cols}
    one = torch.zeros(1, device="cuda")
    for K in ks:
        p = random_2l(M, K, N, 32, 64)
        q = [ext.quantize_act_2l(x, p.smooth, p.proj_down, 64) for x in p.xs]
        qf = fragment_order(p.qweight)
        w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)

        def gemm(xq, xs, lr):
            return ext.w4a4_gemm_2l_fo(xq, xs, qf, p.wscales, p.wchannel, lr, p.proj_up, p.bias, 64)

        for r in range(args.rounds):
            for name, switches, bt in (plans if r % 2 == 0 else plans[::-1]):
                if switches.get("rf_splits", 0) > K // 128:  # more CTAs than stages: not a plan at this K
                    continue
                with plan_forced(ext, switches, bt):
                    if gemm(*q[0]) is None:
                        raise RuntimeError(f"{name} at K={K}: {ext.last_error()}")
                    times[name][K].append(1e3 * time_graph(gemm, q, args.reps))
            times["bf16"][K].append(1e3 * time_graph(lambda x: x @ w.T, [(x,) for x in p.xs], args.reps))
            times["empty"][K].append(1e3 * time_graph(lambda t: t.add_(1), [(one,)] * 3, args.reps))
        torch.cuda.empty_cache()
    med = {c: {k: statistics.median(v) for k, v in d.items() if v} for c, d in times.items()}
    print(f"{torch.cuda.get_device_name()}: M={M} N={N}, us per call (CUDA graph), median of {args.rounds} rounds")
    print(f"{'K':>6} | " + " ".join(f"{c:>8}" for c in cols))
    for k in ks:
        print(f"{k:6d} | " + " ".join(f"{med[c][k]:8.2f}" if k in med[c] else f"{'-':>8}" for c in cols))
    print(f"{'fit':>8} | {'fixed us':>9} {'per 128 K':>10} {'worst res':>10} | fixed share at K={ks[-1]}")
    for c in cols:
        kc = [k for k in ks if k in med[c]]
        fixed, slope, res = fit_line(kc, [med[c][k] for k in kc])
        print(f"{c:>8} | {fixed:9.2f} {slope * 1e3:8.0f}ns {res:10.2f} | {fixed / med[c][ks[-1]]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

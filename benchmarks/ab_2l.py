"""Interleaved A/B timing of the int4_2l chain (quantize_act_2l + w4a4_gemm_2l): earlier versions vs now.

usage: python benchmarks/ab_2l.py [--ms 4608,256] [--rounds 5] [--reps 30]

Single timings of the fused chain drifted by up to 20 % within one run on H100 (clocks under a long
GEMM load); here each configuration is timed in alternation, --rounds times, and the medians compared.
Configurations: "v2.5" = K split over a cluster at small M and the down projection on a side stream while
x fits in L2, token tiles 64/128/256; "now" = v2.5 with the 224-token tile (the defaults). Peers timed in the same
rounds: cuBLAS bf16 x @ w.T + bias, and torch._scaled_mm fp8 rowwise (e4m3, fast accumulation; the
activation cast not counted). "w8" = now with the weights stored widened to int8 (w8a4_gemm_2l: 2x the
weight bytes, no widening in the GEMM), "w8p" = the same with its producer-warpgroup main loop (full/empty
barriers per stage, no CTA barrier in the loop); "ts" = now with the epilogue's output written by TMA store,
"w8pts" = w8p with it, "w8ps" = w8p persistent (one CTA per SM walking the tiles), "w8d" = w8 with two CTAs per SM (128/64-token
tiles). Bit-identity of every configuration and of w8 with "now" is
checked on every shape before timing.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

from cuda_timing import time_graph
from problems_2l import FLUX_SHAPES, gemm_switches, hopper_extension, random_2l

from svdquant_hf.ops.reference import weight_operand_2l

# (side-stream overlap, forced splits, token tiles the plan may pick)
CONFIGS = {
    "v2.5": (True, 0, [64, 128, 256]),
    "now": (True, 0, []),
}


def configure(ext, overlap: bool, splits: int, tiles: list[int]) -> None:
    ext.set_quantize_act_2l_overlap(overlap)
    ext.set_gemm_2l_splits(splits)
    ext.set_gemm_2l_plan_tiles(tiles)


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
    args = ap.parse_args()
    ext = hopper_extension("ab_2l")
    if ext is None:
        return 2
    dt, R, gs = torch.bfloat16, 32, 64
    print(f"{torch.cuda.get_device_name()}: int4_2l chain, us per call (CUDA graph), median of {args.rounds} "
          f"interleaved rounds; bf16 = cuBLAS x @ w.T + bias, fp8 = _scaled_mm rowwise, same rounds")
    w8_on = not args.no_w8
    cols = [*CONFIGS, "ts", "w8", "w8p", "w8pts", "w8ps", "w8d", "bf16", "fp8"]
    ratios = [("now", "v2.5"), ("bf16", "now"), ("bf16", "ts"), ("fp8", "now"), ("bf16", "w8"), ("fp8", "w8"),
              ("fp8", "w8p"), ("fp8", "w8pts"), ("fp8", "w8ps"), ("bf16", "w8ps"), ("ts", "now"), ("w8p", "w8"),
              ("w8ps", "w8p"), ("fp8", "w8d"), ("w8d", "w8")]
    print(f"{'M':>5} {'K':>6} {'N':>6} | " + " ".join(f"{c:>8}" for c in cols) + " | " +
          " ".join(f"{a + '/' + b:>9}" for a, b in ratios))
    default = CONFIGS["now"]
    bad = 0
    for M in [int(m) for m in args.ms.split(",")]:
        for K, N in FLUX_SHAPES:
            p = random_2l(M, K, N, R, gs)
            xs = [(x,) for x in p.xs]
            smooth, pd, pu, bias = p.smooth, p.proj_down, p.proj_up, p.bias
            qw, wsc, wch = p.qweight, p.wscales, p.wchannel
            w = torch.randn(N, K, device="cuda", dtype=dt) / K**0.5
            w8 = weight_operand_2l(qw, wsc, gs)

            def chain(x):
                xq, xsc, lr = ext.quantize_act_2l(x, smooth, pd, gs)
                return ext.w4a4_gemm_2l(xq, xsc, qw, wsc, wch, lr, pu, bias, gs)

            def chain_w8(x, w8=w8):
                xq, xsc, lr = ext.quantize_act_2l(x, smooth, pd, gs)
                return ext.w8a4_gemm_2l(xq, xsc, w8, wch, lr, pu, bias)

            def flagged(fn, producer: bool, tma_store: bool, *a, persistent: bool = False, dual: bool = False):
                with gemm_switches(ext, producer, persistent, dual, tma_store):
                    return fn(*a)

            def time_w8(producer: bool, tma_store: bool = False, persistent: bool = False, dual: bool = False,
                        xs=xs) -> float:
                if not w8_on or (tma_store and args.no_ts):
                    return float("nan")
                return flagged(lambda: 1e3 * time_graph(chain_w8, xs, args.reps), producer, tma_store,
                               persistent=persistent, dual=dual)

            outs = {}
            for name, cfg in CONFIGS.items():
                configure(ext, *cfg)
                try:
                    outs[name] = chain(p.xs[0])
                finally:
                    configure(ext, *default)
            if not args.no_ts:
                outs["ts"] = flagged(chain, False, True, p.xs[0])
            if w8_on:
                outs["w8"] = chain_w8(p.xs[0])
                outs["w8p"] = flagged(chain_w8, True, False, p.xs[0])
                if not args.no_ts:
                    outs["w8pts"] = flagged(chain_w8, True, True, p.xs[0])
                outs["w8ps"] = flagged(chain_w8, True, False, p.xs[0], persistent=True)
                outs["w8d"] = flagged(chain_w8, False, False, p.xs[0], dual=True)
            for name, y in outs.items():
                if not torch.equal(y, outs["now"]):
                    bad += 1
                    print(f"  {name} differs from now at M={M} K={K} N={N}: {(y != outs['now']).sum().item()} outputs")
            wf8, sw = rowwise_e4m3(w)
            x8s = [rowwise_e4m3(x) for x in p.xs]

            def fp8(x8, sx, wf8=wf8, sw=sw):
                return torch._scaled_mm(x8, wf8.t(), scale_a=sx, scale_b=sw.t(), out_dtype=dt, use_fast_accum=True)

            times: dict[str, list[float]] = {c: [] for c in cols}
            for _ in range(args.rounds):
                for name, cfg in CONFIGS.items():
                    configure(ext, *cfg)
                    try:
                        times[name].append(1e3 * time_graph(chain, xs, args.reps))
                    finally:
                        configure(ext, *default)
                times["ts"].append(float("nan") if args.no_ts else
                                   flagged(lambda xs=xs: 1e3 * time_graph(chain, xs, args.reps), False, True))
                times["w8"].append(time_w8(False))
                times["w8p"].append(time_w8(True))
                times["w8pts"].append(time_w8(True, True))
                times["w8ps"].append(time_w8(True, persistent=True))
                times["w8d"].append(time_w8(False, dual=True))
                dense = lambda x, w=w: torch.nn.functional.linear(x, w, bias)  # noqa: E731
                times["bf16"].append(1e3 * time_graph(dense, xs, args.reps))
                times["fp8"].append(1e3 * time_graph(fp8, x8s, args.reps))
            med = {c: statistics.median(v) for c, v in times.items()}
            print(f"{M:>5} {K:>6} {N:>6} | " + " ".join(f"{med[c]:>8.1f}" for c in cols) + " | " +
                  " ".join(f"{med[a] / med[b]:>9.2f}" for a, b in ratios))
            del xs, w, p, x8s, w8, wf8
            torch.cuda.empty_cache()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

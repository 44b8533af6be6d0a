"""Interleaved A/B timing of the int4_2l chain (quantize_act_2l + w4a4_gemm_2l): earlier versions vs now.

usage: python benchmarks/ab_2l.py [--ms 4608,256] [--rounds 5] [--reps 30]

Single timings of the fused chain drifted by up to 20 % within one run on H100 (clocks under a long
GEMM load); here each configuration is timed in alternation, --rounds times, and the medians compared.
Configurations: "v2.4" = down projection after the quantizer on one stream, no K split, token tiles
64/128/256 (the code of the 2l.4 table); "v2.5" = K split over a cluster at small M and the down
projection on a side stream while x fits in L2, same tiles; "now" = v2.5 with the 224-token tile
(the defaults); "rs" = now with the GEMM's register-fragment main loop (set_gemm_2l_rs: the widened
weights as wgmma A registers, the two warpgroups in ping-pong). Bit-identity of "rs" and "now" is
checked on every shape before timing.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

from cuda_timing import time_graph
from problems_2l import FLUX_SHAPES, hopper_extension, random_2l

# (side-stream overlap, forced splits, token tiles the plan may pick, register-fragment main loop)
CONFIGS = {
    "v2.4": (False, 1, [64, 128, 256], False),
    "v2.5": (True, 0, [64, 128, 256], False),
    "now": (True, 0, [], False),
    "rs": (True, 0, [], True),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ms", default="4608,256")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    ext = hopper_extension("ab_2l")
    if ext is None:
        return 2
    dt, R, gs = torch.bfloat16, 32, 64
    print(f"{torch.cuda.get_device_name()}: int4_2l chain, us per call (CUDA graph), median of {args.rounds} "
          f"interleaved rounds; bf16 = cuBLAS x @ w.T timed in the same rounds")
    print(f"{'M':>5} {'K':>6} {'N':>6} | " + " ".join(f"{c:>8}" for c in CONFIGS) + f" {'bf16':>8} |"
          f" now/v2.5  rs/now bf16/now bf16/rs")
    bad = 0
    for M in [int(m) for m in args.ms.split(",")]:
        for K, N in FLUX_SHAPES:
            p = random_2l(M, K, N, R, gs)
            xs = [(x,) for x in p.xs]
            smooth, pd, pu, bias = p.smooth, p.proj_down, p.proj_up, p.bias
            qw, wsc, wch = p.qweight, p.wscales, p.wchannel
            w = torch.randn(N, K, device="cuda", dtype=dt) / K**0.5

            def chain(x):
                xq, xsc, lr = ext.quantize_act_2l(x, smooth, pd, gs)
                return ext.w4a4_gemm_2l(xq, xsc, qw, wsc, wch, lr, pu, bias, gs)

            y_now = chain(p.xs[0])
            ext.set_gemm_2l_rs(True)
            try:
                y_rs = chain(p.xs[0])
            finally:
                ext.set_gemm_2l_rs(False)
            if not torch.equal(y_now, y_rs):
                bad += 1
                print(f"  rs differs from now at M={M} K={K} N={N}: {(y_now != y_rs).sum().item()} outputs")
            times: dict[str, list[float]] = {c: [] for c in [*CONFIGS, "bf16"]}
            for _ in range(args.rounds):
                for name, (overlap, splits, tiles, rs) in CONFIGS.items():
                    ext.set_quantize_act_2l_overlap(overlap)
                    ext.set_gemm_2l_splits(splits)
                    ext.set_gemm_2l_plan_tiles(tiles)
                    ext.set_gemm_2l_rs(rs)
                    try:
                        times[name].append(1e3 * time_graph(chain, xs, args.reps))
                    finally:
                        ext.set_quantize_act_2l_overlap(True)
                        ext.set_gemm_2l_splits(0)
                        ext.set_gemm_2l_plan_tiles([])
                        ext.set_gemm_2l_rs(False)
                dense = lambda x, w=w: torch.nn.functional.linear(x, w, bias)  # noqa: E731
                times["bf16"].append(1e3 * time_graph(dense, xs, args.reps))
            med = {c: statistics.median(v) for c, v in times.items()}
            print(f"{M:>5} {K:>6} {N:>6} | " + " ".join(f"{med[c]:>8.1f}" for c in [*CONFIGS, "bf16"])
                  + f" | {med['now'] / med['v2.5']:>8.2f} {med['rs'] / med['now']:>7.2f} {med['bf16'] / med['now']:>8.2f}"
                  f" {med['bf16'] / med['rs']:>7.2f}")
            del xs, w, p
            torch.cuda.empty_cache()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

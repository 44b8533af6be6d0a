"""The register-fragment GEMM (weights in fragment order, persistent) with and without 256-token tiles, side by side.

usage: python benchmarks/gemm_2l_tiles.py [--ms 4096,4608,512] [--reps 20] [--rounds 3]

At FLUX.1's token counts the tile decides the waves: 4096 tokens make 456 tiles of 224 (3.5 waves of 132 SMs, so 4)
or 384 of 256 (2.9, so 3). For each M and FLUX.1 (K, N) this times w4a4_gemm_2l_fo alone under CUDA graphs with the
default plan (the register-fragment cost model may pick 256) and with 256 left out of the plan
(set_gemm_2l_plan_tiles([224, 128, 64]): what ran before v2.18), and, where N % 192 == 0, with three consumer
warpgroups forced (192-row tiles of 192 tokens: set_gemm_2l_rf_warpgroups(3, 192)), in alternating order over --rounds,
and prints the medians and the ratios to the default (> 1: the default is faster).
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

from cuda_timing import time_graph
from problems_2l import hopper_extension, random_2l

from svdquant_hf.ops.layout_2l import fragment_order

SHAPES = ((3072, 3072), (3072, 12288), (12288, 3072), (3072, 9216), (15360, 3072))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ms", default="4096,4608,512")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    ext = hopper_extension("gemm_2l_tiles")
    if ext is None:
        return 2
    gs = 64
    print(f"{torch.cuda.get_device_name()}: w4a4_gemm_2l_fo alone, us (CUDA graph, median of {args.rounds} rounds)")
    print(f"{'M':>5} {'K':>6} {'N':>6} | {'default':>8} {'no 256':>8} {'cw3':>8} | {'no256/d':>7} {'cw3/d':>6}")
    for M in (int(m) for m in args.ms.split(",")):
        for K, N in SHAPES:
            p = random_2l(M, K, N, 32, gs, sets=2)
            q = [ext.quantize_act_2l(x, p.smooth, p.proj_down, gs) for x in p.xs]
            qf = fragment_order(p.qweight)

            def gemm(xq, xs, lr):
                return ext.w4a4_gemm_2l_fo(xq, xs, qf, p.wscales, p.wchannel, lr, p.proj_up, p.bias, gs)

            names = ("default", "no256", "cw3") if N % 192 == 0 else ("default", "no256")
            times: dict[str, list[float]] = {n: [] for n in names}
            for r in range(args.rounds):
                for name in (names if r % 2 == 0 else names[::-1]):
                    ext.set_gemm_2l_plan_tiles([224, 128, 64] if name == "no256" else [])
                    ext.set_gemm_2l_rf_warpgroups(3 if name == "cw3" else 0, 192 if name == "cw3" else 0)
                    try:
                        times[name].append(1e3 * time_graph(gemm, q, args.reps))
                    finally:
                        ext.set_gemm_2l_plan_tiles([])
                        ext.set_gemm_2l_rf_warpgroups(0, 0)
            med = {n: statistics.median(v) for n, v in times.items()}
            d, o, c = med["default"], med["no256"], med.get("cw3", float("nan"))
            print(f"{M:>5} {K:>6} {N:>6} | {d:>8.1f} {o:>8.1f} {c:>8.1f} | {o / d:>7.3f} {c / d:>6.3f}", flush=True)
            del p, q, qf
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())

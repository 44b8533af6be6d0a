"""The persistent quantizer with fewer CTAs than fit: how much its time depends on the SMs it holds.

usage: python benchmarks/quantize_2l_cap.py [--shapes 4608x12288,4608x15360] [--fractions 1,0.9,0.8,0.7,0.6]

A down projection beside the quantizer (perf-notes v2.30) needs SMs the quantizer leaves free. If the quantizer
is bound by DRAM, a smaller grid costs it little; if by its instruction issue, its time grows as 1 / grid.
Columns (us per call, CUDA graphs, rank 32, bfloat16, group 64): "alone" the quantizer without a down projection
(rank 0), "pair" with cuBLAS's down projection on the side stream (today's path), "mm" that down projection alone
(torch.mm(x, proj_down)), for the grid capped at a fraction of what fits (set_quantize_act_2l_persistent(1, cap)).
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

from cuda_timing import time_graph
from problems_2l import hopper_extension, quantizer_inputs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="4608x12288,4608x15360")
    ap.add_argument("--fractions", default="1,0.9,0.8,0.7,0.6")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    ext = hopper_extension("quantize_2l_cap")
    if ext is None:
        return 2
    fractions = [float(f) for f in args.fractions.split(",")]
    print(f"{torch.cuda.get_device_name()}: the persistent quantizer's grid capped, us per call "
          f"(median of 3 alternating rounds)")
    print(f"{'M':>5} {'K':>6} {'frac':>5} {'ctas':>5} | {'alone':>7} {'pair':>7} {'mm':>7} | alone/alone(1) pair/pair(1)")
    for shape in args.shapes.split(","):
        M, K = (int(v) for v in shape.split("x"))
        xs, smooth, pd, pd0 = quantizer_inputs(M, K)
        ext.set_quantize_act_2l_persistent(1, 0)
        ext.quantize_act_2l(xs[0], smooth, pd0, 64)
        torch.cuda.synchronize()
        fit = ext.quantize_act_2l_last_ctas()
        caps = [max(1, int(fit * f)) for f in fractions]
        res: dict[tuple[int, str], list[float]] = {}
        mm_t = [1e3 * time_graph(lambda x: torch.mm(x, pd), [(x,) for x in xs], args.reps) for _ in range(3)]
        for r in range(3):
            for cap in (caps if r % 2 == 0 else caps[::-1]):
                ext.set_quantize_act_2l_persistent(1, cap)
                try:
                    for name, p in (("alone", pd0), ("pair", pd)):
                        res.setdefault((cap, name), []).append(
                            1e3 * time_graph(lambda x, p=p: ext.quantize_act_2l(x, smooth, p, 64),
                                             [(x,) for x in xs], args.reps))
                finally:
                    ext.set_quantize_act_2l_persistent(1, 0)
        med = {k: statistics.median(v) for k, v in res.items()}
        mm = statistics.median(mm_t)
        for f, cap in zip(fractions, caps):
            a, p = med[(cap, "alone")], med[(cap, "pair")]
            print(f"{M:>5} {K:>6} {f:>5.2f} {cap:>5} | {a:>7.1f} {p:>7.1f} {mm:>7.1f} | "
                  f"{a / med[(caps[0], 'alone')]:>13.3f} {p / med[(caps[0], 'pair')]:>12.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

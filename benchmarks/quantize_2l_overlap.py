"""quantize_act_2l with its down projection at large K: after the quantizer, or beside it on the side stream.

usage: python benchmarks/quantize_2l_overlap.py [--shapes 4608x15360,4608x12288,4096x12288,4608x3072] [--reps 20]

Rank 32, bfloat16, group 64, us per call under CUDA graphs (the down projection included), in alternating order
over three rounds. Columns: "l2only" the rule before v2.18 (the side stream only while x is at most 32 MiB:
set_quantize_act_2l_overlap(True, max_bytes)), "default" the side stream at any size (persistent CTAs from K = 8192),
"ovl_1r" the same with one CTA per row (so cuBLAS's blocks can interleave with the quantizer's), "alone" the quantizer
without a down projection (rank 0): what the pair would cost with the down projection off its critical path (e.g. under
the GEMM, perf-notes v2.29). Past L2 both kernels stream x from DRAM; the H200's ~4.8 TB/s is more than either takes
alone.
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
    ap.add_argument("--shapes", default="4608x15360,4608x12288,4096x12288,4608x3072")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)
    ext = hopper_extension("quantize_2l_overlap")
    if ext is None:
        return 2
    modes = {"l2only": (32 << 20, 1), "default": (1 << 62, 1), "ovl_1r": (1 << 62, 0), "alone": (1 << 62, 1)}
    print(f"{torch.cuda.get_device_name()}: quantize_act_2l + down projection (rank 32), us per call")
    print(f"{'M':>5} {'K':>6} | " + " ".join(f"{m:>8}" for m in modes)
          + " | default/l2only ovl_1r/l2only alone/default")
    for shape in args.shapes.split(","):
        M, K = (int(v) for v in shape.split("x"))
        xs, smooth, pd, pd0 = quantizer_inputs(M, K)  # pd0: rank 0, no down projection
        times: dict[str, list[float]] = {m: [] for m in modes}
        for r in range(3):
            for name in (list(modes) if r % 2 == 0 else list(modes)[::-1]):
                max_bytes, persistent = modes[name]
                ext.set_quantize_act_2l_overlap(True, max_bytes)
                ext.set_quantize_act_2l_persistent(persistent, 0)
                try:
                    p = pd0 if name == "alone" else pd
                    times[name].append(1e3 * time_graph(lambda x, p=p: ext.quantize_act_2l(x, smooth, p, 64),
                                                        [(x,) for x in xs], args.reps))
                finally:
                    ext.set_quantize_act_2l_overlap(True)
                    ext.set_quantize_act_2l_persistent(1, 0)
        med = {m: statistics.median(v) for m, v in times.items()}
        print(f"{M:>5} {K:>6} | " + " ".join(f"{med[m]:>8.1f}" for m in modes)
              + f" | {med['default'] / med['l2only']:>14.3f} {med['ovl_1r'] / med['l2only']:>13.3f}"
              + f" {med['alone'] / med['default']:>13.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

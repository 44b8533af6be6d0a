"""The down projection beside the persistent quantizer (set_lowrank_down_beside) against cuBLAS's on the side stream.

usage: python benchmarks/down_beside_sweep.py [--shapes 4608x12288,4608x15360c,4096x12288] [--shares 0.1,0.2,0.3]

us per quantize_act_2l call (rank 32, bfloat16, group 64, CUDA graphs, median of 3 alternating rounds). "side" is
today's path (cuBLAS's down projection on the side stream), "alone" the quantizer without a down projection (rank 0:
the floor of any down projection off the critical path), "b<share>" our kernel beside the quantizer with that share of
the quantizer's CTAs left free (its CTAs: share x 2 x SMs), "b<share>x<f>" with f times as many CTAs. A shape ending
in "c" is the cat form (FLUX.1's single-block proj_out input: cat([3072 columns, the rest]) read in place).
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
    ap.add_argument("--shapes", default="4608x12288,4608x15360c,4096x12288")
    ap.add_argument("--shares", default="0.1,0.2,0.3")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    ext = hopper_extension("down_beside_sweep")
    if ext is None:
        return 2
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    shares = [float(s) for s in args.shares.split(",")]
    modes: dict[str, tuple[int, float, int]] = {"side": (0, 0.2, 0), "alone": (0, 0.2, 0)}
    for s in shares:
        modes[f"b{s:g}"] = (1, s, 0)
    s0 = shares[len(shares) // 2]
    modes[f"b{s0:g}x1.5"] = (1, s0, int(1.5 * s0 * 2 * sms + 0.5))
    print(f"{torch.cuda.get_device_name()} ({sms} SMs): quantize_act_2l with its down projection (rank 32), us per "
          "call, median of 3 alternating rounds")
    print(f"{'shape':>12} | " + " ".join(f"{m:>9}" for m in modes) + " | best beside / side, alone / side")
    for shape in args.shapes.split(","):
        cat = shape.endswith("c")
        M, K = (int(v) for v in shape.rstrip("c").split("x"))
        xs, smooth, pd, pd0 = quantizer_inputs(M, K)
        parts = [(x[:, :3072].contiguous(), x[:, 3072:].contiguous()) for x in xs]

        def call(i, p):
            if cat:
                return ext.quantize_act_2l_cat(*parts[i], smooth, p, 64)
            return ext.quantize_act_2l(xs[i], smooth, p, 64)

        times: dict[str, list[float]] = {m: [] for m in modes}
        for r in range(3):
            for name in (list(modes) if r % 2 == 0 else list(modes)[::-1]):
                mode, share, ctas = modes[name]
                ext.set_lowrank_down_beside(mode, share, ctas)
                try:
                    p = pd0 if name == "alone" else pd
                    times[name].append(1e3 * time_graph(lambda i, p=p: call(i, p), [(0,), (1,)], args.reps))
                finally:
                    ext.set_lowrank_down_beside(0, 0.2, 0)
        med = {m: statistics.median(v) for m, v in times.items()}
        best = min(v for m, v in med.items() if m.startswith("b"))
        print(f"{shape:>12} | " + " ".join(f"{med[m]:>9.1f}" for m in modes)
              + f" | {best / med['side']:>17.3f} {med['alone'] / med['side']:>7.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

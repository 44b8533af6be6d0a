"""SVDQuantLinear on shapes the Hopper GEMM's 128-wide tiles do not divide: padded in fragment order against before.

usage: python benchmarks/linear_padded.py [--ms 1024,4096] [--shapes 2240:2240,...] [--rounds 3]

Columns (us per call of the layer's forward, CUDA graph, median of interleaved rounds):
  "padded"  set_fragment_order: weights, scales, branch and bias padded to the tiles at load; per call the quantizer
            kernel, xq padded, the GEMM kernel, the extra output columns sliced off (this session's default on Hopper);
  "before"  the canonical layer, as these shapes ran before: the quantizer kernel and the reference's exact int8 GEMM
            (the weights widened per call, torch._int_mm);
  "bf16"    nn.Linear in bf16 (cuBLAS).
Default shapes: SANA 1600M's attention (2240 x 2240) and its time-step projection (2240 x 13440).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys

import torch

from cuda_timing import time_graph
from problems_2l import hopper_extension, random_2l

from svdquant_hf import SVDQuantLinear


def layer_of(p, K: int, N: int) -> SVDQuantLinear:
    layer = SVDQuantLinear(K, N, rank=32, group_size=64, quant_format="int4_2l", device="cuda")
    layer.qweight, layer.wscales, layer.wchannel, layer.smooth_factor = p.qweight, p.wscales, p.wchannel, p.smooth
    layer.proj_down, layer.proj_up = p.proj_down, p.proj_up
    layer.bias.data.copy_(p.bias)
    return layer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ms", default="1024,4096")
    ap.add_argument("--shapes", default="2240:2240,2240:13440")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    if hopper_extension("linear_padded") is None:
        return 2
    print(f"{torch.cuda.get_device_name()}: SVDQuantLinear forward, us per call (CUDA graph), median of {args.rounds} "
          f"interleaved rounds")
    cols = ["padded", "before", "bf16"]
    print(f"{'M':>5} {'K':>6} {'N':>6} | " + " ".join(f"{c:>8}" for c in cols) + " | before/padded  bf16/padded")
    for M in [int(m) for m in args.ms.split(",")]:
        for K, N in [tuple(int(v) for v in kn.split(":")) for kn in args.shapes.split(",")]:
            p = random_2l(M, K, N, 32, 64)
            canonical = layer_of(p, K, N)
            padded = copy.deepcopy(canonical)
            assert padded.set_fragment_order() and padded.kernel_shape() != (K, N)
            dense = torch.nn.Linear(K, N, device="cuda", dtype=torch.bfloat16)
            fns = {"padded": padded, "before": canonical, "bf16": dense}
            xs = [(x,) for x in p.xs]
            with torch.no_grad():
                rel = ((padded(p.xs[0]).float() - canonical(p.xs[0]).float()).norm()
                       / canonical(p.xs[0]).float().norm()).item()
                times: dict[str, list[float]] = {c: [] for c in cols}
                for r in range(args.rounds):
                    for c in (cols if r % 2 == 0 else cols[::-1]):
                        times[c].append(1e3 * time_graph(fns[c], xs, args.reps))
            med = {c: statistics.median(v) for c, v in times.items()}
            print(f"{M:>5} {K:>6} {N:>6} | " + " ".join(f"{med[c]:>8.1f}" for c in cols) +
                  f" | {med['before'] / med['padded']:>13.2f}  {med['bf16'] / med['padded']:>11.2f}"
                  f"   (padded vs before: relative difference {rel:.1e})")
            sys.stdout.flush()
            del p, canonical, padded, dense, xs
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every (token tile, K split) of the int4_2l GEMM on the FLUX.1 shapes, against the heuristic's pick (sm_90a).

usage: python benchmarks/gemm_2l_plan_sweep.py [--ms 256,1024,4608] [--reps 30] [--json OUT.json]

Times w4a4_gemm_2l alone (CUDA-graph device time, inputs pre-quantized) for token tiles 64/128/224/256 and
K splits 1/2/4/8 over a thread-block cluster, and prints per shape the best plan, the heuristic's plan
(svdquant_hf's gemm_2l_plan) and how far the heuristic is from the best (1.00 = it picked the best).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from cuda_timing import time_graph
from problems_2l import FLUX_SHAPES, hopper_extension, random_2l



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ms", default="256,1024,4608")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    ext = hopper_extension("gemm_2l_plan_sweep")
    if ext is None:
        return 2
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    R, gs = 32, 64
    rows = []
    print(f"{torch.cuda.get_device_name()}: int4_2l GEMM alone, us per call (CUDA graph), rank {R}, group {gs}")
    for M in [int(m) for m in args.ms.split(",")]:
        for K, N in FLUX_SHAPES:
            p = random_2l(M, K, N, R, gs)
            xs = p.xs
            smooth, pd, pu, bias = p.smooth, p.proj_down, p.proj_up, p.bias
            qw, wsc, wch = p.qweight, p.wscales, p.wchannel
            qs = [ext.quantize_act_2l(x, smooth, pd, gs) for x in xs]
            times = {}
            for bt in ext.gemm_2l_tiles:
                for s in (1, 2, 4, 8):
                    if s > K // 128:
                        continue
                    ext.set_gemm_2l_tile_tokens(bt)
                    ext.set_gemm_2l_splits(s)
                    ext.set_gemm_2l_persistent(0)  # the plan is the non-persistent kernels'
                    try:
                        times[(bt, s)] = 1e3 * time_graph(
                            lambda xq, xsc, lr: ext.w4a4_gemm_2l(xq, xsc, qw, wsc, wch, lr, pu, bias, gs), qs, args.reps
                        )
                    finally:
                        ext.set_gemm_2l_splits(0)
                        ext.set_gemm_2l_tile_tokens(0)
                        ext.set_gemm_2l_persistent(-1)
            best = min(times, key=times.get)
            pick = tuple(ext.gemm_2l_plan(M, N, K, sms))
            row = {"M": M, "K": K, "N": N, "best": best, "best_us": times[best], "pick": pick,
                   "pick_us": times[pick], "times": {f"{b}x{s}": t for (b, s), t in times.items()}}
            rows.append(row)
            line = " ".join(f"{b}x{s}:{t:.1f}" for (b, s), t in sorted(times.items()))
            print(f"M={M:5d} K={K:5d} N={N:5d} best {best} {times[best]:7.1f} | pick {pick} {times[pick]:7.1f} "
                  f"({times[pick] / times[best]:.2f}) | {line}")
            del xs, qs, p
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

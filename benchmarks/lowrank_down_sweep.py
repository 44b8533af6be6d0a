"""The quantizer's low-rank down projection at a few hundred tokens: our kernel's cluster size and depth against cuBLAS.

usage: python benchmarks/lowrank_down_sweep.py [--ms 256,512] [--ks 3072,12288,15360] [--replays 20]

quantize_act_2l (the per-row quantizer on the main stream, the down projection x @ proj_down on the side stream)
captured as one CUDA graph and replayed under torch.profiler: per configuration the down projection's kernels (summed),
the quantizer's and the span from the first start to the last end, medians in us. The span is what the GEMM after it
waits for. Configurations: "cublas" (set_lowrank_down_max_tokens(0)), "auto" (the default rule: our kernel for
M <= 256, K <= 4096, its cluster size by its rule), "s1".."s8" our kernel at every K with the cluster size forced, "+deep" with
up to 8 stages in flight (set_lowrank_down_deep).
"""
from __future__ import annotations

import argparse
import sys

import torch

from chain_timeline import replay_kernels, summarize
from problems_2l import hopper_extension, random_2l

CONFIGS = ["cublas", "auto", "s1", "s2", "s4", "s8", "s4+deep", "s8+deep"]


def configure(ext, name: str) -> None:
    ext.set_lowrank_down_max_tokens(-1, False)  # the default
    ext.set_lowrank_down_splits(0)
    ext.set_lowrank_down_deep(False)
    if name == "cublas":
        ext.set_lowrank_down_max_tokens(0, False)
    elif name != "auto":
        s, _, deep = name.partition("+")
        ext.set_lowrank_down_max_tokens(512, True)  # every K
        ext.set_lowrank_down_splits(int(s[1:]))
        ext.set_lowrank_down_deep(deep == "deep")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ms", default="256,512")
    ap.add_argument("--ks", default="3072,12288,15360")
    ap.add_argument("--replays", type=int, default=20)
    args = ap.parse_args()
    ext = hopper_extension("lowrank_down_sweep")
    if ext is None:
        return 2
    print(f"{torch.cuda.get_device_name()}: quantize_act_2l with its down projection (rank 32) as one CUDA graph, "
          f"us (median of {args.replays} replays): down (its kernels summed) / quantizer / span")
    print(f"{'M':>5} {'K':>6} | " + " ".join(f"{c:>17}" for c in CONFIGS))
    for M in [int(m) for m in args.ms.split(",")]:
        for K in [int(k) for k in args.ks.split(",")]:
            p = random_2l(M, K, 128, 32, 64, sets=1)
            x = p.xs[0]
            ref = None
            cells = []
            for name in CONFIGS:
                configure(ext, name)
                try:
                    fn = lambda: ext.quantize_act_2l(x, p.smooth, p.proj_down, 64)  # noqa: E731
                    out = fn()
                    if ref is None:
                        ref = out
                    elif not (torch.equal(out[0], ref[0]) and
                              ((out[2].float() - ref[2].float()).norm() / ref[2].float().norm()).item() < 1e-2):
                        cells.append(f"{'mismatch':>17}")
                        continue
                    torch.cuda.synchronize()
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g):
                        fn()
                    g.replay()
                    torch.cuda.synchronize()
                    runs = replay_kernels(g, args.replays)
                    d, span, _ = summarize(runs)
                    quant = d.get("quant", 0.0)
                    down = sum(v for k, v in d.items() if k != "quant")
                    cells.append(f"{down:5.1f}/{quant:4.1f}/{span:5.1f}")
                    del g
                finally:
                    configure(ext, "auto")
            print(f"{M:>5} {K:>6} | " + " ".join(f"{c:>17}" for c in cells))
            sys.stdout.flush()
            del p, x, ref
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())

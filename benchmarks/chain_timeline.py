"""Where a graph-replayed int4_2l chain's time goes, kernel by kernel (torch.profiler inside CUDA graph replays).

usage: python benchmarks/chain_timeline.py [--ms 256,4608] [--shapes K:N,...] [--replays 20] [--lr-chain -1|0|1]
       [--one TILE] [--pipes 1|2]

For each shape: the default chain (quantize_act_2l + w4a4_gemm_2l_fo, the model's path) and cuBLAS bf16 x @ w.T + bias,
each captured as one CUDA graph of one call and replayed. Per kernel: its median duration; per chain: the span from the
first kernel's start to the last kernel's end, the sum of the kernels on the main stream, and the idle gaps between
them (launch latency between dependent graph nodes). Medians over the replays, in us. --lr-chain: the chained down
projection's mode (set_lr_chain: at M <= 256 after the quantizer on its stream, under the GEMM's main loop; -1 its rule,
the default, learned from the warm-up calls; 0 never; 1 wherever the shape allows). --one: the GEMM on one consumer
warpgroup's tiles of TILE tokens, 128 or 256 (set_gemm_2l_rf_warpgroups(1, TILE), g.56). --pipes: the chained down
projection's rings per CTA (set_lr_chain_pipes; 2, g.59, the default since v2.40; 1 as before).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from collections import defaultdict

import torch

from problems_2l import FLUX_SHAPES, hopper_extension, random_2l

from svdquant_hf.ops.layout_2l import fragment_order


def short(name: str) -> str:
    for key, label in (("quantize_act_2l", "quant"), ("lowrank_down", "down"), ("w4a4_gemm_2l", "gemm"),
                       ("gemm_2l", "gemm"), ("copy_columns", "copy")):
        if key in name:
            return label
    return name[:24]


def replay_kernels(g: torch.cuda.CUDAGraph, replays: int) -> list[list[tuple[str, float, float]]]:
    """[(kernel, start us, end us)] per replay, in start order."""
    from torch.profiler import ProfilerActivity, profile

    warnings.filterwarnings("ignore", message="Profiler clears events")
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            g.replay()
            torch.cuda.synchronize()
    kernels = sorted((e.name, e.time_range.start, e.time_range.end) for e in prof.events()
                     if e.device_type == torch.autograd.DeviceType.CUDA and "Memcpy" not in e.name
                     and "Memset" not in e.name)
    kernels.sort(key=lambda k: k[1])
    per = len(kernels) // replays if replays else 0
    return [kernels[i * per:(i + 1) * per] for i in range(replays)] if per else []


def summarize(runs: list[list[tuple[str, float, float]]]) -> tuple[dict[str, float], float, float]:
    """Median duration per kernel label, median span, median of the gaps (span minus the union of busy time)."""
    durs: dict[str, list[float]] = defaultdict(list)
    spans, gaps = [], []
    for ks in runs:
        for name, s, e in ks:
            durs[short(name)].append(e - s)
        t0, t1 = ks[0][1], max(e for _, _, e in ks)
        spans.append(t1 - t0)
        busy, end = 0.0, t0
        for _, s, e in ks:  # union of the kernels' intervals
            if e > end:
                busy += e - max(s, end)
                end = e
        gaps.append(t1 - t0 - busy)
    return ({k: statistics.median(v) for k, v in durs.items()}, statistics.median(spans), statistics.median(gaps))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ms", default="256,4608")
    ap.add_argument("--shapes", default="")
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--lr-chain", type=int, default=-1, choices=[-1, 0, 1])
    ap.add_argument("--one", type=int, default=0, help="one warpgroup's token tile (128 or 256)")
    ap.add_argument("--pipes", type=int, default=2, choices=[1, 2], help="the chained down projection's rings per CTA")
    args = ap.parse_args()
    ext = hopper_extension("chain_timeline")
    if ext is None:
        return 2
    ext.set_lr_chain(args.lr_chain)
    if args.one:
        ext.set_gemm_2l_rf_warpgroups(1, args.one)
    if hasattr(ext, "set_lr_chain_pipes"):
        ext.set_lr_chain_pipes(args.pipes)
    shapes = [tuple(int(v) for v in kn.split(":")) for kn in args.shapes.split(",")] if args.shapes else FLUX_SHAPES
    one = (f", one warpgroup {args.one}" if args.one else "") + f", {args.pipes} ring{'s' if args.pipes > 1 else ''}"
    print(f"{torch.cuda.get_device_name()} (lr chain mode {args.lr_chain}{one}): one chain per CUDA graph replay, "
          f"kernels by torch.profiler, us "
          f"(median of {args.replays} replays); span = first start to last end, gaps = span not covered by a kernel")
    print(f"{'M':>5} {'K':>6} {'N':>6} | {'quant':>6} {'down':>6} {'gemm':>6} {'span':>6} {'gaps':>6} | "
          f"{'bf16':>6} | kernels of the chain")
    for M in [int(m) for m in args.ms.split(",")]:
        for K, N in shapes:
            p = random_2l(M, K, N, 32, 64, sets=1)
            qf = fragment_order(p.qweight)
            w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / K**0.5
            x = p.xs[0]

            def chain():
                xq, xsc, lr = ext.quantize_act_2l(x, p.smooth, p.proj_down, 64)
                return ext.w4a4_gemm_2l_fo(xq, xsc, qf, p.wscales, p.wchannel, lr, p.proj_up, p.bias, 64)

            def dense():
                return torch.nn.functional.linear(x, w, p.bias)

            res = {}
            for label, fn in (("chain", chain), ("bf16", dense)):
                for _ in range(3):
                    fn()
                torch.cuda.synchronize()
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    fn()
                g.replay()
                torch.cuda.synchronize()
                res[label] = (summarize(replay_kernels(g, args.replays)), [short(k[0]) for k in
                                                                            replay_kernels(g, 1)[0]])
                del g
            (d, span, gaps), names = res["chain"]
            (db, span_b, _), _ = res["bf16"]
            print(f"{M:>5} {K:>6} {N:>6} | {d.get('quant', 0):>6.1f} {d.get('down', 0):>6.1f} {d.get('gemm', 0):>6.1f} "
                  f"{span:>6.1f} {gaps:>6.1f} | {span_b:>6.1f} | {' '.join(names)}")
            sys.stdout.flush()
            del p, qf, w, x
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())

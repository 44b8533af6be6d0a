"""Where stream-K's time goes (perf-notes v2.46): the one-warpgroup GEMM alone, its default plan against the stream-K
kernel (set_gemm_2l_stream_k, g.69) on grids of several sizes, exact and without its exchange
(set_gemm_2l_stream_k_probe: no partials stored, no owner waits for them; wrong sums, a timing probe).

usage: python benchmarks/stream_k_sweep.py [--shapes 256x3072x3072,512x3072x3072] [--ctas 96,100,112,124,132]
                                           [--tiles 128,256] [--reps 30] [--rounds 2] [--no-stamps]

The activations are quantized once outside the timing; each GEMM is timed under a CUDA graph (us per call, median of
--rounds). Per grid the partition's own figures, computed here as csrc/stream_k.cuh does: the longest run in stages
(the critical path if nothing waits) and the exchanges (runs that start inside a tile: partials stored and added).
If `nx` (no exchange) follows the longest run and `sk` sits above it (sk - nx, us), the exchange is what stream-K
loses; if `nx` is slow too, the partition's runs themselves are.

Then (unless --no-stamps) one stamped launch per row (set_gemm_2l_stream_k_probe(2), exact): each CTA's first
consumer thread stamps clock64 at its run's steps. Printed per row, in thousands of cycles, the median and the maximum
over the CTAs that take the step: `seg1` a contributor's first segment, `rel` storing and releasing its partials,
`own` the owner's own segment (from the run's start), `wait` to the last contributor's flag, `add` reading and adding
the partials, `epi` from there to the run's end (the epilogue), `run` the whole run; and from
%globaltimer the spread of the CTAs' starts and the kernel's span (first start to last end), in us.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

from cuda_timing import time_graph
from problems_2l import gemm_switches, hopper_extension, random_2l

from svdquant_hf.ops.layout_2l import fragment_order

K_STAGE, ROWS = 128, 64  # the kernel's K per stage, one warpgroup's tile rows


def partition(tiles: int, stages: int, grid: int) -> tuple[int, int]:
    """(longest run in stages, exchanges) of stream_k.cuh's runs: CTA c takes units c * U / grid .. (c+1) * U / grid."""
    units = tiles * stages
    lo = [c * units // grid for c in range(grid + 1)]
    longest = max(lo[c + 1] - lo[c] for c in range(grid))
    exchanges = sum(1 for c in range(grid) if lo[c] % stages and lo[c + 1] > lo[c])
    return longest, exchanges


PHASES = ("seg1", "rel", "own", "wait", "add", "epi", "run")


def stamps(ext, gemm, inputs, tile: int, leave: int, ctas: int) -> dict:
    """One stamped stream-K launch: per phase 'median/max' in k cycles over the CTAs that take it, the spread of the
    CTAs' starts and the kernel's span in us."""
    with gemm_switches(ext, stream_k=(tile, leave)):
        ext.set_gemm_2l_stream_k_probe(2)
        try:
            gemm(*inputs)
            raw = ext.gemm_2l_stream_k_stamps(ctas)
        finally:
            ext.set_gemm_2l_stream_k_probe(0)
    if len(raw) != 12 * ctas:
        raise RuntimeError(f"gemm_2l_stream_k_stamps({ctas}): {len(raw)} values")
    phases: dict[str, list[int]] = {p: [] for p in PHASES}
    for c in range(ctas):
        s = raw[12 * c:12 * c + 12]
        start, seg1, rel, own, seen, added, end = s[:7]
        if seg1:
            phases["seg1"].append(seg1 - start)
            phases["rel"].append(rel - seg1)
        if own:
            phases["own"].append(own - start)
            phases["wait"].append(seen - own)
            phases["add"].append(added - seen)
            phases["epi"].append(end - added)
        phases["run"].append(end - start)
    cells = [f"{statistics.median(v) / 1e3:5.1f}/{max(v) / 1e3:5.1f}" if v else f"{'-':>11}" for v in phases.values()]
    starts = [raw[12 * c + 11] for c in range(ctas)]
    ends = [raw[12 * c + 10] for c in range(ctas)]
    return {"cells": cells, "starts": (max(starts) - min(starts)) / 1e3, "span": (max(ends) - min(starts)) / 1e3}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="256x3072x3072,512x3072x3072", help="MxKxN, comma-separated")
    ap.add_argument("--ctas", default="96,100,112,124,132", help="stream-K grids (capped at the SM count)")
    ap.add_argument("--tiles", default="128,256", help="stream-K token tiles")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-stamps", action="store_true", help="no stamped launches")
    args = ap.parse_args(argv)
    ext = hopper_extension("stream_k_sweep")
    if ext is None:
        return 2
    if not hasattr(ext, "set_gemm_2l_stream_k_probe"):
        print("stream_k_sweep: this build lacks set_gemm_2l_stream_k_probe", file=sys.stderr)
        return 2
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    stamped: list[tuple[str, dict]] = []
    grids = sorted({min(int(c), sms) for c in args.ctas.split(",")})
    print(f"{torch.cuda.get_device_name()} ({sms} SMs): the GEMM alone, us per call (CUDA graph), median of "
          f"{args.rounds}; fo: the default plan; sk: stream-K exact; nx: stream-K without its exchange (probe)")
    print(f"{'M':>5} {'K':>6} {'N':>6} {'tile':>4} {'ctas':>4} | {'stages':>6} {'exch':>4} | {'fo':>7} {'sk':>7} "
          f"{'nx':>7} | {'sk/fo':>6} {'nx/fo':>6} {'sk-nx':>6}")
    for shape in args.shapes.split(","):
        M, K, N = (int(v) for v in shape.split("x"))
        p = random_2l(M, K, N)
        q = [ext.quantize_act_2l(x, p.smooth, p.proj_down, p.group_size) for x in p.xs]
        qf = fragment_order(p.qweight)

        def gemm(xq, xs, lr):
            return ext.w4a4_gemm_2l_fo(xq, xs, qf, p.wscales, p.wchannel, lr, p.proj_up, p.bias, p.group_size)

        def timed(tile: int = 0, ctas: int = 0, no_exchange: bool = False) -> float:
            with gemm_switches(ext, stream_k=(tile, sms - ctas) if tile else (0, 0)):
                ext.set_gemm_2l_stream_k_probe(1 if no_exchange else 0)
                try:
                    n0 = ext.gemm_2l_stream_k_launches()
                    t = 1e3 * time_graph(gemm, q, args.reps)
                    if tile and ext.gemm_2l_stream_k_launches() == n0:
                        raise RuntimeError(f"{shape}: the stream-K kernel did not run (tile {tile}, {ctas} CTAs)")
                    return t
                finally:
                    ext.set_gemm_2l_stream_k_probe(0)

        for tile in (int(t) for t in args.tiles.split(",")):
            for ctas in grids:
                fo, sk, nx = [], [], []
                for _ in range(args.rounds):  # alternating, so drift hits all three alike
                    fo.append(timed())
                    sk.append(timed(tile, ctas))
                    nx.append(timed(tile, ctas, True))
                f, s, n = (statistics.median(v) for v in (fo, sk, nx))
                longest, exch = partition((N // ROWS) * -(-M // tile), K // K_STAGE, ctas)
                print(f"{M:>5} {K:>6} {N:>6} {tile:>4} {ctas:>4} | {longest:>6} {exch:>4} | {f:7.1f} {s:7.1f} "
                      f"{n:7.1f} | {s / f:6.2f} {n / f:6.2f} {s - n:6.1f}", flush=True)
                if not args.no_stamps:
                    stamped.append((f"{M}x{K}x{N} {tile} {ctas}", stamps(ext, gemm, q[0], tile, sms - ctas, ctas)))
    if stamped:
        print("\nstamped runs, k cycles: median / max over the CTAs that take the step; us from %globaltimer")
        print(f"{'shape tile ctas':>22} | " + " ".join(f"{c:>11}" for c in PHASES) + f" | {'starts':>6} {'span':>6}")
        for name, row in stamped:
            print(f"{name:>22} | " + " ".join(row["cells"]) + f" | {row['starts']:6.2f} {row['span']:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The fragment-order GEMM's plans at a few hundred tokens, against the default's pick (sm_90a).

usage: python benchmarks/gemm_2l_fo_plans.py [--ms 512,256,1024] [--reps 20] [--rounds 2] [--splits] [--turns]
       [--pieces]

FLUX.1's text stream runs its GEMMs at M = 512 (batch 1), where few tiles under-fill 132 SMs and the choice among
kernels decides the time. For each M and FLUX.1 (K, N) this times w4a4_gemm_2l_fo alone (CUDA graphs, inputs
pre-quantized, rank 32) with: the default ("auto": the register-fragment cost model `rf_cost` and the non-persistent
plan; since v2.23 with `set_gemm_2l_rf_by_cost(True)`: the register-fragment loop, unsplit or split over a cluster,
wherever its cost models beat the plan), "nrbc" (that switch off: the rule before v2.23), the persistent two-warpgroup loop forced at each token tile ("rf2_<tile>"), three
warpgroups on 192-row tiles ("rf3_<tile>", where N % 192 == 0), the non-persistent kernels ("np": the plan's tile and
K split) and with --splits the register-fragment loop split over a cluster ("rs<tile>x<CTAs>"), in alternating
order over --rounds, and prints the medians, the best and default / best (1.00: the default picked the best).
The register-fragment loop is pipelined within each warpgroup by default (set_gemm_2l_rf_pipelined, perf-notes
v2.32); --turns adds each two-warpgroup register-fragment candidate again with the warpgroups taking turns instead
("t_" before its name; "t_auto" the default plan so), and the ping-pong GEMM ("pp": set_gemm_2l_rf_pingpong).
--pieces adds the two-warpgroup 256-token and three-warpgroup 192-token tiles with their output staged whole, on three
stages as before v2.36 ("rf2_256w", "rf3_192w"; set_gemm_2l_out_pieces(tile, 1)), and the 256-token split kernel over 2
/ 4 CTAs the same way, as before v2.37 ("rs256x2w", "rs256x4w"; set_gemm_2l_split_halves(False); call 1 of
v2.37 timed g.54 while opt-in as "rs256x2h" / "rs256x4h"; v2.38's call 1 timed g.57, that kernel exchanging its
partials through L2, as "rs256x2l" / "rs256x4l": slower, removed).
--one adds one consumer warpgroup on 64-row tiles of 128 / 256 tokens (g.56, set_gemm_2l_rf_warpgroups(1, tile)):
"rf1_128", "rf1_256", and split over a cluster "rs1_128x2", "rs1_256x2", "rs1_256x4".
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from collections.abc import Iterator

import torch

from cuda_timing import time_graph
from problems_2l import FLUX_SHAPES, gemm_switches, hopper_extension, random_2l

from svdquant_hf.ops.layout_2l import fragment_order


def candidates(N: int, splits: bool = False, turns: bool = False, pieces: bool = False,
               one: bool = False) -> list[tuple[str, dict, int]]:
    """(name, gemm_switches arguments, forced token tile or 0)."""
    out = [("auto", {}, 0), ("nrbc", {"rf_by_cost": False}, 0), ("np", {"persistent": 0}, 0)]
    rf2 = [(f"rf2_{bt}", {"persistent": 1, "rf_warpgroups": 2}, bt) for bt in (64, 128, 224, 256)]
    rs = [(f"rs{bt}x{s}", {"rf_splits": s}, bt) for bt, s in SPLITS] if splits else []
    out += rf2
    if N % 192 == 0:
        out += [(f"rf3_{bt}", {"persistent": 1, "rf_warpgroups": 3, "rf3_tile": bt}, 0) for bt in (128, 192)]
    out += rs
    if pieces:  # the output staged whole, three stages, as before v2.36 / v2.37 (set_gemm_2l_out_pieces(tile, 1),
        # set_gemm_2l_split_halves(False))
        out += [("rf2_256w", {"persistent": 1, "rf_warpgroups": 2, "out_pieces": (256, 1)}, 256)]
        out += [(f"rs256x{s}w", {"rf_splits": s, "split_halves": False}, 256) for s in (2, 4)]
        if N % 192 == 0:
            out += [("rf3_192w", {"persistent": 1, "rf_warpgroups": 3, "rf3_tile": 192, "out_halves": False}, 0)]
    if one:  # one consumer warpgroup on 64-row tiles (g.56, set_gemm_2l_rf_warpgroups(1, tile)), unsplit and split
        out += [(f"rf1_{bt}", {"rf_warpgroups": 1, "rf3_tile": bt}, 0) for bt in (128, 256)]
        out += [(f"rs1_{bt}x{s}", {"rf_warpgroups": 1, "rf3_tile": bt, "rf_splits": s}, 0)
                for bt, s in ((128, 2), (256, 2), (256, 4))]
    if turns:
        out += [(f"t_{name}", {**sw, "rf_pipelined": False}, bt) for name, sw, bt in [("auto", {}, 0)] + rf2 + rs]
        out += [("pp", {"rf_pingpong": True}, 0)]
    return out



@contextlib.contextmanager
def plan_forced(ext, switches: dict, bt: int) -> Iterator[None]:
    """One candidate (its gemm_switches arguments and forced token tile) for a block, the defaults after it. A forced
    tile runs unsplit by the plan (the persistent kernel); a forced cluster split is the register-fragment loop's own."""
    with gemm_switches(ext, **switches):
        ext.set_gemm_2l_tile_tokens(bt)
        ext.set_gemm_2l_splits(1 if bt else 0)
        try:
            yield
        finally:
            ext.set_gemm_2l_splits(0)
            ext.set_gemm_2l_tile_tokens(0)

# the register-fragment loop split over a cluster: (token tile, CTAs per cluster) forced with --splits
SPLITS = [(256, 2), (256, 4), (256, 5), (256, 8), (128, 2), (128, 3), (128, 4), (64, 2)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ms", default="512,256,1024")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--splits", action="store_true", help="also the split register-fragment loop, forced (SPLITS)")
    ap.add_argument("--pieces", action="store_true",
                    help="also rf2_256 and rf3_192 with their output staged whole (rf2_256w, rf3_192w: three stages)")
    ap.add_argument("--one", action="store_true",
                    help="also one consumer warpgroup on 64-row tiles (g.56: rf1_<tile>, split rs1_<tile>x<CTAs>)")
    ap.add_argument("--turns", action="store_true",
                    help="also the two-warpgroup candidates with the warpgroups taking turns, and the ping-pong GEMM")
    args = ap.parse_args()
    ext = hopper_extension("gemm_2l_fo_plans")
    if ext is None:
        return 2
    print(f"{torch.cuda.get_device_name()}: w4a4_gemm_2l_fo alone, us (CUDA graph), rank 32, median of {args.rounds} "
          "alternating rounds")
    for M in (int(m) for m in args.ms.split(",")):
        for K, N in FLUX_SHAPES:
            p = random_2l(M, K, N, 32, 64)
            q = [ext.quantize_act_2l(x, p.smooth, p.proj_down, 64) for x in p.xs]
            qf = fragment_order(p.qweight)

            def gemm(xq, xs, lr):
                return ext.w4a4_gemm_2l_fo(xq, xs, qf, p.wscales, p.wchannel, lr, p.proj_up, p.bias, 64)

            cands = candidates(N, args.splits, args.turns, args.pieces, args.one)
            times: dict[str, list[float]] = {c[0]: [] for c in cands}
            for r in range(args.rounds):
                for name, switches, bt in (cands if r % 2 == 0 else cands[::-1]):
                    with plan_forced(ext, switches, bt):
                        times[name].append(1e3 * time_graph(gemm, q, args.reps))
            med = {k: statistics.median(v) for k, v in times.items()}
            best = min(med, key=med.get)
            row = " ".join(f"{k}={v:.1f}" for k, v in med.items())
            print(f"M={M:5d} K={K:5d} N={N:5d} | {row} | best {best}, auto/best {med['auto'] / med[best]:.2f}",
                  flush=True)
            del p, q, qf
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())

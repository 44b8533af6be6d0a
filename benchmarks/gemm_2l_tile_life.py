"""A tile's life in the persistent register-fragment GEMM: clock64 stamps at each tile's steps, per warpgroup.

usage: python benchmarks/gemm_2l_tile_life.py [--shapes 4608x3072x3072,...] [--warpgroups 1|2|3] [--tile 128|224|256]
       [--turns]
       [--lr-producer] [--l2-prefetch] [--no-store] [--act-in-loop] [--lr-rolled]
       [--pingpong] [--substeps] [--splits 2..8] [--probe no-widen|no-mma|no-act|no-act-mma|rel2|ss-a]

The default loop (pipelined within each warpgroup) built with stamps (set_gemm_2l_tile_life: the same bits): two
consumer warpgroups on 224-token tiles (--tile 256: on 256-token tiles, the default at 4096 tokens), or with
--warpgroups 3 three on 192-token tiles (the default at 4608 tokens). Since perf-notes v2.36 the 192- and 256-token
tiles' stamped kernels have the defaults' layout (the output staged in halves, a fourth stage: EP 19).
For the first 4 CTAs, each consumer warpgroup's first thread stamps its first 8 tiles into shared memory (copied out at
the end: a global store would make the epilogue's proxy fence wait for it) at 0 tile start, 7 first stage landed,
1 first k-step issued, 2 main loop done, 3 low-rank tile in shared memory, 4 scales applied, 5 low-rank branch added,
6 output stored. Printed per warpgroup, medians over CTAs and tiles (the first tile apart), in cycles: "stage wait"
(0 -> 7), "first issue" (7 -> 1), the main loop (1 -> 2), each epilogue step, the turn from one tile's end to the next
tile's start ("to next", 6 -> next 0), and each warpgroup's lag behind warpgroup 0 at the loop's end.
--turns: the warpgroups taking turns (set_gemm_2l_rf_pipelined(False), two warpgroups; the loop before v2.32).
--lr-producer: the low-rank tiles loaded by the producer's idle warps (set_gemm_2l_lr_by_producer).
--l2-prefetch: the producer asking L2 for the next tile's first stages halfway through each tile (set_gemm_2l_l2_prefetch).
--no-store: a timing probe, the output not written (its bits then differ): what the output's traffic costs the others.
--probe: timing probes of the one-warpgroup loop (EP 22-25, 27, persistent; its bits then differ): no-widen, the loaded
weight words used as fragments as they are (no widening); no-mma, the k-steps without their wgmmas (the widening and
the stage ring alone); no-act, the stages without their activation tiles (the weights and scales alone loaded, the
wgmmas on stale bytes); no-act-mma, both of the last two; rel2 (exact), each stage given back at the next one's third
k-step (no wait<1> at a stage's first k-step); ss-a, the wgmmas' A operand from shared memory (the stage's first 64
activation rows) instead of the widened registers, the widening kept: the same tensor work without the
register-sourced operand (v2.43).
--act-in-loop: the output staging as before v2.34 (GELU tested per octet: set_gemm_2l_act_in_loop).
--lr-rolled: the last warpgroup's low-rank copies in loops as before v2.35 (set_gemm_2l_lr_unrolled(False)).
--substeps: also the store step by sub-steps (set_gemm_2l_tile_life(.., substeps=True), the same bits): the low-rank
tile freed for the next tile's loads, the staging free, the output staged, the proxy fence, the warpgroup's barrier,
the TMA store issued.
--warpgroups 1: one consumer warpgroup on 64-row tiles of --tile 128 or 256 tokens (g.56, set_gemm_2l_rf_warpgroups(1,
tile); EP 21, EP 10 stamped), persistent, or with --splits split over a cluster.
--splits S: the 256-token tile with K split over a cluster of S CTAs (the few-token plans rs256xS; EP 20, EP 18
stamped; with --warpgroups 1, EP 21), one tile per CTA, the first 4 CTAs of the first clusters (CTA = tile x S + rank): the split CTA's whole life,
per warpgroup, medians over those CTAs: "prologue" (the kernel's entry -> its tile's start), "stage wait", "first
issue", "loop", "exchange" (loop end -> the cluster's partials summed and its last barrier passed), "lr wait", "scales",
"low-rank", "store" (-> TMA issued), "drain" (-> the store has read the staging: the CTA may exit).
--pingpong: the ping-pong GEMM instead (set_gemm_2l_rf_pingpong, 128 x 128 tiles, each warpgroup its own tiles; perf-notes
v2.31), stamped at its steps: 0 tile start, 1 first stage landed, 2 main loop done, 3 low-rank tile landed, 4 half 0's
scales and branch, 5 half 1's, 6 stored (no step 7: "stage wait" is 0 -> 1 and "first issue" empty). Its columns:
"scales" = half 0, "low-rank" = half 1; "to next" = from a tile's store to the warpgroup's next tile's start, i.e. the
other warpgroup's turn; the lag columns then compare different tiles (not a lag).
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

CTAS, TILES, STEPS = 4, 8, 8
WGS = 2  # the two-warpgroup kernels' stamps per CTA (three with --warpgroups 3)
PARTS = ["stage wait", "first issue", "loop", "lr wait", "scales", "low-rank", "store", "to next"]
# --substeps: the store step (low-rank branch added -> output stored) by its sub-steps: the low-rank tile freed for the
# next tile's loads (lr_free), the previous tile's store has read the staging, the output staged (bias, conversion,
# stmatrix), the proxy fence passed, the warpgroup's barrier passed, the TMA store issued
SUBPARTS = ["lr free", "staging free", "stage out", "fence", "barrier", "tma issue"]
# --splits: a split CTA's one tile, its steps in order (sub-step indices + 8: 14 entry, 13 exchange done, 15 drained)
SPLIT_PARTS = ["prologue", "stage wait", "first issue", "loop", "exchange", "lr wait", "scales", "low-rank", "store",
               "drain"]
SPLIT_STEPS = [14, 0, 7, 1, 2, 13, 3, 4, 5, 6, 15]


def _split_stamps(s: list, u: list, c: int, w: int, steps: list[int]) -> list[int]:
    """CTA c's warpgroup w's stamps at `steps` of its one tile (steps 8 and up from the sub-step half)."""
    return [s[c][w][0][k] if k < 8 else u[c][w][0][k - 8] for k in steps]


def summarize_split(stamps: torch.Tensor, sub: torch.Tensor) -> dict[str, dict[str, float]]:
    """stamps and sub [CTAS, warpgroups, TILES, STEPS] of the split kernel (tile 0 only; sub: steps 8 .. 15) ->
    {"wg<w>": {part: median cycles over the CTAs}}; a CTA missing any step is left out."""
    s, u = stamps.to(torch.int64).tolist(), sub.to(torch.int64).tolist()
    out: dict[str, dict[str, list[float]]] = {f"wg{w}": {p: [] for p in SPLIT_PARTS} for w in range(len(s[0]))}
    for c in range(len(s)):
        for w in range(len(s[c])):
            at = _split_stamps(s, u, c, w, SPLIT_STEPS)
            if not all(at):
                continue
            for p, a, b in zip(SPLIT_PARTS, at, at[1:]):
                out[f"wg{w}"][p].append(b - a)
    return {k: {p: statistics.median(v) if v else float("nan") for p, v in d.items()} for k, d in out.items()}


def split_by_cta(stamps: torch.Tensor, sub: torch.Tensor, part: str = "exchange") -> list[list[int]]:
    """One part of each stamped split CTA's life, [CTA][warpgroup] in cycles (0 where a step is missing): whether the
    cluster's CTAs spend it alike (a fixed cost) or one waits for another (a skew)."""
    s, u = stamps.to(torch.int64).tolist(), sub.to(torch.int64).tolist()
    i = SPLIT_PARTS.index(part)
    out = []
    for c in range(len(s)):
        row = []
        for w in range(len(s[c])):
            a, b = _split_stamps(s, u, c, w, SPLIT_STEPS[i:i + 2])
            row.append(b - a if a and b else 0)
        out.append(row)
    return out


def summarize_substeps(stamps: torch.Tensor, sub: torch.Tensor, first: int = 1) -> dict[str, dict[str, float]]:
    """stamps and sub [CTAS, warpgroups, TILES, STEPS] (sub: steps 8 .. 12 as 0 .. 4; 0 where not stamped) -> {"wg<w>":
    {subpart: median cycles}} over CTAs and tiles from tile `first` (1: the first tile left out)."""
    s, u = stamps.to(torch.int64).tolist(), sub.to(torch.int64).tolist()
    out: dict[str, dict[str, list[float]]] = {f"wg{w}": {p: [] for p in SUBPARTS} for w in range(len(s[0]))}
    for c in range(len(s)):
        for w in range(len(s[c])):
            for t in range(first, len(s[c][w])):
                chain = [s[c][w][t][5]] + u[c][w][t][:5] + [s[c][w][t][6]]
                if not all(chain):
                    continue
                for p, a, b in zip(SUBPARTS, chain, chain[1:]):
                    out[f"wg{w}"][p].append(b - a)
    return {k: {p: statistics.median(v) if v else float("nan") for p, v in d.items()} for k, d in out.items()}


def summarize(stamps: torch.Tensor, first: int = 1) -> dict[str, dict[str, float]]:
    """stamps [CTAS, warpgroups, TILES, STEPS] (0 where not stamped) -> {"wg<w>": {part: median cycles}, "lag": {"wg<w>":
    median cycles behind warpgroup 0 at the loop's end}} over the tiles from `first` (1: the first tile, with the
    pipeline's fill, left out; 0 where every CTA has one tile). Step 7 (first stage landed) absent (0 everywhere): the
    stage wait is 0 -> 1 and the first issue is left empty."""
    s = stamps.to(torch.int64).tolist()
    wgs = len(s[0])
    out: dict[str, dict[str, list[float]]] = {f"wg{w}": {p: [] for p in PARTS} for w in range(wgs)}
    lag: dict[str, list[float]] = {f"wg{w}": [] for w in range(1, wgs)}
    for c in range(len(s)):
        for w in range(wgs):
            for t in range(first, len(s[c][w])):
                st = s[c][w][t]
                if not all(st[:7]):
                    continue
                landed = st[7] if len(st) > 7 and st[7] else None
                wait = (landed if landed else st[1]) - st[0]
                issue = st[1] - landed if landed else None
                parts = [wait, issue, st[2] - st[1], st[3] - st[2], st[4] - st[3], st[5] - st[4], st[6] - st[5]]
                nxt = s[c][w][t + 1][0] - st[6] if t + 1 < len(s[c][w]) and s[c][w][t + 1][0] else None
                for p, v in zip(PARTS, parts + [nxt]):
                    if v is not None:
                        out[f"wg{w}"][p].append(v)
        for w in range(1, wgs):
            for t in range(first, len(s[c][w])):
                if s[c][0][t][2] and s[c][w][t][2]:
                    lag[f"wg{w}"].append(s[c][w][t][2] - s[c][0][t][2])
    res = {k: {p: statistics.median(v) if v else float("nan") for p, v in d.items()} for k, d in out.items()}
    res["lag"] = {k: statistics.median(v) if v else float("nan") for k, v in lag.items()}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="4608x3072x3072,4608x3072x12288,4608x12288x3072")
    ap.add_argument("--warpgroups", type=int, choices=(1, 2, 3), default=2,
                    help="2: 224-token tiles (or --tile); 3: three consumer warpgroups on 192-token tiles; 1: one on "
                         "64-row tiles of --tile 128 / 256 tokens (g.56)")
    ap.add_argument("--tile", type=int, choices=(128, 224, 256), default=0,
                    help="the token tile: two warpgroups' 224 (default) or 256, one warpgroup's 128 or 256 (default)")
    ap.add_argument("--turns", action="store_true", help="the warpgroups taking turns (two warpgroups)")
    ap.add_argument("--lr-producer", action="store_true", help="set_gemm_2l_lr_by_producer")
    ap.add_argument("--l2-prefetch", action="store_true", help="set_gemm_2l_l2_prefetch")
    ap.add_argument("--no-store", action="store_true", help="a probe: the output not written (pipelined loop only)")
    ap.add_argument("--pingpong", action="store_true", help="the ping-pong GEMM (set_gemm_2l_rf_pingpong)")
    ap.add_argument("--act-in-loop", action="store_true",
                    help="the output staging as before v2.34 (set_gemm_2l_act_in_loop)")
    ap.add_argument("--lr-rolled", action="store_true",
                    help="the last warpgroup's low-rank copies in loops as before v2.35 (set_gemm_2l_lr_unrolled(False))")
    ap.add_argument("--probe", choices=("no-widen", "no-mma", "no-act", "no-act-mma", "rel2", "ss-a"), default=None,
                    help="a timing probe of the one-warpgroup loop: no widening, no wgmmas, no activation loads, "
                         "neither activation loads nor wgmmas, the wgmmas' A from shared memory (wrong results), or "
                         "(exact) each stage given back at the next one's third k-step")
    ap.add_argument("--substeps", action="store_true", help="also the store step by its sub-steps (not --pingpong)")
    ap.add_argument("--splits", type=int, default=0, choices=range(2, 9), metavar="2..8",
                    help="the 256-token tile split over a cluster of this many CTAs (a split CTA's whole life)")
    args = ap.parse_args(argv)
    if args.splits and (args.warpgroups == 3 or args.pingpong or args.turns):
        ap.error("--splits: one or two warpgroups, the pipelined loop")
    if args.warpgroups == 1 and (args.pingpong or args.turns or args.tile == 224):
        ap.error("--warpgroups 1: the pipelined loop on 128- or 256-token tiles")
    if args.probe and (args.warpgroups != 1 or args.splits):
        ap.error("--probe: the one-warpgroup stamped kernel, persistent (--warpgroups 1, no --splits)")
    if args.warpgroups == 2 and args.tile == 128:
        ap.error("--tile 128: one warpgroup only (--warpgroups 1)")
    if args.splits and args.warpgroups == 2 and args.tile not in (0, 256):
        ap.error("--splits with two warpgroups: the 256-token tile")
    from problems_2l import gemm_switches, hopper_extension, random_2l

    from svdquant_hf.ops.layout_2l import fragment_order

    ext = hopper_extension("gemm_2l_tile_life")
    if ext is None or not hasattr(ext, "set_gemm_2l_tile_life"):
        return 2
    if args.pingpong and not hasattr(ext, "set_gemm_2l_rf_pingpong"):
        return 2
    if (args.lr_producer and not hasattr(ext, "set_gemm_2l_lr_by_producer")) or (
            args.l2_prefetch and not hasattr(ext, "set_gemm_2l_l2_prefetch")) or (
            args.act_in_loop and not hasattr(ext, "set_gemm_2l_act_in_loop")) or (
            args.lr_rolled and not hasattr(ext, "set_gemm_2l_lr_unrolled")):
        return 2
    wgs = WGS if args.pingpong else args.warpgroups
    tile = args.tile or (224 if wgs == 2 and not args.splits else 256)
    kind = ("ping-pong 128 x 128" if args.pingpong else "three-warpgroup 192-token" if wgs == 3 else
            ("one-warpgroup " if wgs == 1 else "") + f"{tile}-token"
            + (f" split over {args.splits} CTAs" if args.splits else "")) + (
        ", turns" if args.turns else "") + (", lr by the producer" if args.lr_producer else "") + (
        ", L2 prefetch" if args.l2_prefetch else "") + (
        ", no output (probe)" if args.no_store else "") + (f", {args.probe} (probe)" if args.probe else "") + (
        ", act in the loop" if args.act_in_loop else "") + (
        ", lr copies in loops" if args.lr_rolled else "")
    if args.splits:
        print(f"{torch.cuda.get_device_name()}: a {kind} CTA's life, cycles (medians over the first 4 CTAs)")
        print(f"{'shape':>16} {'wg':>3} | " + " ".join(f"{p:>11}" for p in SPLIT_PARTS))
    else:
        print(f"{torch.cuda.get_device_name()}: a {kind} tile's life, cycles (medians over 4 CTAs x tiles 2-8)")
        print(f"{'shape':>16} {'wg':>3} | " + " ".join(f"{p:>11}" for p in PARTS) + " | lag behind wg0 at loop end")
    for shape in args.shapes.split(","):
        M, K, N = (int(v) for v in shape.split("x"))
        p = random_2l(M, K, N)
        qf = fragment_order(p.qweight)
        xq, xs, lr = ext.quantize_act_2l(p.xs[0], p.smooth, p.proj_down, p.group_size)
        both = torch.zeros(2, CTAS, wgs, TILES, STEPS, dtype=torch.int64, device="cuda")
        stamps, sub = both[0], both[1]
        substeps = (args.substeps or bool(args.splits)) and not args.pingpong

        def gemm():
            return ext.w4a4_gemm_2l_fo(xq, xs, qf, p.wscales, p.wchannel, lr, p.proj_up, p.bias, p.group_size)

        ref = gemm()
        switches = {"rf_pipelined": not args.turns, "rf_pingpong": args.pingpong, "lr_by_producer": args.lr_producer,
                    "l2_prefetch": args.l2_prefetch, "act_in_loop": args.act_in_loop,
                    "lr_unrolled": not args.lr_rolled}
        if wgs == 3:
            switches.update(rf_warpgroups=3, rf3_tile=192)
        elif wgs == 1:
            switches.update(rf_warpgroups=1, rf3_tile=tile)
        with gemm_switches(ext, **switches):
            if wgs == 2 and not args.pingpong:
                ext.set_gemm_2l_tile_tokens(tile)
            if args.splits:  # a forced tile unsplit by the plan; the cluster split is the register-fragment loop's own
                if wgs == 2:
                    ext.set_gemm_2l_splits(1)
                ext.set_gemm_2l_rf_splits(args.splits)
            probe = {None: 0, "no-widen": 1, "no-mma": 2, "no-act": 3, "no-act-mma": 4, "rel2": 5,
                     "ss-a": 6}[args.probe]
            if probe:
                ext.set_gemm_2l_tile_life(both.data_ptr(), args.no_store, substeps, probe)
            else:  # (an older build's binding has no loop_probe)
                ext.set_gemm_2l_tile_life(both.data_ptr(), args.no_store, substeps)
            try:
                for _ in range(3):  # the last call's stamps
                    y = gemm()
                torch.cuda.synchronize()
            finally:
                ext.set_gemm_2l_tile_life(0)
                ext.set_gemm_2l_rf_splits(0)
                ext.set_gemm_2l_splits(0)
                ext.set_gemm_2l_tile_tokens(0)
        same = torch.equal(y, ref)
        if args.splits:
            q = summarize_split(stamps.cpu(), sub.cpu())
            for w in range(wgs):
                tail = f" | same bits: {same}" if w == 0 else ""
                print(f"{shape:>16} wg{w} | " + " ".join(f"{q[f'wg{w}'][p]:>11.0f}" for p in SPLIT_PARTS) + tail,
                      flush=True)
            for part in ("loop", "exchange"):
                cells = " ".join("/".join(str(v) for v in row) for row in split_by_cta(stamps.cpu(), sub.cpu(), part))
                print(f"{'':>16} {part} by CTA (wg0/wg1): {cells}", flush=True)
            continue
        first = 1 if bool(stamps[:, :, 1:, 0].any()) else 0  # one tile per CTA (a few hundred tokens): that tile
        r = summarize(stamps.cpu(), first)
        for w in range(wgs):
            tail = f" | {r['lag'][f'wg{w}']:.0f}" if w else f" | same bits: {same}"
            if not first and not w:
                tail += " | one tile per CTA: its first (the pipeline's fill in it)"
            print(f"{shape:>16} wg{w} | " + " ".join(f"{r[f'wg{w}'][p]:>11.0f}" for p in PARTS) + tail, flush=True)
        if substeps:
            q = summarize_substeps(stamps.cpu(), sub.cpu(), first)
            print(f"{'store by sub-step':>20} | " + " ".join(f"{p:>12}" for p in SUBPARTS))
            for w in range(wgs):
                print(f"{shape:>16} wg{w} | " + " ".join(f"{q[f'wg{w}'][p]:>12.0f}" for p in SUBPARTS), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A tile's life in the persistent register-fragment GEMM: clock64 stamps at each tile's steps, per warpgroup.

usage: python benchmarks/gemm_2l_tile_life.py [--shapes 4608x3072x3072,4608x3072x12288] [--pingpong]

The default kernel at 224-token tiles (bfloat16, group 64, rank 32), built with stamps (set_gemm_2l_tile_life: the
same bits): for the first 4 CTAs, each consumer warpgroup's first thread stamps its first 8 tiles at 0 tile start, 1
first stage issued, 2 main loop done, 3 low-rank tile in shared memory, 4 scales applied, 5 low-rank branch added, 6
output stored. Printed per warpgroup, medians over CTAs and tiles (the first tile apart), in cycles: the main loop
(1 -> 2), each epilogue step, the turn from one tile's end to the next tile's first stage, and warpgroup 1's lag behind
warpgroup 0 at the loop's end. Where the tensor cores idle per tile is about the epilogue's span less what the other
warpgroup overlaps (perf-notes v2.30b's next step).
--pingpong: the ping-pong GEMM instead (set_gemm_2l_rf_pingpong, 128 x 128 tiles, each warpgroup its own tiles; perf-notes
v2.31), stamped at its steps: 0 tile start, 1 first stage landed, 2 main loop done, 3 low-rank tile landed, 4 half 0's
scales and branch, 5 half 1's, 6 stored. Its columns: loop, lr wait, "scales" = half 0, "low-rank" = half 1, store,
and "to next" = from a tile's store to the warpgroup's next tile's first stage, i.e. the other warpgroup's turn; the
lag column then compares the two warpgroups' different tiles (not a lag).
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

CTAS, WGS, TILES, STEPS = 4, 2, 8, 8
PARTS = ["loop", "lr wait", "scales", "low-rank", "store", "to next"]


def summarize(stamps: torch.Tensor) -> dict[str, dict[str, float]]:
    """stamps [CTAS, WGS, TILES, STEPS] (0 where not stamped) -> {"wg0"/"wg1"/"lag": {part: median cycles}}."""
    s = stamps.to(torch.int64).tolist()
    out: dict[str, dict[str, list[float]]] = {f"wg{w}": {p: [] for p in PARTS} for w in range(WGS)}
    lag: list[float] = []
    for c in range(CTAS):
        for w in range(WGS):
            for t in range(1, TILES):  # the first tile has the pipeline's fill
                st = s[c][w][t]
                if not all(st[:7]):
                    continue
                parts = [st[2] - st[1], st[3] - st[2], st[4] - st[3], st[5] - st[4], st[6] - st[5]]
                nxt = s[c][w][t + 1][1] - st[6] if t + 1 < TILES and s[c][w][t + 1][1] else None
                for p, v in zip(PARTS, parts + [nxt]):
                    if v is not None:
                        out[f"wg{w}"][p].append(v)
        for t in range(1, TILES):
            if s[c][0][t][2] and s[c][1][t][2]:
                lag.append(s[c][1][t][2] - s[c][0][t][2])
    res = {k: {p: statistics.median(v) if v else float("nan") for p, v in d.items()} for k, d in out.items()}
    res["lag"] = {"loop end": statistics.median(lag) if lag else float("nan")}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="4608x3072x3072,4608x3072x12288,4608x12288x3072")
    ap.add_argument("--pingpong", action="store_true", help="the ping-pong GEMM (set_gemm_2l_rf_pingpong)")
    args = ap.parse_args(argv)
    from problems_2l import hopper_extension, random_2l

    from svdquant_hf.ops.layout_2l import fragment_order

    ext = hopper_extension("gemm_2l_tile_life")
    if ext is None or not hasattr(ext, "set_gemm_2l_tile_life"):
        return 2
    if args.pingpong and not hasattr(ext, "set_gemm_2l_rf_pingpong"):
        return 2
    kind = "ping-pong 128 x 128" if args.pingpong else "224-token"
    print(f"{torch.cuda.get_device_name()}: a {kind} tile's life, cycles (medians over 4 CTAs x tiles 2-8)")
    print(f"{'shape':>16} {'wg':>3} | " + " ".join(f"{p:>9}" for p in PARTS) + " | wg1 lag at loop end")
    for shape in args.shapes.split(","):
        M, K, N = (int(v) for v in shape.split("x"))
        p = random_2l(M, K, N)
        qf = fragment_order(p.qweight)
        xq, xs, lr = ext.quantize_act_2l(p.xs[0], p.smooth, p.proj_down, p.group_size)
        stamps = torch.zeros(CTAS, WGS, TILES, STEPS, dtype=torch.int64, device="cuda")

        def gemm():
            return ext.w4a4_gemm_2l_fo(xq, xs, qf, p.wscales, p.wchannel, lr, p.proj_up, p.bias, p.group_size)

        ref = gemm()
        if args.pingpong:
            ext.set_gemm_2l_rf_pingpong(True)
        else:
            ext.set_gemm_2l_tile_tokens(224)
        ext.set_gemm_2l_tile_life(stamps.data_ptr())
        try:
            for _ in range(3):  # the last call's stamps
                y = gemm()
            torch.cuda.synchronize()
        finally:
            ext.set_gemm_2l_tile_life(0)
            ext.set_gemm_2l_tile_tokens(0)
            if args.pingpong:
                ext.set_gemm_2l_rf_pingpong(False)
        same = torch.equal(y, ref)
        r = summarize(stamps.cpu())
        for w in ("wg0", "wg1"):
            print(f"{shape:>16} {w:>3} | " + " ".join(f"{r[w][p]:>9.0f}" for p in PARTS)
                  + (f" | {r['lag']['loop end']:.0f}" if w == "wg1" else f" | same bits: {same}"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

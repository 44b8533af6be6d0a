"""The fragment-order GEMM's plan choice, mirrored in Python and scored against measured plans (no GPU needed).

usage: python benchmarks/rf_cost_fit.py LOG[@COLUMN=CANDIDATE,...] [LOG ...] [--halves] [--stage256 1000] [--grid]
       [--split-halves] [--split-stage256 1212] [--split-grid] [--one] [--one-stage 560,740] [--one-fixed 4500,5400]
       [--one-grid]

LOG: gemm_2l_fo_plans.py output (each shape's time for every candidate plan, and "auto", the kernel's own choice).
`choose` mirrors launch_w4a4_gemm_2l's choice for fragment-order weights with branch rank <= 32 and the default
switches (csrc/w4a4_gemm_2l_sm90.cu: plan_among, rf_cost, the split and three-warpgroup rules); --halves: with the
256-token two-warpgroup tile's output in halves (g.51, the default since perf-notes v2.36: its stage costs
--stage256 cycles, 1000); --split-halves: with the 256-token split kernel's output in halves too (g.54: its stage
--split-stage256 cycles). Prints per shape the mirror's pick, its measured time, the best plan, and the regret (time
of the pick / best - 1); their sum (a shape in several logs: the first log's row). LOG@COLUMN=CANDIDATE renames that
log's columns, all at once (e.g. call 3 of v2.36 timed g.51 as rf2_256h while it was opt-in: @rf2_256=rf2_256w,
rf2_256h=rf2_256 swaps them); --grid sweeps the 256-token stage and fixed part and prints the lowest summed regrets (how
v2.36 refitted the stage); --split-grid sweeps the split kernel's stage with its halves. --one: one consumer
warpgroup's 64-row tiles a candidate at M <= 512 (g.56, the kernel's rule with set_gemm_2l_rf1_auto, v2.38: taken
where rf_cost puts them 5 % below everything else), their stage and fixed cycles at 128 / 256 tokens by --one-stage /
--one-fixed; --one-grid sweeps the two stages and the fixed part, the 256-token one 900 cycles above the 128-token one
(how v2.38 chose them)."""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass

SMS = 132  # H100 SXM
KBK = 128  # K per stage
TILES = (256, 224, 128, 64)  # the plan's token tiles, in order of preference


@dataclass(frozen=True)
class Model:
    halves256: bool = True  # g.51: the unsplit 256-token two-warpgroup tile runs with its output in halves
    stage256: int = 1000  # its stage then (cycles)
    fixed256: int | None = None  # its fixed part per tile (None: the two-warpgroup fit, 1000 + 37 x 256)
    split_halves: bool = False  # g.54: the 256-token split kernel runs with its output in halves
    split_stage256: int = 1212  # its stage then (cycles)
    one: bool = False  # g.56: one consumer warpgroup on 64-row tiles of 128 / 256 tokens, at M <= ONE_MAX_M
    one_stage: tuple[int, int] = (560, 740)  # its stage at 128 / 256 tokens (cycles)
    one_fixed: tuple[int, int] = (4500, 5400)  # its fixed part per tile at 128 / 256 tokens (the kernel's, v2.38)


ONE_MAX_M = 512  # g.56's tiles are a candidate only up to two 256-token tiles (the shapes it was timed at)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def rf_cost(model: Model, M: int, N: int, K: int, cw: int, bt: int, s: int = 1) -> int:
    """rf_cost: the register-fragment loop's cycles on SMS SMs (cw consumer warpgroups, token tile bt, K split s)."""
    tiles = (N // (64 * cw)) * _ceil(M, bt) * s
    if cw == 1:
        stage, fixed = model.one_stage[bt == 256], model.one_fixed[bt == 256]
    elif cw == 3:
        stage, fixed = (1250, 11600) if bt == 192 else (1100, 7800)
    elif bt == 256 and s == 1 and model.halves256:
        stage = model.stage256
        fixed = 1000 + 37 * bt if model.fixed256 is None else model.fixed256
    elif bt == 256 and s > 1 and model.split_halves:
        stage, fixed = model.split_stage256, 1000 + 37 * bt
    else:
        stage, fixed = 2 * bt + 700, 1000 + 37 * bt
    if s > 1:
        fixed += 2500 + 6 * bt * (s - 1)
    return _ceil(tiles, SMS) * (_ceil(K // KBK, s) * stage + fixed)


def plan_among(M: int, N: int, K: int, tiles_allowed: tuple[int, ...]) -> tuple[tuple[int, int], int]:
    """plan_among: the non-persistent kernels' (token tile, K split) and their modelled cost (ns)."""
    kt = K // KBK
    best, best_cost = None, -1
    for bt in TILES:
        if bt not in tiles_allowed:
            continue
        best = best or (bt, 1)
        tiles = (N // 128) * _ceil(M, bt)
        for s in (1, 2, 4, 8):
            if s > kt:
                continue
            cost = _ceil(tiles * s, SMS) * ((65 if s > 1 else 35) * bt + 720 * _ceil(kt, s))
            if best_cost < 0 or cost < best_cost:
                best, best_cost = (bt, s), cost
    return best, best_cost


def choose(M: int, N: int, K: int, model: Model = Model()) -> str:
    """The plan the kernel picks, named as gemm_2l_fo_plans.py names its candidates (rf2_<tile>, rf3_<tile>,
    rs<tile>x<CTAs>, np)."""
    p, plan_ns = plan_among(M, N, K, TILES)
    pp, _ = plan_among(M, N, K, (224, 128, 64))
    pays = p[1] == 1 and (N // 128) * _ceil(M, pp[0]) >= 2 * SMS
    persistent = pp[1] == 1 and pays
    c2, bt2 = -1, pp[0]
    for bt in TILES:
        c = rf_cost(model, M, N, K, 2, bt)
        if c2 < 0 or c < c2:
            bt2, c2 = bt, c
    if c2 * 100 < plan_ns * 177:
        persistent = True
    now = rf_cost(model, M, N, K, 2, bt2) if persistent else plan_ns * 177 // 100
    bts = ss = 0
    cs = -1
    for bt in TILES:
        for sp in (2, 4):
            if sp > K // KBK or sp > bt // 8:
                continue
            c = rf_cost(model, M, N, K, 2, bt, sp)
            if cs < 0 or c < cs:
                bts, ss, cs = bt, sp, c
    if ss and cs * 20 >= now * 19:
        ss = 0
    bt3, c3 = 0, -1
    if N % 192 == 0:
        for bt in (192, 128):
            c = rf_cost(model, M, N, K, 3, bt)
            if c3 < 0 or c < c3:
                bt3, c3 = bt, c
    if model.one and M <= ONE_MAX_M:
        bt1, c1 = min(((bt, rf_cost(model, M, N, K, 1, bt)) for bt in (128, 256)), key=lambda v: v[1])
        rival = min(c for c in (now, cs if ss else -1, c3) if c >= 0)
        if c1 * 20 < rival * 19:
            return f"rf1_{bt1}"
    if c3 >= 0 and c3 * 20 < (min(now, cs) if ss else now) * 19:
        return f"rf3_{bt3}"
    if ss:
        return f"rs{bts}x{ss}"
    return f"rf2_{bt2}" if persistent else "np"


def parse(text: str, rename: dict[str, str] | None = None) -> list[tuple[int, int, int, dict[str, float]]]:
    """gemm_2l_fo_plans.py's rows: (M, K, N, {candidate: us}); rename: {log column: candidate name}, all at once (so
    rf2_256=rf2_256w and rf2_256h=rf2_256 swap two columns)."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("M="):
            continue
        head, row = line.split("|")[:2]
        M, K, N = (int(v) for v in re.findall(r"\d+", head))
        times = {(rename or {}).get(k, k): float(v) for k, v in re.findall(r"(\S+)=([\d.]+)", row)}
        rows.append((M, K, N, times))
    return rows


def merged(tables) -> list[tuple[int, int, int, dict[str, float]]]:
    """The rows of several parsed logs in order, a shape in several logs taken from the first."""
    rows, seen = [], set()
    for table in tables:
        for r in table:
            if r[:3] not in seen:
                seen.add(r[:3])
                rows.append(r)
    return rows


def regrets(rows, model: Model) -> tuple[float, list[tuple[int, int, int, str, float | None, float]]]:
    """(the summed regret over the rows whose pick was timed, [(M, K, N, pick, its time or None, best time)])."""
    total, out = 0.0, []
    for M, K, N, times in rows:
        pick = choose(M, N, K, model)
        best = min(v for k, v in times.items() if k not in ("auto", "nrbc"))
        t = times.get(pick)
        if t is not None:
            total += t / best - 1
        out.append((M, K, N, pick, t, best))
    return total, out


def _pair(text: str) -> tuple[int, int]:
    """"560,740" -> (560, 740): a value at 128 and at 256 tokens."""
    a, b = (int(v) for v in text.split(","))
    return a, b


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", nargs="+", help="LOG[@COLUMN=CANDIDATE,...]")
    ap.add_argument("--halves", action="store_true", help="the 256-token tile in halves (g.51)")
    ap.add_argument("--stage256", type=int, default=1000)
    ap.add_argument("--split-halves", action="store_true", help="the 256-token split kernel in halves (g.54)")
    ap.add_argument("--split-stage256", type=int, default=1212)
    ap.add_argument("--grid", action="store_true", help="sweep the 256-token tile's stage and fixed part")
    ap.add_argument("--split-grid", action="store_true", help="sweep the 256-token split kernel's stage")
    ap.add_argument("--one", action="store_true", help="one warpgroup's tiles a candidate at M <= 512 (g.56)")
    ap.add_argument("--one-stage", default="560,740", help="its stage cycles at 128,256 tokens")
    ap.add_argument("--one-fixed", default="4500,5400", help="its fixed cycles per tile at 128,256 tokens")
    ap.add_argument("--one-grid", action="store_true", help="sweep one warpgroup's stages and fixed parts")
    args = ap.parse_args(argv)
    tables = []
    for spec in args.logs:
        log, _, renames = spec.partition("@")
        rename = dict(r.split("=", 1) for r in renames.split(",") if r)
        with open(log) as f:
            tables.append(parse(f.read(), rename))
    rows = merged(tables)  # a shape in several logs: the first log's row
    model = Model(halves256=args.halves, stage256=args.stage256, split_halves=args.split_halves,
                  split_stage256=args.split_stage256, one=args.one, one_stage=_pair(args.one_stage),
                  one_fixed=_pair(args.one_fixed))
    total, out = regrets(rows, model)
    for M, K, N, pick, t, best in out:
        shown = f"{t:8.1f}" if t is not None else "  (not timed)"
        print(f"M={M:5d} K={K:5d} N={N:5d} | pick {pick:>9} {shown} | best {best:8.1f}"
              + (f" | regret {t / best - 1:.3f}" if t is not None else ""))
    print(f"summed regret {total:.3f} over {sum(t is not None for *_, t, _ in out)} shapes")
    if args.grid:
        grid = sorted((regrets(rows, Model(True, s, f))[0], s, f)
                      for s in range(900, 1301, 20) for f in range(2000, 14001, 1000))
        for r, s, f in grid[:8]:
            print(f"stage256 {s:5d} fixed256 {f:6d}: summed regret {r:.3f}")
    if args.split_grid:
        for s in range(800, 1301, 20):
            m = Model(args.halves, args.stage256, split_halves=True, split_stage256=s)
            r, out = regrets(rows, m)
            untimed = sum(t is None for *_, t, _ in out)
            print(f"split_stage256 {s:5d}: summed regret {r:.3f}, {untimed} picks not timed")
    if args.one_grid:
        fits = []
        for s128 in range(400, 1001, 40):
            for s256 in range(500, 1301, 40):
                for f in range(1000, 10001, 1000):
                    m = Model(halves256=args.halves, stage256=args.stage256, split_halves=args.split_halves,
                              split_stage256=args.split_stage256, one=True, one_stage=(s128, s256),
                              one_fixed=(f, f + 900))
                    r, out = regrets(rows, m)
                    fits.append((r, sum(t is None for *_, t, _ in out), s128, s256, f))
        for r, untimed, s128, s256, f in sorted(fits)[:8]:
            print(f"one_stage {s128:4d},{s256:4d} one_fixed {f:5d},{f + 900:5d}: summed regret {r:.3f}, "
                  f"{untimed} picks not timed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

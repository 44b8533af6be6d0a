"""Two kernel builds against each other from ab_2l.py logs taken in one call, alternating (run_device.sh abbuilds).

usage: python benchmarks/ab_builds_table.py DIR [--col fo]

DIR holds ab_2l.py logs named abx_<build>_<round>.log for two builds (e.g. "clean" and "main"). Prints per shape the
column's median over the rounds for each build, their ratio (first build / second, the builds in name order unless
--builds says), and each round's values, so a reader sees whether the rounds agree.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

from plot_ab_2l import parse

_NAME = re.compile(r"^abx_(?P<build>[A-Za-z0-9]+)_(?P<round>\d+)\.log$")


def read_log(path: Path, col: str) -> dict[tuple[int, int, int], float]:
    """{(M, K, N): the column's value} of one ab_2l.py log; the column must be in its header."""
    try:
        _, rows = parse(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path.name}: {e}") from None
    if not rows:
        raise ValueError(f"{path.name}: no ab_2l.py rows")
    if col not in rows[0]:
        cols = [c for c in rows[0] if c not in ("M", "K", "N")]
        raise ValueError(f"{path.name}: no column {col!r} (columns: {', '.join(cols)})")
    return {(r["M"], r["K"], r["N"]): r[col] for r in rows}


def table(logdir: Path, col: str = "fo", builds: tuple[str, str] | None = None):
    """(builds, [(shape, median of build 0, median of build 1, ratio, [(round values of build 0, build 1)])])."""
    runs: dict[str, dict[int, dict[tuple[int, int, int], float]]] = {}
    for p in sorted(logdir.iterdir()):
        m = _NAME.match(p.name)
        if m:
            runs.setdefault(m["build"], {})[int(m["round"])] = read_log(p, col)
    names = builds or tuple(sorted(runs))
    if len(names) != 2 or any(b not in runs for b in names):
        raise ValueError(f"{logdir}: need two builds' abx_<build>_<round>.log, found {sorted(runs)}")
    a, b = (runs[n] for n in names)
    rows = []
    for shape in a[min(a)]:
        va = [a[r][shape] for r in sorted(a) if shape in a[r]]
        vb = [b[r][shape] for r in sorted(b) if shape in b[r]]
        ma, mb = statistics.median(va), statistics.median(vb)
        rows.append((shape, ma, mb, ma / mb, list(zip(va, vb))))
    return names, rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--col", default="fo")
    ap.add_argument("--builds", default="", help="the two builds' names, first / second (default: name order)")
    args = ap.parse_args(argv)
    builds = tuple(args.builds.split(",")) if args.builds else None
    names, rows = table(Path(args.dir), args.col, builds)  # type: ignore[arg-type]
    print(f"{args.col}, medians over rounds: {names[0]} / {names[1]}")
    print(f"{'M':>5} {'K':>5} {'N':>5} | {names[0]:>9} {names[1]:>9} | {'ratio':>6} | rounds")
    for (M, K, N), ma, mb, ratio, rounds in rows:
        each = " ".join(f"{x:.1f}/{y:.1f}" for x, y in rounds)
        print(f"{M:5d} {K:5d} {N:5d} | {ma:9.1f} {mb:9.1f} | {ratio:6.3f} | {each}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

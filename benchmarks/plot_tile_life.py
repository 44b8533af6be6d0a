"""Chart a stored tile-life log (benchmarks/gemm_2l_tile_life.py, with --substeps): per kernel variant and warpgroup,
the cycles of a tile outside its main loop, the store step split into its sub-steps where the log has them. Where a
CTA has one tile only (the log's "to next" is nan: a few hundred tokens), the bar is the whole tile, its main loop too.

usage: python benchmarks/plot_tile_life.py docs/perf/gemm_2l_tile_life_v237_h100.txt [--out PNG]
"""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path

from plot_util import log_args, pyplot, save_figure

# the parts outside the main loop, in a tile's order; "store" is replaced by SUBPARTS where the log has them
OUTSIDE = ["stage wait", "first issue", "lr wait", "scales", "low-rank", "store", "to next"]
MAIN = ["stage wait", "first issue", "loop", "lr wait", "scales", "low-rank", "store", "to next"]
SUBPARTS = ["lr free", "staging free", "stage out", "fence", "barrier", "tma issue"]
_HEAD = re.compile(r"^(?P<device>.+?): an? (?P<kind>.+) tile's life, cycles")
_ROW = re.compile(r"^\s*(?P<shape>\d+x\d+x\d+) wg(?P<wg>\d+) \|(?P<vals>[^|]+)")


def tile_life_rows(path: str | Path) -> tuple[str, list[tuple[str, dict[str, float]]]]:
    """(device, [(label "<kind>, <shape> wg<w>", {part: cycles})]): MAIN's parts of every warpgroup row of every run in
    the log, and SUBPARTS too where a "store by sub-step" table follows its run."""
    device, kind, sub = "", "", False
    rows: list[tuple[str, dict[str, float]]] = []
    index: dict[tuple[str, str, str], int] = {}
    for line in Path(path).read_text().splitlines():
        head = _HEAD.match(line)
        if head:
            device, kind, sub = head["device"], head["kind"], False
            continue
        if "store by sub-step" in line:
            sub = True
            continue
        row = _ROW.match(line)
        if not row or not kind:
            continue
        vals = [float(v) for v in row["vals"].split()]
        key = (kind, row["shape"], row["wg"])
        if sub and key in index and len(vals) == len(SUBPARTS):
            rows[index[key]][1].update(zip(SUBPARTS, vals))
        elif not sub and len(vals) == len(MAIN):
            index[key] = len(rows)
            rows.append((f"{kind}, {row['shape']} wg{row['wg']}", dict(zip(MAIN, vals))))
    return device, rows


def bar_parts(parts: dict[str, float]) -> list[tuple[str, float]]:
    """A row's bar, in a tile's order: the parts outside the main loop (the store by sub-steps where the log has them);
    where the CTA has one tile ("to next" nan), the whole tile: the main loop too, no "to next"."""
    store = SUBPARTS if all(p in parts for p in SUBPARTS) else ["store"]
    order = [q for p in OUTSIDE for q in (store if p == "store" else [p])]
    if math.isnan(parts["to next"]):
        order = ["stage wait", "first issue", "loop"] + [q for q in order if q not in ("stage wait", "first issue",
                                                                                      "to next")]
    return [(p, parts[p]) for p in order]


def main(argv: list[str] | None = None) -> int:
    args = log_args(__doc__, argv)
    plt = pyplot()
    device, rows = tile_life_rows(args.log)
    fig, ax = plt.subplots(figsize=(11, 0.42 * len(rows) + 2.8))
    colors = {p: f"C{i % 10}" for i, p in enumerate([p for p in OUTSIDE if p != "store"] + SUBPARTS + ["store"])}
    colors["loop"] = "#b0b0b0"
    whole = False
    seen: set[str] = set()
    widest = 0.0
    for i, (_, parts) in enumerate(rows):
        left = 0.0
        one_tile = math.isnan(parts["to next"])  # (one tile per CTA: no next tile; the loop is drawn too)
        whole = whole or one_tile
        for p, cycles in bar_parts(parts):
            ax.barh(i, cycles, left=left, color=colors[p], label=p if p not in seen else None,
                    hatch="//" if p in SUBPARTS else None, edgecolor="white", linewidth=0.3)
            seen.add(p)
            left += cycles
        if not one_tile:
            ax.text(left + 80, i, f"loop {parts['loop'] / 1e3:.1f}k", va="center", fontsize=7)
        widest = max(widest, left)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(("cycles per tile (one tile per CTA: the whole tile, main loop grey; medians; the store step by "
                   "sub-steps, hatched)") if whole else
                  "cycles per tile outside the main loop (medians; the store step by sub-steps, hatched)", fontsize=8)
    ax.set_xlim(0, widest * 1.15)
    ax.set_title(f"{device}: where a persistent int4_2l GEMM tile's " + ("time" if whole else "fixed part") + " goes "
                 "(benchmarks/gemm_2l_tile_life.py)", fontsize=10)
    ax.legend(fontsize=7, ncol=7, loc="upper center", bbox_to_anchor=(0.45, -0.2))
    save_figure(fig, args.out, args.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())

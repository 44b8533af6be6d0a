"""Chart stored split-CTA life logs (benchmarks/gemm_2l_tile_life.py --splits S): per cluster size and shape, warpgroup
0's whole life in cycles, part by part, so the exchange's share stands beside the loop's.

usage: python benchmarks/plot_split_life.py docs/perf/split_life_x2_h100.txt docs/perf/split_life_x4_h100.txt
       [--out PNG]
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from plot_util import pyplot, save_figure

PARTS = ["prologue", "stage wait", "first issue", "loop", "exchange", "lr wait", "scales", "low-rank", "store", "drain"]
_HEAD = re.compile(r"^(?P<device>.+?): a 256-token split over (?P<ctas>\d+) CTAs CTA's life, cycles")
_ROW = re.compile(r"^\s*(?P<shape>\d+x\d+x\d+) wg0 \|(?P<vals>[^|]+)")


def split_life_rows(path: str | Path) -> tuple[str, list[tuple[str, dict[str, float]]]]:
    """(device, [(label "<S> CTAs, <shape>", {part: cycles})]) of warpgroup 0's rows in one log."""
    device, ctas = "", ""
    rows: list[tuple[str, dict[str, float]]] = []
    for line in Path(path).read_text().splitlines():
        head = _HEAD.match(line)
        if head:
            device, ctas = head["device"], head["ctas"]
            continue
        row = _ROW.match(line)
        if row and ctas:
            vals = [float(v) for v in row["vals"].split()]
            if len(vals) != len(PARTS):
                raise ValueError(f"{path}: {len(vals)} parts in {line.strip()!r}, expected {len(PARTS)}")
            rows.append((f"{ctas} CTAs, {row['shape']}", dict(zip(PARTS, vals))))
    if not rows:
        raise ValueError(f"{path}: no split-CTA rows (a gemm_2l_tile_life.py --splits log?)")
    return device, rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", nargs="+")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    device, rows = "", []
    for log in args.logs:
        device, more = split_life_rows(log)
        rows += more
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 0.5 * len(rows) + 2.0))
    for i, (_, parts) in enumerate(rows):
        left = 0.0
        for k, p in enumerate(PARTS):
            ax.barh(i, parts[p], left=left, color=f"C{k}", label=p if i == 0 else None,
                    hatch="//" if p == "exchange" else None, edgecolor="white", linewidth=0.3)
            left += parts[p]
        ax.text(left + 300, i, f"exchange {parts['exchange'] / left:.0%}", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("cycles of a split CTA's life, warpgroup 0 (medians over the first four CTAs)", fontsize=8)
    ax.set_xlim(0, max(sum(p.values()) for _, p in rows) * 1.12)
    ax.set_title(f"{device}: the 256-token tile split over a cluster, one CTA's life by part", fontsize=10)
    ax.legend(fontsize=7, ncol=10, loc="upper center", bbox_to_anchor=(0.45, -0.1))
    save_figure(fig, args.out, args.logs[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())

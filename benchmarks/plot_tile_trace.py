"""Chart a stored tile trace (benchmarks/gemm_2l_trace.py --json): where one CTA's tile time goes, per shape.

usage: python benchmarks/plot_tile_trace.py docs/perf/gemm_2l_trace_tile_h200.json [--out PNG]
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

from plot_util import save_figure

PARTS = ["to first data", "stages", "lr tile", "scales", "low-rank", "bias+stores"]


def tile_parts(path: str | Path) -> tuple[str, list[tuple[str, dict[str, float]]]]:
    """(device, [(shape label, {part: microseconds})]) for each traced shape, in PARTS order."""
    data = json.loads(Path(path).read_text())
    out = []
    for row in data["rows"]:
        tr = row["trace"]
        tr = ast.literal_eval(tr) if isinstance(tr, str) else tr
        ghz = tr["ghz"]
        out.append((f"M={row['M']} {row['K']}x{row['N']} ({row['tile']} tok)",
                    {p: tr["tile"][p] / ghz / 1e3 for p in PARTS}))
    return data["device"], out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    device, rows = tile_parts(args.json)
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(rows) + 1.5))
    for i, (_, parts) in enumerate(rows):
        left = 0.0
        for j, p in enumerate(PARTS):
            ax.barh(i, parts[p], left=left, color=f"C{j}", label=p if i == 0 else None)
            left += parts[p]
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("us (one CTA, clock64 / measured clock)")
    ax.set_title(f"{device}: one int4_2l GEMM tile's life (packed, bf16, group 64, rank 32)", fontsize=10)
    ax.legend(fontsize=8, ncol=3, loc="upper right")
    save_figure(fig, args.out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

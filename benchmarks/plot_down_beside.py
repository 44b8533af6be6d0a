"""Bar chart of benchmarks/down_beside_sweep.py's log: us per quantize_act_2l call for each path and shape.

usage: python benchmarks/plot_down_beside.py docs/perf/down_beside_sweep_v232_h100.txt [--out PNG]
"""
from __future__ import annotations

import sys

from plot_util import log_args, pyplot, save_figure


def parse(text: str) -> tuple[str, list[str], dict[str, list[float]]]:
    """(title, column names, {shape: us per column}) from the sweep's log."""
    lines = text.splitlines()
    title = lines[0]
    header = next(line for line in lines if line.strip().startswith("shape"))
    cols = header.split("|")[1].split()
    rows: dict[str, list[float]] = {}
    for line in lines:
        parts = line.split("|")
        if len(parts) == 3 and not line.strip().startswith("shape"):
            rows[parts[0].strip()] = [float(v) for v in parts[1].split()]
    return title, cols, rows


def main(argv: list[str] | None = None) -> int:
    args = log_args(__doc__, argv)
    with open(args.log) as f:
        title, cols, rows = parse(f.read())
    if not rows:
        print(f"no rows in {args.log}", file=sys.stderr)
        return 1
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(cols)
    for i, col in enumerate(cols):
        ax.bar([j + i * width for j in range(len(rows))], [v[i] for v in rows.values()], width, label=col)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))], list(rows))
    ax.set_ylabel("us per call (lower is better)")
    ax.set_title(title.split(":")[0] + ": quantizer + down projection, rank 32", fontsize=10)
    ax.legend(fontsize=8, ncol=3)
    save_figure(fig, args.out, args.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())

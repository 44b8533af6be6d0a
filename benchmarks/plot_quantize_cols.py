"""Chart of the fixed-column fused quantizer's block, step by step (perf-notes v2.48): per shape, a bar for each group
of warps (units, mma, producer) with its median cycles in each step of a block (benchmarks/quantize_cols_stamps.py's
table), stacked, and its period (the rest of it: the loop's turn, not stamped).

usage: python benchmarks/plot_quantize_cols.py docs/perf/cols_v7_s39_h100.txt [--out PNG]
"""
from __future__ import annotations

import sys

from plot_util import log_args, pyplot, save_figure
from quantize_cols_stamps import COLUMNS, GROUPS


def parse(text: str) -> tuple[str, list[tuple[str, dict[str, float]]]]:
    """(device line, [(shape label, {column: cycles}), ...]) of a quantize_cols_stamps.py table."""
    lines = text.splitlines()
    title = next((ln for ln in lines if "fixed-column fused quantizer, cycles per step" in ln), "")
    rows = []
    for ln in lines:
        parts = ln.split("|")
        if len(parts) != 2:
            continue
        head, vals = parts[0].split(), parts[1].split()
        if len(head) != 4 or not all(h.isdigit() for h in head) or len(vals) != len(COLUMNS):
            continue
        M, K, C, ctas = head
        rows.append((f"{M} x {K}\nC = {C}, {ctas} CTAs", dict(zip(COLUMNS, map(float, vals)))))
    if not rows:
        raise ValueError("no quantize_cols_stamps.py rows in the text")
    return title, rows


def main(argv: list[str] | None = None) -> int:
    args = log_args(__doc__, argv)
    title, rows = parse(open(args.log).read())
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 1.6 + 0.75 * len(GROUPS) * len(rows)))
    colors = plt.get_cmap("tab20").colors
    ticks, labels = [], []
    for i, (label, t) in enumerate(rows):
        for g, (group, steps, period) in enumerate(GROUPS):
            y = (len(GROUPS) + 0.4) * i + g
            left = 0.0
            for p, (name, _, _) in enumerate(steps):
                ax.barh(y, t[name], left=left, color=colors[(p + 7 * g) % 20], label=name if i == 0 else None)
                left += t[name]
            ax.plot([t[period], t[period]], [y - 0.45, y + 0.45], color="black", lw=2,
                    label="period" if i == 0 and g == 0 else None)
            ticks.append(y)
            labels.append(f"{label.splitlines()[0]}, {group}\n{label.splitlines()[1]}")
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("SM cycles (the first thread of each group and CTA, median over CTAs and blocks)")
    ax.set_title(f"{title.split(':')[0]}: a block of the fixed-column fused quantizer (warp-specialized), "
                 "4608 tokens, rank 32\n(bash benchmarks/run_device.sh cols: quantize_cols_stamps.py)", fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=5, fontsize=7)
    save_figure(fig, args.out, args.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Chart of the fixed-column fused quantizer's block, step by step (perf-notes v2.47): per shape, thread 0's median
cycles in each step of a block (benchmarks/quantize_cols_stamps.py's table), stacked, then the rest of the block's
period (the owners' sums of the low-rank quads after the last stamp, and the loop's turn).

usage: python benchmarks/plot_quantize_cols.py docs/perf/cols_v3_s37_h100.txt [--out PNG]
"""
from __future__ import annotations

import sys

from plot_util import log_args, pyplot, save_figure
from quantize_cols_stamps import STEPS


def parse(text: str) -> tuple[str, list[tuple[str, list[float], float]]]:
    """(device line, [(shape label, cycles per step, period), ...]) of a quantize_cols_stamps.py table."""
    lines = text.splitlines()
    title = next((ln for ln in lines if "fixed-column fused quantizer, cycles per step" in ln), "")
    rows = []
    for ln in lines:
        parts = ln.split("|")
        if len(parts) != 2:
            continue
        head, vals = parts[0].split(), parts[1].split()
        if len(head) != 4 or not all(h.isdigit() for h in head) or len(vals) != len(STEPS) + 1:
            continue
        M, K, C, ctas = head
        cycles = [float(v) for v in vals]
        rows.append((f"{M} x {K}\nC = {C}, {ctas} CTAs", cycles[:-1], cycles[-1]))
    if not rows:
        raise ValueError("no quantize_cols_stamps.py rows in the text")
    return title, rows


def main(argv: list[str] | None = None) -> int:
    args = log_args(__doc__, argv)
    title, rows = parse(open(args.log).read())
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.9 * len(rows)))
    colors = plt.get_cmap("tab10").colors
    for i, (label, cycles, period) in enumerate(rows):
        left = 0.0
        for p, c in enumerate(cycles):
            ax.barh(i, c, left=left, color=colors[p % 10], label=STEPS[p] if i == 0 else None)
            left += c
        # the rest of the period: the owners' sums of the low-rank quads and the loop's turn (not stamped)
        ax.barh(i, max(0.0, period - left), left=left, color="white", edgecolor="gray", hatch="//",
                label="owners' lr sums, loop" if i == 0 else None)
        ax.plot([period, period], [i - 0.45, i + 0.45], color="black", lw=2, label="period" if i == 0 else None)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("SM cycles (thread 0 of each CTA, median over CTAs and blocks)")
    ax.set_title(f"{title.split(':')[0]}: a block of the fixed-column fused quantizer, 4608 tokens, rank 32\n"
                 "(bash benchmarks/run_device.sh cols: quantize_cols_stamps.py)", fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=6, fontsize=8)
    save_figure(fig, args.out, args.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())

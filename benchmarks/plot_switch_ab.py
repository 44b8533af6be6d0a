"""Bar chart of kernel changes measured by ab_2l.py: per shape, the time before over the time after (> 1: the change
made it faster), one bar per (log, before column, after column), the rows of the token counts --ms (each log must
have them all).

usage: python benchmarks/plot_switch_ab.py LOG:BEFORE:AFTER:LABEL [...] [--ms 4608[,4096,...]] --out docs/perf/chart.png
e.g. docs/perf/ab_2l_v241_h100.txt:fo_rel2:fo:"g.49, call 4" (fo_rel2: the release of before; fo: the default)
"""
from __future__ import annotations

import argparse
from pathlib import Path

from plot_ab_2l import parse
from plot_util import pyplot, save_figure


def ratios(spec: str, m: int) -> tuple[str, list[tuple[str, float]]]:
    """(label, [(shape, before / after)]) of one LOG:BEFORE:AFTER:LABEL spec, the rows with M == m."""
    log, before, after, label = spec.split(":", 3)
    _, rows = parse(Path(log).read_text())
    for col in (before, after):
        if not rows or col not in rows[0]:
            raise ValueError(f"{log} has no column {col!r}")
    return label, [(f"{r['K']}x{r['N']}", r[before] / r[after]) for r in rows if r["M"] == m]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("specs", nargs="+", help="LOG:BEFORE:AFTER:LABEL")
    ap.add_argument("--ms", default="4608", help="the token counts whose rows are drawn, comma-separated")
    ap.add_argument("--title", default="")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    ms = [int(m) for m in str(args.ms).split(",")]
    series = []
    for spec in args.specs:
        per_m = [(m, ratios(spec, m)) for m in ms]
        series.append((per_m[0][1][0], [(f"{m} x {s}", r) for m, (_, vals) in per_m for s, r in vals]))
    shapes = [s for s, _ in series[0][1]]
    if any([s for s, _ in vals] != shapes for _, vals in series):
        raise ValueError("the logs do not have the same shapes at --ms " + str(args.ms))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(10, 0.45 * len(shapes) + 2), 4.6))
    width = 0.8 / len(series)
    for i, (label, vals) in enumerate(series):
        ax.bar([j + i * width for j in range(len(vals))], [v for _, v in vals], width, label=label)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))])
    ax.set_xticklabels(shapes, fontsize=7 if len(shapes) > 10 else 8, rotation=35 if len(shapes) > 10 else 0,
                       ha="right" if len(shapes) > 10 else "center")
    lo = min(v for _, vals in series for _, v in vals)
    hi = max(v for _, vals in series for _, v in vals)
    ax.set_ylim(min(0.75, lo - 0.02), max(1.08, hi + 0.02))
    ax.set_ylabel("time before / time after (> 1: faster)")
    ax.set_title(args.title or "kernel changes, quantize + GEMM + low-rank chain (CUDA graphs, same rounds)", fontsize=9)
    if len(shapes) > 10:  # the rotated shape labels take the room below the axes
        ax.legend(fontsize=7, loc="upper left")
    else:
        ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    save_figure(fig, args.out, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

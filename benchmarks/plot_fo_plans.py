"""Chart a stored plan sweep (benchmarks/gemm_2l_fo_plans.py --splits --one): per shape, the GEMM's time under the
kernel's own plan ("auto"), the best two- or three-warpgroup plan and the best one-warpgroup plan (g.56), each as a
ratio to the best of all, so the shapes where one warpgroup wins stand out.

usage: python benchmarks/plot_fo_plans.py docs/perf/gemm_2l_fo_plans_v253_h100.txt [--out PNG]
"""
from __future__ import annotations

import sys
from pathlib import Path

from plot_util import log_args, pyplot, save_figure
from rf_cost_fit import parse

GROUPS = ("auto", "two / three warpgroups", "one warpgroup")


def _group(plan: str) -> str | None:
    """Which bar a candidate plan belongs to (None: not a plan, e.g. "nrbc", the model without a switch)."""
    if plan == "auto":
        return "auto"
    if plan.startswith(("rf1_", "rs1_", "rf1d_")):  # (rf1d_: two CTAs to an SM, g.58, in v258's log; removed)
        return "one warpgroup"
    if plan.startswith(("rf2_", "rf3_", "rs", "np")):
        return "two / three warpgroups"
    return None


def plan_ratios(path: str | Path) -> list[tuple[str, dict[str, float], dict[str, str]]]:
    """[(shape "M x K x N", {group: its best time / the best time}, {group: that plan's name})] per row of the log."""
    rows = []
    for M, K, N, times in parse(Path(path).read_text()):
        best: dict[str, tuple[float, str]] = {}
        for plan, t in times.items():
            g = _group(plan)
            if g and (g not in best or t < best[g][0]):
                best[g] = (t, plan)
        if "one warpgroup" not in best:
            raise ValueError(f"{path}: no one-warpgroup plan at {M} x {K} x {N} (a --one sweep?)")
        floor = min(t for g, (t, _) in best.items() if g != "auto")
        rows.append((f"{M} x {K} x {N}", {g: t / floor for g, (t, _) in best.items()},
                     {g: p for g, (_, p) in best.items()}))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = log_args(__doc__, argv)
    rows = plan_ratios(args.log)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 4.2))
    width = 0.27
    for k, g in enumerate(GROUPS):
        xs = [i + (k - 1) * width for i in range(len(rows))]
        ys = [r[g] for _, r, _ in rows]
        ax.bar(xs, ys, width, label=g, color=f"C{k}")
        for x, (_, r, names) in zip(xs, rows):
            if g != "auto":
                ax.text(x, r[g] + 0.02, names[g], rotation=90, ha="center", va="bottom", fontsize=6)
    ax.axhline(1.0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(rows)), [s for s, _, _ in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("GEMM time / the best plan's")
    ax.set_ylim(0.9, max(max(r.values()) for _, r, _ in rows) + 0.35)
    head = (Path(args.log).read_text().splitlines() or [""])[0]  # the sweep's device and method
    ax.set_title(f"the kernel's plan, the best two- / three-warpgroup plan and the best one-warpgroup plan\n{head[:110]}",
                 fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, args.out, args.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())

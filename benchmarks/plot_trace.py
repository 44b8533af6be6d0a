"""Stacked bars of a gemm_2l_trace.py JSON: where one K stage's cycles go, per shape, against the wgmma work.

usage: python benchmarks/plot_trace.py docs/perf/gemm_2l_trace_h100.json [--out docs/perf/gemm_2l_trace_h100.png]
"""
from __future__ import annotations

import argparse
import json

from gemm_2l_trace import SEGMENTS  # per main-loop variant; rows without "variant" are the shared-memory one


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("json")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = json.load(open(args.json))
    rows = run["rows"]
    variants = [r.get("variant", "ss") for r in rows]
    labels = [f"{r['M']}x{r['K']}x{r['N']}\n(tile {r['tile']}, {v})" for r, v in zip(rows, variants)]
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 4.5))
    bottom = [0.0] * len(rows)
    for e in range(len(SEGMENTS["ss"])):
        vals = [r["trace"]["wg0"][SEGMENTS[v][e]] for r, v in zip(rows, variants)]
        name = " / ".join(dict.fromkeys(SEGMENTS[v][e] for v in variants))
        ax.bar(range(len(rows)), vals, bottom=bottom, label=name, width=0.6)
        bottom = [b + v for b, v in zip(bottom, vals)]
    for i, r in enumerate(rows):
        ax.hlines(r["wgmma_cycles"], i - 0.35, i + 0.35, colors="black", linestyles="dashed",
                  label="wgmma work of a stage" if i == 0 else None)
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("cycles per 128-deep K stage (warpgroup 0, median)")
    ax.set_title(f"int4_2l GEMM: one K stage traced ({run['device']}, benchmarks/gemm_2l_trace.py)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    out = args.out or args.json.replace(".json", ".png")
    fig.savefig(out, dpi=110)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

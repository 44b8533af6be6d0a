"""Stacked bars of gemm_2l_trace.py JSONs: where one K stage's cycles go, per shape, against the wgmma work.

usage: python benchmarks/plot_trace.py RUN.json [RUN2.json ...] [--out OUT.png] [--ms 4608]

Each row's segments are stacked in the order the trace recorded them; rows of earlier main-loop variants
(a "variant" key, e.g. "rs", whose segments have other names) are labelled with it.
"""
from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("json", nargs="+")
    ap.add_argument("--out", default=None)
    ap.add_argument("--ms", default=None, help="only rows with these M (comma-separated)")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.load(open(p)) for p in args.json]
    keep = {int(m) for m in args.ms.split(",")} if args.ms else None
    rows, seen = [], set()
    for run in runs:
        for r in run["rows"]:
            key = (r.get("variant", "ss"), r["M"], r["K"], r["N"])
            if (keep is None or r["M"] in keep) and key not in seen:  # a variant traced in two runs: the first
                seen.add(key)
                rows.append(r)
    rows.sort(key=lambda r: (r["M"], r["K"], r["N"], r.get("variant", "ss")))
    segs = [[k for k in r["trace"]["wg0"] if k != "stage"] for r in rows]
    labels = [f"{r['M']}x{r['K']}x{r['N']}\n(tile {r['tile']}, {r.get('variant', 'ss')})" for r in rows]
    fig, ax = plt.subplots(figsize=(1.1 * len(rows) + 3, 4.8))
    bottom = [0.0] * len(rows)
    for e in range(max(len(s) for s in segs)):
        vals = [r["trace"]["wg0"][s[e]] if e < len(s) else 0.0 for r, s in zip(rows, segs)]
        name = " / ".join(dict.fromkeys(s[e] for s in segs if e < len(s)))
        ax.bar(range(len(rows)), vals, bottom=bottom, label=name, width=0.6)
        bottom = [b + v for b, v in zip(bottom, vals)]
    for i, r in enumerate(rows):
        ax.hlines(r["wgmma_cycles"], i - 0.35, i + 0.35, colors="black", linestyles="dashed",
                  label="wgmma work of a stage" if i == 0 else None)
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("cycles per 128-deep K stage (warpgroup 0, median)")
    devices = ", ".join(dict.fromkeys(run["device"] for run in runs))
    ax.set_title(f"int4_2l GEMM: one K stage traced ({devices}, benchmarks/gemm_2l_trace.py)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    out = args.out or args.json[0].replace(".json", ".png")
    fig.savefig(out, dpi=110)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

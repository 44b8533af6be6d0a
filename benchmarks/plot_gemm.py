"""Bar chart of a gemm_bench.py JSON: per shape, time relative to cuBLAS bf16 (lower is faster).

usage: python benchmarks/plot_gemm.py docs/perf/gemm_bench_2l_h100.json [--v1 docs/perf/gemm_bench_h100.json]
       [--out docs/perf/gemm_2l_h100.png]
"""
from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("json")
    ap.add_argument("--v1", default=None, help="an older run whose int4 (v1 kernel) fused times are added")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = json.load(open(args.json))
    rows = run["rows"]
    v1 = {(r["M"], r["K"], r["N"]): r for r in json.load(open(args.v1))["rows"]} if args.v1 else {}
    series = {
        "int4_2l fused (ours)": lambda r: r["ours2l_ms"],
        "int4_2l GEMM only": lambda r: r["gemm2l_ms"],
        "fp8 _scaled_mm (GEMM only)": lambda r: r["fp8_ms"],
        "bitsandbytes NF4": lambda r: r["nf4_ms"],
    }
    if v1:
        series["int4 fused (v1 kernels, earlier run)"] = lambda r: v1.get((r["M"], r["K"], r["N"]), {}).get(
            "ours_ms", float("nan")) / v1.get((r["M"], r["K"], r["N"]), {}).get("bf16_ms", float("nan")) * r["bf16_ms"]
    labels = [f"M={r['M']}\n{r['K']}x{r['N']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(rows)), 4.5))
    width = 0.8 / len(series)
    for i, (name, fn) in enumerate(series.items()):
        vals = [fn(r) / r["bf16_ms"] for r in rows]
        ax.bar([x + (i - (len(series) - 1) / 2) * width for x in range(len(rows))], vals, width, label=name)
    ax.axhline(1.0, color="black", lw=1, ls="--", label="cuBLAS bf16")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("time / cuBLAS bf16 time (lower is faster)")
    ax.set_title(f"FLUX.1 linear shapes, {run.get('device', '')}, rank 32, group 64")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    out = args.out or args.json.replace(".json", ".png")
    fig.savefig(out, dpi=110)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Bar chart of an ab_2l.py log: per shape, speed relative to cuBLAS bf16 in the same rounds (> 1: faster).

usage: python benchmarks/plot_ab_2l.py docs/perf/ab_2l_w8_h200.txt [--out docs/perf/ab_2l_w8_h200.png]
"""
from __future__ import annotations

import re

from plot_util import log_args, pyplot

# column name in the log -> label in the chart (the columns a log lacks are left out; w8pts and w8mc: older logs)
SERIES = {"now": "int4_2l packed (canonical order)", "np": "packed, not persistent", "ps": "packed, persistent",
          "ts": "packed, TMA-store epilogue", "w8": "int4_2l, int8 weight copy", "w8p": "int8 copy, producer loop",
          "w8pts": "int8 copy, producer loop, TMA store", "w8ps": "int8 copy, persistent",
          "w8a": "int8 copy (default switches)", "fo": "packed, fragment order (default on Hopper)",
          "fo2": "fragment order, two consumer warpgroups only",
          "w8mc": "int8 copy, CTA pairs (multicast)",
          "fo_nrbc": "fragment order, rf_by_cost off (before v2.23)",
          "fo_cb": "fragment order, cuBLAS down projection", "fo_dw": "fragment order, few-token down projection at every K",
          "fo_pdl": "fragment order, programmatic dependent launch", "fo_r3": "fragment order, refitted stage (v2.24)",
          "fo_ql": "fragment order, lean quantizer (v2.24 opt-in)", "fo_nql": "fragment order, plain quantizer",
          "fo_m0": "fragment order, v2.24's warpgroup choice",
          "fo_rq": "fragment order, reference quantizer (before v2.25)",
          "fo_qc12": "fragment order, quantizer in 12 MB row chunks", "fo_qc24": "fragment order, quantizer in 24 MB row chunks",
          "fo_lc": "fragment order, down projection chained everywhere", "fo_nlc": "fragment order, down projection on the side stream",
          "fo_ld": "fragment order, deep down projection",
          "fp8": "fp8 _scaled_mm (GEMM only)", "fp8d": "fp8 _scaled_mm with its activation cast"}


def parse(text: str) -> tuple[str, list[dict]]:
    """(device, rows of {M, K, N, column: us}) from ab_2l.py's printed table."""
    lines = text.splitlines()
    title = next((ln for ln in lines if ": int4_2l chain" in ln), "")  # warnings may come first
    device = title.split(":")[0]
    header = next((ln for ln in lines if re.match(r"\s*M\s+K\s+N\s+\|", ln)), None)
    if header is None:
        raise ValueError("no ab_2l.py table in the log")
    cols = header.split("|")[1].split()
    rows = []
    for ln in lines[lines.index(header) + 1:]:
        parts = ln.split("|")
        if len(parts) < 2 or not re.match(r"\s*\d+\s+\d+\s+\d+\s*$", parts[0]):
            continue
        m, k, n = (int(v) for v in parts[0].split())
        rows.append({"M": m, "K": k, "N": n, **{c: float(v) for c, v in zip(cols, parts[1].split())}})
    return device, rows


def main(argv: list[str] | None = None) -> int:
    args = log_args(__doc__, argv)
    plt = pyplot()
    device, rows = parse(open(args.log).read())
    series = [c for c in SERIES if rows and c in rows[0] and rows[0][c] == rows[0][c]]  # present and not NaN
    fig, ax = plt.subplots(figsize=(12, 4))
    width = 0.8 / len(series)
    for i, c in enumerate(series):
        ax.bar([j + i * width for j in range(len(rows))], [r["bf16"] / r[c] for r in rows], width, label=SERIES[c])
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))])
    ax.set_xticklabels([f"M={r['M']}\n{r['K']}x{r['N']}" for r in rows], fontsize=7)
    ax.set_ylabel("speed vs cuBLAS bf16 (x)")
    ax.set_title(f"quantize + GEMM + low-rank, {device} (CUDA graphs, same rounds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out or args.log.rsplit(".", 1)[0] + ".png", dpi=110)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

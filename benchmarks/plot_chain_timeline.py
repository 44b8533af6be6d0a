"""Stacked bars of a chain_timeline.py log: where one quantize + GEMM chain's time goes, next to cuBLAS bf16.

usage: python benchmarks/plot_chain_timeline.py docs/perf/chain_timeline_h100.txt [--out docs/perf/chain_timeline_h100.png]

Per (M, K, N) and run of the log (each run's header names its settings, e.g. the chained down projection's rings):
the critical path as what comes before the GEMM (span - GEMM - gaps: the quantizer, or the side stream's down
projection where that is longer; a chained down projection runs under the GEMM), the GEMM, then the gaps between
kernels; and bf16's bar beside.
"""
from __future__ import annotations

import re

from plot_util import log_args, pyplot, save_figure


def parse(text: str) -> tuple[str, list[dict]]:
    """(device, rows of {M, K, N, quant, down, gemm, span, gaps, bf16, run}) from chain_timeline.py's printed tables;
    run: the settings its header names after the lr chain mode (e.g. "2 rings"), or "run <i>" where it names none."""
    lines = text.splitlines()
    device = next((ln.split(":")[0].split(" (lr chain")[0] for ln in lines if ": one chain per CUDA graph" in ln), "")
    rows = []
    run, runs = "", 0
    for ln in lines:
        head = re.search(r"\(lr chain mode -?\d+(?P<rest>[^)]*)\): one chain per CUDA graph", ln)
        if head:
            runs += 1
            run = head.group("rest").strip(", ") or f"run {runs}"
            continue
        m = re.match(r"\s*(\d+)\s+(\d+)\s+(\d+)\s+\|\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+\|\s*([\d.]+)",
                     ln)
        if m:
            M, K, N = (int(v) for v in m.groups()[:3])
            quant, down, gemm, span, gaps, bf16 = (float(v) for v in m.groups()[3:])
            rows.append(dict(M=M, K=K, N=N, quant=quant, down=down, gemm=gemm, span=span, gaps=gaps, bf16=bf16,
                             run=run))
    if not rows:
        raise ValueError("no chain_timeline.py table in the log")
    return device, rows


def main(argv: list[str] | None = None) -> int:
    args = log_args(__doc__, argv)
    with open(args.log) as f:
        device, rows = parse(f.read())
    plt = pyplot()
    several = len({r["run"] for r in rows}) > 1
    ms = sorted({r["M"] for r in rows})
    fig, axes = plt.subplots(1, len(ms), figsize=(5.5 * len(ms), 4.2), squeeze=False)
    for ax, M in zip(axes[0], ms):
        sel = [r for r in rows if r["M"] == M]
        x = range(len(sel))
        gemm = [r["gemm"] for r in sel]
        before = [max(r["span"] - r["gemm"] - r["gaps"], 0.0) for r in sel]  # what the GEMM comes after
        rest = [max(r["span"] - b - g, 0.0) for r, b, g in zip(sel, before, gemm)]
        ax.bar([i - 0.2 for i in x], before, 0.4, label="before the GEMM (quantizer, or a longer side-stream down "
               "projection)", color="#4c72b0")
        ax.bar([i - 0.2 for i in x], gemm, 0.4, bottom=before, label="4-bit GEMM (a chained down projection under it)",
               color="#55a868")
        ax.bar([i - 0.2 for i in x], rest, 0.4, bottom=[b + g for b, g in zip(before, gemm)],
               label="gaps between kernels", color="#c44e52")
        ax.bar([i + 0.2 for i in x], [r["bf16"] for r in sel], 0.4, label="cuBLAS bf16", color="#8c8c8c")
        ax.set_xticks(list(x))
        ax.set_xticklabels([f"{r['K']}x{r['N']}" + (f"\n{r['run']}" if several else "") for r in sel],
                           rotation=30 if not several else 0, fontsize=8)
        ax.set_title(f"M = {M}")
        ax.set_ylabel("us per chain (CUDA graph)")
        ax.set_ylim(0, max(max(r["span"], r["bf16"]) for r in sel) * 1.45)  # (room for the legend)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{device}: one int4_2l chain's kernels\n(benchmarks/chain_timeline.py, torch.profiler)", fontsize=10)
    save_figure(fig, args.out, args.log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

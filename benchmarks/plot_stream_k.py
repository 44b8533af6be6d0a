"""Chart of the stream-K sweep stored in docs/perf (perf-notes v2.46; g.69, since removed): per shape and token tile,
the GEMM alone over the stream-K grid's CTA count, exact (sk) and without its exchange (nx), against the default plan
(fo). The gap between nx and sk is what the exchange costs; nx against fo is all stream-K could give.

usage: python benchmarks/plot_stream_k.py docs/perf/stream_k_sweep_v272_h100.txt [--out PNG]
"""
from __future__ import annotations

import sys

from plot_util import log_args, pyplot, save_figure

Key = tuple[str, int]  # ("MxKxN", token tile)


def parse(text: str) -> tuple[str, dict[Key, list[tuple[int, float, float, float]]]]:
    """(device line, {(shape, tile): [(ctas, fo, sk, nx), ...]}) of a stream_k_sweep.py log (commit 4750c3b)."""
    lines = text.splitlines()
    title = next((ln for ln in lines if ln.startswith("NVIDIA") or ": the GEMM alone" in ln), "")
    series: dict[Key, list[tuple[int, float, float, float]]] = {}
    for ln in lines:
        parts = ln.split("|")
        if len(parts) != 4:
            continue
        head, times = parts[0].split(), parts[2].split()
        if len(head) != 5 or not head[0].isdigit() or len(times) != 3:
            continue
        M, K, N, tile, ctas = (int(v) for v in head)
        fo, sk, nx = (float(v) for v in times)
        series.setdefault((f"{M}x{K}x{N}", tile), []).append((ctas, fo, sk, nx))
    if not series:
        raise ValueError("no stream_k_sweep.py rows in the text")
    return title, series


def main(argv: list[str] | None = None) -> int:
    args = log_args(__doc__, argv)
    title, series = parse(open(args.log).read())
    plt = pyplot()
    shapes = list(dict.fromkeys(shape for shape, _ in series))
    tiles = sorted({tile for _, tile in series})
    fig, grid = plt.subplots(len(tiles), len(shapes), figsize=(3.4 * len(shapes), 2.9 * len(tiles)), squeeze=False)
    for (shape, tile), pts in series.items():
        ax = grid[tiles.index(tile)][shapes.index(shape)]
        ctas = [p[0] for p in pts]
        ax.plot(ctas, [p[1] for p in pts], "k--", label="default plan (fo)")
        ax.plot(ctas, [p[2] for p in pts], "o-", color="tab:red", label="stream-K (sk)")
        ax.plot(ctas, [p[3] for p in pts], "s-", color="tab:blue", label="without its exchange (nx)")
        ax.set_title(f"{shape}, {tile}-token tiles", fontsize=9)
        ax.set_ylim(bottom=0)
    for ax in grid[-1]:
        ax.set_xlabel("stream-K CTAs")
    axes = [row[0] for row in grid]
    for ax in axes:
        ax.set_ylabel("us, the GEMM alone")
    grid[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{title.split(' (')[0]}: stream-K's gain and its exchange (CUDA graphs; benchmarks/run_device.sh v272)",
                 fontsize=9)
    save_figure(fig, args.out, args.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The FLUX.1 forward's ratios to bf16 and fp8 over the sessions, from docs/perf/progress_h200.csv (H200, 1024 px,
batch 1, every row's numbers from one device call; see docs/performance.md), with the performance issue's goals.

  python benchmarks/plot_progress.py   # writes docs/perf/progress_h200.png
"""
from __future__ import annotations

import csv
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "perf"
GOALS = {"bf16_eager_ms": (0.55, "vs bf16 eager (goal <= 0.55x)"),
         "bf16_compiled_ms": (0.80, "vs bf16 compiled (goal <= 0.80x)"),
         "fp8_compiled_ms": (1.00, "vs fp8 compiled (goal < 1.0x)")}


def load(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = list(range(len(rows)))
    for (key, (goal, label)), color in zip(GOALS.items(), ("tab:blue", "tab:orange", "tab:green")):
        pts = [(x, float(r["ours_ms"]) / float(r[key])) for x, r in zip(xs, rows) if r[key]]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=label)
        ax.axhline(goal, color=color, linestyle=":", linewidth=1)
    ax.set_xticks(xs, [f"{r['session']}\n{r['perf_notes']}" for r in rows], fontsize=8)
    ax.set_ylabel("SVDQuant int4_2l time / peer's time")
    ax.set_title("FLUX.1-dev transformer forward, 1024 px, batch 1, H200 (same call per point)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    plot(load(DOCS / "progress_h200.csv"), DOCS / "progress_h200.png")
    print(DOCS / "progress_h200.png")

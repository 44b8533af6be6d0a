"""What the plotting scripts share: the command line of a log-to-chart script, and pyplot without a display."""
from __future__ import annotations

import argparse
from pathlib import Path


def log_args(doc: str | None, argv: list[str] | None) -> argparse.Namespace:
    """`script LOG [--out PNG]`."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log")
    ap.add_argument("--out", default=None)
    return ap.parse_args(argv)


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: str | None, source: str | Path) -> str:
    """Lay the figure out and write it to `out`, or beside `source` as .png; print and return the path."""
    fig.tight_layout()
    path = out or str(Path(source).with_suffix(".png"))
    fig.savefig(path, dpi=110, bbox_inches="tight")  # (long row labels and a legend below the axes)
    print(path)
    return path

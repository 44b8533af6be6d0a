"""benchmarks/few_token_fixed.py's line fit (CPU): fixed part and per-stage part of a GEMM's time over K."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from few_token_fixed import fit_line  # noqa: E402


def test_the_fit_recovers_a_line_and_its_worst_residual():
    ks = [128, 256, 512, 1024, 2048, 3072]
    fixed, slope, res = fit_line(ks, [6.5 + 0.31 * k / 128 for k in ks])
    assert fixed == pytest.approx(6.5) and slope == pytest.approx(0.31) and res == pytest.approx(0.0, abs=1e-12)
    ts = [6.5 + 0.31 * k / 128 for k in ks]
    ts[2] += 0.4  # one noisy point: the fit moves, and its residual names the noise
    fixed2, slope2, res2 = fit_line(ks, ts)
    assert 0.2 < res2 < 0.4 and abs(fixed2 - 6.5) < 0.2 and abs(slope2 - 0.31) < 0.02


def test_one_point_gives_a_flat_line():
    assert fit_line([3072], [14.6]) == (14.6, 0.0, 0.0)

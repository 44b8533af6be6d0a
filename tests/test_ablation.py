"""The synthetic ablation (benchmarks/ablation_synthetic.py) on one small layer: the paper's ordering."""
from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "ablation_synthetic", Path(__file__).resolve().parents[1] / "benchmarks" / "ablation_synthetic.py"
)
ablation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ablation)

NAIVE = "naive W4A4 (no smoothing, rank 0)"
SMOOTH = "SmoothQuant W4A4 (alpha 0.5, rank 0)"
LOWRANK = "low-rank only (rank 32, no smoothing)"
SVDQ = "SVDQuant W4A4 (alpha searched, rank 32)"
SVDQ_2L = "SVDQuant W4A4 int4_2l g64 (alpha searched, rank 32)"


def test_svdquant_beats_smoothquant_beats_naive() -> None:
    res = ablation.run_ablation(seeds=(7,), n=128, k=256, methods=[NAIVE, SMOOTH, LOWRANK, SVDQ], calib_rows=512)
    assert all(0 < v < 1 for v in res.values()), res
    assert res[SMOOTH] * 1.3 <= res[NAIVE], res
    assert res[SVDQ] * 1.3 <= res[SMOOTH], res
    assert res[SVDQ] * 1.3 <= res[LOWRANK], res  # smoothing and the branch are complementary
    table = ablation.format_table(res)
    assert NAIVE in table and SVDQ in table


def test_int4_2l_is_as_accurate_as_int4_g64() -> None:
    res = ablation.run_ablation(seeds=(7,), n=128, k=256, methods=[SVDQ, SVDQ_2L], calib_rows=512)
    print(res)
    assert res[SVDQ_2L] < 1.2 * res[SVDQ], res  # docs/quality.md: 3.0e-4 vs 3.3e-4 on the 256 x 512 layers

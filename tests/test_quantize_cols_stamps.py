"""The step table of benchmarks/quantize_cols_stamps.py on synthetic clock stamps (CPU)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quantize_cols_stamps as qcs  # noqa: E402


def _stamps(ctas: int, blocks: int, unit: list[int], mma: list[int]) -> torch.Tensor:
    """Each CTA's blocks back to back, both groups from the same start: the unit warps' step p takes unit[p] cycles
    (CTA c's maxima wait, p = 4, (c + 1) times longer), the mma warps' step p mma[p]; the next block starts when the
    slower group is done, 5 cycles later."""
    s = torch.zeros(ctas, blocks, qcs.STAMPS, dtype=torch.int64)
    for c in range(ctas):
        t = 1000 * c
        for j in range(blocks):
            s[c, j, 0] = s[c, j, 7] = t
            tu = tm = t
            for p, d in enumerate(unit):
                tu += d * (c + 1 if p == 4 else 1)
                s[c, j, p + 1] = tu
            for p, d in enumerate(mma):
                tm += d
                s[c, j, 8 + p] = tm
            t = max(tu, tm) + 5
    return s


def test_step_table_medians_each_step_and_each_groups_period():
    unit, mma = [10, 20, 30, 40, 50, 60], [11, 22, 33, 44, 55, 166, 177]
    s = qcs.step_table(_stamps(3, 8, unit, mma), torch.tensor([8, 8, 6]))
    assert [s[n] for n, _, _ in qcs.UNIT_STEPS] == [10, 20, 30, 40, 100, 60]  # CTA 1's maxima wait: the median
    assert [s[n] for n, _, _ in qcs.MMA_STEPS] == mma
    assert s["period (units)"] == s["period (mma)"] == sum(mma) + 5  # the mma warps are the slower group here
    assert set(s) == set(qcs.COLUMNS)


def test_step_table_ignores_blocks_past_the_buffer_and_unrun_blocks():
    s = _stamps(2, 4, [1] * 6, [1] * 7)
    s[1, 2:] = -10**9  # CTA 1 ran 2 blocks only: its later stamps are garbage
    t = qcs.step_table(s, torch.tensor([9, 2]))  # CTA 0 ran more blocks than the buffer holds
    assert t["stage wait"] == 1 and t["period (units)"] == 7 + 5  # CTA 0's blocks 1, 2 only (the mma group the slower)

"""The step table of benchmarks/quantize_cols_stamps.py on synthetic clock stamps (CPU)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quantize_cols_stamps as qcs  # noqa: E402


def _stamps(ctas: int, blocks: int, steps: list[int], owns: list[bool]) -> torch.Tensor:
    """Each CTA's blocks back to back: step p takes steps[p] cycles (CTA c's steps (c + 1) times longer at p = 7);
    a CTA not owning a quad leaves the partials' stamp 0."""
    s = torch.zeros(ctas, blocks, len(steps) + 1, dtype=torch.int64)
    for c in range(ctas):
        t = 1000 * c
        for j in range(blocks):
            s[c, j, 0] = t
            for p, d in enumerate(steps):
                t += d * (c + 1 if p == 7 else 1)
                s[c, j, p + 1] = t if (p < 9 or owns[c]) else 0
            t += 5  # to the next block's first stamp
    return s


def test_step_table_medians_each_step_and_the_period():
    steps = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    s = _stamps(3, 8, steps, owns=[True, True, False])
    t = qcs.step_table(s, torch.tensor([8, 8, 6]))
    assert [t[k] for k in qcs.STEPS[:7]] == steps[:7]
    assert t["maxima wait"] == 160  # CTA 1's (twice) is the median of 1x, 2x, 3x
    assert t["partials wait"] == 100  # CTA 2 owns no quad: left out, not a 0 - t difference
    assert t["period"] == sum(steps) + 5 + 80  # the median CTA's period


def test_step_table_ignores_blocks_past_the_buffer_and_unrun_blocks():
    steps = [1] * 10
    s = _stamps(2, 4, steps, owns=[True, True])
    s[1, 2:] = -10**9  # CTA 1 ran 2 blocks only: its later stamps are garbage
    t = qcs.step_table(s, torch.tensor([9, 2]))  # CTA 0 ran more blocks than the buffer holds
    assert t["stage wait"] == 1 and t["period"] == 10 + 5 + 0  # CTA 0's blocks 1, 2 only (maxima wait x1)

"""The step table of benchmarks/quantize_cols_stamps.py on synthetic clock stamps (CPU)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quantize_cols_stamps as qcs  # noqa: E402


def _stamps(ctas: int, blocks: int, nblk: list[int], unit: list[int], mma: list[int], prod: list[int],
            starts: tuple[int, int, int] = (0, 7, 14), stamps: int = qcs.STAMPS) -> torch.Tensor:
    """Each CTA's blocks back to back, every group from the same start: the unit warps' step p takes unit[p] cycles
    (CTA c's maxima wait, p = 4, (c + 1) times longer), the mma warps' mma[p], the producer's prod[p] (it stamps
    blocks 0 .. n - 3 only); the next block starts when the slowest group is done, 5 cycles later. starts: each
    group's first stamp (the default: the fixed-column kernel's layout)."""
    s = torch.zeros(ctas, blocks, stamps, dtype=torch.int64)
    for c in range(ctas):
        t = 1000 * c
        for j in range(min(blocks, nblk[c])):
            ends = []
            for first, steps in zip(starts, [unit, mma, prod]):
                if first == starts[2] and j > nblk[c] - 3:
                    continue
                tt = s[c, j, first] = t
                for p, d in enumerate(steps):
                    tt += d * (c + 1 if first == starts[0] and p == 4 else 1)
                    s[c, j, first + 1 + p] = tt
                ends.append(tt)
            t = max(ends) + 5
    return s


def test_step_table_medians_each_step_and_each_groups_period():
    unit, mma, prod = [10, 20, 30, 40, 50, 60], [11, 22, 33, 44, 155, 166], [7, 9]
    nblk = [8, 8, 6]
    s = qcs.step_table(_stamps(3, 8, nblk, unit, mma, prod), torch.tensor(nblk))
    assert [s[n] for n, _, _ in qcs.UNIT_STEPS] == [10, 20, 30, 40, 100, 60]  # CTA 1's maxima wait: the median
    assert [s[n] for n, _, _ in qcs.MMA_STEPS] == mma
    assert [s[n] for n, _, _ in qcs.PRODUCER_STEPS] == prod
    # the mma warps are the slowest group: every group's period is theirs
    assert s["period (units)"] == s["period (mma)"] == s["period (producer)"] == sum(mma) + 5
    assert set(s) == set(qcs.COLUMNS)


def test_step_table_ignores_blocks_past_the_buffer_and_unrun_blocks():
    s = _stamps(2, 4, [9, 2], [1] * 6, [1] * 6, [1] * 2)
    s[1, 2:] = -10**9  # CTA 1 ran 2 blocks only: its later stamps are garbage
    t = qcs.step_table(s, torch.tensor([9, 2]))  # CTA 0 ran more blocks than the buffer holds
    assert t["stage wait"] == 1 and t["period (units)"] == 6 + 5  # CTA 0's blocks 1, 2 only
    assert t["release wait"] == 1 and t["period (producer)"] == 6 + 5  # its producer's blocks 1, 2 (of 0 .. 6)


def test_knobs_variants_parse_and_refuse_bad_ones():
    """benchmarks/quantize_cols_knobs.py's --variants: name:stagger_cycles,stagger_phases,probe,mma_sets items, in
    order; an item without four values is refused by name."""
    import pytest

    import quantize_cols_knobs as knobs

    got = knobs.parse_variants("v8:0,1,0,0; st2:4000,2,0,0;;m4:0,1,0,4")
    assert got == [("v8", (0, 1, 0, 0)), ("st2", (4000, 2, 0, 0)), ("m4", (0, 1, 0, 4))]
    assert [n for n, _ in knobs.parse_variants(knobs.DEFAULT)][:3] == ["v8", "nostore", "mma4"]
    with pytest.raises(SystemExit, match="st3"):
        knobs.parse_variants("v8:0,1,0,0;st3:4000,2")


def test_step_table_reads_the_pair_quantizers_groups():
    """benchmarks/quantize_pairs_stamps.py's groups (units 0-6, mma 7-12, producer 13-15 of 20 stamps) through the
    same table."""
    import quantize_pairs_stamps as qps

    unit, mma, prod = [10, 20, 30, 40, 50, 60], [11, 22, 33, 44, 55], [7, 9]
    nblk = [8, 8, 6]
    st = _stamps(3, 8, nblk, unit, mma, prod, starts=(0, 7, 13), stamps=qps.STAMPS)
    t = qcs.step_table(st, torch.tensor(nblk), qps.GROUPS)
    assert [t[n] for n, _, _ in qps.UNIT_STEPS] == [10, 20, 30, 40, 100, 60]
    assert [t[n] for n, _, _ in qps.MMA_STEPS] == mma and [t[n] for n, _, _ in qps.PRODUCER_STEPS] == prod
    assert t["period (units)"] == t["period (mma)"] == 10 + 20 + 30 + 40 + 100 + 60 + 5  # CTA 1's: the median
    assert set(t) | {"us", "prologue", "first wait"} | set(qps.SPAN) == set(qps.COLUMNS)


def test_span_columns_read_the_global_timer():
    """The CTAs' start skew, their time (median, max) and the kernel's span, in us, from stamps 18 / 19 in ns."""
    import quantize_pairs_stamps as qps

    st = torch.zeros(3, 4, qps.STAMPS, dtype=torch.int64)
    st[:, 0, 18] = torch.tensor([1_000_000, 1_002_000, 1_001_000])
    st[:, 0, 19] = torch.tensor([1_030_000, 1_040_000, 1_031_000])
    st[:, 1, 18] = 5  # another block's slot: not read
    assert qps.span_columns(st) == {"start skew": 2.0, "CTA median": 30.0, "CTA max": 38.0, "span": 40.0}

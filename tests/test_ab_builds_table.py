"""benchmarks/ab_builds_table.py on the stored two-build A/B of perf-notes v2.37's call 3 (the clean-up branch
against main): per-shape medians and ratios as reported, each round kept, bad directories and columns named."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / "docs" / "perf" / "ab_builds_cleanup_v248"
sys.path.insert(0, str(ROOT / "benchmarks"))

import ab_builds_table  # noqa: E402


def test_the_table_reproduces_call_3():
    names, rows = ab_builds_table.table(LOGS, "fo")
    assert names == ("clean", "main") and len(rows) == 15
    by = {shape: (ma, mb, ratio, rounds) for shape, ma, mb, ratio, rounds in rows}
    ma, mb, ratio, rounds = by[(4608, 3072, 12288)]
    assert (ma, mb) == (296.4, 281.3) and ratio == pytest.approx(1.054, abs=1e-3) and len(rounds) == 3
    assert by[(4608, 15360, 3072)][2] == pytest.approx(0.953, abs=1e-3)
    assert by[(4096, 12288, 3072)][2] == pytest.approx(0.997, abs=1e-3)
    # the other order is the inverse
    _, back = ab_builds_table.table(LOGS, "fo", ("main", "clean"))
    assert back[0][3] == pytest.approx(1 / rows[0][3])


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="no column 'nope'"):
        ab_builds_table.table(LOGS, "nope")
    (tmp_path / "abx_only_1.log").write_text((LOGS / "abx_main_1.log").read_text())
    with pytest.raises(ValueError, match="need two builds"):
        ab_builds_table.table(tmp_path, "fo")


def test_the_cli_prints_each_shape(capsys):
    assert ab_builds_table.main([str(LOGS)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 17 and "clean / main" in out

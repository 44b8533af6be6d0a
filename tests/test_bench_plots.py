"""The plotting script of the GEMM stage traces, on the traces stored in docs/perf (CPU)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import plot_trace  # noqa: E402

PERF = ROOT / "docs" / "perf"


def test_plot_trace_stacks_every_variant_of_several_runs(tmp_path):
    runs = [PERF / "gemm_2l_trace_mc_h200.json", PERF / "gemm_2l_trace_rs_h200.json"]
    out = tmp_path / "trace.png"
    assert plot_trace.main([*map(str, runs), "--out", str(out), "--ms", "4608"]) == 0
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"


def test_plot_trace_reads_runs_without_a_variant_key(tmp_path):
    run = json.loads((PERF / "gemm_2l_trace_h100.json").read_text())
    assert all("variant" not in r for r in run["rows"])  # the shared-memory loop's rows of an earlier run
    out = tmp_path / "h100.png"
    assert plot_trace.main([str(PERF / "gemm_2l_trace_h100.json"), "--out", str(out)]) == 0
    assert out.exists()

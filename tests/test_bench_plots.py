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


def test_plot_ab_2l_reads_the_stored_logs(tmp_path):
    """ab_2l.py's printed table -> rows (the int8-weight run and an older run without its columns), and a chart."""
    import plot_ab_2l

    device, rows = plot_ab_2l.parse((PERF / "ab_2l_w8_h200.txt").read_text())
    assert device == "NVIDIA H200" and len(rows) == 10
    first = rows[0]
    assert (first["M"], first["K"], first["N"]) == (4608, 3072, 3072)
    assert (first["now"], first["w8"], first["bf16"], first["fp8"]) == (124.1, 102.1, 112.4, 61.2)
    _, old = plot_ab_2l.parse((PERF / "ab_2l_multicast_h200.txt").read_text())
    assert "w8" not in old[0] and old[0]["now"] == 161.8
    with pytest.raises(ValueError, match="no ab_2l.py table"):
        plot_ab_2l.parse("nothing here\n")
    out = tmp_path / "ab.png"
    assert plot_ab_2l.main([str(PERF / "ab_2l_w8_h200.txt"), "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"

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
    device, ps = plot_ab_2l.parse((PERF / "ab_2l_w8ps_h200.txt").read_text())  # torchao's warnings come first
    assert device == "NVIDIA H200" and ps[0]["w8ps"] == 101.1 and len(ps) == 10
    _, old = plot_ab_2l.parse((PERF / "ab_2l_multicast_h200.txt").read_text())
    assert "w8" not in old[0] and old[0]["now"] == 161.8
    with pytest.raises(ValueError, match="no ab_2l.py table"):
        plot_ab_2l.parse("nothing here\n")
    out = tmp_path / "ab.png"
    assert plot_ab_2l.main([str(PERF / "ab_2l_w8_h200.txt"), "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"


def test_ksweep_log_parses_and_fits_the_stored_run(tmp_path):
    """gemm_2l_ksweep.py's table -> per-kernel (K, us) series; the line through them recovers the printed fit."""
    import gemm_2l_ksweep

    title, series = gemm_2l_ksweep.parse((PERF / "gemm_2l_ksweep_h200.txt").read_text())
    assert title.startswith("NVIDIA H200") and set(series) == {"packed", "w8", "w8p", "w8ps", "fp8"}
    assert series["w8"][0] == (768, 42.3) and [k for k, _ in series["fp8"]] == [768, 1536, 3072, 6144, 12288]
    a, b = gemm_2l_ksweep.fit([k / 128 for k, _ in series["w8"]], [u for _, u in series["w8"]])
    assert abs(b / 4 - 0.527) < 1e-3 and abs(a / 4 - 7.30) < 1e-2  # the log's "per stage" and "fixed per tile"
    with pytest.raises(ValueError, match="no gemm_2l_ksweep.py table"):
        gemm_2l_ksweep.parse("nothing\n")
    out = tmp_path / "k.png"
    assert gemm_2l_ksweep.main(["--plot", str(PERF / "gemm_2l_ksweep_h200.txt"), "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"


def test_tile_trace_parts_add_up_to_the_tile_and_chart(tmp_path):
    import plot_tile_trace

    device, rows = plot_tile_trace.tile_parts(PERF / "gemm_2l_trace_tile_h200.json")
    run = json.loads((PERF / "gemm_2l_trace_tile_h200.json").read_text())
    assert device == "NVIDIA H200" and len(rows) == len(run["rows"]) == 7
    label, parts = rows[2]  # M = 4608, 3072 x 3072: 24 stages of 224 tokens
    assert label.startswith("M=4608 3072x3072") and list(parts) == plot_tile_trace.PARTS
    assert parts["stages"] > 3 * parts["bias+stores"] > 0  # the stages dominate; every part was stamped
    out = tmp_path / "tile.png"
    assert plot_tile_trace.main([str(PERF / "gemm_2l_trace_tile_h200.json"), "--out", str(out)]) == 0 and out.read_bytes()[:4] == b"\x89PNG"


def test_plot_chain_timeline_reads_the_stored_log(tmp_path):
    """chain_timeline.py's table -> rows whose parts fit in their span, and a chart."""
    import plot_chain_timeline

    device, rows = plot_chain_timeline.parse((PERF / "chain_timeline_h100.txt").read_text())
    assert device == "NVIDIA H100 80GB HBM3" and len(rows) == 15
    assert {r["M"] for r in rows} == {256, 512, 4608}
    for r in rows:
        assert r["gemm"] + max(r["quant"], r["down"]) <= r["span"] and r["bf16"] > 0
    out = tmp_path / "timeline.png"
    assert plot_chain_timeline.main([str(PERF / "chain_timeline_h100.txt"), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_plot_chain_timeline_labels_the_runs_of_a_log(tmp_path):
    """A log of two runs (v260: one ring, then two rings): each row carries its run's label, and what precedes the GEMM
    (span - GEMM - gaps) is the quantizer's time where the down projection runs chained under the GEMM."""
    import plot_chain_timeline

    device, rows = plot_chain_timeline.parse((PERF / "chain_timeline_v260_h100.txt").read_text())
    assert device == "NVIDIA H100 80GB HBM3"
    assert [r["run"] for r in rows] == ["run 1", "run 1", "2 rings", "2 rings"]
    two = rows[2]
    assert (two["K"], two["N"], two["down"], two["gemm"]) == (3072, 3072, 8.6, 13.1)
    assert two["span"] - two["gemm"] - two["gaps"] == pytest.approx(3.3)  # ~ the quantizer's 2.9 and its launch
    out = tmp_path / "runs.png"
    assert plot_chain_timeline.main([str(PERF / "chain_timeline_v260_h100.txt"), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_plot_tile_life_draws_a_one_tile_log_whole(tmp_path):
    """A tile-life log of one tile per CTA ("to next" printed as nan, v262): rows parse with the nan, and the chart is
    drawn (the whole tile, loop included) rather than failing on it."""
    import math

    import plot_tile_life

    device, rows = plot_tile_life.tile_life_rows(PERF / "tile_life_v262_h100.txt")
    assert device == "NVIDIA H100 80GB HBM3" and len(rows) == 2
    parts = rows[0][1]
    assert parts["loop"] == 16532 and math.isnan(parts["to next"]) and parts["stage out"] == 456
    bar = dict(plot_tile_life.bar_parts(parts))
    assert "to next" not in bar and bar["loop"] == 16532 and list(bar)[:3] == ["stage wait", "first issue", "loop"]
    assert sum(bar.values()) == 1160 + 255 + 16532 + 145 + 246 + 313 + (198 + 91 + 456 + 33 + 32 + 224)
    many = dict(plot_tile_life.bar_parts(plot_tile_life.tile_life_rows(PERF / "gemm_2l_tile_life_v237_h100.txt")[1][0][1]))
    assert "loop" not in many and "to next" in many  # (several tiles per CTA: the parts outside the loop only)
    out = tmp_path / "one_tile.png"
    assert plot_tile_life.main([str(PERF / "tile_life_v262_h100.txt"), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_plot_down_beside_reads_the_stored_sweep(tmp_path):
    """down_beside_sweep.py's table -> a row per shape with a value per column (the quantizer alone the fastest), and a
    chart."""
    import plot_down_beside

    title, cols, rows = plot_down_beside.parse((PERF / "down_beside_sweep_v232_h100.txt").read_text())
    assert title.startswith("NVIDIA H100") and cols[:2] == ["side", "alone"] and len(cols) == 6
    assert list(rows) == ["4608x12288", "4608x15360c", "4096x12288"]
    for values in rows.values():
        assert len(values) == len(cols) and min(values) == values[1] > 0
    out = tmp_path / "beside.png"
    assert plot_down_beside.main([str(PERF / "down_beside_sweep_v232_h100.txt"), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_plot_tile_life_reads_the_stored_log(tmp_path):
    """plot_tile_life on the stored v2.34 tile-life log: ten warpgroup rows (two kernels, each with and without the
    old staging layout), each with its main parts and the store step's sub-steps as printed; and a PNG."""
    import plot_tile_life

    device, rows = plot_tile_life.tile_life_rows(PERF / "gemm_2l_tile_life_v237_h100.txt")
    assert device == "NVIDIA H100 80GB HBM3" and len(rows) == 10
    labels = [label for label, _ in rows]
    assert labels[0] == "224-token, 4608x3072x3072 wg0"
    assert labels[2] == "224-token, act in the loop, 4608x3072x3072 wg0"
    assert labels[-1] == "three-warpgroup 192-token, act in the loop, 4608x3072x3072 wg2"
    first, old = rows[0][1], rows[2][1]
    assert set(first) == set(plot_tile_life.MAIN) | set(plot_tile_life.SUBPARTS)
    assert (first["loop"], first["store"], first["stage out"]) == (28370, 1745, 444)
    assert old["stage out"] == 2660
    out = tmp_path / "life.png"
    assert plot_tile_life.main([str(PERF / "gemm_2l_tile_life_v237_h100.txt"), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_plot_switch_ab_ratios_of_the_stored_logs(tmp_path):
    """plot_switch_ab.py: before / after per 4608-token shape from stored ab_2l.py logs, a bad column named, a chart."""
    import plot_switch_ab

    label, vals = plot_switch_ab.ratios(f"{PERF / 'ab_2l_v239_h100.txt'}:fo:fo_fh:g.48", 4608)
    assert label == "g.48" and [s for s, _ in vals][:2] == ["3072x3072", "3072x12288"]
    assert vals[0][1] == pytest.approx(102.6 / 118.7)  # g.48 slower: below 1
    _, few = plot_switch_ab.ratios(f"{PERF / 'ab_2l_v241_h100.txt'}:fo_rel2:fo:x", 256)
    assert len(few) == 5 and few[0][1] == pytest.approx(22.8 / 23.0)
    with pytest.raises(ValueError, match="no column 'fo_zz'"):
        plot_switch_ab.ratios(f"{PERF / 'ab_2l_v241_h100.txt'}:fo_zz:fo:x", 4608)
    out = tmp_path / "ab.png"
    assert plot_switch_ab.main([f"{PERF / 'ab_2l_v242_h100.txt'}:fo_rel2:fo:g.49", "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"
    many = tmp_path / "many.png"  # several token counts in one chart: every log must have them all
    assert plot_switch_ab.main([f"{PERF / 'ab_2l_v246_h100.txt'}:fo_256w:fo:g.51", "--ms", "4608,4096,1024,512,256",
                                "--out", str(many)]) == 0
    assert many.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="the same shapes"):
        plot_switch_ab.main([f"{PERF / 'ab_2l_v246_h100.txt'}:fo_256w:fo:g.51",
                             f"{PERF / 'ab_2l_v244_h100.txt'}:fo_3s:fo:g.50", "--ms", "4608,4096", "--out", str(many)])


def test_plot_split_life_reads_the_stored_logs(tmp_path):
    """plot_split_life on the stored call-7 logs (v2.37): warpgroup 0's row per shape, every part as printed, a log
    of another kind refused by name; and a PNG."""
    import plot_split_life

    device, rows = plot_split_life.split_life_rows(PERF / "split_life_x4_h100.txt")
    assert device == "NVIDIA H100 80GB HBM3"
    assert [label for label, _ in rows] == ["4 CTAs, 256x3072x3072", "4 CTAs, 256x12288x3072", "4 CTAs, 512x12288x3072"]
    first = rows[0][1]
    assert list(first) == plot_split_life.PARTS
    assert (first["loop"], first["exchange"], first["drain"]) == (6416, 10355, 114)
    with pytest.raises(ValueError, match="no split-CTA rows"):
        plot_split_life.split_life_rows(PERF / "gemm_2l_tile_life_v237_h100.txt")
    out = tmp_path / "split.png"
    assert plot_split_life.main([str(PERF / "split_life_x2_h100.txt"), str(PERF / "split_life_x4_h100.txt"),
                                 "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_plot_fo_plans_groups_the_stored_sweep(tmp_path):
    """plot_fo_plans on the stored v2.38 sweep: per shape the best two/three-warpgroup and one-warpgroup plans as ratios
    to the best of all (one of them 1.0), one warpgroup best at 256 / 512 x 3072 x 3072 only; a sweep without the
    one-warpgroup plans refused by name; and a PNG."""
    import plot_fo_plans

    rows = plot_fo_plans.plan_ratios(PERF / "gemm_2l_fo_plans_v253_h100.txt")
    assert len(rows) == 10
    for shape, ratios, names in rows:
        assert set(ratios) == set(plot_fo_plans.GROUPS)
        assert min(ratios["two / three warpgroups"], ratios["one warpgroup"]) == 1.0
    wins = {shape: names["one warpgroup"] for shape, r, names in rows if r["one warpgroup"] == 1.0}
    assert wins == {"512 x 3072 x 3072": "rf1_256", "256 x 3072 x 3072": "rf1_128"}
    with pytest.raises(ValueError, match="no one-warpgroup plan"):
        plot_fo_plans.plan_ratios(PERF / "gemm_2l_fo_plans_v250_h100.txt")
    out = tmp_path / "plans.png"
    assert plot_fo_plans.main([str(PERF / "gemm_2l_fo_plans_v253_h100.txt"), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_plot_stream_k_reads_the_stored_sweep(tmp_path):
    """The stored stream-K sweep -> per (shape, tile) its five grids with fo / sk / nx, the exchange never free (sk >
    nx wherever the partition cuts tiles, i.e. beyond 96 CTAs), and a chart."""
    import plot_stream_k

    log = PERF / "stream_k_sweep_v272_h100.txt"
    title, series = plot_stream_k.parse(log.read_text())
    assert title.startswith("NVIDIA H100")
    assert set(series) == {(s, t) for s in ("256x3072x3072", "512x3072x3072", "256x12288x3072") for t in (128, 256)}
    for pts in series.values():
        assert [p[0] for p in pts] == [96, 100, 112, 124, 132]
        assert all(sk > nx for ctas, _, sk, nx in pts if ctas > 96)
    out = tmp_path / "sk.png"
    assert plot_stream_k.main([str(log), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError):
        plot_stream_k.parse("no table here")


def test_plot_quantize_cols_reads_the_stamps_table(tmp_path):
    """quantize_cols_stamps.py's printed table (a step table of synthetic stamps: the stage a block, each group's steps
    5 cycles longer at each later block) -> each shape's steps and periods, by group; and a chart."""
    import plot_quantize_cols
    import quantize_cols_stamps as qcs
    import torch

    ctas, blocks = 4, 6
    stamps = torch.zeros(ctas, blocks, qcs.STAMPS, dtype=torch.int64)
    for j in range(blocks):
        stamps[:, j] = 10_000 * j + torch.arange(qcs.STAMPS) * (100 + 5 * j)
    t = qcs.step_table(stamps, torch.full((ctas,), blocks))
    text = "\n".join(["NVIDIA H100 80GB HBM3: fixed-column fused quantizer, cycles per step (median), rank 32, group 64",
                      qcs.HEADER, qcs.table_row(4608, 12288, 8, 120, t), qcs.table_row(4608, 3072, 8, 360, t)])
    title, rows = plot_quantize_cols.parse(text)
    assert title.startswith("NVIDIA H100")
    assert [r[0].split("\n") for r in rows] == [["4608 x 12288", "C = 8, 120 CTAs"], ["4608 x 3072", "C = 8, 360 CTAs"]]
    got = rows[0][1]
    assert list(got) == qcs.COLUMNS and (got["period (units)"], got["period (mma)"]) == (10_000, 10_000 + 7 * 5)
    assert got["stage wait"] == 110  # the median of blocks 1 .. 4 (105, 110, 115, 120: the lower middle)
    log = tmp_path / "cols.txt"
    log.write_text(text)
    out = tmp_path / "cols.png"
    assert plot_quantize_cols.main([str(log), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError):
        plot_quantize_cols.parse("no table here")

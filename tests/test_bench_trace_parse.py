"""gemm_2l_trace.py's reading of the tracing kernel's buffer, on a synthetic buffer (CPU)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gemm_2l_trace  # noqa: E402


def test_parse_trace_splits_the_tile_into_prologue_stages_and_epilogue_steps():
    nk, seg = 8, gemm_2l_trace.SEGMENTS
    t = torch.zeros(2 * nk * 8 + 12, dtype=torch.int64)
    stages = t[: 2 * nk * 8].view(2, nk, 8)
    for wg in range(2):
        for i in range(nk):  # stage i starts at 1000 + 900 i; its marks 10 cycles apart
            stages[wg, i] = torch.arange(8) * 10 + 1000 + 900 * i + 3 * wg
    head = t[2 * nk * 8:]
    start, loop_end = 100, 1000 + 900 * nk
    head[0], head[1] = start, 50_000  # clock64, globaltimer (ns) at the start
    head[4], head[6], head[8], head[10] = loop_end, loop_end + 700, loop_end + 1000, loop_end + 1300
    head[2], head[3] = loop_end + 2000, 50_000 + (loop_end + 2000 - start) // 2  # 2 GHz
    out = gemm_2l_trace.parse_trace(t, nk, seg)
    assert out["tile"] == {"to first data": 1020 - start, "stages": loop_end - 1020, "lr tile": 700,
                           "scales": 300, "low-rank": 300, "bias+stores": 700}
    assert abs(out["ghz"] - 2.0) < 1e-3 and out["wg0"]["stage"] == 900 and out["wg1"]["data wait"] == 10
    assert set(out["wg0"]) == {*seg, "stage"}


def test_gemm_switches_are_on_inside_the_block_and_back_to_the_defaults_after_it():
    import problems_2l

    class Ext:
        def __init__(self):
            self.state = {}

        def __getattr__(self, attr):
            if attr == "quantize_act_2l_fused_mode":
                return lambda: self.state.get("set_quantize_act_2l_fused", (0, 0))[0]
            if attr == "gemm_2l_rf_by_cost":
                return lambda: self.state.get("set_gemm_2l_rf_by_cost", False)
            if attr == "lowrank_down_max_tokens":
                return lambda: self.state.get("set_lowrank_down_max_tokens", 256)
            if attr == "lowrank_down_deep":
                return lambda: self.state.get("set_lowrank_down_deep", False)
            if attr == "lr_chain":
                return lambda: self.state.get("set_lr_chain", -1)
            if attr == "lowrank_down_beside":
                return lambda: self.state.get("set_lowrank_down_beside", 0)
            if attr == "set_lowrank_down_max_tokens":
                return lambda m, wide=False: self.state.__setitem__(attr, m if not wide else (m, wide))
            return lambda *args: self.state.__setitem__(attr, args[0] if len(args) == 1 else args)

    ext = Ext()
    defaults = {"set_gemm_2l_w8_producer": False, "set_gemm_2l_persistent": -1, "set_gemm_2l_tma_store": False,
                "set_gemm_2l_rf_warpgroups": (0, 0), "set_quantize_act_2l_fused": (0, 0), "set_gemm_2l_rf_by_cost": False,
                "set_gemm_2l_rf_splits": 0, "set_lowrank_down_max_tokens": 256,
                "set_lowrank_down_deep": False, "set_pdl": False,
                "set_gemm_2l_rf3_stage": (0, 0), "set_quantize_act_2l_lean": True,
                "set_gemm_2l_rf3_model": 1, "set_quantize_act_2l_chunk_bytes": 0, "set_lr_chain": -1,
                "set_lowrank_down_beside": 0, "set_gemm_2l_rf_lead": False,
                "set_gemm_2l_rf_pipelined": True, "set_gemm_2l_rf_pingpong": 0, "set_gemm_2l_lr_by_producer": False,
                "set_gemm_2l_l2_prefetch": False, "set_gemm_2l_act_in_loop": False,
                "set_gemm_2l_lr_unrolled": True, "set_gemm_2l_release_step": 0, "set_gemm_2l_out_halves": True,
                "set_gemm_2l_out_pieces": (192, 2), "set_gemm_2l_split_halves": True,
                "set_gemm_2l_rf1_auto": True, "set_lr_chain_pipes": 2}
    try:
        with problems_2l.gemm_switches(ext, producer=True, persistent=1):
            assert ext.state == {**defaults, "set_gemm_2l_w8_producer": True, "set_gemm_2l_persistent": 1}
            raise RuntimeError("a failing call")
    except RuntimeError:
        pass
    # producer loop and TMA store off, the persistent kernels and the warpgroup choice back to auto, not off
    assert ext.state == defaults
    with problems_2l.gemm_switches(ext, persistent=0, tma_store=True, rf_warpgroups=3, rf3_tile=192):
        assert ext.state == {**defaults, "set_gemm_2l_persistent": 0, "set_gemm_2l_tma_store": True,
                             "set_gemm_2l_rf_warpgroups": (3, 192)}
    assert ext.state == defaults
    with problems_2l.gemm_switches(ext, fused_quant=1, quant_cluster=4):
        assert ext.state == {**defaults, "set_quantize_act_2l_fused": (1, 4)}
    assert ext.state == defaults
    with problems_2l.gemm_switches(ext, rf_pipelined=False):
        assert ext.state == {**defaults, "set_gemm_2l_rf_pipelined": False}
    assert ext.state == defaults
    with problems_2l.gemm_switches(ext, rf_pingpong=True):
        assert ext.state == {**defaults, "set_gemm_2l_rf_pingpong": 1}
    assert ext.state == defaults
    with problems_2l.gemm_switches(ext, lr_by_producer=True, l2_prefetch=True, out_halves=False):
        assert ext.state == {**defaults, "set_gemm_2l_lr_by_producer": True, "set_gemm_2l_l2_prefetch": True,
                             "set_gemm_2l_out_halves": False, "set_gemm_2l_out_pieces": (192, 1)}
    assert ext.state == defaults
    with problems_2l.gemm_switches(ext, out_pieces=(256, 1)):
        assert ext.state == {**defaults, "set_gemm_2l_out_pieces": (256, 1)}
    assert ext.state == defaults
    with problems_2l.gemm_switches(ext, quant_chunk_bytes=24 << 20):
        assert ext.state == {**defaults, "set_quantize_act_2l_chunk_bytes": 24 << 20}
    assert ext.state == defaults
    with problems_2l.gemm_switches(ext):
        assert ext.state["set_gemm_2l_persistent"] == -1
    assert ext.state == defaults
    with problems_2l.gemm_switches(ext, rf_by_cost=True, rf_splits=4, down_cublas=True, down_deep=True):
        assert ext.state == {**defaults, "set_gemm_2l_rf_by_cost": True, "set_gemm_2l_rf_splits": 4,
                             "set_lowrank_down_max_tokens": 0, "set_lowrank_down_deep": True}
    assert ext.state == defaults
    with problems_2l.gemm_switches(ext, pdl=True, rf3_stage=(1100, 1250), lean_quant=False, rf3_model=0):
        assert ext.state == {**defaults, "set_pdl": True, "set_gemm_2l_rf3_stage": (1100, 1250),
                             "set_quantize_act_2l_lean": False, "set_gemm_2l_rf3_model": 0}
    assert ext.state == defaults
    with problems_2l.gemm_switches(ext, lr_chain=0):
        assert ext.state == {**defaults, "set_lr_chain": 0}
    assert ext.state == defaults  # (back to what it was before the block)
    # gemm_2l_fo_plans.plan_forced: a candidate's switches and its forced tile (unsplit by the plan), all undone after
    import gemm_2l_fo_plans

    try:
        with gemm_2l_fo_plans.plan_forced(ext, {"rf_splits": 4}, 256):
            assert ext.state == {**defaults, "set_gemm_2l_rf_splits": 4, "set_gemm_2l_tile_tokens": 256,
                                 "set_gemm_2l_splits": 1}
            raise RuntimeError("a failing call")
    except RuntimeError:
        pass
    assert ext.state == {**defaults, "set_gemm_2l_tile_tokens": 0, "set_gemm_2l_splits": 0}
    with gemm_2l_fo_plans.plan_forced(ext, {}, 0):
        assert ext.state["set_gemm_2l_splits"] == 0 and ext.state["set_gemm_2l_tile_tokens"] == 0


def test_ab_rounds_alternate_the_column_order():
    import ab_2l

    cols = ab_2l.COLS
    orders = [ab_2l.round_order(cols, r) for r in range(4)]
    assert orders[0] == orders[2] == cols and orders[1] == orders[3] == cols[::-1]
    # over two rounds every column is timed once right after each of its two neighbours
    followers = {(o[i - 1], o[i]) for o in orders[:2] for i in range(1, len(o))}
    assert all((a, b) in followers and (b, a) in followers for a, b in zip(cols, cols[1:]))


def test_fo_plans_one_warpgroup_candidates():
    """gemm_2l_fo_plans.py --one: the one-warpgroup kernels (g.56) unsplit at 128 / 256 tokens and split over 2 / 4 CTAs,
    no forced plan tile (the switch carries the tile), every switch accepted by gemm_switches."""
    import inspect

    import gemm_2l_fo_plans
    import problems_2l

    plain = {n for n, _, _ in gemm_2l_fo_plans.candidates(3072, splits=True)}
    one = {n: (sw, bt) for n, sw, bt in gemm_2l_fo_plans.candidates(3072, splits=True, one=True)}
    assert set(one) - plain == {"rf1_128", "rf1_256", "rs1_128x2", "rs1_256x2", "rs1_256x4"}
    assert one["rs1_256x4"] == ({"rf_warpgroups": 1, "rf3_tile": 256, "rf_splits": 4}, 0)
    assert one["rf1_128"] == ({"rf_warpgroups": 1, "rf3_tile": 128}, 0)
    sig = inspect.signature(problems_2l.gemm_switches)
    for sw, _ in one.values():
        sig.bind(object(), **sw)


def test_tile_life_summary_medians_each_step_per_warpgroup():
    """gemm_2l_tile_life.summarize on synthetic stamps: a tile every 20000 cycles, its steps at fixed offsets, warpgroup w
    600 w cycles behind; the first tile (the pipeline's fill) and unstamped CTAs left out. Three warpgroups with step 7
    (first stage landed) split the wait before the first k-step; two without it (the ping-pong kernel's stamps) leave
    the first issue empty."""
    import math

    import gemm_2l_tile_life as life

    # start, first k-step issued, loop end, lr, scales, low-rank, stored, first stage landed
    offsets = [0, 300, 15300, 15500, 15900, 16400, 17000, 120]
    for wgs, steps in ((3, 8), (2, 7)):
        s = torch.zeros(life.CTAS, wgs, life.TILES, life.STEPS, dtype=torch.int64)
        for c in range(2):  # CTAs 2 and 3 never stamped (e.g. fewer tiles than CTAs)
            for w in range(wgs):
                for t in range(life.TILES):
                    base = 1_000 + 20_000 * t + 600 * w + (9_000_000 if t == 0 else 0)  # tile 0 off: left out
                    s[c, w, t, :steps] = torch.tensor(offsets[:steps]) + base
        r = life.summarize(s)
        assert set(r) == {f"wg{w}" for w in range(wgs)} | {"lag"}
        for w in range(wgs):
            got = dict(r[f"wg{w}"])
            issue = got.pop("first issue")
            assert got == {"stage wait": 120 if steps == 8 else 300, "loop": 15000, "lr wait": 200, "scales": 400,
                           "low-rank": 500, "store": 600, "to next": 20000 - 17000}
            assert issue == 180 if steps == 8 else math.isnan(issue)
        assert r["lag"] == {f"wg{w}": 600 * w for w in range(1, wgs)}


def test_tile_life_summary_of_one_tile_per_cta():
    """Where every CTA has one tile (e.g. one warpgroup's 256-token tiles at 256 x 3072 x 3072: 48 CTAs), the default
    summary has nothing to median (NaN) and first=0 takes that tile, fill included."""
    import math

    import gemm_2l_tile_life as life

    s = torch.zeros(life.CTAS, 1, life.TILES, life.STEPS, dtype=torch.int64)
    for c in range(life.CTAS):
        s[c, 0, 0, :8] = torch.tensor([0, 2000, 12000, 12200, 12800, 13500, 16500, 1500]) + 1000 * (c + 1)
    assert all(math.isnan(v) for v in life.summarize(s)["wg0"].values())
    got = life.summarize(s, first=0)["wg0"]
    assert (got["stage wait"], got["first issue"], got["loop"], got["store"]) == (1500, 500, 10000, 3000)
    assert math.isnan(got["to next"])


def test_tile_life_of_a_split_cta_orders_its_whole_life():
    """gemm_2l_tile_life.summarize_split on synthetic stamps of the split kernel (one tile per CTA, tile 0): the kernel's
    entry (sub-step 14), the tile's steps, the exchange (13) between the loop's end and the low-rank tile, the drain
    (15) after the store; per-CTA gaps as medians; a CTA missing its exchange stamp left out."""
    import gemm_2l_tile_life as life

    main = torch.zeros(life.CTAS, 2, life.TILES, life.STEPS, dtype=torch.int64)
    sub = torch.zeros_like(main)
    # entry, start, landed, first issue, loop end, exchange, lr, scales, low-rank, stored, drained
    at = [0, 900, 2400, 2600, 9600, 16600, 16800, 17400, 17900, 20300, 20500]
    for c in range(3):
        for w in range(2):
            t = [v + 50_000 * c + 10 * w * (i > 0) for i, v in enumerate(at)]
            main[c, w, 0, [0, 7, 1, 2, 3, 4, 5, 6]] = torch.tensor([t[1], t[2], t[3], t[4], t[6], t[7], t[8], t[9]])
            sub[c, w, 0, [6, 5, 7]] = torch.tensor([t[0], t[5], t[10]])
    sub[2, 1, 0, 5] = 0  # CTA 2's second warpgroup without its exchange stamp: left out
    main[2, 1, 0, 2] += 10**6  # (so its loop, huge here, cannot reach the medians)
    r = life.summarize_split(main, sub)
    want = {"prologue": 900, "stage wait": 1500, "first issue": 200, "loop": 7000, "exchange": 7000, "lr wait": 200,
            "scales": 600, "low-rank": 500, "store": 2400, "drain": 200}
    assert r["wg0"] == want
    assert r["wg1"] == {**want, "prologue": 910}
    assert life.split_by_cta(main, sub) == [[7000, 7000], [7000, 7000], [7000, 0], [0, 0]]
    assert life.split_by_cta(main, sub, "drain") == [[200, 200]] * 3 + [[0, 0]]


def test_tile_life_substeps_split_the_store_step():
    """gemm_2l_tile_life.summarize_substeps on synthetic stamps: the store step (5 -> 6) cut by sub-steps 8 .. 12 at
    fixed offsets gives each sub-part's median; the first tile and tiles missing a sub-step are left out."""
    import gemm_2l_tile_life as life

    main = torch.zeros(life.CTAS, 2, life.TILES, life.STEPS, dtype=torch.int64)
    sub = torch.zeros_like(main)
    cuts = [100, 250, 1250, 1900, 2000]  # lr free, staging free, staged, fence, barrier (after step 5)
    for w in range(2):
        for t in range(life.TILES):
            base = 1_000 + 20_000 * t + 300 * w
            main[0, w, t, 5], main[0, w, t, 6] = base, base + 2_100 + 50 * w
            sub[0, w, t, :5] = torch.tensor(cuts) + base + (7_000 if t == 0 else 0)
    sub[0, 1, 3, 2] = 0  # a missing sub-step: the tile is left out
    main[0, 1, 4, 6] += 1_000_000  # and so would this one be were it not kept: it changes only the TMA issue part
    r = life.summarize_substeps(main, sub)
    assert r["wg0"] == {"lr free": 100, "staging free": 150, "stage out": 1000, "fence": 650, "barrier": 100,
                        "tma issue": 100}
    assert {k: v for k, v in r["wg1"].items() if k != "tma issue"} == {
        "lr free": 100, "staging free": 150, "stage out": 1000, "fence": 650, "barrier": 100}
    assert r["wg1"]["tma issue"] == 150  # median of 150 x 5 and one 1_000_150 (tiles 1-7 less tile 3)


def test_fo_plans_candidates_with_turns_name_real_switches():
    """gemm_2l_fo_plans.py --turns: every two-warpgroup candidate again with the warpgroups taking turns (rf_pipelined
    off: its twin's switches and token tile otherwise), the ping-pong GEMM once, unique names, and every candidate's
    switches accepted by gemm_switches (a misspelt switch would fail on the device after the build)."""
    import inspect

    import gemm_2l_fo_plans
    import problems_2l

    plain = gemm_2l_fo_plans.candidates(3072, splits=True)
    both = gemm_2l_fo_plans.candidates(3072, splits=True, turns=True)
    names = [n for n, _, _ in both]
    assert len(names) == len(set(names))
    assert not any("rf_pipelined" in sw or "rf_pingpong" in sw for _, sw, _ in plain)
    by_name = {n: (sw, bt) for n, sw, bt in both}
    twins = [n for n in names if n.startswith("t_")]
    assert {t[2:] for t in twins} == {"auto"} | {n for n in names if n.startswith(("rf2_", "rs"))}
    for t in twins:
        sw, bt = by_name[t]
        assert sw == {**by_name[t[2:]][0], "rf_pipelined": False} and bt == by_name[t[2:]][1]
    assert by_name["pp"] == ({"rf_pingpong": True}, 0)
    sig = inspect.signature(problems_2l.gemm_switches)
    for _, sw, _ in both:
        sig.bind(object(), **sw)


def test_ab_2l_switched_columns_name_real_switches():
    """Every column ab_2l.py times under gemm_switches passes keywords gemm_switches takes (fo_pipe, fo_pp included)."""
    import inspect

    import ab_2l
    import problems_2l

    sig = inspect.signature(problems_2l.gemm_switches)
    assert {"fo_pipe", "fo_pp"} <= set(ab_2l.SWITCHED)
    for name, (weights, switches) in ab_2l.SWITCHED.items():
        assert weights in ("packed", "int8", "frag"), name
        sig.bind(object(), **switches)


def test_ncu_sass_stalls_reads_the_source_page_by_column_name():
    """ncu_sass_stalls on a CSV shaped like `ncu --page source --csv --print-source sass`: preamble lines before the
    header, columns found by name whatever their order, quoted numbers with thousands separators, rows without an
    address skipped; shares by opcode (predicates and modifiers stripped), the hottest lines in address order, and the
    stall-reason columns summed."""
    import ncu_sass_stalls as st

    rows = [["==PROF== Disconnected"],
            ["# Address", "Source", "Instructions Executed", "Warp Stall Sampling (All Samples)",
             "Warp Stall Sampling (Not-issued Samples)", "stall_long_sb", "stall_barrier"],
            ["0x0010", "HGMMA.64x192x32.S32.S8 R24, gdesc[UR8], R24", "10", "1,000", "900", "0", "0"],
            ["0x0020", "WARPGROUP.DEPBAR.LE gsb0, 0x1", "10", "3000", "2900", "0", "0"],
            ["", "(a source line)", "", "77", "", "", ""],
            ["0x0030", "@!P0 SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR4], R3", "5", "500", "500", "500", "0"],
            ["0x0040", "BAR.SYNC.DEFER_BLOCKING 0x8, 0x180", "1", "500", "500", "0", "300"],
            ["0x0050", "IMAD R1, R2, R3, RZ", "99", "0", "0", "0", "100"]]
    lines = st.parse(rows)
    assert [x.address for x in lines] == [0x10, 0x20, 0x30, 0x40, 0x50]
    assert [x.opcode for x in lines] == ["HGMMA", "WARPGROUP", "SYNCS", "BAR", "IMAD"]
    assert lines[0].samples == 1000 and lines[1].not_issued == 2900
    s = st.summarize(lines, top=3)
    assert s["total"] == 5000
    assert s["by_opcode"][:2] == [("WARPGROUP", 0.6), ("HGMMA", 0.2)]
    assert [a for a, _, _ in s["top"]] == [0x10, 0x20, 0x30]  # ties keep the CSV's order
    assert s["top"][1] == (0x20, "WARPGROUP.DEPBAR.LE gsb0, 0x1", 0.6)
    assert s["reasons"] == {"stall_long_sb": 500 / 900, "stall_barrier": 400 / 900}
    with pytest.raises(ValueError, match="SourceCounters"):
        st.parse([["Address", "Source", "Instructions Executed"], ["0x0", "NOP", "1"]])
    part = st.in_range(lines, "0x20:0x40")  # a span, both ends included
    assert [x.address for x in part] == [0x20, 0x30, 0x40]
    assert st.summarize(part)["total"] == 4000
    for bad in ("0x40:0x20", "0x20", "x:0x40"):
        with pytest.raises(ValueError, match="--range"):
            st.in_range(lines, bad)


def test_ncu_sass_stalls_counts_each_mbarrier_waits_misses():
    """barrier_waits: a first try in line paired with its out-of-line retry loop (a predicated branch back over a
    TRYWAIT, here with a YIELD first) by the first try's predicated branch; the loop's exits are the misses. A TRYWAIT
    whose branch goes elsewhere, and a backward branch over no TRYWAIT, are not waits."""
    import ncu_sass_stalls as st

    head = ["Address", "Source", "Instructions Executed", "Warp Stall Sampling (All Samples)"]
    body = [["0x100", "SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR19+0x31c00], R7", "1000", "3"],
            ["0x110", "ULEA UR17, UR22, UR17, 0x18", "1000", "9"],
            ["0x120", "@!P0  BRA 0x900", "1000", "40"],
            ["0x130", "LDS.128 R8, [R20]", "1000", "1"],
            ["0x140", "SYNCS.PHASECHK.TRANS64.TRYWAIT P1, [R2+URZ+0x31c18], R3", "50", "0"],
            ["0x150", "@!P1  BRA 0x400", "50", "0"],
            ["0x160", "IADD3 R1, R1, 0x1, RZ", "10", "0"],
            ["0x170", "@P2  BRA 0x160", "10", "0"],
            ["0x900", "YIELD", "420", "0"],
            ["0x910", "SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR19+0x31c00], R7", "420", "0"],
            ["0x920", "@!P0  BRA 0x900", "420", "2"],
            ["0x930", "BRA 0x130", "120", "0"]]
    lines = st.parse([head, *body])
    assert lines[0].executed == 1000 and lines[2].branch_target == 0x900 and lines[1].branch_target is None
    waits = st.barrier_waits(lines)
    assert len(waits) == 1
    w = waits[0]
    assert (w.first, w.retry, w.waits, w.missed, w.retries) == (0x100, 0x900, 1000, 120, 420)

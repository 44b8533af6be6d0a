"""benchmarks/rf_cost_fit.py: the Python mirror of the fragment-order GEMM's plan choice, checked against the kernel's
own choices in stored H100 plan sweeps, and the regrets perf-notes v2.36 reports for the 256-token stage's refit."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PERF = ROOT / "docs" / "perf"
sys.path.insert(0, str(ROOT / "benchmarks"))

import rf_cost_fit  # noqa: E402

BEFORE = PERF / "gemm_2l_fo_plans_v246_h100.txt"  # call 2: the kernels before g.51
OPT_IN = PERF / "gemm_2l_fo_plans_v245_h100.txt"  # call 3: g.51 timed as rf2_256h while opt-in
AFTER = PERF / "gemm_2l_fo_plans_512_256_v246_h100.txt"  # call 4: g.51 the default, the model refitted
SWAP = {"rf2_256": "rf2_256w", "rf2_256h": "rf2_256"}


@pytest.mark.parametrize("log,model,timed", [(BEFORE, rf_cost_fit.Model(halves256=False), 23),
                                             (AFTER, rf_cost_fit.Model(halves256=True), 5)])
def test_the_mirror_picks_what_the_kernel_picked(log, model, timed):
    """Wherever the mirror's pick was timed (all but the split plans call 4 did not time), its time is the kernel's own
    ("auto") within the sweep's noise."""
    checked = 0
    for M, K, N, times in rf_cost_fit.parse(log.read_text()):
        pick = rf_cost_fit.choose(M, N, K, model)
        if pick in times:
            assert abs(times[pick] - times["auto"]) <= 0.03 * times["auto"], (M, K, N, pick, times)
            checked += 1
    assert checked == timed


def test_the_refit_regrets_as_reported():
    """Against g.51's kernel: the model before summed 0.56 of regret over the 23 timed shapes, the refitted one 0.11 (its
    512 / 256-token picks timed on three stages only) and nothing where call 4 timed them with the halves."""
    def total(model, *logs):
        return rf_cost_fit.regrets(_rows(*logs), model)
    before, _ = total(rf_cost_fit.Model(halves256=False), (OPT_IN.read_text(), SWAP), (BEFORE.read_text(), None))
    after, _ = total(rf_cost_fit.Model(halves256=True), (OPT_IN.read_text(), SWAP), (BEFORE.read_text(), None))
    assert before == pytest.approx(0.561, abs=2e-3)
    assert after == pytest.approx(0.107, abs=2e-3)
    final, picks = total(rf_cost_fit.Model(halves256=True), (OPT_IN.read_text(), SWAP), (AFTER.read_text(), None))
    assert final == pytest.approx(0.0, abs=1e-9) and sum(t is not None for *_, t, _ in picks) == 20


def test_the_halves_make_the_256_token_tile_cheaper_only_unsplit():
    halves, whole = rf_cost_fit.Model(halves256=True), rf_cost_fit.Model(halves256=False)
    assert rf_cost_fit.rf_cost(halves, 4096, 3072, 3072, 2, 256) < rf_cost_fit.rf_cost(whole, 4096, 3072, 3072, 2, 256)
    assert rf_cost_fit.rf_cost(halves, 256, 3072, 12288, 2, 256, 4) == rf_cost_fit.rf_cost(whole, 256, 3072, 12288, 2, 256, 4)
    assert rf_cost_fit.rf_cost(halves, 4608, 3072, 3072, 2, 224) == rf_cost_fit.rf_cost(whole, 4608, 3072, 3072, 2, 224)


def test_the_cli_prints_each_shape_and_the_grid(capsys):
    assert rf_cost_fit.main([f"{OPT_IN}@rf2_256=rf2_256w,rf2_256h=rf2_256", "--halves", "--grid"]) == 0
    out = capsys.readouterr().out
    assert out.count("M=") == 15 and "summed regret" in out and "stage256" in out


G54 = PERF / "gemm_2l_fo_plans_v249_h100.txt"  # v2.37 call 1: g.54 timed as rs256x{2,4}h while opt-in
G54_SWAP = {"rs256x2": "rs256x2w", "rs256x2h": "rs256x2", "rs256x4": "rs256x4w", "rs256x4h": "rs256x4"}


def _rows(*logs):
    return rf_cost_fit.merged(rf_cost_fit.parse(text, rename) for text, rename in logs)


@pytest.mark.parametrize("stage,regret", [(1212, 0.0), (1080, 0.0), (1060, 0.045)])
def test_the_split_halves_keep_the_split_stage(stage, regret):
    """g.54 (v2.37): with the split kernel in halves, the model's split stage (2 x 256 + 700 = 1212 cycles) still picks
    the best timed plan at all 25 shapes; a stage below 1080 cycles would move a shape to a slower plan."""
    rows = _rows((G54.read_text(), G54_SWAP), (OPT_IN.read_text(), SWAP))
    model = rf_cost_fit.Model(halves256=True, split_halves=True, split_stage256=stage)
    total, picks = rf_cost_fit.regrets(rows, model)
    assert len(picks) == 25 and all(t is not None for *_, t, _ in picks)
    assert total == pytest.approx(regret, abs=2e-3)
    # the split shapes (512 / 256 tokens x K >= 12288) pick the split kernel, now in halves, the fastest there
    for M, K, N, pick, t, best in picks:
        if M <= 512 and K >= 12288:
            assert pick.startswith("rs256x") and t == best, (M, K, N, pick, t, best)


G56 = PERF / "gemm_2l_fo_plans_v253_h100.txt"  # v2.38 call 1: every plan at 512 / 256 tokens, g.56's included
ONE = rf_cost_fit.Model(halves256=True, split_halves=True, one=True)  # the kernel's with set_gemm_2l_rf1_auto (v2.38)


def test_one_warpgroup_is_picked_where_it_was_timed_best():
    """g.56 by the cost model (v2.38): over call 1's 10 shapes and v2.37 / v2.36's 15, one warpgroup's tiles are picked
    at 256 / 512 x 3072 x 3072 (the fastest plans there) and nowhere else; the summed regret drops by those two shapes'
    (0.628 -> 0.444) and every pick was timed."""
    rows = _rows((G56.read_text(), None), (G54.read_text(), G54_SWAP), (BEFORE.read_text(), None))
    without = rf_cost_fit.Model(halves256=True, split_halves=True)
    before, _ = rf_cost_fit.regrets(rows, without)
    after, picks = rf_cost_fit.regrets(rows, ONE)
    ones = {(M, K, N): pick for M, K, N, pick, _, _ in picks if pick.startswith("rf1_")}
    assert ones == {(256, 3072, 3072): "rf1_128", (512, 3072, 3072): "rf1_256"}
    assert all(t is not None for *_, t, _ in picks)
    assert all(t == best for M, K, N, _, t, best in picks if (M, K, N) in ones)
    assert before - after == pytest.approx(0.184, abs=2e-3)


def test_one_warpgroup_only_at_a_few_hundred_tokens():
    assert rf_cost_fit.choose(256, 3072, 3072, ONE) == "rf1_128"
    assert not rf_cost_fit.choose(1024, 3072, 3072, ONE).startswith("rf1_")  # past ONE_MAX_M
    assert not rf_cost_fit.choose(512, 3072, 3072, rf_cost_fit.Model(halves256=True, split_halves=True)).startswith("rf1_")

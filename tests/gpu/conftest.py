"""GPU-suite switches. SVDQ_TEST_FUSED_QUANT=<mode> runs the whole suite with set_quantize_act_2l_fused(mode) as the
starting mode (e.g. -1, the CTA-pair quantizer from its token threshold: perf-notes v2.50), so a candidate default is
tested everywhere before it becomes one; tests that set a mode restore this one after them. SVDQ_TEST_PAIRS_V3=1 and
SVDQ_TEST_PAIRS_LRT=1 do the same for the CTA-pair quantizer's v3 form and its transposed down projection
(set_quantize_act_2l_pairs_pd_tma / _lr_t, perf-notes v2.51), and SVDQ_TEST_PAIRS_LOADS=<box3d>,<ahead> for its loads
(set_quantize_act_2l_pairs_loads, v2.52), SVDQ_TEST_PAIRS_UNITS=<stores>,<warp_max> for its unit threads
(set_quantize_act_2l_pairs_units, v2.53)."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _fused_quant_mode():
    mode = os.environ.get("SVDQ_TEST_FUSED_QUANT")
    v3 = os.environ.get("SVDQ_TEST_PAIRS_V3") == "1"
    lr_t = os.environ.get("SVDQ_TEST_PAIRS_LRT") == "1"
    loads = os.environ.get("SVDQ_TEST_PAIRS_LOADS")
    units = os.environ.get("SVDQ_TEST_PAIRS_UNITS")
    if not mode and not v3 and not lr_t and not loads and not units:
        yield
        return
    from svdquant_hf.ops import build

    ext = build.load_extension()
    if ext is None:
        pytest.fail("SVDQ_TEST_FUSED_QUANT / SVDQ_TEST_PAIRS_V3 / _LRT / _LOADS / _UNITS is set but the CUDA kernels did "
                    "not load")
    before, before_v3 = ext.quantize_act_2l_fused_mode(), ext.quantize_act_2l_pairs_pd_tma()
    before_t, before_loads = ext.quantize_act_2l_pairs_lr_t(), ext.quantize_act_2l_pairs_loads()
    before_units = ext.quantize_act_2l_pairs_units()
    if mode:
        ext.set_quantize_act_2l_fused(int(mode))
    ext.set_quantize_act_2l_pairs_pd_tma(v3 or before_v3)
    ext.set_quantize_act_2l_pairs_lr_t(lr_t or before_t)
    if loads:
        box3d, ahead = loads.split(",")
        ext.set_quantize_act_2l_pairs_loads(box3d == "1", int(ahead))
    if units:
        stores, warp_max = units.split(",")
        ext.set_quantize_act_2l_pairs_units(int(stores), warp_max == "1")
    try:
        yield
    finally:
        ext.set_quantize_act_2l_fused(before)
        ext.set_quantize_act_2l_pairs_pd_tma(before_v3)
        ext.set_quantize_act_2l_pairs_lr_t(before_t)
        ext.set_quantize_act_2l_pairs_loads(*before_loads)
        ext.set_quantize_act_2l_pairs_units(*before_units)

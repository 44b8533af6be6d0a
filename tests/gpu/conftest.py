"""GPU-suite switches. SVDQ_TEST_FUSED_QUANT=<mode> runs the whole suite with set_quantize_act_2l_fused(mode) as the
starting mode (e.g. -1, the CTA-pair quantizer from its token threshold: perf-notes v2.50), so a candidate default is
tested everywhere before it becomes one; tests that set a mode restore this one after them."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _fused_quant_mode():
    mode = os.environ.get("SVDQ_TEST_FUSED_QUANT")
    if not mode:
        yield
        return
    from svdquant_hf.ops import build

    ext = build.load_extension()
    if ext is None:
        pytest.fail("SVDQ_TEST_FUSED_QUANT is set but the CUDA kernels did not load")
    before = ext.quantize_act_2l_fused_mode()
    ext.set_quantize_act_2l_fused(int(mode))
    try:
        yield
    finally:
        ext.set_quantize_act_2l_fused(before)

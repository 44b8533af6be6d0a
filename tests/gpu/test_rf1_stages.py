"""The one-warpgroup tiles' stage ring (set_gemm_2l_rf1_stages, Hopper; perf-notes v2.42): at most 6 stages by default,
or 0, as many as the memory holds (9 at 128-token tiles; 4, as now, at 256), for A/B (bfloat16, unsplit). The deeper
ring must give the default's bits (outputs poisoned first) with tiles of one, two and many stages, several tiles per
CTA and a ragged last token tile."""
from __future__ import annotations

import pytest
import torch

from test_kernels import ext  # noqa: F401  (ext: the fixture)
from test_kernels_2l import _switched, hopper  # noqa: F401  (the fixtures)
from test_kernels_2l import _fo_problem, _gemm_fo as _gemm, _switched_gemm

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_the_ring_holds_six_stages_by_default(hopper):
    assert hopper.gemm_2l_rf1_stages() == 6
    hopper.set_gemm_2l_rf1_stages(9)  # not a cap the kernels have: the default
    assert hopper.gemm_2l_rf1_stages() == 6


@pytest.mark.parametrize("tile", [128, 256])
@pytest.mark.parametrize("M,K,N", [(256, 3072, 3072), (1000, 256, 768), (37, 640, 384), (300, 128, 1536),
                                   (130, 12288, 3072)])
def test_the_deep_ring_gives_the_same_bits(hopper, tile, M, K, N):
    """1000 x 256 x 768 and 300 x 128 x 1536 give CTAs several tiles (one or two stages each); 130 x 12288 x 3072 runs
    96 stages through the ring, many times round it."""
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, M + K + tile + 7, N + 11)
    with _switched(lambda on: hopper.set_gemm_2l_rf_warpgroups(on, tile), 1, 0):
        ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
        out, ran = _switched_gemm(hopper, "rf1_stages", xq, xs, qf, w, lr, value=0, counter="rf1_deep")
    assert ran == 1
    assert torch.isfinite(ref).all()
    assert torch.equal(out, ref)

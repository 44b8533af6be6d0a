"""The register-fragment loop with leading turns (set_gemm_2l_rf_lead, Hopper, opt-in): the two consumer warpgroups'
turns as per-warp counts of stages issued, warpgroup 0 up to NS - 2 stages ahead, so each runs on alone through the
other's tile epilogue. Only the order of the two warpgroups' wgmmas changes, never a sum: the output must be the
default kernel's bits (outputs poisoned first), at tiles with fewer stages than the lead too. (224-token tiles only:
at 256 the three-stage ring allowed a lead of one stage, which measured slower; on the device the 256-token instances
passed these tests too before they were removed, perf-notes v2.30b.)"""
from __future__ import annotations

import pytest
import torch

from svdquant_hf.ops.layout_2l import fragment_order

from test_kernels import ext  # noqa: F401  (ext: the fixture)
from test_kernels_2l import _acts, _quantize, _switched, _weights, hopper  # noqa: F401  (hopper: the fixture)
from test_kernels_2l import _gemm_fo as _gemm

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("tile", [224])
@pytest.mark.parametrize("dtype,bias", [(torch.bfloat16, True), (torch.float16, False)])
@pytest.mark.parametrize("M,K,N", [(4608, 3072, 3072), (4096, 3072, 768), (1000, 256, 768), (4097, 1536, 384),
                                   (300, 12288, 256), (37, 640, 128)])
def test_leading_turns_give_the_same_bits(hopper, tile, dtype, bias, M, K, N):
    x, smooth, pd = _acts(M, K, 32, dtype, seed=M + K + N)
    qw, wsc, wch, pu, b = _weights(N, K, 32, dtype, 64, seed=M + N, bias=bias)
    qf = fragment_order(qw)
    xq, xs, lr = _quantize(hopper, x, smooth, pd)
    hopper.set_gemm_2l_persistent(1)
    hopper.set_gemm_2l_tile_tokens(tile)
    hopper.set_gemm_2l_splits(1)  # (a plan may split K over few tiles; the persistent kernels run unsplit plans)
    try:
        ref = _gemm(hopper, xq, xs, qf, (wsc, wch, pu, b), lr).clone()
        n0 = hopper.gemm_2l_rf_lead_launches()
        with _switched(hopper.set_gemm_2l_rf_lead, True, False):
            out = _gemm(hopper, xq, xs, qf, (wsc, wch, pu, b), lr)
            again = _gemm(hopper, xq, xs, qf, (wsc, wch, pu, b), lr).clone()
        torch.cuda.synchronize()
    finally:
        hopper.set_gemm_2l_persistent(-1)
        hopper.set_gemm_2l_tile_tokens(0)
        hopper.set_gemm_2l_splits(0)
    assert hopper.gemm_2l_rf_lead_launches() == n0 + 2, "the leading kernel ran"
    assert torch.isfinite(ref).all()
    assert torch.equal(out, ref) and torch.equal(again, ref)

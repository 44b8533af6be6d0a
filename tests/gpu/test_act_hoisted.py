"""The tile kernels' output staging with GELU-or-not decided once per tile (the default since perf-notes v2.34: two
straight-line bodies) against the staging as before, which tested it per octet (set_gemm_2l_act_in_loop, Hopper, A/B
only). Only the code's layout changes, so both must give the same bits, with and without GELU, with a concatenated
prefix (outputs poisoned first): two warpgroups on every token tile (persistent, pipelined and with turns), three
warpgroups, K split over a cluster."""
from __future__ import annotations

import pytest
import torch

from test_kernels import ext  # noqa: F401  (ext: the fixture)
from test_kernels_2l import _switched, hopper  # noqa: F401  (hopper: the fixture)
from test_kernels_2l import _fo_problem, _forced_plan, _poison

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _both(ext, xq, xs, qf, w, lr, act: int, prefix):
    """w4a4_gemm_2l_fo_ep with the default staging and with set_gemm_2l_act_in_loop(True): copies of both."""
    wsc, wch, pu, b = w
    M, N, P = xq.shape[0], qf.shape[0], 0 if prefix is None else prefix.shape[1]
    out = []
    for in_loop in (False, True):
        with _switched(ext.set_gemm_2l_act_in_loop, in_loop, False):
            _poison(2 * M * (N + P) + 4096, 0xFF)
            y = ext.w4a4_gemm_2l_fo_ep(xq, xs, qf, wsc, wch, lr, pu, b, 64, act, prefix)
            assert y is not None, ext.last_error()
            out.append(y.clone())
    torch.cuda.synchronize()
    return out


def test_act_in_loop_is_off_by_default(hopper):
    assert hopper.gemm_2l_act_in_loop() is False


@pytest.mark.parametrize("act", [0, 1])
@pytest.mark.parametrize("pipelined", [True, False])
@pytest.mark.parametrize("tile", [64, 128, 224, 256])
@pytest.mark.parametrize("M,K,N,P", [(4608, 1024, 3072, 0), (1000, 640, 384, 64), (37, 256, 128, 0)])
def test_two_warpgroups_give_the_same_bits(hopper, act, pipelined, tile, M, K, N, P):
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, M + K + N + tile, M + 7 * N)
    prefix = torch.randn(M, P, device="cuda").to(torch.bfloat16) if P else None
    with _forced_plan(hopper, tile, 1, persistent=1):
        with _switched(hopper.set_gemm_2l_rf_pipelined, pipelined, True):
            hoisted, in_loop = _both(hopper, xq, xs, qf, w, lr, act, prefix)
    assert torch.isfinite(hoisted).all()
    assert torch.equal(hoisted, in_loop)


@pytest.mark.parametrize("act", [0, 1])
@pytest.mark.parametrize("tile", [128, 192])
@pytest.mark.parametrize("M,K,N", [(4608, 3072, 3072), (1000, 256, 768)])
def test_three_warpgroups_give_the_same_bits(hopper, act, tile, M, K, N):
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, M + K + N + tile, M + 9 * N)
    hopper.set_gemm_2l_rf_warpgroups(3, tile)
    try:
        hoisted, in_loop = _both(hopper, xq, xs, qf, w, lr, act, None)
    finally:
        hopper.set_gemm_2l_rf_warpgroups(0, 0)
    assert torch.isfinite(hoisted).all()
    assert torch.equal(hoisted, in_loop)


@pytest.mark.parametrize("act", [0, 1])
def test_split_over_a_cluster_gives_the_same_bits(hopper, act):
    M, K, N = 256, 3072, 3072
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, 11 + act, 12)
    hopper.set_gemm_2l_rf_splits(2)
    try:
        hoisted, in_loop = _both(hopper, xq, xs, qf, w, lr, act, None)
    finally:
        hopper.set_gemm_2l_rf_splits(0)
    assert torch.isfinite(hoisted).all()
    assert torch.equal(hoisted, in_loop)

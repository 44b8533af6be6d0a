"""The 256-token split kernel exchanging its int32 partials through L2 (Hopper; perf-notes v2.38's g.57, opt-in:
set_gemm_2l_split_l2): each CTA stores the token octets its peers finish into a workspace the binding allocates per
call, one cluster barrier, then each CTA loads and adds its own. Integer sums, so it must give the bits of the kernel
exchanging through distributed shared memory (g.54's, the default) exactly: clusters of 2-4 CTAs (one CTA's octets in
both halves at 3), last tiles ending anywhere, no branch, GELU, the low-rank tile late after the chained down
projection, and CUDA-graph replay; clusters of more than 4 CTAs (no workspace room) fall back to the default kernel."""
from __future__ import annotations

import contextlib

import pytest
import torch

from test_kernels import ext  # noqa: F401  (ext: the fixture)
from test_kernels_2l import hopper  # noqa: F401,F811  (the fixture)
from test_kernels_2l import _acts, _captured, _forced_plan, _gemm_fo, _poison, _quantize, _weights

from svdquant_hf.ops.layout_2l import fragment_order

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TILE256 = dict(tile=256, splits=1, persistent=1, warpgroups=(2, 0))


@contextlib.contextmanager
def _split(kernels, splits: int, l2: bool):
    """The 256-token tile split over `splits` CTAs, exchanging through L2 or not, for a block."""
    with _forced_plan(kernels, **TILE256):
        kernels.set_gemm_2l_rf_splits(splits)
        kernels.set_gemm_2l_split_l2(l2)
        try:
            yield
        finally:
            kernels.set_gemm_2l_split_l2(False)
            kernels.set_gemm_2l_rf_splits(0)


def _problem(kernels, M, K, N, R, dtype, seed):
    x, smooth, pd = _acts(M, K, R, dtype, seed=seed)
    qw, wsc, wch, pu, b = _weights(N, K, R, dtype, 64, seed=seed + 1, bias=R != 16)
    xq, xs, lr = _quantize(kernels, x, smooth, pd, 64)
    return xq, xs, lr, fragment_order(qw), (wsc, wch, pu, b)


def test_off_by_default(hopper):
    assert hopper.gemm_2l_split_l2() is False


@pytest.mark.parametrize("splits", [2, 3, 4])
@pytest.mark.parametrize("dtype,M,K,N,R", [(torch.bfloat16, 1, 1024, 128, 32), (torch.bfloat16, 255, 12288, 3072, 32),
                                           (torch.float16, 300, 1280, 896, 16), (torch.bfloat16, 513, 2048, 768, 0),
                                           (torch.float16, 200, 3072, 384, 32), (torch.bfloat16, 256, 3072, 3072, 32)])
def test_the_l2_exchange_gives_the_same_bits(hopper, splits, dtype, M, K, N, R):
    xq, xs, lr, qf, w = _problem(hopper, M, K, N, R, dtype, M + K + splits)
    with _split(hopper, splits, False):
        _poison(4 * M * N, 0xFF)
        ref = _gemm_fo(hopper, xq, xs, qf, w, lr).clone()
    n0 = hopper.gemm_2l_split_l2_launches()
    with _split(hopper, splits, True):
        _poison(4 * M * N, 0xFF)
        y = _gemm_fo(hopper, xq, xs, qf, w, lr).clone()
        again = _gemm_fo(hopper, xq, xs, qf, w, lr).clone()  # a workspace left as the first call left it
    assert hopper.gemm_2l_split_l2_launches() - n0 == 2
    assert torch.isfinite(ref).all() and torch.isfinite(y).all(), "unwritten (NaN-poisoned) outputs"
    assert torch.equal(y, ref), f"{(y != ref).sum().item()} of {y.numel()} outputs differ"
    assert torch.equal(again, ref)


def test_gelu_keeps_the_bits(hopper):
    M, K, N = 400, 3072, 1536
    xq, xs, lr, qf, (wsc, wch, pu, b) = _problem(hopper, M, K, N, 32, torch.bfloat16, 91)

    def call():
        _poison(2 * M * N + 4096, 0xFF)
        y = hopper.w4a4_gemm_2l_fo_ep(xq, xs, qf, wsc, wch, lr, pu, b, 64, 1, None)
        assert y is not None, hopper.last_error()
        return y.clone()

    with _split(hopper, 2, False):
        ref = call()
    with _split(hopper, 2, True):
        n0 = hopper.gemm_2l_split_l2_launches()
        y = call()
        assert hopper.gemm_2l_split_l2_launches() - n0 == 1
    assert torch.equal(y, ref)


@pytest.mark.parametrize("M,K,N", [(256, 3072, 3072), (200, 12288, 3072)])
def test_the_low_rank_tile_late_keeps_the_bits(hopper, M, K, N):
    x, smooth, pd = _acts(M, K, 32, torch.bfloat16, seed=7 * M + K)
    qw, wsc, wch, pu, b = _weights(N, K, 32, torch.bfloat16, 64, seed=M + N + 3)
    qf, w = fragment_order(qw), (wsc, wch, pu, b)
    chain = hopper.lr_chain()
    with _split(hopper, 2, True):
        hopper.set_lr_chain(1)
        try:
            n0, l0 = hopper.gemm_2l_late_launches(), hopper.gemm_2l_split_l2_launches()
            xq, xs, lr = _quantize(hopper, x, smooth, pd)
            y = _gemm_fo(hopper, xq, xs, qf, w, lr).clone()
            ran = hopper.gemm_2l_late_launches() > n0 and hopper.gemm_2l_split_l2_launches() > l0
        finally:
            hopper.set_lr_chain(chain)
    with _split(hopper, 2, False):
        ref = _gemm_fo(hopper, xq, xs, qf, w, lr.clone()).clone()
    torch.cuda.synchronize()
    if not ran:
        pytest.skip(f"the split kernel at {M} x {K} x {N} did not take the low-rank tile late here")
    assert torch.equal(y, ref)


def test_replays_from_a_cuda_graph(hopper):
    M, K, N = 300, 2048, 1536
    xq, xs, lr, qf, w = _problem(hopper, M, K, N, 32, torch.bfloat16, 93)
    wsc, wch, pu, b = w
    with _split(hopper, 2, False):
        ref = _gemm_fo(hopper, xq, xs, qf, w, lr).clone()
    with _split(hopper, 2, True):
        n0 = hopper.gemm_2l_split_l2_launches()
        graph, y = _captured(lambda: hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64))
        launches = hopper.gemm_2l_split_l2_launches() - n0
    for _ in range(2):
        y.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, ref)
    assert launches == 2  # (the capture's warm-up and the captured launch)


def test_more_than_four_ctas_fall_back(hopper):
    M, K, N = 300, 4096, 768
    xq, xs, lr, qf, w = _problem(hopper, M, K, N, 32, torch.bfloat16, 95)
    with _split(hopper, 8, False):
        ref = _gemm_fo(hopper, xq, xs, qf, w, lr).clone()
    with _split(hopper, 8, True):
        n0, h0 = hopper.gemm_2l_split_l2_launches(), hopper.gemm_2l_split_halves_launches()
        y = _gemm_fo(hopper, xq, xs, qf, w, lr).clone()
        assert hopper.gemm_2l_split_l2_launches() == n0
        assert hopper.gemm_2l_split_halves_launches() == h0 + 1
    assert torch.equal(y, ref)

"""The one-warpgroup GEMM with a widening warpgroup (Hopper; perf-notes v2.40's g.61, set_gemm_2l_rf1_widening): a
second warpgroup widens each stage's 64 weight rows into one of four shared-memory A tiles and the consumer warpgroup
runs shared-memory wgmmas on them. Integer sums, so the same bits as the register-fragment kernel (outputs poisoned
first): both dtypes, 128- and 256-token tiles, ranks 0 / 16 / 32, rows past M, several tiles per CTA (the A tiles' and
stages' phases across tiles), the low-rank tile late after the chained down projection, CUDA-graph replay, GELU."""
from __future__ import annotations

import contextlib

import pytest
import torch

from test_kernels import ext  # noqa: F401  (ext: the fixture)
from test_kernels_2l import hopper  # noqa: F401,F811  (the fixture)
from test_kernels_2l import _acts, _captured, _poison, _quantize, _weights

from svdquant_hf.ops.layout_2l import fragment_order

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@contextlib.contextmanager
def _widening(kernels, tile: int, on: bool = True):
    """One consumer warpgroup on `tile` tokens, persistent, with (or without) the widening warpgroup, for a block."""
    kernels.set_gemm_2l_rf_warpgroups(1, tile)
    kernels.set_gemm_2l_rf1_widening(on)
    try:
        yield
    finally:
        kernels.set_gemm_2l_rf1_widening(False)
        kernels.set_gemm_2l_rf_warpgroups(0, 0)


def _gemm(kernels, xq, xs, qf, w, lr, act=None):
    wsc, wch, pu, b = w
    if act is None:
        return kernels.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64)
    return kernels.w4a4_gemm_2l_fo_ep(xq, xs, qf, wsc, wch, lr, pu, b, 64, act, None)


@pytest.mark.parametrize("tile", [128, 256])
@pytest.mark.parametrize("dtype,M,K,N,R", [(torch.bfloat16, 7, 1024, 128, 32), (torch.bfloat16, 255, 3072, 384, 0),
                                           (torch.float16, 300, 1280, 896, 16), (torch.bfloat16, 256, 3072, 3072, 32),
                                           (torch.bfloat16, 2000, 2048, 768, 32), (torch.float16, 513, 384, 256, 32)])
def test_the_widening_warpgroup_gives_the_same_bits(hopper, tile, dtype, M, K, N, R):
    """Against the one-warpgroup register-fragment kernel (the same tile) on the same inputs; 2000 x 2048 x 768 and
    513 x 384 x 256 give CTAs several tiles (the rings' phases carried across them; K = 384: three stages a tile)."""
    x, smooth, pd = _acts(M, K, R, dtype, seed=M + tile + 91)
    w = _weights(N, K, R, dtype, 64, seed=tile + R + 91, bias=R != 16)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    qf = fragment_order(w[0])
    w = w[1:]
    with _widening(hopper, tile, on=False):
        _poison(4 * M * N, 0xFF)
        ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
    n0 = hopper.gemm_2l_rf1_widening_launches()
    with _widening(hopper, tile):
        _poison(4 * M * N, 0xFF)
        y = _gemm(hopper, xq, xs, qf, w, lr)
        torch.cuda.synchronize()
    assert y is not None, hopper.last_error()
    assert hopper.gemm_2l_rf1_widening_launches() - n0 == 1
    assert torch.isfinite(ref).all() and torch.isfinite(y).all(), "unwritten (NaN-poisoned) outputs"
    assert torch.equal(y, ref), f"{(y != ref).sum().item()} of {y.numel()} outputs differ"


def test_the_widening_warpgroup_with_gelu_late_and_in_a_graph(hopper):
    """At 256 x 3072 x 3072 (#4's shape): GELU in the epilogue, the low-rank tile late after the chained down
    projection, and a CUDA graph replayed on new activations: the register-fragment kernel's bits each time."""
    M, K, N, R = 256, 3072, 3072, 32
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=92)
    w = _weights(N, K, R, torch.bfloat16, 64, seed=92)
    qf, w = fragment_order(w[0]), w[1:]
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    with _widening(hopper, 128, on=False):
        want_gelu = _gemm(hopper, xq, xs, qf, w, lr, act=1).clone()
    with _widening(hopper, 128):
        assert torch.equal(_gemm(hopper, xq, xs, qf, w, lr, act=1), want_gelu)
    chain = hopper.lr_chain()
    hopper.set_lr_chain(1)
    try:
        with _widening(hopper, 128):
            l0, n0 = hopper.gemm_2l_late_launches(), hopper.gemm_2l_rf1_widening_launches()
            cq, cs, clr = _quantize(hopper, x, smooth, pd)
            _poison(4 * M * N, 0xFF)
            late = _gemm(hopper, cq, cs, qf, w, clr).clone()
            ran = hopper.gemm_2l_late_launches() - l0, hopper.gemm_2l_rf1_widening_launches() - n0
    finally:
        hopper.set_lr_chain(chain)
    with _widening(hopper, 128, on=False):
        assert torch.equal(late, _gemm(hopper, cq, cs, qf, w, clr.clone()))
    assert ran == (1, 1), f"late / widening launches {ran}"
    with _widening(hopper, 128):
        graph, out = _captured(lambda: _gemm(hopper, xq, xs, qf, w, lr))
    x2 = _acts(M, K, R, torch.bfloat16, seed=93)[0]
    xq2, xs2, lr2 = _quantize(hopper, x2, smooth, pd, 64)
    xq.copy_(xq2), xs.copy_(xs2), lr.copy_(lr2)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    with _widening(hopper, 128, on=False):
        assert torch.equal(out, _gemm(hopper, xq2, xs2, qf, w, lr2))


def test_the_widening_warpgroup_is_not_taken_split(hopper):
    """Split over a cluster (set_gemm_2l_rf_splits) the register-fragment kernel runs as before: the switch's kernel is
    unsplit only."""
    M, K, N, R = 256, 2048, 768, 32
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=94)
    w = _weights(N, K, R, torch.bfloat16, 64, seed=94)
    qf, w = fragment_order(w[0]), w[1:]
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
    n0 = hopper.gemm_2l_rf1_widening_launches()
    with _widening(hopper, 256):
        hopper.set_gemm_2l_rf_splits(2)
        try:
            y = _gemm(hopper, xq, xs, qf, w, lr)
        finally:
            hopper.set_gemm_2l_rf_splits(0)
    assert hopper.gemm_2l_rf1_widening_launches() == n0
    assert torch.equal(y, ref)

"""The one-warpgroup GEMM's two opt-in variants (Hopper): g.61 (perf-notes v2.40, set_gemm_2l_rf1_widening), a second
warpgroup widening each stage's 64 weight rows into one of four shared-memory A tiles for the consumer's shared-memory
wgmmas; g.62 (v2.41, set_gemm_2l_rf1_ksplit), the 128-token tile on two consumer warpgroups that take its stages in
turn, the second's int32 partials summed by the first. Integer sums, so the same bits as the register-fragment kernel
(outputs poisoned first): both dtypes, ranks 0 / 16 / 32, rows past M, K of one to many stages (odd counts: the K split's
warpgroups take unequal shares, or one none), several tiles per CTA (the rings' phases and the hand-over across
tiles), the low-rank tile late after the chained down projection, CUDA-graph replay, GELU."""
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


# variant: (its switch, its launch counter, the token tiles it takes)
VARIANTS = {"widening": ("set_gemm_2l_rf1_widening", "gemm_2l_rf1_widening_launches", (128, 256)),
            "ksplit": ("set_gemm_2l_rf1_ksplit", "gemm_2l_rf1_ksplit_launches", (128,))}
CASES = [(v, tile) for v, (_, _, tiles) in VARIANTS.items() for tile in tiles]


def _launches(kernels, variant: str) -> int:
    return getattr(kernels, VARIANTS[variant][1])()


@contextlib.contextmanager
def _variant(kernels, variant: str, tile: int, on: bool = True):
    """One-warpgroup tiles of `tile` tokens, persistent, with (or without) `variant`, for a block."""
    switch = getattr(kernels, VARIANTS[variant][0])
    kernels.set_gemm_2l_rf_warpgroups(1, tile)
    switch(on)
    try:
        yield
    finally:
        switch(False)
        kernels.set_gemm_2l_rf_warpgroups(0, 0)


def _gemm(kernels, xq, xs, qf, w, lr, act=None):
    wsc, wch, pu, b = w
    if act is None:
        return kernels.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64)
    return kernels.w4a4_gemm_2l_fo_ep(xq, xs, qf, wsc, wch, lr, pu, b, 64, act, None)


@pytest.mark.parametrize("variant,tile", CASES)
@pytest.mark.parametrize("dtype,M,K,N,R", [(torch.bfloat16, 7, 1024, 128, 32), (torch.bfloat16, 255, 3072, 384, 0),
                                           (torch.float16, 300, 1280, 896, 16), (torch.bfloat16, 256, 3072, 3072, 32),
                                           (torch.bfloat16, 2000, 2048, 768, 32), (torch.float16, 513, 384, 256, 32),
                                           (torch.bfloat16, 97, 128, 256, 32), (torch.bfloat16, 1500, 640, 1536, 16)])
def test_the_variant_gives_the_same_bits(hopper, variant, tile, dtype, M, K, N, R):
    """Against the one-warpgroup register-fragment kernel (the same tile) on the same inputs; 2000 x 2048 x 768,
    513 x 384 x 256 and 1500 x 640 x 1536 give CTAs several tiles (the rings' phases carried across them; K = 384 / 640:
    three / five stages a tile); K = 128, one stage: the K split's second warpgroup has none."""
    x, smooth, pd = _acts(M, K, R, dtype, seed=M + tile + 91)
    w = _weights(N, K, R, dtype, 64, seed=tile + R + 91, bias=R != 16)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    qf = fragment_order(w[0])
    w = w[1:]
    with _variant(hopper, variant, tile, on=False):
        _poison(4 * M * N, 0xFF)
        ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
    n0 = _launches(hopper, variant)
    with _variant(hopper, variant, tile):
        _poison(4 * M * N, 0xFF)
        y = _gemm(hopper, xq, xs, qf, w, lr)
        torch.cuda.synchronize()
    assert y is not None, hopper.last_error()
    assert _launches(hopper, variant) - n0 == 1
    assert torch.isfinite(ref).all() and torch.isfinite(y).all(), "unwritten (NaN-poisoned) outputs"
    assert torch.equal(y, ref), f"{(y != ref).sum().item()} of {y.numel()} outputs differ"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_variant_with_gelu_late_and_in_a_graph(hopper, variant):
    """At 256 x 3072 x 3072 (#4's shape): GELU in the epilogue, the low-rank tile late after the chained down
    projection, and a CUDA graph replayed on new activations: the register-fragment kernel's bits each time."""
    M, K, N, R = 256, 3072, 3072, 32
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=92)
    w = _weights(N, K, R, torch.bfloat16, 64, seed=92)
    qf, w = fragment_order(w[0]), w[1:]
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    with _variant(hopper, variant, 128, on=False):
        want_gelu = _gemm(hopper, xq, xs, qf, w, lr, act=1).clone()
    with _variant(hopper, variant, 128):
        assert torch.equal(_gemm(hopper, xq, xs, qf, w, lr, act=1), want_gelu)
    chain = hopper.lr_chain()
    hopper.set_lr_chain(1)
    try:
        with _variant(hopper, variant, 128):
            l0, n0 = hopper.gemm_2l_late_launches(), _launches(hopper, variant)
            cq, cs, clr = _quantize(hopper, x, smooth, pd)
            _poison(4 * M * N, 0xFF)
            late = _gemm(hopper, cq, cs, qf, w, clr).clone()
            ran = hopper.gemm_2l_late_launches() - l0, _launches(hopper, variant) - n0
    finally:
        hopper.set_lr_chain(chain)
    with _variant(hopper, variant, 128, on=False):
        assert torch.equal(late, _gemm(hopper, cq, cs, qf, w, clr.clone()))
    assert ran == (1, 1), f"late / {variant} launches {ran}"
    with _variant(hopper, variant, 128):
        graph, out = _captured(lambda: _gemm(hopper, xq, xs, qf, w, lr))
    x2 = _acts(M, K, R, torch.bfloat16, seed=93)[0]
    xq2, xs2, lr2 = _quantize(hopper, x2, smooth, pd, 64)
    xq.copy_(xq2), xs.copy_(xs2), lr.copy_(lr2)
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    with _variant(hopper, variant, 128, on=False):
        assert torch.equal(out, _gemm(hopper, xq2, xs2, qf, w, lr2))


@pytest.mark.parametrize("variant,tile", CASES)
def test_the_variant_is_not_taken_split(hopper, variant, tile):
    """Split over a cluster (set_gemm_2l_rf_splits) the register-fragment kernel runs as before: the switches' kernels
    are unsplit only."""
    M, K, N, R = 256, 2048, 768, 32
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=94)
    w = _weights(N, K, R, torch.bfloat16, 64, seed=94)
    qf, w = fragment_order(w[0]), w[1:]
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
    n0 = _launches(hopper, variant)
    with _variant(hopper, variant, tile):
        hopper.set_gemm_2l_rf_splits(2)
        try:
            y = _gemm(hopper, xq, xs, qf, w, lr)
        finally:
            hopper.set_gemm_2l_rf_splits(0)
    assert _launches(hopper, variant) == n0
    assert torch.equal(y, ref)


def test_the_k_split_takes_only_128_token_tiles(hopper):
    """With 256-token tiles forced, set_gemm_2l_rf1_ksplit leaves the one-warpgroup kernel as it is (its hand-over
    would leave two stages): no K-split launch, the same bits."""
    M, K, N, R = 300, 1024, 384, 32
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=95)
    w = _weights(N, K, R, torch.bfloat16, 64, seed=95)
    qf, w = fragment_order(w[0]), w[1:]
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    with _variant(hopper, "ksplit", 256, on=False):
        ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
    n0 = _launches(hopper, "ksplit")
    with _variant(hopper, "ksplit", 256):
        y = _gemm(hopper, xq, xs, qf, w, lr)
    assert _launches(hopper, "ksplit") == n0
    assert torch.equal(y, ref)

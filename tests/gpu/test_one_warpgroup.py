"""One consumer warpgroup on 64-row tiles (Hopper; perf-notes v2.37's g.56, set_gemm_2l_rf_warpgroups(1, tile)): the
register-fragment loop, pipelined, widening 64 weight rows per stage for 128 or 256 tokens, persistent or split over a
cluster of 2-4 CTAs. Integer sums, so the same bits as the other kernels (outputs poisoned first): both dtypes, ranks
0 / 16 / 32, rows past M, several tiles per CTA, CUDA-graph replay, the epilogue's GELU and prefix. With
set_gemm_2l_rf1_auto (v2.38; on by default since v2.39) the cost model also takes it at M <= 512 where it wins: at 256
/ 512 x 3072 x 3072, with the low-rank tile late too."""
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
def _one_warpgroup(kernels, tile: int, splits: int):
    """One consumer warpgroup on `tile` tokens, split over `splits` CTAs (1: persistent), for a block."""
    kernels.set_gemm_2l_rf_warpgroups(1, tile)
    kernels.set_gemm_2l_rf_splits(splits if splits > 1 else 0)
    try:
        yield
    finally:
        kernels.set_gemm_2l_rf_splits(0)
        kernels.set_gemm_2l_rf_warpgroups(0, 0)


@contextlib.contextmanager
def _auto(kernels, on: bool):
    """The cost model with (or without) one warpgroup's tiles (set_gemm_2l_rf1_auto), for a block; the default (on)
    after it."""
    kernels.set_gemm_2l_rf1_auto(on)
    try:
        yield
    finally:
        kernels.set_gemm_2l_rf1_auto(True)


@pytest.mark.parametrize("tile", [128, 256])
@pytest.mark.parametrize("splits", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype,M,K,N,R", [(torch.bfloat16, 7, 1024, 128, 32), (torch.bfloat16, 255, 3072, 384, 0),
                                           (torch.float16, 300, 1280, 896, 16), (torch.bfloat16, 256, 3072, 3072, 32),
                                           (torch.bfloat16, 513, 2048, 768, 32)])
def test_one_warpgroup_gives_the_same_bits(hopper, tile, splits, dtype, M, K, N, R):
    x, smooth, pd = _acts(M, K, R, dtype, seed=M + tile + splits + 81)
    qw, wsc, wch, pu, b = _weights(N, K, R, dtype, 64, seed=tile + R + 81, bias=R != 16)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    qf = fragment_order(qw)
    _poison(4 * M * N, 0xFF)
    with _auto(hopper, False):
        ref = hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64).clone()
    n0 = hopper.gemm_2l_rf1_launches()
    with _one_warpgroup(hopper, tile, splits):
        _poison(4 * M * N, 0xFF)
        y = hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64)
    assert y is not None, hopper.last_error()
    assert hopper.gemm_2l_rf1_launches() - n0 == 1
    assert torch.isfinite(ref).all() and torch.isfinite(y).all(), "unwritten (NaN-poisoned) outputs"
    assert torch.equal(y, ref), f"{(y != ref).sum().item()} of {y.numel()} outputs differ"


def test_one_warpgroup_is_not_taken_by_a_lora_rank(hopper):
    """Ranks 33-64 (a LoRA on the branch) keep the two-warpgroup wide low-rank kernels: the switch is not taken."""
    M, K, N, R = 300, 1024, 384, 64
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=82)
    qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, 64, seed=82)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    qf = fragment_order(qw)
    ref = hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64).clone()
    n0 = hopper.gemm_2l_rf1_launches()
    with _one_warpgroup(hopper, 256, 1):
        y = hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64)
    assert hopper.gemm_2l_rf1_launches() == n0
    assert torch.equal(y, ref)


@pytest.mark.parametrize("splits", [1, 2])
def test_one_warpgroup_replays_from_a_cuda_graph(hopper, splits):
    """Captured with one warpgroup, replayed on new inputs: the default kernels' bits for those inputs."""
    M, K, N, R = 256, 3072, 3072, 32
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=83)
    qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, 64, seed=83)
    qf = fragment_order(qw)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    with _one_warpgroup(hopper, 256, splits):
        graph, out = _captured(lambda: hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64))
    x2, _, _ = _acts(M, K, R, torch.bfloat16, seed=84)
    xq2, xs2, lr2 = _quantize(hopper, x2, smooth, pd, 64)
    xq.copy_(xq2), xs.copy_(xs2), lr.copy_(lr2)
    graph.replay()
    torch.cuda.synchronize()
    with _auto(hopper, False):  # the two-warpgroup kernels' bits
        want = hopper.w4a4_gemm_2l_fo(xq2, xs2, qf, wsc, wch, lr2, pu, b, 64)
    assert torch.equal(out, want)


@pytest.mark.parametrize("splits", [1, 2])
def test_the_stamped_one_warpgroup_kernel(hopper, splits):
    """set_gemm_2l_tile_life with one warpgroup (EP 21: EP 10 stamped; gemm_2l_tile_life.py --warpgroups 1): the same
    bits, and each stamped CTA's first tile's steps in order (split: from the kernel's entry to the store's drain)."""
    M, K, N, R = 300, 2048, 768, 32
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=85 + splits)
    qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, 64, seed=85)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    qf = fragment_order(qw)
    ref = hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64).clone()
    both = torch.zeros(2, 4, 1, 8, 8, dtype=torch.int64, device="cuda")
    with _one_warpgroup(hopper, 256, splits):
        hopper.set_gemm_2l_tile_life(both.data_ptr(), False, True)
        try:
            out = hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64).clone()
            torch.cuda.synchronize()
        finally:
            hopper.set_gemm_2l_tile_life(0)
    assert torch.equal(out, ref)
    main, sub = both[0].cpu(), both[1].cpu()
    steps = main[:, :, 0][..., [0, 7, 1, 2, 3, 4, 5, 6]]
    if splits > 1:  # entry, the tile's steps with the exchange after the loop, drained
        steps = torch.cat([sub[:, :, 0, 6:7], steps[..., :4], sub[:, :, 0, 5:6], steps[..., 4:], sub[:, :, 0, 7:8]], -1)
    assert (steps > 0).all() and (steps[..., 1:] >= steps[..., :-1]).all(), "a stamped tile's steps out of order"


# (M, K, N, whether the cost model takes one warpgroup there): perf-notes v2.38's call 1 timed it best at the first two
@pytest.mark.parametrize("M,K,N,one", [(256, 3072, 3072, True), (512, 3072, 3072, True), (200, 3072, 3072, True),
                                       (512, 3072, 12288, False), (256, 12288, 3072, False), (1024, 3072, 3072, False)])
def test_the_cost_model_takes_one_warpgroup_where_it_wins(hopper, M, K, N, one):
    assert hopper.gemm_2l_rf1_auto() is True  # the default since v2.39
    x, smooth, pd = _acts(M, K, 32, torch.bfloat16, seed=M + N + 87)
    qw, wsc, wch, pu, b = _weights(N, K, 32, torch.bfloat16, 64, seed=K + 87)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    qf = fragment_order(qw)
    n0 = hopper.gemm_2l_rf1_launches()
    _poison(4 * M * N, 0xFF)
    with _auto(hopper, False):
        ref = hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64).clone()
    assert hopper.gemm_2l_rf1_launches() == n0
    _poison(4 * M * N, 0xFF)
    y = hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64)
    assert hopper.gemm_2l_rf1_launches() - n0 == int(one)
    assert torch.isfinite(y).all(), "unwritten (NaN-poisoned) outputs"
    assert torch.equal(y, ref)


@pytest.mark.parametrize("M", [256, 130])
def test_one_warpgroup_with_the_low_rank_tile_late(hopper, M):
    """The chained down projection (set_lr_chain: lr comes from the kernel just before, the GEMM waits for it only
    before its epilogue) with the cost model's one-warpgroup tile: the bits of the two-warpgroup kernels."""
    K, N = 3072, 3072
    x, smooth, pd = _acts(M, K, 32, torch.bfloat16, seed=M + 89)
    qw, wsc, wch, pu, b = _weights(N, K, 32, torch.bfloat16, 64, seed=89)
    qf = fragment_order(qw)
    chain = hopper.lr_chain()
    hopper.set_lr_chain(1)
    try:
        with _auto(hopper, True):
            n0, l0 = hopper.gemm_2l_rf1_launches(), hopper.gemm_2l_late_launches()
            xq, xs, lr = _quantize(hopper, x, smooth, pd)
            _poison(4 * M * N, 0xFF)
            y = hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64).clone()
            ran = hopper.gemm_2l_rf1_launches() - n0, hopper.gemm_2l_late_launches() - l0
    finally:
        hopper.set_lr_chain(chain)
    torch.cuda.synchronize()
    with _auto(hopper, False):  # (the default takes one warpgroup here since v2.39)
        ref = hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr.clone(), pu, b, 64).clone()
    assert ran[0] == 1
    if ran[1] == 0:
        pytest.skip(f"the GEMM at {M} x {K} x {N} did not take the low-rank tile late here")
    assert torch.isfinite(y).all()
    assert torch.equal(y, ref)


@pytest.mark.parametrize("tile", [128, 256])
@pytest.mark.parametrize("M,K,N,P", [(300, 1024, 768, 0), (512, 3072, 3072, 3072), (77, 2048, 640, 24)])
def test_one_warpgroup_epilogue_gelu_and_prefix(hopper, tile, M, K, N, P):
    """w4a4_gemm_2l_fo_ep (GELU, FLUX's concatenation) on one warpgroup's tiles: without activation the GEMM columns
    are the two-warpgroup kernels' bits and the prefix columns the prefix's, with GELU the same bits as there too;
    every element written (poisoned first)."""
    x, smooth, pd = _acts(M, K, 32, torch.bfloat16, seed=M + N + 97)
    qw, wsc, wch, pu, b = _weights(N, K, 32, torch.bfloat16, 64, seed=N + 97)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    qf = fragment_order(qw)
    prefix = torch.randn(M, P, device="cuda").to(torch.bfloat16) if P else None
    with _auto(hopper, False):
        want = [hopper.w4a4_gemm_2l_fo_ep(xq, xs, qf, wsc, wch, lr, pu, b, 64, act, prefix).clone() for act in (0, 1)]
    n0 = hopper.gemm_2l_rf1_launches()
    hopper.set_gemm_2l_rf_warpgroups(1, tile)
    try:
        got = []
        for act in (0, 1):
            _poison(2 * M * (N + P) + 4096, 0xFF)
            got.append(hopper.w4a4_gemm_2l_fo_ep(xq, xs, qf, wsc, wch, lr, pu, b, 64, act, prefix))
    finally:
        hopper.set_gemm_2l_rf_warpgroups(0, 0)
    assert hopper.gemm_2l_rf1_launches() - n0 == 2
    for act, (y, w) in enumerate(zip(got, want)):
        assert y is not None, hopper.last_error()
        assert y.shape == (M, P + N) and torch.isfinite(y).all(), f"act {act}: unwritten outputs"
        assert torch.equal(y, w), f"act {act}: {(y != w).sum().item()} of {y.numel()} outputs differ"

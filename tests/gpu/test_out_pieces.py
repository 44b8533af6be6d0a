"""Two warpgroups' unsplit 256-token tiles staging and storing their output in two token halves through half the
memory, which gives their stage ring a fourth stage (Hopper; perf-notes v2.36's g.51, the default since;
set_gemm_2l_out_pieces(256, 1) runs the three-stage kernel of before; the three-warpgroup 192-token tile's halves, g.50,
are tests/gpu/test_out_halves.py). Both must give the same bits (outputs poisoned first), in bfloat16 and float16: tiles
of one and many stages, many tiles per CTA, last token tiles ending in either half, GELU and a concatenated prefix, the
low-rank tile late after the chained down projection, and CUDA-graph replay. Also the split kernel's halves (g.54, the
default since v2.37; set_gemm_2l_split_halves(False) runs the three-stage split kernel)."""
from __future__ import annotations

import contextlib

import pytest
import torch

from test_kernels import ext  # noqa: F401  (ext: the fixture)
from test_kernels_2l import hopper  # noqa: F401,F811  (the fixture)
from test_kernels_2l import _acts, _captured, _fo_problem, _forced_plan, _gemm_fo, _poison, _quantize, _weights

from svdquant_hf.ops.layout_2l import fragment_order

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TILE256 = dict(tile=256, splits=1, persistent=1, warpgroups=(2, 0))  # the forced plan: two warpgroups, 256 tokens


@contextlib.contextmanager
def _out_pieces(kernels, pieces: int):
    """The 256-token tile's output in `pieces` for a block (as before after it)."""
    before = kernels.gemm_2l_out_pieces(256)
    assert kernels.set_gemm_2l_out_pieces(256, pieces)
    try:
        yield
    finally:
        kernels.set_gemm_2l_out_pieces(256, before)


def _in_halves_and_whole(kernels, call):
    """(call()'s output with the 256-token tile's output in halves, the halves instance's launches in it, its output in
    one piece), that tile's kernel forced for both."""
    count = kernels.gemm_2l_out_halves_launches
    with _forced_plan(kernels, **TILE256):
        with _out_pieces(kernels, 2):
            n0 = count()
            y = call()
            ran = count() - n0
        with _out_pieces(kernels, 1):
            n1 = count()
            ref = call()
            assert count() == n1
    return y, ran, ref


def test_out_pieces_defaults_and_bad_counts(hopper):
    assert hopper.gemm_2l_out_pieces(256) == 2  # g.51 and g.50, the defaults since v2.36
    assert hopper.gemm_2l_out_pieces(192) == 2
    assert hopper.gemm_2l_out_halves() is True
    for tile, pieces in [(224, 2), (256, 4), (192, 4), (192, 3), (128, 2), (192, 0)]:
        assert hopper.set_gemm_2l_out_pieces(tile, pieces) is False
    assert (hopper.gemm_2l_out_pieces(256), hopper.gemm_2l_out_pieces(192)) == (2, 2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
# M % 256: 0, 160 (second half), 76 (first), 194 (second), 37, 1
@pytest.mark.parametrize("M,K,N", [(4608, 3072, 3072), (4000, 640, 1152), (1100, 128, 768), (450, 1536, 384),
                                   (37, 640, 384), (4097, 256, 384)])
def test_the_pieces_give_the_same_bits(hopper, dtype, M, K, N):
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, dtype, M + K + N + 256, 3 * N + 1)
    out, ran, ref = _in_halves_and_whole(hopper, lambda: _gemm_fo(hopper, xq, xs, qf, w, lr).clone())
    assert ran == 1
    assert torch.isfinite(ref).all()
    assert torch.equal(out, ref)


@pytest.mark.parametrize("act", [0, 1])
@pytest.mark.parametrize("M,K,N,P", [(4608, 1024, 3072, 0), (1000, 640, 384, 64)])
def test_gelu_and_a_prefix_keep_the_bits(hopper, act, M, K, N, P):
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, M + N + act, N + P)
    wsc, wch, pu, b = w
    prefix = torch.randn(M, P, device="cuda").to(torch.bfloat16) if P else None

    def call():
        _poison(2 * M * (N + P) + 4096, 0xFF)
        y = hopper.w4a4_gemm_2l_fo_ep(xq, xs, qf, wsc, wch, lr, pu, b, 64, act, prefix)
        assert y is not None, hopper.last_error()
        return y.clone()

    out, ran, ref = _in_halves_and_whole(hopper, call)
    assert ran == 1
    assert torch.isfinite(ref).all()
    assert torch.equal(out, ref)


@pytest.mark.parametrize("M,K,N", [(256, 3072, 3072), (200, 12288, 3072), (130, 3072, 9216)])
def test_the_low_rank_tile_late_keeps_the_bits(hopper, M, K, N):
    x, smooth, pd = _acts(M, K, 32, torch.bfloat16, seed=5 * M + K + N)
    qw, wsc, wch, pu, b = _weights(N, K, 32, torch.bfloat16, 64, seed=M + N)
    qf, w = fragment_order(qw), (wsc, wch, pu, b)
    count = hopper.gemm_2l_out_halves_launches
    chain = hopper.lr_chain()
    with _forced_plan(hopper, **TILE256):
        hopper.set_lr_chain(1)
        try:
            with _out_pieces(hopper, 2):
                n0, p0 = hopper.gemm_2l_late_launches(), count()
                xq, xs, lr = _quantize(hopper, x, smooth, pd)
                y = _gemm_fo(hopper, xq, xs, qf, w, lr).clone()
                ran = hopper.gemm_2l_late_launches() > n0 and count() > p0
        finally:
            hopper.set_lr_chain(chain)
        with _out_pieces(hopper, 1):
            in_order = _gemm_fo(hopper, xq, xs, qf, w, lr.clone()).clone()
    torch.cuda.synchronize()
    if not ran:
        pytest.skip(f"the 256-token kernel at {M} x {K} x {N} did not take the low-rank tile late here")
    assert torch.isfinite(in_order).all()
    assert torch.equal(y, in_order)


def test_replays_from_a_cuda_graph(hopper):
    xq, xs, lr, _, qf, w = _fo_problem(hopper, 2000, 1024, 1536, torch.bfloat16, 41 + 256, 42)
    wsc, wch, pu, b = w
    count = hopper.gemm_2l_out_halves_launches
    with _forced_plan(hopper, **TILE256):
        with _out_pieces(hopper, 1):
            ref = _gemm_fo(hopper, xq, xs, qf, w, lr).clone()
        with _out_pieces(hopper, 2):
            n0 = count()
            graph, y = _captured(lambda: hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64))
            launches = count() - n0
        y.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
    assert launches == 2
    assert torch.equal(y, ref)


@pytest.mark.parametrize("splits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("dtype,M,K,N,R", [(torch.bfloat16, 1, 1024, 128, 32), (torch.bfloat16, 255, 12288, 3072, 32),
                                           (torch.float16, 300, 1280, 896, 16), (torch.bfloat16, 513, 2048, 768, 0),
                                           (torch.float16, 200, 3072, 384, 32)])
def test_the_split_kernel_in_halves_gives_the_same_bits(hopper, splits, dtype, M, K, N, R):
    """set_gemm_2l_split_halves (g.54, the default since v2.37): the 256-token register-fragment loop with K split over a
    cluster of 2-8 CTAs staging its output in halves, each CTA storing only its own token octets (three CTAs: one CTA's
    octets in both halves), equals the three-stage split kernel bit for bit, every element written (poisoned first)."""
    x, smooth, pd = _acts(M, K, R, dtype, seed=M + splits + 61)
    qw, wsc, wch, pu, b = _weights(N, K, R, dtype, 64, seed=K + R + 61, bias=R != 16)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    qf = fragment_order(qw)
    assert hopper.gemm_2l_split_halves() is True
    with _forced_plan(hopper, **TILE256):
        hopper.set_gemm_2l_rf_splits(splits)
        try:
            hopper.set_gemm_2l_split_halves(False)
            n0 = hopper.gemm_2l_split_halves_launches()
            _poison(4 * M * N, 0xFF)
            ref = hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64).clone()
            ran_whole = hopper.gemm_2l_split_halves_launches() - n0
            hopper.set_gemm_2l_split_halves(True)
            _poison(4 * M * N, 0xFF)
            y = hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64)
            ran = hopper.gemm_2l_split_halves_launches() - n0
        finally:
            hopper.set_gemm_2l_split_halves(True)
            hopper.set_gemm_2l_rf_splits(0)
    assert y is not None, hopper.last_error()
    assert (ran_whole, ran) == (0, 1)
    assert torch.isfinite(ref).all() and torch.isfinite(y).all(), "unwritten (NaN-poisoned) outputs"
    assert torch.equal(y, ref), f"{(y != ref).sum().item()} of {y.numel()} outputs differ"


@pytest.mark.parametrize("warpgroups,tile", [(3, 192), (2, 256)])
def test_the_stamped_twin_has_the_halves_layout(hopper, warpgroups, tile):
    """set_gemm_2l_tile_life on the default layouts (EP 19: the 192-token three-warpgroup and the 256-token two-warpgroup
    tiles with their output in halves, so benchmarks/gemm_2l_tile_life.py describes the default kernels): the
    default's bits, a halves instance launched, every stamped tile's steps in order, and the store's sub-steps in
    order between steps 5 and 6."""
    M, K, N = 4608, 1024, 3072
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, 71 + tile, 72)
    ref = _gemm_fo(hopper, xq, xs, qf, w, lr).clone()
    both = torch.zeros(2, 4, warpgroups, 8, 8, dtype=torch.int64, device="cuda")
    plan = dict(persistent=1, warpgroups=(3, 192)) if warpgroups == 3 else TILE256
    with _forced_plan(hopper, **plan):
        n0 = hopper.gemm_2l_out_halves_launches()
        hopper.set_gemm_2l_tile_life(both.data_ptr(), False, True)
        try:
            out = _gemm_fo(hopper, xq, xs, qf, w, lr).clone()
            torch.cuda.synchronize()
        finally:
            hopper.set_gemm_2l_tile_life(0)
        ran = hopper.gemm_2l_out_halves_launches() - n0
    assert ran == 1
    assert torch.equal(out, ref)
    main, sub = both[0].cpu(), both[1].cpu()
    tiles = (N // (64 * warpgroups)) * -(-M // tile)
    per_cta = tiles // torch.cuda.get_device_properties(0).multi_processor_count  # CTAs 0-3 have at least this many
    assert per_cta >= 2
    order = main[:, :, : min(per_cta, 8)][..., [0, 7, 1, 2, 3, 4, 5, 6]]
    assert (order > 0).all() and (order[..., 1:] >= order[..., :-1]).all(), "a stamped tile's steps out of order"
    chain = torch.cat([main[:, :, :2, 5:6], sub[:, :, :2, :5], main[:, :, :2, 6:7]], dim=-1)
    assert (chain > 0).all() and (chain[..., 1:] >= chain[..., :-1]).all(), "the store's sub-steps out of order"


@pytest.mark.parametrize("splits", [2, 3, 4])
def test_the_stamped_split_kernel_records_a_ctas_whole_life(hopper, splits):
    """set_gemm_2l_tile_life with the 256-token tile split over a cluster (EP 20: EP 18 stamped; benchmarks/
    gemm_2l_tile_life.py --splits): the split kernel's bits, a split-halves instance launched, and for the first four
    CTAs (tile x splits + rank) every step of their one tile in order, from the kernel's entry through the exchange to
    the store's drain."""
    M, K, N = 300, 3072, 768
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, 77 + splits, 78)
    both = torch.zeros(2, 4, 2, 8, 8, dtype=torch.int64, device="cuda")
    with _forced_plan(hopper, **TILE256):
        hopper.set_gemm_2l_rf_splits(splits)
        try:
            ref = _gemm_fo(hopper, xq, xs, qf, w, lr).clone()
            n0 = hopper.gemm_2l_split_halves_launches()
            hopper.set_gemm_2l_tile_life(both.data_ptr(), False, True)
            out = _gemm_fo(hopper, xq, xs, qf, w, lr).clone()
            torch.cuda.synchronize()
        finally:
            hopper.set_gemm_2l_tile_life(0)
            hopper.set_gemm_2l_rf_splits(0)
        ran = hopper.gemm_2l_split_halves_launches() - n0
    assert ran == 1
    assert torch.equal(out, ref)
    main, sub = both[0].cpu(), both[1].cpu()
    # entry, start, first stage landed, first k-step, loop end, exchange done, lr, scales, low-rank, stored, drained
    life = torch.cat([sub[:, :, 0, 6:7], main[:, :, 0, [0, 7, 1, 2]], sub[:, :, 0, 5:6], main[:, :, 0, 3:7],
                      sub[:, :, 0, 7:8]], dim=-1)
    assert (life > 0).all() and (life[..., 1:] >= life[..., :-1]).all(), "a split CTA's steps out of order"
    assert (main[:, :, 1:] == 0).all(), "a split CTA has one tile"

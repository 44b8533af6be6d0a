"""The register-fragment kernels' producer asking L2 for the next tile's first stages halfway through each tile
(set_gemm_2l_l2_prefetch, Hopper, opt-in; perf-notes v2.33). A prefetch into L2 moves no data into shared memory, so
the output must be the default's bits (outputs poisoned first): two and three warpgroups with many tiles per CTA and
tiles of one stage, K split over a cluster (one tile per CTA: nothing to prefetch), the low-rank tile late, and both
switches of this session together. Also the tile-life probe without its output (set_gemm_2l_tile_life(.., no_store)):
it stamps every step and writes no output element."""
from __future__ import annotations

import pytest
import torch

from test_kernels import ext  # noqa: F401  (ext: the fixture)
from test_kernels_2l import _switched, hopper  # noqa: F401  (hopper: the fixture)
from test_kernels_2l import _fo_problem, _gemm_fo as _gemm, _late_or_skip, _stamped

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _prefetched(ext, *args, lr_producer: bool = False):
    """The GEMM with set_gemm_2l_l2_prefetch(True) for the call (and set_gemm_2l_lr_by_producer(lr_producer)), a copy,
    and how many launches prefetched."""
    n0 = ext.gemm_2l_l2_prefetch_launches()
    with _switched(ext.set_gemm_2l_l2_prefetch, True, False), _switched(ext.set_gemm_2l_lr_by_producer, lr_producer,
                                                                        False):
        y = _gemm(ext, *args).clone()
    return y, ext.gemm_2l_l2_prefetch_launches() - n0


def test_l2_prefetch_is_off_by_default(hopper):
    assert hopper.gemm_2l_l2_prefetch() is False


@pytest.mark.parametrize("lr_producer", [False, True])
@pytest.mark.parametrize("warpgroups,tile", [(2, 224), (2, 256), (2, 64), (3, 192), (3, 128)])
@pytest.mark.parametrize("M,K,N", [(4608, 1536, 3072), (1000, 128, 768), (4097, 640, 384)])
def test_prefetching_gives_the_same_bits(hopper, lr_producer, warpgroups, tile, M, K, N):
    if warpgroups == 3 and N % 192:
        pytest.skip("three warpgroups take N % 192 == 0")
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, M + K + N + tile, M + N)
    if warpgroups == 3:
        hopper.set_gemm_2l_rf_warpgroups(3, tile)
    else:
        hopper.set_gemm_2l_persistent(1)
        hopper.set_gemm_2l_tile_tokens(tile)
        hopper.set_gemm_2l_splits(1)
    try:
        ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
        out, ran = _prefetched(hopper, xq, xs, qf, w, lr, lr_producer=lr_producer)
        torch.cuda.synchronize()
    finally:
        hopper.set_gemm_2l_rf_warpgroups(0, 0)
        hopper.set_gemm_2l_persistent(-1)
        hopper.set_gemm_2l_tile_tokens(0)
        hopper.set_gemm_2l_splits(0)
    assert ran == 1, "the prefetching kernel did not run"
    assert torch.isfinite(ref).all()
    assert torch.equal(out, ref)


def test_split_over_a_cluster_gives_the_same_bits(hopper):
    M, K, N = 256, 3072, 3072
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, 41, 42)
    with _switched(hopper.set_gemm_2l_rf_splits, 2, 0):
        ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
        out, ran = _prefetched(hopper, xq, xs, qf, w, lr)
    torch.cuda.synchronize()
    assert ran == 1
    assert torch.equal(out, ref)


@pytest.mark.parametrize("M,K,N", [(256, 3072, 9216), (200, 12288, 3072)])
def test_the_low_rank_tile_late_keeps_the_bits(hopper, M, K, N):
    y, in_order = _late_or_skip(hopper, M, K, N, "l2_prefetch", "the register-fragment loop")
    assert torch.equal(y, in_order)


@pytest.mark.parametrize("warpgroups", [2, 3])
def test_tile_life_probe_without_output_stamps_and_writes_nothing(hopper, warpgroups):
    M, K, N = 4608, 768, 3072
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, 51, 52)
    stamps = torch.zeros(4, warpgroups, 8, 8, dtype=torch.int64, device="cuda")
    if warpgroups == 3:
        hopper.set_gemm_2l_rf_warpgroups(3, 192)
    else:
        hopper.set_gemm_2l_tile_tokens(224)
    hopper.set_gemm_2l_tile_life(stamps.data_ptr(), True)
    try:
        out = _gemm(hopper, xq, xs, qf, w, lr)  # poisoned with NaN first
        torch.cuda.synchronize()
    finally:
        hopper.set_gemm_2l_tile_life(0)
        hopper.set_gemm_2l_rf_warpgroups(0, 0)
        hopper.set_gemm_2l_tile_tokens(0)
    assert torch.isnan(out).all(), "the probe wrote output"
    order = stamps[:, :, :2, [0, 7, 1, 2, 3, 4, 5, 6]].cpu()
    assert (order > 0).all() and (order[..., 1:] >= order[..., :-1]).all()
    again = _stamped(hopper, torch.zeros_like(stamps), lambda: _gemm(hopper, xq, xs, qf, w, lr).clone())
    assert torch.isfinite(again).all(), "the stamped kernel without the probe writes its output again"


@pytest.mark.parametrize("warpgroups", [2, 3])
def test_tile_life_substeps_keep_the_bits_and_stamp_in_order(hopper, warpgroups):
    """set_gemm_2l_tile_life(.., substeps=True): the stamped kernel's output is still the default's bits, the buffer's
    second half gets the store step's sub-steps 8 .. 12 between steps 5 and 6, and without substeps it stays 0."""
    M, K, N = 4608, 768, 3072
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, 53, 54)
    ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
    both = torch.zeros(2, 4, warpgroups, 8, 8, dtype=torch.int64, device="cuda")
    if warpgroups == 3:
        hopper.set_gemm_2l_rf_warpgroups(3, 192)
    else:
        hopper.set_gemm_2l_tile_tokens(224)
    try:
        hopper.set_gemm_2l_tile_life(both.data_ptr(), False, True)
        out = _gemm(hopper, xq, xs, qf, w, lr).clone()
        torch.cuda.synchronize()
        hopper.set_gemm_2l_tile_life(0)
        plain = torch.zeros_like(both)
        _stamped(hopper, plain, lambda: _gemm(hopper, xq, xs, qf, w, lr))
    finally:
        hopper.set_gemm_2l_tile_life(0)
        hopper.set_gemm_2l_rf_warpgroups(0, 0)
        hopper.set_gemm_2l_tile_tokens(0)
    assert torch.equal(out, ref)
    main, sub = both[0, :, :, :2].cpu(), both[1, :, :, :2].cpu()
    chain = torch.cat([main[..., 5:6], sub[..., :5], main[..., 6:7]], dim=-1)
    assert (chain > 0).all() and (chain[..., 1:] >= chain[..., :-1]).all()
    assert (sub[..., 5:] == 0).all()
    assert (plain[1] == 0).all(), "sub-steps stamped without substeps"

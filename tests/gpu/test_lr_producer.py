"""The register-fragment kernels' low-rank tiles loaded by the producer warpgroup's idle warps (set_gemm_2l_lr_by_producer,
Hopper, opt-in; perf-notes v2.33) rather than by the last consumer warpgroup. Only who copies the low-rank tile and the
token scales into shared memory changes (and when: after every consumer's low-rank step of the previous tile), so the
output must be the default's bits (outputs poisoned first): two warpgroups on every token tile with many tiles per CTA,
three warpgroups, the turns, K split over a cluster (one tile per CTA), the low-rank tile late after the chained down
projection, ranks 0 / 16 / 64 (the 64-wide low-rank tile), CUDA-graph replay. Also the stamped twin of the default loop
(set_gemm_2l_tile_life): its steps in order, with and without the switch."""
from __future__ import annotations

import pytest
import torch

from test_kernels import ext  # noqa: F401  (ext: the fixture)
from test_kernels_2l import _switched, hopper  # noqa: F401  (hopper: the fixture)
from test_kernels_2l import _fo_problem, _forced_plan, _gemm_fo as _gemm, _graph_replayed, _late_or_skip, _stamped
from test_kernels_2l import _switched_gemm

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_lr_by_producer_is_off_by_default(hopper):
    assert hopper.gemm_2l_lr_by_producer() is False


@pytest.mark.parametrize("pipelined", [True, False])
@pytest.mark.parametrize("tile", [64, 128, 224, 256])
@pytest.mark.parametrize("M,K,N,dtype,bias", [(4608, 1536, 3072, torch.bfloat16, True),
                                              (4097, 640, 384, torch.float16, False),
                                              (1000, 256, 768, torch.bfloat16, True),
                                              (37, 640, 128, torch.bfloat16, False)])
def test_two_warpgroups_give_the_same_bits(hopper, pipelined, tile, M, K, N, dtype, bias):
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, dtype, M + K + N + tile, M + N, bias=bias)
    with _forced_plan(hopper, tile, 1, persistent=1):
        with _switched(hopper.set_gemm_2l_rf_pipelined, pipelined, True):
            ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
            out, ran = _switched_gemm(hopper, "lr_by_producer", xq, xs, qf, w, lr)
        torch.cuda.synchronize()
    assert ran == 1, "the producer's warps did not load the low-rank tiles"
    assert torch.isfinite(ref).all()
    assert torch.equal(out, ref)


@pytest.mark.parametrize("tile", [128, 192])
@pytest.mark.parametrize("M,K,N", [(4608, 3072, 3072), (1000, 256, 768), (37, 640, 384)])
def test_three_warpgroups_give_the_same_bits(hopper, tile, M, K, N):
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, M + K + N + tile, M + N)
    hopper.set_gemm_2l_rf_warpgroups(3, tile)
    try:
        ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
        out, ran = _switched_gemm(hopper, "lr_by_producer", xq, xs, qf, w, lr)
        torch.cuda.synchronize()
    finally:
        hopper.set_gemm_2l_rf_warpgroups(0, 0)
    assert ran == 1
    assert torch.isfinite(ref).all()
    assert torch.equal(out, ref)


@pytest.mark.parametrize("splits", [2, 4])
@pytest.mark.parametrize("M,K,N", [(256, 3072, 3072), (129, 512, 384)])
def test_split_over_a_cluster_gives_the_same_bits(hopper, splits, M, K, N):
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, M + K + N + splits, M + N)
    hopper.set_gemm_2l_rf_splits(splits)
    try:
        ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
        out, ran = _switched_gemm(hopper, "lr_by_producer", xq, xs, qf, w, lr)
        torch.cuda.synchronize()
    finally:
        hopper.set_gemm_2l_rf_splits(0)
    assert ran == 1
    assert torch.equal(out, ref)


@pytest.mark.parametrize("R", [0, 16, 64])
def test_every_branch_rank_gives_the_same_bits(hopper, R):
    """Rank 0 (token scales only), 16, and 64 (the 64-wide low-rank tile, a LoRA on the branch)."""
    M, K, N = 3000, 1024, 1536
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, M + R, N + R, R=R)
    with _forced_plan(hopper, 224 if R <= 32 else 128, 1, persistent=1):
        ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
        out, ran = _switched_gemm(hopper, "lr_by_producer", xq, xs, qf, w, lr)
        torch.cuda.synchronize()
    assert ran == 1
    assert torch.isfinite(ref).all()
    assert torch.equal(out, ref)


@pytest.mark.parametrize("M,K,N", [(256, 3072, 9216), (256, 3072, 3072), (200, 12288, 3072)])
def test_the_low_rank_tile_late_keeps_the_bits(hopper, M, K, N):
    """After the chained down projection (set_lr_chain(1)) the producer's warps wait for it before the first tile's
    copies: the bits of the in-order GEMM on a copy of lr."""
    y, in_order = _late_or_skip(hopper, M, K, N, "lr_by_producer", "the register-fragment loop")
    assert torch.isfinite(in_order).all()
    assert torch.equal(y, in_order)


def test_replays_from_a_cuda_graph(hopper):
    y, ref, launches = _graph_replayed(hopper, "lr_by_producer", _gemm, 17)
    assert launches == 2
    assert torch.equal(y, ref)

@pytest.mark.parametrize("lr_producer", [False, True])
@pytest.mark.parametrize("warpgroups", [2, 3])
def test_stamped_default_loop_keeps_the_bits_and_orders_its_steps(hopper, warpgroups, lr_producer):
    """set_gemm_2l_tile_life on the pipelined loop (benchmarks/gemm_2l_tile_life.py): two warpgroups on 224-token tiles
    or three on 192; each warpgroup's stamped tiles have their eight steps in order (start, first stage landed, first
    k-step issued, loop end, low-rank tile, scales, branch, stored), its tiles one after another."""
    M, K, N = 4608, 1024, 3072
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, 31 + warpgroups, 32)
    stamps = torch.zeros(4, warpgroups, 8, 8, dtype=torch.int64, device="cuda")
    ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
    if warpgroups == 3:
        hopper.set_gemm_2l_rf_warpgroups(3, 192)
    else:
        hopper.set_gemm_2l_tile_tokens(224)
    try:
        with _switched(hopper.set_gemm_2l_lr_by_producer, lr_producer, False):
            out = _stamped(hopper, stamps, lambda: _gemm(hopper, xq, xs, qf, w, lr).clone())
    finally:
        hopper.set_gemm_2l_rf_warpgroups(0, 0)
        hopper.set_gemm_2l_tile_tokens(0)
    assert torch.equal(out, ref)
    tiles = (N // (64 * warpgroups)) * -(-M // (192 if warpgroups == 3 else 224))
    per_cta = tiles // torch.cuda.get_device_properties(0).multi_processor_count  # CTAs 0-3 have at least this many
    assert per_cta >= 2
    s = stamps[:, :, : min(per_cta, 8)].cpu()
    order = s[..., [0, 7, 1, 2, 3, 4, 5, 6]]
    assert (order > 0).all(), "a step of a stamped tile was not stamped"
    assert (order[..., 1:] >= order[..., :-1]).all(), "a tile's steps out of order"
    assert (s[:, :, 1:, 0] >= s[:, :, :-1, 6]).all(), "a warpgroup's tiles overlap"

"""The register-fragment loop pipelined within each warpgroup (set_gemm_2l_rf_pipelined, Hopper, on by default since
perf-notes v2.32; off: the named-barrier turns between the consumer warpgroups): each k-step's
wgmma is a commit group of its own and the next k-step is widened under the three in flight, with no turns between the
two consumer warpgroups. The int32 sums are exact, so only the order in which wgmmas reach the tensor cores changes:
the output must be the turns' bits (outputs poisoned first). The shapes cover tiles of one stage (a warpgroup
may then run whole tiles ahead of the other, bound by the stage ring), many tiles per CTA, 96 stages, awkward M, every
token tile (224: four stages in the ring, 256: three), K split over a cluster (one tile per CTA, the int32 partials
exchanged after the loop), the GEMM chained after the quantizer's down projection (its low-rank tile late), and three
consumer warpgroups (192-row tiles), forced and where the cost model picks them."""
from __future__ import annotations

import pytest
import torch

from test_kernels import ext  # noqa: F401  (ext: the fixture)
from test_kernels_2l import _switched, hopper  # noqa: F401  (hopper: the fixture)
from test_kernels_2l import _fo_problem, _forced_plan, _gemm_fo as _gemm, _graph_replayed, _late_gemm

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _by_turns(ext, *args):
    """The reference: the same GEMM with the turns (set_gemm_2l_rf_pipelined(False) for the call), a copy."""
    with _switched(ext.set_gemm_2l_rf_pipelined, False, True):
        return _gemm(ext, *args).clone()


@pytest.mark.parametrize("tile", [64, 128, 224, 256])
@pytest.mark.parametrize("dtype,bias", [(torch.bfloat16, True), (torch.float16, False)])
@pytest.mark.parametrize("M,K,N", [(4608, 3072, 3072), (4096, 3072, 768), (8192, 128, 3072), (1000, 256, 768),
                                   (4097, 1536, 384), (300, 12288, 256), (37, 640, 128)])
def test_pipelined_loop_gives_the_same_bits(hopper, tile, dtype, bias, M, K, N):
    xq, xs, lr, _, qf, (wsc, wch, pu, b) = _fo_problem(hopper, M, K, N, dtype, M + K + N, M + N, bias=bias)
    with _forced_plan(hopper, tile, 1, persistent=1):
        ref = _by_turns(hopper, xq, xs, qf, (wsc, wch, pu, b), lr).clone()
        n0 = hopper.gemm_2l_rf_pipelined_launches()
        with _switched(hopper.set_gemm_2l_rf_pipelined, True, True):
            out = _gemm(hopper, xq, xs, qf, (wsc, wch, pu, b), lr).clone()
            again = _gemm(hopper, xq, xs, qf, (wsc, wch, pu, b), lr).clone()
        torch.cuda.synchronize()
    assert hopper.gemm_2l_rf_pipelined_launches() == n0 + 2, "the pipelined kernel ran"
    assert torch.isfinite(ref).all()
    assert torch.equal(out, ref) and torch.equal(again, ref)


@pytest.mark.parametrize("splits", [2, 4])
@pytest.mark.parametrize("M,K,N", [(256, 3072, 3072), (255, 12288, 768), (64, 1536, 256), (129, 512, 384)])
def test_pipelined_loop_split_over_a_cluster_gives_the_same_bits(hopper, splits, M, K, N):
    xq, xs, lr, _, qf, (wsc, wch, pu, b) = _fo_problem(hopper, M, K, N, torch.bfloat16, M + K + N + splits, M + N)
    hopper.set_gemm_2l_rf_splits(splits)
    try:
        ref = _by_turns(hopper, xq, xs, qf, (wsc, wch, pu, b), lr).clone()
        n0 = hopper.gemm_2l_rf_pipelined_launches()
        with _switched(hopper.set_gemm_2l_rf_pipelined, True, True):
            out = _gemm(hopper, xq, xs, qf, (wsc, wch, pu, b), lr).clone()
        torch.cuda.synchronize()
    finally:
        hopper.set_gemm_2l_rf_splits(0)
    assert hopper.gemm_2l_rf_pipelined_launches() == n0 + 1, "the pipelined kernel ran"
    assert torch.isfinite(ref).all()
    assert torch.equal(out, ref)


@pytest.mark.parametrize("M,K,N", [(256, 3072, 9216), (256, 3072, 3072), (200, 12288, 3072)])
def test_pipelined_loop_takes_the_low_rank_tile_late(hopper, M, K, N):
    """After the chained down projection (set_lr_chain(1)) the GEMM starts before lr is complete and loads its first
    low-rank tile late: the bits of the in-order GEMM on a copy of lr."""
    y, in_order, ran = _late_gemm(hopper, M, K, N, "rf_pipelined", lambda e, *args: _by_turns(e, *args))
    if not ran:
        pytest.skip(f"the plan at {M} x {K} x {N} is not the register-fragment loop taking lr late here")
    assert torch.isfinite(in_order).all()
    assert torch.equal(y, in_order)


def test_pipelined_loop_replays_from_a_cuda_graph(hopper):
    y, ref, launches = _graph_replayed(hopper, "rf_pipelined", lambda e, *args: _by_turns(e, *args), 7)
    assert launches == 2, "warmed up and captured the pipelined kernel"
    assert torch.equal(y, ref)

def test_pipelined_loop_is_on_by_default(hopper):
    assert hopper.gemm_2l_rf_pipelined() is True


@pytest.mark.parametrize("tile", [128, 192])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,K,N", [(4608, 3072, 3072), (1000, 256, 768), (300, 12288, 384), (37, 640, 384)])
def test_pipelined_three_warpgroups_give_the_same_bits(hopper, tile, dtype, M, K, N):
    """Three consumer warpgroups (192-row tiles, forced) pipelined: the bits of the three-warpgroup loop with turns."""
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, dtype, M + K + N + tile, M + N)
    hopper.set_gemm_2l_rf_warpgroups(3, tile)
    try:
        ref = _by_turns(hopper, xq, xs, qf, w, lr).clone()
        n0 = hopper.gemm_2l_rf_pipelined_launches()
        with _switched(hopper.set_gemm_2l_rf_pipelined, True, True):
            out = _gemm(hopper, xq, xs, qf, w, lr).clone()
        torch.cuda.synchronize()
    finally:
        hopper.set_gemm_2l_rf_warpgroups(0, 0)
    assert hopper.gemm_2l_rf_pipelined_launches() == n0 + 1, "the pipelined kernel ran"
    assert torch.isfinite(ref).all()
    assert torch.equal(out, ref)


@pytest.mark.parametrize("M,K,N,persistent", [(4608, 3072, 3072, True), (4608, 3072, 12288, True),
                                              (512, 3072, 9216, False)])
def test_pipelined_loop_runs_where_the_model_picks_three_warpgroups(hopper, M, K, N, persistent):
    """With no plan forced, set_gemm_2l_rf_pipelined runs where the cost model's choice runs, three consumer
    warpgroups included (N % 192 == 0: FLUX.1's shapes at 4608 tokens, where the plan is surely persistent), with the
    default's bits; at 512 tokens whatever runs keeps the bits."""
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, M + N, K + N)
    ref = _by_turns(hopper, xq, xs, qf, w, lr).clone()
    with _switched(hopper.set_gemm_2l_rf_pipelined, True, True):
        n0 = hopper.gemm_2l_rf_pipelined_launches()
        out = _gemm(hopper, xq, xs, qf, w, lr).clone()
        ran = hopper.gemm_2l_rf_pipelined_launches() - n0
    torch.cuda.synchronize()
    assert torch.equal(out, ref)
    assert ran == 1 or not persistent, "the pipelined kernel did not run"

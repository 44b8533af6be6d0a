"""The pipelined register-fragment loop's output stored in 32-token pieces over the next tile's stages
(set_gemm_2l_spread_store, Hopper, opt-in; perf-notes v2.33; bfloat16 on 224-token two-warpgroup or 192-token
three-warpgroup tiles, and the stamped kernel). The staging and its values are the default's, only the TMA stores move
(a piece per stage of the warpgroup's next tile, the rest before the staging is rewritten and before exit), so the
output must be the default's bits (outputs poisoned first): many tiles per CTA, tiles of one or two stages (pieces
left over for the next epilogue), rows past M in the last tiles, the low-rank tile late, CUDA-graph replay, and with
this session's other switches."""
from __future__ import annotations

import pytest
import torch

from test_kernels import ext  # noqa: F401  (ext: the fixture)
from test_kernels_2l import _switched, hopper  # noqa: F401  (hopper: the fixture)
from test_kernels_2l import _fo_problem, _forced_plan, _gemm_fo as _gemm, _graph_replayed, _late_or_skip, _stamped

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


# the pieces' two instances: two warpgroups on 224-token tiles (persistent, unsplit), three on 192
_PLANS = {2: {"tile": 224, "splits": 1, "persistent": 1}, 3: {"warpgroups": (3, 192)}}


def test_spread_store_is_off_by_default(hopper):
    assert hopper.gemm_2l_spread_store() is False


@pytest.mark.parametrize("others", [False, True])
@pytest.mark.parametrize("warpgroups", [2, 3])
@pytest.mark.parametrize("M,K,N", [(4608, 1536, 3072), (4097, 128, 768), (1000, 256, 3072), (37, 640, 384)])
def test_pieces_give_the_same_bits(hopper, others, warpgroups, M, K, N):
    """others: with the low-rank tiles by the producer and the L2 prefetch on too."""
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, M + K + N + warpgroups, M + N)
    with _forced_plan(hopper, **_PLANS[warpgroups]):
        ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
        n0 = hopper.gemm_2l_spread_store_launches()
        with _switched(hopper.set_gemm_2l_spread_store, True, False), \
                _switched(hopper.set_gemm_2l_lr_by_producer, others, False), \
                _switched(hopper.set_gemm_2l_l2_prefetch, others, False):
            out = _gemm(hopper, xq, xs, qf, w, lr).clone()
            again = _gemm(hopper, xq, xs, qf, w, lr).clone()
        torch.cuda.synchronize()
    assert hopper.gemm_2l_spread_store_launches() == n0 + 2, "the pieces' kernel did not run"
    assert torch.isfinite(ref).all()
    assert torch.equal(out, ref) and torch.equal(again, ref)


@pytest.mark.parametrize("M,K,N", [(256, 3072, 9216), (200, 12288, 3072)])
def test_the_low_rank_tile_late_keeps_the_bits(hopper, M, K, N):
    with _forced_plan(hopper, **_PLANS[3]):
        y, in_order = _late_or_skip(hopper, M, K, N, "spread_store", "the pieces' kernel")
    assert torch.equal(y, in_order)


def test_replays_from_a_cuda_graph(hopper):
    y, ref, launches = _graph_replayed(hopper, "spread_store", _gemm, 61)
    assert launches == 2
    assert torch.equal(y, ref)

@pytest.mark.parametrize("warpgroups", [2, 3])
def test_stamped_kernel_stores_in_pieces_with_the_same_bits(hopper, warpgroups):
    M, K, N = 4608, 768, 3072
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, 71, 72)
    stamps = torch.zeros(4, warpgroups, 8, 8, dtype=torch.int64, device="cuda")
    ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
    with _forced_plan(hopper, **_PLANS[warpgroups]):
        n0 = hopper.gemm_2l_spread_store_launches()
        with _switched(hopper.set_gemm_2l_spread_store, True, False):
            out = _stamped(hopper, stamps, lambda: _gemm(hopper, xq, xs, qf, w, lr).clone())
    assert hopper.gemm_2l_spread_store_launches() == n0 + 1
    assert torch.equal(out, ref)
    assert (stamps[:, :, :2, [0, 7, 1, 2, 3, 4, 5, 6]] > 0).all()

"""The last consumer warpgroup's copies of the next tile's low-rank tile and token scales unrolled
(set_gemm_2l_lr_unrolled, Hopper; the default since perf-notes v2.35, g.47): the same copies in the same order as the
loops over runtime counts of before, which set_gemm_2l_lr_unrolled(False) keeps in instances of the pipelined loop
(bfloat16, 224-token two-warpgroup and 192-token three-warpgroup tiles, unsplit) and the stamped kernel. Both must give
the same bits (outputs poisoned first), with many tiles per CTA, a ragged last token tile, rank 16 (loops in both:
not counted as unrolled), the low-rank tile late after the chained down projection, CUDA-graph replay, and in the
stamped kernel."""
from __future__ import annotations

import pytest
import torch

from test_kernels import ext  # noqa: F401  (ext: the fixture)
from test_kernels_2l import _switched, hopper, three_warpgroups  # noqa: F401  (the fixtures)
from test_kernels_2l import _fo_problem, _forced_plan, _gemm_fo as _gemm, _graph_replayed, _late_or_skip, _stamped

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _default_and_rolled(ext, *args):
    """(the default GEMM's output, its launches counted as unrolled, the output with set_gemm_2l_lr_unrolled(False)),
    copies; asserts the rolled call is not counted."""
    n0 = ext.gemm_2l_lr_unrolled_launches()
    y = _gemm(ext, *args).clone()
    ran = ext.gemm_2l_lr_unrolled_launches() - n0
    with _switched(ext.set_gemm_2l_lr_unrolled, False, True):
        n1 = ext.gemm_2l_lr_unrolled_launches()
        rolled = _gemm(ext, *args).clone()
        assert ext.gemm_2l_lr_unrolled_launches() == n1
    return y, ran, rolled


def test_lr_unrolled_is_on_by_default(hopper):
    assert hopper.gemm_2l_lr_unrolled() is True


@pytest.mark.parametrize("R", [32, 16])
@pytest.mark.parametrize("M,K,N", [(4608, 1536, 3072), (4097, 640, 384), (1000, 256, 768)])
def test_two_warpgroups_give_the_same_bits(hopper, R, M, K, N):
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, M + K + R, N + R, R=R)
    with _forced_plan(hopper, 224, 1, persistent=1):
        out, ran, rolled = _default_and_rolled(hopper, xq, xs, qf, w, lr)
    assert ran == (1 if R == 32 else 0)
    assert torch.isfinite(rolled).all()
    assert torch.equal(out, rolled)


@pytest.mark.parametrize("M,K,N", [(4608, 3072, 3072), (1000, 256, 768), (37, 640, 384)])
def test_three_warpgroups_give_the_same_bits(three_warpgroups, M, K, N):
    ext = three_warpgroups
    xq, xs, lr, _, qf, w = _fo_problem(ext, M, K, N, torch.bfloat16, M + K + N, M + 2 * N)
    out, ran, rolled = _default_and_rolled(ext, xq, xs, qf, w, lr)
    assert ran == 1
    assert torch.isfinite(rolled).all()
    assert torch.equal(out, rolled)


@pytest.mark.parametrize("M,K,N", [(256, 3072, 9216), (200, 12288, 3072)])
def test_the_low_rank_tile_late_keeps_the_bits(hopper, M, K, N):
    y, in_order = _late_or_skip(hopper, M, K, N, "lr_unrolled", "an unrolled instance")
    assert torch.isfinite(in_order).all()
    assert torch.equal(y, in_order)


def _rolled_gemm(ext, *args):
    with _switched(ext.set_gemm_2l_lr_unrolled, False, True):
        return _gemm(ext, *args)


def test_replays_from_a_cuda_graph(hopper):
    y, rolled, launches = _graph_replayed(hopper, "lr_unrolled", _rolled_gemm, 19)
    assert launches == 2
    assert torch.equal(y, rolled)


@pytest.mark.parametrize("warpgroups", [2, 3])
def test_stamped_kernel_keeps_the_bits_with_either_copies(hopper, warpgroups):
    M, K, N = 4608, 1024, 3072
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, 41 + warpgroups, 42)
    ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
    stamps = torch.zeros(4, warpgroups, 8, 8, dtype=torch.int64, device="cuda")
    if warpgroups == 3:
        hopper.set_gemm_2l_rf_warpgroups(3, 192)
    else:
        hopper.set_gemm_2l_tile_tokens(224)
    try:
        n0 = hopper.gemm_2l_lr_unrolled_launches()
        unrolled = _stamped(hopper, stamps, lambda: _gemm(hopper, xq, xs, qf, w, lr).clone())
        n1 = hopper.gemm_2l_lr_unrolled_launches()
        with _switched(hopper.set_gemm_2l_lr_unrolled, False, True):
            rolled = _stamped(hopper, stamps, lambda: _gemm(hopper, xq, xs, qf, w, lr).clone())
        n2 = hopper.gemm_2l_lr_unrolled_launches()
    finally:
        hopper.set_gemm_2l_rf_warpgroups(0, 0)
        hopper.set_gemm_2l_tile_tokens(0)
    assert (n1 - n0, n2 - n1) == (1, 0)
    assert torch.equal(unrolled, ref)
    assert torch.equal(rolled, ref)
    assert (stamps[:, :, :2, [0, 7, 1, 2, 3, 4, 5, 6]] > 0).all()

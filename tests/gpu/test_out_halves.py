"""The three-warpgroup 192-token kernel staging and storing its output in two token halves through half the memory,
which gives its stage ring a fourth stage (Hopper; perf-notes v2.35's g.50, the default since v2.36;
set_gemm_2l_out_halves(False) runs the three-stage kernel of before). Both must give the same bits (outputs poisoned
first), in bfloat16 and float16: tiles of one and many stages, many tiles per CTA, a last token tile ending in its
first half and one ending in its second, GELU and a concatenated prefix, the low-rank tile late after the chained down
projection, and CUDA-graph replay."""
from __future__ import annotations

import pytest
import torch

from test_kernels import ext  # noqa: F401  (ext: the fixture)
from test_kernels_2l import _switched, hopper, three_warpgroups  # noqa: F401  (the fixtures)
from test_kernels_2l import _fo_problem, _gemm_fo as _gemm, _graph_replayed, _late_gemm, _poison

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _ep(ext, xq, xs, qf, w, lr, act, prefix):
    wsc, wch, pu, b = w
    M, N, P = xq.shape[0], qf.shape[0], 0 if prefix is None else prefix.shape[1]
    _poison(2 * M * (N + P) + 4096, 0xFF)
    y = ext.w4a4_gemm_2l_fo_ep(xq, xs, qf, wsc, wch, lr, pu, b, 64, act, prefix)
    assert y is not None, ext.last_error()
    return y.clone()


def _default_and_three_stages(ext, call):
    """(call()'s output by default, the halves kernel's launches in it, its output with set_gemm_2l_out_halves(False))."""
    n0 = ext.gemm_2l_out_halves_launches()
    y = call()
    ran = ext.gemm_2l_out_halves_launches() - n0
    with _switched(ext.set_gemm_2l_out_halves, False, True):
        n1 = ext.gemm_2l_out_halves_launches()
        ref = call()
        assert ext.gemm_2l_out_halves_launches() == n1
    return y, ran, ref


def _three_stage_gemm(ext, *args):
    with _switched(ext.set_gemm_2l_out_halves, False, True):
        return _gemm(ext, *args)


def test_out_halves_is_on_by_default(hopper):
    assert hopper.gemm_2l_out_halves() is True


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,K,N", [(4608, 3072, 3072), (4000, 640, 1152), (1100, 128, 768), (450, 1536, 384),
                                   (37, 640, 384), (4097, 256, 384)])
def test_the_halves_give_the_same_bits(three_warpgroups, dtype, M, K, N):
    ext = three_warpgroups
    xq, xs, lr, _, qf, w = _fo_problem(ext, M, K, N, dtype, M + K + N, 3 * N + 1)
    out, ran, ref = _default_and_three_stages(ext, lambda: _gemm(ext, xq, xs, qf, w, lr).clone())
    assert ran == 1
    assert torch.isfinite(ref).all()
    assert torch.equal(out, ref)


@pytest.mark.parametrize("act", [0, 1])
@pytest.mark.parametrize("M,K,N,P", [(4608, 1024, 3072, 0), (1000, 640, 384, 64)])
def test_gelu_and_a_prefix_keep_the_bits(three_warpgroups, act, M, K, N, P):
    ext = three_warpgroups
    xq, xs, lr, _, qf, w = _fo_problem(ext, M, K, N, torch.bfloat16, M + N + act, N + P)
    prefix = torch.randn(M, P, device="cuda").to(torch.bfloat16) if P else None
    out, ran, ref = _default_and_three_stages(ext, lambda: _ep(ext, xq, xs, qf, w, lr, act, prefix))
    assert ran == 1
    assert torch.isfinite(ref).all()
    assert torch.equal(out, ref)


@pytest.mark.parametrize("M,K,N", [(256, 3072, 9216), (200, 12288, 3072)])
def test_the_low_rank_tile_late_keeps_the_bits(three_warpgroups, M, K, N):
    y, in_order, ran = _late_gemm(three_warpgroups, M, K, N, "out_halves", _three_stage_gemm)
    if not ran:
        pytest.skip(f"the plan at {M} x {K} x {N} is not the halves instance taking lr late here")
    assert torch.isfinite(in_order).all()
    assert torch.equal(y, in_order)


def test_replays_from_a_cuda_graph(three_warpgroups):
    y, ref, launches = _graph_replayed(three_warpgroups, "out_halves", _three_stage_gemm, 31, forced=False)
    assert launches == 2
    assert torch.equal(y, ref)

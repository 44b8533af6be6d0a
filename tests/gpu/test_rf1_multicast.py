"""One warpgroup's tiles in clusters of two or four CTAs sharing each stage's activation tile by multicast
(set_gemm_2l_rf1_multicast(2 / 4), Hopper; perf-notes v2.42, opt-in for A/B: bfloat16, unsplit; four where N / 64 is a
multiple of four, else pairs). The CTAs of a cluster take neighbouring row tiles of the same token tile; each loads its
share of every stage's activation rows into all of them. The clusters must give the default's bits (outputs poisoned
first) with one-, two- and many-stage tiles, many tiles per CTA (more clusters than fit at once), a ragged last token
tile, the low-rank tile late after the chained down projection, and CUDA-graph replay."""
from __future__ import annotations

import pytest
import torch

from test_kernels import ext  # noqa: F401  (ext: the fixture)
from test_kernels_2l import _switched, hopper  # noqa: F401  (the fixtures)
from test_kernels_2l import _captured, _fo_problem, _gemm_fo as _gemm, _late_or_skip, _switched_gemm

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _one_warpgroup(gpu, tile: int):
    return _switched(lambda on: gpu.set_gemm_2l_rf_warpgroups(on, tile), 1, 0)


def test_off_by_default(hopper):
    assert hopper.gemm_2l_rf1_multicast() == 0
    hopper.set_gemm_2l_rf1_multicast(3)  # not a cluster size of the kernels: off
    assert hopper.gemm_2l_rf1_multicast() == 0


@pytest.mark.parametrize("ctas", [2, 4])
@pytest.mark.parametrize("tile", [128, 256])
@pytest.mark.parametrize("M,K,N", [(256, 3072, 3072), (1000, 256, 768), (37, 640, 384), (300, 128, 1536),
                                   (130, 12288, 3072), (4608, 256, 3072), (200, 512, 640)])
def test_clusters_give_the_same_bits(hopper, ctas, tile, M, K, N):
    """1000 x 256 x 768, 300 x 128 x 1536 and 4608 x 256 x 3072 give CTAs several tiles (4608 tokens: more tiles than
    clusters fit at once); 37 and 130 tokens end in a ragged token tile, whose last share (rows past M) one CTA loads;
    N = 384 and 640 (6 and 10 row tiles) take pairs where four are asked for."""
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, M + K + tile + 13, N + 17)
    with _one_warpgroup(hopper, tile):
        ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
        out, ran = _switched_gemm(hopper, "rf1_multicast", xq, xs, qf, w, lr, value=ctas)
    assert ran == 1
    assert torch.isfinite(ref).all()
    assert torch.equal(out, ref)


@pytest.mark.parametrize("ctas", [2, 4])
@pytest.mark.parametrize("tile", [128, 256])
@pytest.mark.parametrize("M,K,N", [(256, 3072, 3072), (130, 12288, 3072), (37, 640, 384)])
def test_clusters_on_the_deep_ring_give_the_same_bits(hopper, ctas, tile, M, K, N):
    """Both levers at once (set_gemm_2l_rf1_stages(0) with the multicast: EP 33 / 34): 130 x 12288 goes round the
    nine-stage ring ten times; N = 384 takes pairs where four are asked for."""
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, M + K + tile + 7, N + 5)
    with _one_warpgroup(hopper, tile):
        ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
        d0 = hopper.gemm_2l_rf1_deep_launches()
        with _switched(hopper.set_gemm_2l_rf1_stages, 0, 6):
            out, ran = _switched_gemm(hopper, "rf1_multicast", xq, xs, qf, w, lr, value=ctas)
        assert hopper.gemm_2l_rf1_deep_launches() == d0 + 1
    assert ran == 1
    assert torch.isfinite(ref).all()
    assert torch.equal(out, ref)


@pytest.mark.parametrize("ctas", [2, 4])
@pytest.mark.parametrize("M,K,N", [(256, 3072, 3072), (256, 3072, 9216)])
def test_the_low_rank_tile_late_keeps_the_bits(hopper, ctas, M, K, N):
    y, in_order = _late_or_skip(hopper, M, K, N, "rf1_multicast", "the one-warpgroup kernel", value=ctas)
    assert torch.isfinite(in_order).all()
    assert torch.equal(y, in_order)


@pytest.mark.parametrize("ctas", [2, 4])
def test_replays_from_a_cuda_graph(hopper, ctas):
    xq, xs, lr, _, qf, w = _fo_problem(hopper, 512, 1024, 1536, torch.bfloat16, 41, 42)
    wsc, wch, pu, b = w
    with _one_warpgroup(hopper, 128):
        ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
        n0 = hopper.gemm_2l_rf1_multicast_launches()
        with _switched(hopper.set_gemm_2l_rf1_multicast, ctas, 0):
            graph, y = _captured(lambda: hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64))
        assert hopper.gemm_2l_rf1_multicast_launches() > n0
        y.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
    assert torch.equal(y, ref)

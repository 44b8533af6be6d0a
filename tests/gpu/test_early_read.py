"""The persistent kernels' wait for the previous tile's TMA store to have read the output staging, moved before the
last consumer warpgroup's copies of the next tile's low-rank tile (set_gemm_2l_early_read, Hopper, on by default since
perf-notes v2.34: the wait shares the copies' scoreboard). Only when a thread waits moves, so the output must be the
old order's bits (outputs poisoned first) and finite: two warpgroups (pipelined and turns) on every token tile with
many tiles per CTA, three warpgroups, the output in pieces (which keeps the late wait), the low-rank tiles by the
producer, K split over a cluster."""
from __future__ import annotations

import pytest
import torch

from test_kernels import ext  # noqa: F401  (ext: the fixture)
from test_kernels_2l import _switched, hopper  # noqa: F401  (hopper: the fixture)
from test_kernels_2l import _fo_problem, _forced_plan, _gemm_fo as _gemm

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _both(ext, *args):
    """The GEMM with the early read (the default) and with set_gemm_2l_early_read(False), copies of both."""
    early = _gemm(ext, *args).clone()
    with _switched(ext.set_gemm_2l_early_read, False, True):
        late = _gemm(ext, *args).clone()
    torch.cuda.synchronize()
    return early, late


def test_early_read_is_on_by_default(hopper):
    assert hopper.gemm_2l_early_read() is True


@pytest.mark.parametrize("pipelined", [True, False])
@pytest.mark.parametrize("tile", [64, 128, 224, 256])
@pytest.mark.parametrize("M,K,N,dtype,bias", [(4608, 1536, 3072, torch.bfloat16, True),
                                              (4097, 640, 384, torch.float16, False),
                                              (37, 640, 128, torch.bfloat16, True)])
def test_two_warpgroups_give_the_same_bits(hopper, pipelined, tile, M, K, N, dtype, bias):
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, dtype, M + K + N + tile, M + 2 * N, bias=bias)
    with _forced_plan(hopper, tile, 1, persistent=1):
        with _switched(hopper.set_gemm_2l_rf_pipelined, pipelined, True):
            early, late = _both(hopper, xq, xs, qf, w, lr)
    assert torch.isfinite(early).all()
    assert torch.equal(early, late)


@pytest.mark.parametrize("switch", ["", "spread_store", "lr_by_producer"])
@pytest.mark.parametrize("tile", [128, 192])
@pytest.mark.parametrize("M,K,N", [(4608, 3072, 3072), (1000, 256, 768)])
def test_three_warpgroups_give_the_same_bits(hopper, switch, tile, M, K, N):
    if switch == "spread_store" and tile != 192:
        pytest.skip("the output in pieces exists at 192-token three-warpgroup tiles")
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, M + K + N + tile, M + 3 * N)
    hopper.set_gemm_2l_rf_warpgroups(3, tile)
    try:
        if switch:
            with _switched(getattr(hopper, f"set_gemm_2l_{switch}"), True, False):
                early, late = _both(hopper, xq, xs, qf, w, lr)
        else:
            early, late = _both(hopper, xq, xs, qf, w, lr)
    finally:
        hopper.set_gemm_2l_rf_warpgroups(0, 0)
    assert torch.isfinite(early).all()
    assert torch.equal(early, late)


@pytest.mark.parametrize("M,K,N", [(256, 3072, 3072), (129, 512, 384)])
def test_split_over_a_cluster_gives_the_same_bits(hopper, M, K, N):
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, M + K + N, M + 5 * N)
    hopper.set_gemm_2l_rf_splits(2)
    try:
        early, late = _both(hopper, xq, xs, qf, w, lr)
    finally:
        hopper.set_gemm_2l_rf_splits(0)
    assert torch.isfinite(early).all()
    assert torch.equal(early, late)

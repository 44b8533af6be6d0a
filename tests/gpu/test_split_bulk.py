"""The split kernels' exchange of int32 partials by bulk reductions (Hopper; perf-notes v2.37's g.55,
set_gemm_2l_split_bulk, opt-in): each CTA's peers add their partials of its token octets into its shared memory with
cp.reduce.async.bulk .add, completing on an mbarrier, instead of the CTA loading them from distributed shared memory
(EP 20 / 21: the pipelined register-fragment loop's split kernels, branch ranks <= 32). Integer sums in any order are
the same sums, so both exchanges must give the same bits (outputs poisoned first): every token tile and cluster size
2-8 (3 and 5: octet ranges of unequal length), both dtypes, ranks 0 / 16 / 32, rows past M, the 256-token tile with
its output staged whole too; CUDA-graph replay."""
from __future__ import annotations

import contextlib

import pytest
import torch

from test_kernels import ext  # noqa: F401  (ext: the fixture)
from test_kernels_2l import hopper  # noqa: F401,F811  (the fixture)
from test_kernels_2l import _acts, _captured, _forced_plan, _poison, _quantize, _weights

from svdquant_hf.ops.layout_2l import fragment_order

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@contextlib.contextmanager
def _bulk(kernels, on: bool):
    """set_gemm_2l_split_bulk(on) for a block, off after it (the default)."""
    assert kernels.gemm_2l_split_bulk() is False
    kernels.set_gemm_2l_split_bulk(on)
    try:
        yield
    finally:
        kernels.set_gemm_2l_split_bulk(False)


def _both_exchanges(kernels, call, n_out: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(the loads' output, the bulk reductions' output, bulk launches counted), each poisoned first."""
    _poison(4 * n_out, 0xFF)
    ref = call().clone()
    n0 = kernels.gemm_2l_split_bulk_launches()
    with _bulk(kernels, True):
        _poison(4 * n_out, 0xFF)
        y = call()
    return ref, y, kernels.gemm_2l_split_bulk_launches() - n0


@pytest.mark.parametrize("bt", [64, 128, 224, 256])
@pytest.mark.parametrize("splits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("dtype,M,K,N,R", [(torch.bfloat16, 1, 1024, 128, 32), (torch.bfloat16, 255, 12288, 3072, 32),
                                           (torch.float16, 300, 1280, 896, 16), (torch.bfloat16, 97, 3072, 384, 0),
                                           (torch.bfloat16, 256, 3072, 3072, 32)])
def test_the_bulk_exchange_gives_the_same_bits(hopper, bt, splits, dtype, M, K, N, R):
    x, smooth, pd = _acts(M, K, R, dtype, seed=M + bt + splits + 71)
    qw, wsc, wch, pu, b = _weights(N, K, R, dtype, 64, seed=bt + R + 71, bias=R != 16)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    qf = fragment_order(qw)
    with _forced_plan(hopper, bt, 1, persistent=1, warpgroups=(2, 0)):
        hopper.set_gemm_2l_rf_splits(splits)
        try:
            ref, y, ran = _both_exchanges(
                hopper, lambda: hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64), M * N)
        finally:
            hopper.set_gemm_2l_rf_splits(0)
    assert y is not None, hopper.last_error()
    assert ran == 1
    assert torch.isfinite(ref).all() and torch.isfinite(y).all(), "unwritten (NaN-poisoned) outputs"
    assert torch.equal(y, ref), f"{(y != ref).sum().item()} of {y.numel()} outputs differ"


@pytest.mark.parametrize("splits", [2, 3, 4])
def test_the_bulk_exchange_without_the_split_halves(hopper, splits):
    """set_gemm_2l_split_halves(False): the 256-token split kernel on three stages (EP 20, EP 10's twin) exchanges by
    bulk reductions too, with the same bits."""
    M, K, N, R = 300, 3072, 768, 32
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=splits + 75)
    qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, 64, seed=75)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    qf = fragment_order(qw)
    with _forced_plan(hopper, 256, 1, persistent=1, warpgroups=(2, 0)):
        hopper.set_gemm_2l_rf_splits(splits)
        hopper.set_gemm_2l_split_halves(False)
        try:
            h0 = hopper.gemm_2l_split_halves_launches()
            ref, y, ran = _both_exchanges(
                hopper, lambda: hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64), M * N)
            halves = hopper.gemm_2l_split_halves_launches() - h0
        finally:
            hopper.set_gemm_2l_split_halves(True)
            hopper.set_gemm_2l_rf_splits(0)
    assert (ran, halves) == (1, 0)
    assert torch.isfinite(y).all(), "unwritten (NaN-poisoned) outputs"
    assert torch.equal(y, ref), f"{(y != ref).sum().item()} of {y.numel()} outputs differ"


def test_the_bulk_exchange_replays_from_a_cuda_graph(hopper):
    """Captured with the bulk exchange on, replayed on new inputs: the loads' exchange's bits for those inputs."""
    M, K, N, R = 256, 3072, 3072, 32
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=73)
    qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, 64, seed=73)
    qf = fragment_order(qw)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    with _forced_plan(hopper, 256, 1, persistent=1, warpgroups=(2, 0)):
        hopper.set_gemm_2l_rf_splits(4)
        try:
            with _bulk(hopper, True):
                graph, out = _captured(lambda: hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64))
            x2, _, _ = _acts(M, K, R, torch.bfloat16, seed=74)
            xq2, xs2, lr2 = _quantize(hopper, x2, smooth, pd, 64)
            xq.copy_(xq2), xs.copy_(xs2), lr.copy_(lr2)
            graph.replay()
            torch.cuda.synchronize()
            want = hopper.w4a4_gemm_2l_fo(xq2, xs2, qf, wsc, wch, lr2, pu, b, 64)
        finally:
            hopper.set_gemm_2l_rf_splits(0)
    assert torch.equal(out, want)

"""Each stage's weight words fetched in two halves under the stage before's last wgmmas (set_gemm_2l_fetch_halves,
Hopper, opt-in; perf-notes v2.35's g.48: rf_pipelined_loop_halves) in instances of the pipelined loop (bfloat16,
224-token two-warpgroup and 192-token three-warpgroup tiles, unsplit) and the stamped kernel. The output must be the
default's bits (outputs poisoned first), with tiles of one, two and many stages, many tiles per CTA, a ragged last
token tile, the low-rank tile late after the chained down projection, CUDA-graph replay, and in the stamped kernel."""
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


def test_fetch_halves_is_off_by_default(hopper):
    assert hopper.gemm_2l_fetch_halves() is False


@pytest.mark.parametrize("M,K,N", [(4608, 1536, 3072), (4097, 640, 384), (1000, 128, 768), (700, 256, 384)])
def test_two_warpgroups_give_the_same_bits(hopper, M, K, N):
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, M + K, N + 3)
    with _forced_plan(hopper, 224, 1, persistent=1):
        ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
        out, ran = _switched_gemm(hopper, "fetch_halves", xq, xs, qf, w, lr)
    assert ran == 1
    assert torch.isfinite(ref).all()
    assert torch.equal(out, ref)


@pytest.mark.parametrize("M,K,N", [(4608, 3072, 3072), (1000, 256, 768), (37, 640, 384), (450, 128, 384)])
def test_three_warpgroups_give_the_same_bits(hopper, M, K, N):
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, M + K + N, 2 * N + 1)
    hopper.set_gemm_2l_rf_warpgroups(3, 192)
    try:
        ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
        out, ran = _switched_gemm(hopper, "fetch_halves", xq, xs, qf, w, lr)
    finally:
        hopper.set_gemm_2l_rf_warpgroups(0, 0)
    assert ran == 1
    assert torch.isfinite(ref).all()
    assert torch.equal(out, ref)


@pytest.mark.parametrize("M,K,N", [(256, 3072, 9216), (200, 12288, 3072)])
def test_the_low_rank_tile_late_keeps_the_bits(hopper, M, K, N):
    y, in_order = _late_or_skip(hopper, M, K, N, "fetch_halves", "a halves instance")
    assert torch.isfinite(in_order).all()
    assert torch.equal(y, in_order)


def test_replays_from_a_cuda_graph(hopper):
    y, ref, launches = _graph_replayed(hopper, "fetch_halves", _gemm, 23)
    assert launches == 2
    assert torch.equal(y, ref)


@pytest.mark.parametrize("warpgroups", [2, 3])
def test_stamped_kernel_with_halves_keeps_the_bits(hopper, warpgroups):
    M, K, N = 4608, 1024, 3072
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, 51 + warpgroups, 52)
    ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
    stamps = torch.zeros(4, warpgroups, 8, 8, dtype=torch.int64, device="cuda")
    if warpgroups == 3:
        hopper.set_gemm_2l_rf_warpgroups(3, 192)
    else:
        hopper.set_gemm_2l_tile_tokens(224)
    n0 = hopper.gemm_2l_fetch_halves_launches()
    try:
        with _switched(hopper.set_gemm_2l_fetch_halves, True, False):
            out = _stamped(hopper, stamps, lambda: _gemm(hopper, xq, xs, qf, w, lr).clone())
    finally:
        hopper.set_gemm_2l_rf_warpgroups(0, 0)
        hopper.set_gemm_2l_tile_tokens(0)
    assert hopper.gemm_2l_fetch_halves_launches() - n0 == 1
    assert torch.equal(out, ref)
    assert (stamps[:, :, :2, [0, 7, 1, 2, 3, 4, 5, 6]] > 0).all()

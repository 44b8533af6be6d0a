"""When the pipelined loop gives each stage back to the producer (set_gemm_2l_release_step, Hopper; perf-notes v2.35's
g.49): by default after stage i + 1's first k-step, waiting there until one wgmma group remains in flight; 2 as before
v2.35 (after its third, under the usual wait for three) or 1 (its second) in instances of the pipelined loop
(bfloat16, 224-token two-warpgroup and 192-token three-warpgroup tiles, unsplit; 2 also the one-warpgroup 128- and
256-token tiles, unsplit, v2.41: a lone warpgroup has nobody to cover the drain at a stage's first k-step) for A/B.
Each must give the default's bits (outputs poisoned first), with tiles of one, two and many stages, many tiles per
CTA, a ragged last token tile, the low-rank tile late after the chained down projection, and CUDA-graph replay."""
from __future__ import annotations

import pytest
import torch

from test_kernels import ext  # noqa: F401  (ext: the fixture)
from test_kernels_2l import _switched, hopper, three_warpgroups  # noqa: F401  (the fixtures)
from test_kernels_2l import _fo_problem, _forced_plan, _gemm_fo as _gemm, _graph_replayed, _late_gemm

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _released_at(ext, step: int, *args):
    """The GEMM with set_gemm_2l_release_step(step) for the call (0 after it): (a copy of its output, how many launches
    took a later-release instance)."""
    n0 = ext.gemm_2l_release_step_launches()
    with _switched(ext.set_gemm_2l_release_step, step, 0):
        y = _gemm(ext, *args).clone()
    return y, ext.gemm_2l_release_step_launches() - n0


def test_release_step_is_the_first_k_step_by_default(hopper):
    assert hopper.gemm_2l_release_step() == 0
    hopper.set_gemm_2l_release_step(5)  # out of range: the default
    assert hopper.gemm_2l_release_step() == 0


@pytest.mark.parametrize("step", [2, 1])
@pytest.mark.parametrize("M,K,N", [(4608, 1536, 3072), (4097, 640, 384), (1000, 128, 768), (700, 256, 384)])
def test_two_warpgroups_give_the_same_bits(hopper, step, M, K, N):
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, M + K + step, N + 3)
    with _forced_plan(hopper, 224, 1, persistent=1):
        ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
        out, ran = _released_at(hopper, step, xq, xs, qf, w, lr)
    assert ran == 1
    assert torch.isfinite(ref).all()
    assert torch.equal(out, ref)


@pytest.mark.parametrize("step", [2, 1])
@pytest.mark.parametrize("M,K,N", [(4608, 3072, 3072), (1000, 256, 768), (37, 640, 384), (450, 128, 384)])
def test_three_warpgroups_give_the_same_bits(three_warpgroups, step, M, K, N):
    ext = three_warpgroups
    xq, xs, lr, _, qf, w = _fo_problem(ext, M, K, N, torch.bfloat16, M + K + N + step, 2 * N + 1)
    ref = _gemm(ext, xq, xs, qf, w, lr).clone()
    out, ran = _released_at(ext, step, xq, xs, qf, w, lr)
    assert ran == 1
    assert torch.isfinite(ref).all()
    assert torch.equal(out, ref)


@pytest.mark.parametrize("tile", [128, 256])
@pytest.mark.parametrize("M,K,N", [(256, 3072, 3072), (1000, 256, 768), (37, 640, 384), (300, 128, 1536)])
def test_one_warpgroup_gives_the_same_bits(hopper, tile, M, K, N):
    """Release step 2 on one warpgroup's tiles (set_gemm_2l_rf_warpgroups(1, tile)): the default's bits; 1000 x 256 x 768
    and 300 x 128 x 1536 give CTAs several tiles (one or two stages each)."""
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, M + K + tile, N + 5)
    with _switched(lambda on: hopper.set_gemm_2l_rf_warpgroups(on, tile), 1, 0):
        ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
        out, ran = _released_at(hopper, 2, xq, xs, qf, w, lr)
    assert ran == 1
    assert torch.isfinite(ref).all()
    assert torch.equal(out, ref)


@pytest.mark.parametrize("M,K,N", [(256, 3072, 9216), (200, 12288, 3072)])
def test_the_low_rank_tile_late_keeps_the_bits(hopper, M, K, N):
    # (_late_gemm sets set_gemm_2l_release_step(True), i.e. 1, for the late call, and the default 0 after it; its
    # reference is the default kernel in order)
    y, in_order, ran = _late_gemm(hopper, M, K, N, "release_step", lambda e, *a: _gemm(e, *a).clone())
    assert hopper.gemm_2l_release_step() == 0
    if not ran:
        pytest.skip(f"the plan at {M} x {K} x {N} is not a later-release instance taking lr late here")
    assert torch.isfinite(in_order).all()
    assert torch.equal(y, in_order)


def test_replays_from_a_cuda_graph(hopper):
    y, ref, launches = _graph_replayed(hopper, "release_step", _gemm, 29, value=2)
    assert launches == 2
    assert torch.equal(y, ref)

"""One consumer warpgroup's tiles as stream-K (Hopper; perf-notes v2.45's g.69, set_gemm_2l_stream_k(tile, leave),
opt-in): the grid's CTAs take equal runs of the tiles' stages, a tile begun in one CTA's run is finished in the next
ones', and its owner adds their int32 partials from a workspace before the epilogue. Integer sums, so the same bits as
the default kernels (outputs poisoned first), with runs of one stage (a tile in eight pieces), several owned tiles per
CTA, rows past M, ranks 0 / 16 / 32, back-to-back launches and CUDA-graph replays (the flags reset themselves), and
the low-rank tile late."""
from __future__ import annotations

import contextlib

import pytest
import torch

from test_kernels import ext  # noqa: F401  (ext: the fixture)
from test_kernels_2l import hopper  # noqa: F401,F811  (the fixture)
from test_kernels_2l import _acts, _captured, _gemm_fo, _late_gemm, _poison, _quantize, _weights

from svdquant_hf.ops.layout_2l import fragment_order

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@contextlib.contextmanager
def _stream_k(kernels, tile: int, leave: int):
    kernels.set_gemm_2l_stream_k(tile, leave)
    try:
        yield
    finally:
        kernels.set_gemm_2l_stream_k(0, 0)


def _problem(kernels, M, K, N, R, seed, dtype=torch.bfloat16):
    x, smooth, pd = _acts(M, K, R, dtype, seed=seed)
    qw, wsc, wch, pu, b = _weights(N, K, R, dtype, 64, seed=seed + 1, bias=R != 16)
    xq, xs, lr = _quantize(kernels, x, smooth, pd, 64)
    return xq, xs, fragment_order(qw), wsc, wch, lr, pu, b


def _leave_for(kernels, ctas: int) -> int:
    """`leave` that gives the stream-K grid `ctas` CTAs on this GPU."""
    return torch.cuda.get_device_properties(0).multi_processor_count - ctas


@pytest.mark.parametrize("tile", [128, 256])
@pytest.mark.parametrize("ctas", [None, 16, 37])
@pytest.mark.parametrize("M,K,N,R", [(7, 1024, 128, 32), (255, 3072, 384, 0), (300, 1280, 896, 16),
                                     (256, 3072, 3072, 32), (512, 2048, 768, 32)])
def test_stream_k_gives_the_same_bits(hopper, tile, ctas, M, K, N, R):
    args = _problem(hopper, M, K, N, R, seed=M + tile + 91)
    _poison(4 * M * N, 0xFF)
    ref = hopper.w4a4_gemm_2l_fo(*args, 64).clone()
    leave = 0 if ctas is None else _leave_for(hopper, ctas)
    n0 = hopper.gemm_2l_stream_k_launches()
    with _stream_k(hopper, tile, leave):
        for _ in range(2):  # back to back: the owners reset the flags they waited for
            _poison(4 * M * N, 0xFF)
            y = hopper.w4a4_gemm_2l_fo(*args, 64)
            assert y is not None, hopper.last_error()
            assert torch.isfinite(y).all(), "unwritten (NaN-poisoned) outputs"
            assert torch.equal(y, ref), f"{(y != ref).sum().item()} of {y.numel()} outputs differ"
    assert hopper.gemm_2l_stream_k_launches() - n0 == 2


def test_stream_k_is_not_taken_past_its_scope(hopper):
    """float16, M > 512 and a LoRA's ranks (33-64) keep the other kernels: the switch is not taken there."""
    cases = [(300, 1024, 384, 32, torch.float16), (640, 1024, 384, 32, torch.bfloat16),
             (300, 1024, 384, 64, torch.bfloat16)]
    for M, K, N, R, dtype in cases:
        args = _problem(hopper, M, K, N, R, seed=M + R + 93, dtype=dtype)
        ref = hopper.w4a4_gemm_2l_fo(*args, 64).clone()
        n0 = hopper.gemm_2l_stream_k_launches()
        with _stream_k(hopper, 128, 0):
            y = hopper.w4a4_gemm_2l_fo(*args, 64)
        assert hopper.gemm_2l_stream_k_launches() == n0, (M, K, N, R, dtype)
        assert torch.equal(y, ref)


@pytest.mark.parametrize("tile", [128, 256])
def test_stream_k_replays_from_a_cuda_graph(hopper, tile):
    """Captured with stream-K (its workspace made by an eager call first), replayed three times on new inputs: each
    replay the default kernels' bits for its inputs."""
    M, K, N, R = 256, 3072, 3072, 32
    args = list(_problem(hopper, M, K, N, R, seed=95))
    with _stream_k(hopper, tile, 0):
        hopper.w4a4_gemm_2l_fo(*args, 64)
        n0 = hopper.gemm_2l_stream_k_launches()
        graph, out = _captured(lambda: hopper.w4a4_gemm_2l_fo(*args, 64))
        assert hopper.gemm_2l_stream_k_launches() > n0
    for seed in (96, 97, 98):
        x2, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=seed)
        xq2, xs2, lr2 = _quantize(hopper, x2, smooth, pd, 64)
        args[0].copy_(xq2), args[1].copy_(xs2), args[5].copy_(lr2)
        _poison(4 * M * N, 0xFF)
        graph.replay()
        torch.cuda.synchronize()
        want = hopper.w4a4_gemm_2l_fo(*args, 64)
        assert torch.equal(out, want), seed


@pytest.mark.parametrize("M", [256, 130])
def test_stream_k_with_the_low_rank_tile_late(hopper, M):
    """The chained down projection (set_lr_chain(1): lr from the kernel just before, waited for only before the
    owners' epilogues) with stream-K on the SMs less 32: the in-order GEMM's bits."""
    y, in_order, ran = _late_gemm(hopper, M, 3072, 3072, "stream_k", lambda e, *args: _gemm_fo(e, *args).clone(),
                                  block=lambda: _stream_k(hopper, 256, 32))
    if not ran:
        pytest.skip(f"the GEMM at {M} x 3072 x 3072 did not take both stream-K and the low-rank tile late here")
    assert torch.isfinite(y).all()
    assert torch.equal(y, in_order)


def test_the_exchange_probe_drops_only_the_exchange(hopper):
    """set_gemm_2l_stream_k_probe(1) (benchmarks/stream_k_sweep.py's `nx`) runs the partition without its exchange:
    the tiles one CTA computes whole keep their bits, exactly the tiles cut between CTAs (computed here as
    stream_k.cuh cuts them) lose the others' partials; off again, the exact bits come back. 96 tiles of 24 stages on
    60 CTAs: runs of 38-39 stages, some tiles whole, some cut."""
    M, K, N, ctas = 256, 3072, 3072, 60
    args = _problem(hopper, M, K, N, 32, seed=99)
    ref = hopper.w4a4_gemm_2l_fo(*args, 64).clone()
    with _stream_k(hopper, 128, _leave_for(hopper, ctas)):
        hopper.set_gemm_2l_stream_k_probe(1)
        try:
            probe = hopper.w4a4_gemm_2l_fo(*args, 64).clone()
        finally:
            hopper.set_gemm_2l_stream_k_probe(0)
        exact = hopper.w4a4_gemm_2l_fo(*args, 64)
    assert torch.equal(exact, ref)
    row_tiles, stages = N // 64, K // 128
    units = (M // 128) * row_tiles * stages
    lo = [c * units // ctas for c in range(ctas + 1)]
    whole = {t for t in range(units // stages)
             if any(lo[c] <= t * stages and (t + 1) * stages <= lo[c + 1] for c in range(ctas))}
    differ = (probe != ref).view(M // 128, 128, row_tiles, 64).any(dim=3).any(dim=1).flatten()  # tile t: [t]
    assert 0 < len(whole) < units // stages
    assert {t for t in range(units // stages) if not differ[t]} == whole


def test_the_stamped_run_is_exact_and_stamps_each_step_in_order(hopper):
    """set_gemm_2l_stream_k_probe(2): the exact bits, and per CTA clock64 stamps in their order (start <= a
    contributor's segment done <= released; own segment done <= last flag seen <= partials added <= end), taken by
    exactly the CTAs the partition (computed here) makes contributors and waiting owners."""
    M, K, N, ctas = 256, 3072, 3072, 60
    args = _problem(hopper, M, K, N, 32, seed=101)
    ref = hopper.w4a4_gemm_2l_fo(*args, 64).clone()
    with _stream_k(hopper, 128, _leave_for(hopper, ctas)):
        hopper.set_gemm_2l_stream_k_probe(2)
        try:
            y = hopper.w4a4_gemm_2l_fo(*args, 64)
            raw = hopper.gemm_2l_stream_k_stamps(ctas)
        finally:
            hopper.set_gemm_2l_stream_k_probe(0)
    assert torch.equal(y, ref)
    assert len(raw) == 12 * ctas
    stages = K // 128
    units = (M // 128) * (N // 64) * stages
    lo = [c * units // ctas for c in range(ctas + 1)]
    for c in range(ctas):
        start, seg1, rel, own, seen, added, end = raw[12 * c:12 * c + 7]
        contributes = lo[c] % stages != 0
        waits = lo[c + 1] % stages != 0 and lo[c + 1] // stages * stages >= lo[c]  # its run ends inside a tile it owns
        assert (seg1 != 0) == contributes and (rel != 0) == contributes, c
        assert (own != 0) == waits and (seen != 0) == waits and (added != 0) == waits, c
        steps = [start] + ([seg1, rel] if contributes else []) + ([own, seen, added] if waits else []) + [end]
        assert steps == sorted(steps), (c, steps)
        assert raw[12 * c + 11] <= raw[12 * c + 10], c  # %globaltimer: start <= end

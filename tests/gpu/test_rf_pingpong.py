"""The GEMM with its consumer warpgroups in ping-pong (set_gemm_2l_rf_pingpong, Hopper, opt-in;
csrc/w4a4_gemm_2l_pingpong_sm90.cu): each warpgroup computes whole 128-row x 128-token tiles, the CTA's tiles
alternating between them. Its epilogue is the two-warpgroup kernel's, per 64-row half, so the output must be that
kernel's bits at 128-token tiles (outputs poisoned first), and within bf16 rounding of the reference. Shapes: one and
many tiles per CTA (an odd count leaves one warpgroup a tile more), one K stage and 96, ranks 0 / 16 / 32, awkward M,
with and without bias, GELU, an output row stride (a column block of a wider matrix) and low-rank activations read as
a column block; a CUDA graph replay; the rule (what it takes, and off by default); its clock64 stamps."""
from __future__ import annotations

import pytest
import torch

from svdquant_hf.ops.layout_2l import fragment_order
from svdquant_hf.ops.reference import w4a4_gemm_2l_ref

from test_kernels import _poison, _rel, ext  # noqa: F401  (ext: the fixture)
from test_kernels_2l import _acts, _quantize, _switched, _weights, hopper  # noqa: F401  (hopper: the fixture)
from test_kernels_2l import _captured, _fo_problem, _gemm_fo as _gemm, _stamped

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _two_warpgroups_at_128(ext, fn):
    """fn() with the plan forced to the persistent two-warpgroup register-fragment kernel on 128-token tiles."""
    ext.set_gemm_2l_persistent(1)
    ext.set_gemm_2l_tile_tokens(128)
    ext.set_gemm_2l_splits(1)
    ext.set_gemm_2l_rf_warpgroups(2, 0)
    try:
        return fn()
    finally:
        ext.set_gemm_2l_persistent(-1)
        ext.set_gemm_2l_tile_tokens(0)
        ext.set_gemm_2l_splits(0)
        ext.set_gemm_2l_rf_warpgroups(0, 0)


@pytest.mark.parametrize("dtype,bias", [(torch.bfloat16, True), (torch.float16, False)])
@pytest.mark.parametrize("R", [0, 16, 32])
@pytest.mark.parametrize("M,K,N", [(4608, 3072, 3072), (4096, 3072, 768), (8192, 128, 3072), (1000, 256, 768),
                                   (4097, 1536, 384), (300, 12288, 256), (37, 640, 128), (9, 256, 128)])
def test_pingpong_gives_the_two_warpgroup_kernels_bits(hopper, dtype, bias, R, M, K, N):
    x, smooth, pd = _acts(M, K, max(R, 16), dtype, seed=M + K + N + R)
    pd = pd[:, :R].contiguous()
    qw, wsc, wch, pu, b = _weights(N, K, max(R, 16), dtype, 64, seed=M + N, bias=bias)
    pu = pu[:, :R].contiguous()
    qf, w = fragment_order(qw), (wsc, wch, pu, b)
    xq, xs, lr = _quantize(hopper, x, smooth, pd)
    ref = _two_warpgroups_at_128(hopper, lambda: _gemm(hopper, xq, xs, qf, w, lr).clone())
    n0 = hopper.gemm_2l_rf_pingpong_launches()
    with _switched(hopper.set_gemm_2l_rf_pingpong, True, False):
        out = _gemm(hopper, xq, xs, qf, w, lr).clone()
        again = _gemm(hopper, xq, xs, qf, w, lr).clone()
    torch.cuda.synchronize()
    assert hopper.gemm_2l_rf_pingpong_launches() == n0 + 2, "the ping-pong kernel ran"
    assert torch.isfinite(out).all(), "unwritten (poisoned) outputs"
    assert torch.equal(out, ref) and torch.equal(again, ref)
    exact = w4a4_gemm_2l_ref(xq, xs, qw, wsc, wch, lr, pu, b, 64)
    assert _rel(out, exact) < 1e-2


def test_pingpong_epilogue_options_give_the_same_bits(hopper):
    """GELU, y as a column block of a wider matrix (ldy), lr as a column block of a wider matrix (ldlr)."""
    M, K, N, R = 777, 1024, 640, 32
    x, smooth, pd = _acts(M, K, 2 * R, torch.bfloat16, seed=11)
    qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, 64, seed=12)
    qf = fragment_order(qw)
    xq, xs, lr_wide = _quantize(hopper, x, smooth, pd)
    lr = lr_wide[:, R:]  # a column block: rows 2 R apart
    prefix = torch.randn(M, 96, device="cuda").to(torch.bfloat16)

    def run():
        _poison(2 * M * (N + 96), 0xFF)
        return hopper.w4a4_gemm_2l_fo_ep(xq, xs, qf, wsc, wch, lr, pu, b, 64, 1, prefix).clone()

    ref = _two_warpgroups_at_128(hopper, run)
    with _switched(hopper.set_gemm_2l_rf_pingpong, True, False):
        n0 = hopper.gemm_2l_rf_pingpong_launches()
        out = run()
        assert hopper.gemm_2l_rf_pingpong_launches() == n0 + 1
    torch.cuda.synchronize()
    assert torch.isfinite(out).all()
    assert torch.equal(out, ref)


def test_pingpong_replays_from_a_cuda_graph(hopper):
    M, K, N = 2000, 1024, 1536
    xq, xs, lr, _, qf, (wsc, wch, pu, b) = _fo_problem(hopper, M, K, N, torch.bfloat16, 7, 8)
    ref = _two_warpgroups_at_128(hopper, lambda: _gemm(hopper, xq, xs, qf, (wsc, wch, pu, b), lr).clone())
    with _switched(hopper.set_gemm_2l_rf_pingpong, True, False):
        n0 = hopper.gemm_2l_rf_pingpong_launches()
        graph, y = _captured(lambda: hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64))
        assert hopper.gemm_2l_rf_pingpong_launches() == n0 + 2, "warmed up and captured the ping-pong kernel"
    y.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, ref)


def test_pingpong_is_off_by_default_and_keeps_to_its_shapes(hopper):
    """Off unless asked; asked, a branch of rank 48 (the 64-wide low-rank tile) keeps the other kernels, and mode 2
    takes only GEMMs with a tile for each warpgroup of every CTA (at least two per SM)."""
    assert hopper.gemm_2l_rf_pingpong() == 0
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for M, N, taken in [(128 * sms, 256, True), (128 * sms - 128, 256, False)]:  # 2 SMs' tiles, one tile fewer
        K = 256
        xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, M, N)
        with _switched(hopper.set_gemm_2l_rf_pingpong, 2, 0):
            n0 = hopper.gemm_2l_rf_pingpong_launches()
            _gemm(hopper, xq, xs, qf, w, lr)
            assert hopper.gemm_2l_rf_pingpong_launches() == n0 + taken, (M, N)
    M, K, N, R = 512, 512, 256, 48
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=3)
    qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, 64, seed=4)
    xq, xs, lr = _quantize(hopper, x, smooth, pd)
    with _switched(hopper.set_gemm_2l_rf_pingpong, True, False):
        n0 = hopper.gemm_2l_rf_pingpong_launches()
        out = _gemm(hopper, xq, xs, fragment_order(qw), (wsc, wch, pu, b), lr)
        torch.cuda.synchronize()
        assert hopper.gemm_2l_rf_pingpong_launches() == n0
    assert _rel(out, w4a4_gemm_2l_ref(xq, xs, qw, wsc, wch, lr, pu, b, 64)) < 1e-2


def test_pingpong_stamps_its_tiles_steps_in_order(hopper):
    """set_gemm_2l_tile_life with the ping-pong kernel (benchmarks/gemm_2l_tile_life.py --pingpong): each warpgroup's
    stamped tiles have their seven steps in order, and the output keeps its bits."""
    M, K, N = 4608, 1024, 3072  # 864 tiles: CTAs 0-3 have 7, so each warpgroup at least 3
    xq, xs, lr, _, qf, w = _fo_problem(hopper, M, K, N, torch.bfloat16, 21, 22)
    stamps = torch.zeros(4, 2, 8, 8, dtype=torch.int64, device="cuda")
    with _switched(hopper.set_gemm_2l_rf_pingpong, True, False):
        ref = _gemm(hopper, xq, xs, qf, w, lr).clone()
        out = _stamped(hopper, stamps, lambda: _gemm(hopper, xq, xs, qf, w, lr).clone())
    assert torch.equal(out, ref)
    steps = stamps[:, :, :3, :7].cpu()
    assert (steps > 0).all(), "a step of a stamped tile was not stamped"
    assert (steps[..., 1:] >= steps[..., :-1]).all(), "a tile's steps out of order"
    assert (steps[:, :, 1:, 0] >= steps[:, :, :-1, 6]).all(), "a warpgroup's tiles overlap"
    assert (stamps[:, :, 4:].cpu() == 0).all(), "stamps past a warpgroup's tiles"

"""CUDA kernels (csrc/) against the reference ops, on fresh random inputs of awkward shapes.

Outputs are poisoned before each run (the caching allocator's next block is filled with NaN / an
impossible int8 value), so an element the kernel forgot to write fails the comparison.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from svdquant_hf.formats.int4 import pack_int4
from svdquant_hf.ops import build, library
from svdquant_hf.ops.reference import quantize_act_ref, w4a4_gemm_ref, w4a4_group_dots

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

FLUX_SHAPES = [(3072, 3072), (3072, 12288), (12288, 3072), (3072, 9216), (15360, 3072)]
SMALL_SHAPES = [(64, 8), (128, 40), (256, 136), (384, 24)]
AWKWARD_M = [1, 7, 255, 4097]


@pytest.fixture(scope="module")
def ext():
    mod = build.load_extension()
    assert mod is not None, "the CUDA kernels did not build on this GPU machine"
    return mod


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(seed)


def _poison(nbytes: int, byte: int) -> None:
    """Fill the allocator's next free block(s) with ``byte`` so unwritten outputs show up."""
    t = torch.empty(max(nbytes, 1 << 20), dtype=torch.uint8, device="cuda")
    t.fill_(byte)
    del t


def _inputs(M, K, N, R, dtype, seed, group_size=64, bias=True):
    g = _gen(seed)
    x = (torch.randn(M, K, device="cuda", generator=g) * 2).to(dtype)
    x[:, torch.randint(0, K, (4,), device="cuda", generator=g)] *= 20  # outlier channels
    smooth = (torch.rand(K, device="cuda", generator=g) * 3 + 0.25).to(dtype)
    pd = (torch.randn(K, R, device="cuda", generator=g) / K**0.5).to(dtype)
    pu = (torch.randn(N, R, device="cuda", generator=g) / max(R, 1) ** 0.5).to(dtype)
    wq = torch.randint(-8, 8, (N, K), device="cuda", generator=g, dtype=torch.int8)
    qweight = pack_int4(wq)
    wscales = (torch.rand(K // group_size, N, device="cuda", generator=g) * 0.02 + 1e-3).to(dtype)
    b = (torch.randn(N, device="cuda", generator=g)).to(dtype) if bias else None
    return x, smooth, pd, pu, qweight, wscales, b


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _quantize(ext, x, smooth, pd, gs):
    M, K = x.shape
    _poison(2 * (M * K + M * (K // gs) * 2 + M * pd.shape[1] * 2), 0x7F)  # int8 127: impossible value
    return ext.quantize_act(x, smooth, pd, gs)


def _gemm(ext, xq, asc, qw, wsc, lr, pu, b, gs):
    _poison(4 * xq.shape[0] * qw.shape[0], 0xFF)  # NaN in bf16/fp16
    return ext.w4a4_gemm(xq, asc, qw, wsc, lr, pu, b, gs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gs", [32, 64, 128])
@pytest.mark.parametrize("R", [0, 7, 16, 32, 40, 128, 160])
def test_quantize_act_matches_reference(ext, dtype, gs, R):
    for i, (M, K) in enumerate([(1, 128), (7, 384), (255, 3072), (4097, 256), (33, 15360)]):
        x, smooth, pd, *_ = _inputs(M, K, 8, R, dtype, seed=1000 * R + 10 * gs + i, group_size=gs)
        xq, asc, lr = _quantize(ext, x, smooth, pd, gs)
        # the oracle runs on the CPU: on CUDA, torch computes `amax / 7` as amax * (1/7), which can
        # differ from the IEEE quotient (the op's definition) by one fp32 ulp
        rxq, rasc, rlr = (t.cuda() for t in quantize_act_ref(x.cpu(), smooth.cpu(), pd.cpu(), gs))
        assert xq.dtype == torch.int8 and asc.dtype == dtype and lr.dtype == dtype
        assert torch.equal(asc, rasc), f"ascales differ M={M} K={K}"
        assert torch.equal(xq, rxq), f"xq differs M={M} K={K}: {(xq != rxq).sum().item()} elements"
        assert lr.shape == (M, R)
        if R:
            assert torch.isfinite(lr).all()
            assert _rel(lr, rlr) < 1e-2
            # fp32 sum order differs from the reference matmul: at most one 16-bit rounding step
            exact = x.double() @ pd.double()
            mag = x.double().abs() @ pd.double().abs()
            ulp = exact.abs() * (2.0**-7 if dtype == torch.bfloat16 else 2.0**-10) + mag * 2.0**-20
            assert ((lr.double() - exact).abs() <= ulp).all()


def test_quantize_act_split_k_deterministic(ext):
    """Small M splits the groups over blocks; the low-rank partial sums are reduced in a fixed order."""
    x, smooth, pd, *_ = _inputs(33, 15360, 8, 32, torch.bfloat16, seed=4)
    outs = [ext.quantize_act(x, smooth, pd, 64) for _ in range(3)]
    for o in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(o, outs[0]))
    rlr = quantize_act_ref(x.cpu(), smooth.cpu(), pd.cpu(), 64)[2].cuda()
    assert _rel(outs[0][2], rlr) < 1e-2


def test_quantize_act_zero_group_and_ties(ext):
    x = torch.zeros(3, 128, device="cuda", dtype=torch.bfloat16)
    x[1, 64:] = torch.tensor([0.5, -0.5, 1.5, 2.5] * 16, dtype=torch.bfloat16)
    x[2, :64] = 7.0
    smooth = torch.ones(128, device="cuda", dtype=torch.bfloat16)
    pd = torch.zeros(128, 16, device="cuda", dtype=torch.bfloat16)
    xq, asc, lr = ext.quantize_act(x, smooth, pd, 64)
    rxq, rasc, _ = (t.cuda() for t in quantize_act_ref(x.cpu(), smooth.cpu(), pd.cpu(), 64))
    assert torch.equal(xq, rxq) and torch.equal(asc, rasc)
    assert (asc[0] == 0).all() and (xq[0] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gs", [32, 64, 128])
def test_gemm_integer_part_exact(ext, dtype, gs):
    """With unit scales on one group and no low-rank/bias, y equals the integer group dot exactly."""
    for i, (M, K, N) in enumerate([(1, 128, 8), (7, 256, 40), (255, 384, 136), (4097, 128, 24), (130, 3072, 264)]):
        g = _gen(77 + i + gs)
        xq = torch.randint(-8, 8, (M, K), device="cuda", generator=g, dtype=torch.int8)
        qw = pack_int4(torch.randint(-8, 8, (N, K), device="cuda", generator=g, dtype=torch.int8))
        G = K // gs
        dots = w4a4_group_dots(xq, qw, gs)
        lr = torch.zeros(M, 0, device="cuda", dtype=dtype)
        pu = torch.zeros(N, 0, device="cuda", dtype=dtype)
        asc = torch.ones(M, G, device="cuda", dtype=dtype)
        for grp in sorted({0, G - 1, G // 2}):
            wsc = torch.zeros(G, N, device="cuda", dtype=dtype)
            wsc[grp] = 1
            y = _gemm(ext, xq, asc, qw, wsc, lr, pu, None, gs)
            ref = dots[:, :, grp].to(dtype)  # |dot| <= 4096 with small-integer steps: exact in fp16
            assert torch.equal(y, ref), f"group {grp} M={M} K={K} N={N}"
        # all groups at once: the fp32 sum of integer group dots is exact, then rounded once like .to()
        y = _gemm(ext, xq, asc, qw, torch.ones(G, N, device="cuda", dtype=dtype), lr, pu, None, gs)
        assert torch.equal(y, dots.sum(-1).to(dtype))


def _check_chain(ext, M, K, N, R, dtype, gs, bias, seed, tol=1e-2):
    x, smooth, pd, pu, qw, wsc, b = _inputs(M, K, N, R, dtype, seed, gs, bias)
    xq, asc, lr = _quantize(ext, x, smooth, pd, gs)
    y = _gemm(ext, xq, asc, qw, wsc, lr, pu, b, gs)
    ref = w4a4_gemm_ref(xq, asc, qw, wsc, lr, pu, b, gs)  # same quantized operands: isolates the GEMM
    assert y.shape == (M, N) and y.dtype == dtype
    assert torch.isfinite(y).all(), "unwritten (NaN-poisoned) or non-finite outputs"
    err = _rel(y, ref)
    assert err < tol, f"M={M} K={K} N={N} R={R}: rel err {err:.2e}"
    # each element within a few 16-bit roundings of the fp64 value of the same sum (first rows)
    M = min(M, 256)
    xq, asc, lr, y = xq[:M], asc[:M], lr[:M], y[:M]
    x_dq = (xq.double().reshape(M, -1, gs) * asc.double()[..., None]).reshape(M, K)
    from svdquant_hf.formats.int4 import unpack_int4

    w_dq = (unpack_int4(qw).double().reshape(N, -1, gs) * wsc.double().t()[..., None]).reshape(N, K)
    exact = x_dq @ w_dq.t() + lr.double() @ pu.double().t() + (b.double() if b is not None else 0)
    scale = exact.abs().amax(dim=1, keepdim=True).clamp_min(1e-6)
    assert ((y.double() - exact).abs() <= 2 ** -6 * exact.abs() + 1e-4 * scale).all()
    return err


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gs", [32, 64, 128])
def test_gemm_small_shapes_awkward_m(ext, dtype, gs):
    for i, M in enumerate(AWKWARD_M):
        for j, (K, N) in enumerate(SMALL_SHAPES):
            if K % gs:
                continue
            R = [0, 16, 32, 40][(i + j) % 4]
            _check_chain(ext, M, K, N, R, dtype, gs, bias=(i + j) % 2 == 0, seed=31 * i + j + gs)


@pytest.mark.parametrize("bm", [64, 128])
def test_gemm_both_tile_heights(ext, bm):
    ext.set_gemm_tile_rows(bm)
    try:
        for i, (M, K, N) in enumerate([(1, 256, 136), (255, 3072, 264), (4097, 384, 40)]):
            _check_chain(ext, M, K, N, 32, torch.bfloat16, 64, bias=True, seed=900 + bm + i)
    finally:
        ext.set_gemm_tile_rows(0)


@pytest.mark.parametrize("K,N", FLUX_SHAPES)
@pytest.mark.parametrize("M", [255, 4097])
def test_gemm_flux_shapes(ext, K, N, M):
    _check_chain(ext, M, K, N, 32, torch.bfloat16, 64, bias=True, seed=K + N + M)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gs", [64, 128])
def test_gemm_native_int4_mma_is_bit_identical_to_the_int8_path(ext, dtype, gs):
    """The 4-bit MMA path (m16n8k64 s4: native on sm_80/86/87/89, forced here on any GPU) returns the int8
    MMA path's outputs bit for bit (its integer group dots are those divided by 16, promoted alike), on
    awkward M, small and FLUX.1 shapes and both tile heights, every element written."""
    shapes = [(1, 256, 136), (7, 384, 40), (255, 3072, 264), (4097, 128, 24), (300, 3072, 3072)]
    mode = ext.gemm_int4_mma_mode()
    try:
        for bm in (64, 128):
            ext.set_gemm_tile_rows(bm)
            for i, (M, K, N) in enumerate(shapes):
                x, smooth, pd, pu, qw, wsc, b = _inputs(M, K, N, 32, dtype, 500 + 7 * i + bm + gs, gs, i % 2 == 0)
                xq, asc, lr = _quantize(ext, x, smooth, pd, gs)
                ext.set_gemm_int4_mma(2)
                assert not ext.gemm_int4_mma(gs)
                y8 = _gemm(ext, xq, asc, qw, wsc, lr, pu, b, gs)
                ext.set_gemm_int4_mma(1)
                assert ext.gemm_int4_mma(gs)
                y4 = _gemm(ext, xq, asc, qw, wsc, lr, pu, b, gs)
                assert torch.isfinite(y4).all(), f"M={M} K={K} N={N}: unwritten outputs"
                assert torch.equal(y4, y8), f"M={M} K={K} N={N} bm={bm}: max diff {(y4 - y8).abs().max()}"
            ext.set_gemm_int4_mma(1)
            _check_chain(ext, 255, 3072, 264, 32, dtype, gs, bias=True, seed=700 + bm + gs)  # against the reference
    finally:
        ext.set_gemm_int4_mma(mode)
        ext.set_gemm_tile_rows(0)


def test_gemm_int4_mma_choice_follows_the_gpu(ext):
    """Auto mode by default: the 4-bit MMA exactly where it is native (sm_80/86/87/89) and for groups of 64 /
    128; forced mode everywhere for those groups; mode 2 never."""
    assert ext.gemm_int4_mma_mode() == 0
    native = (8, 0) <= torch.cuda.get_device_capability() < (9, 0)
    try:
        assert ext.gemm_int4_mma(64) == native and ext.gemm_int4_mma(128) == native
        assert not ext.gemm_int4_mma(32)
        ext.set_gemm_int4_mma(1)
        assert ext.gemm_int4_mma(64) and not ext.gemm_int4_mma(32)
        ext.set_gemm_int4_mma(2)
        assert not ext.gemm_int4_mma(64)
    finally:
        ext.set_gemm_int4_mma(0)


def test_ops_reject_bad_shapes_and_fall_back(ext):
    xq = torch.randint(-8, 8, (4, 128), device="cuda", dtype=torch.int8)
    qw = torch.randint(-128, 127, (12, 64), device="cuda", dtype=torch.int8)
    asc = torch.rand(4, 2, device="cuda").to(torch.bfloat16)
    wsc = torch.rand(2, 12, device="cuda").to(torch.bfloat16)
    lr = torch.randn(4, 16, device="cuda").to(torch.bfloat16)
    pu = torch.randn(12, 16, device="cuda").to(torch.bfloat16)
    with pytest.raises(ValueError, match="wscales"):
        library.w4a4_gemm(xq, asc, qw, wsc.t().contiguous(), lr, pu, None, 64)
    with pytest.raises(ValueError, match="proj_up"):
        library.w4a4_gemm(xq, asc, qw, wsc, lr, pu[:, :8], None, 64)
    # N = 12 is not a multiple of 8: the kernel does not take it, the reference does
    y = library.w4a4_gemm(xq, asc, qw, wsc, lr, pu, None, 64)
    assert torch.equal(y, w4a4_gemm_ref(xq, asc, qw, wsc, lr, pu, None, 64))


def test_ops_dispatch_to_cuda_and_compile(ext):
    """SVDQuantLinear on CUDA uses the kernels, matches the reference path, and compiles fullgraph."""
    from svdquant_hf import SVDQuantLinear

    torch.manual_seed(0)
    K, N, R = 256, 136, 32
    lin = SVDQuantLinear(K, N, bias=True, rank=R, group_size=64, dtype=torch.bfloat16, device="cuda")
    x0, smooth, pd, pu, qw, wsc, b = _inputs(8, K, N, R, torch.bfloat16, 5)
    lin.qweight.copy_(qw)
    lin.wscales.copy_(wsc)
    lin.smooth_factor.copy_(smooth)
    lin.proj_down.copy_(pd)
    lin.proj_up.copy_(pu)
    lin.bias.data.copy_(b)
    x = torch.randn(2, 37, K, device="cuda", dtype=torch.bfloat16)
    y = lin(x)
    xq, asc, lr = (t.cuda() for t in quantize_act_ref(x.reshape(-1, K).cpu(), smooth.cpu(), pd.cpu(), 64))
    ref = w4a4_gemm_ref(xq, asc, qw, wsc, lr, pu, b, 64).reshape(2, 37, N)
    assert _rel(y, ref) < 1e-2
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        lin(x)
        torch.cuda.synchronize()
    names = " ".join(e.name for e in prof.events())
    assert "quantize_act_kernel" in names and "w4a4_gemm_kernel" in names
    compiled = torch.compile(lin, fullgraph=True)
    yc = compiled(x)
    assert _rel(yc, ref) < 1e-2
    # library ops route to the same kernels
    xq2, asc2, lr2 = library.quantize_act(x.reshape(-1, K), smooth, pd, 64)
    assert torch.equal(xq2, xq) and torch.equal(asc2, asc)


@pytest.mark.slow
def test_compute_sanitizer_clean(tmp_path):
    exe = shutil.which("compute-sanitizer") or (
        "/usr/local/cuda/bin/compute-sanitizer" if os.path.exists("/usr/local/cuda/bin/compute-sanitizer") else None
    )
    if exe is None:
        pytest.skip("compute-sanitizer not installed")
    case = Path(__file__).with_name("sanitize_case.py")
    out = subprocess.run(
        [exe, "--tool", "memcheck", "--error-exitcode", "9", sys.executable, str(case)],
        capture_output=True, text=True, timeout=600,
    )
    log = out.stdout + out.stderr
    (tmp_path / "sanitizer.log").write_text(log)
    assert out.returncode == 0 and "ERROR SUMMARY: 0 errors" in log, log[-3000:]

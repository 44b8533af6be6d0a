"""The down projection beside the persistent quantizer (set_lowrank_down_beside, Hopper, many tokens): lr = x @ proj_down
by our kernel on the CTAs the quantizer leaves free, each 64-row block once the quantizer has read it (a per-block
counter, reset by the kernel). Outputs are poisoned first; xq and xscale must be the bits of the side-stream path, lr
within fp32 summation-order rounding of the reference (the blocks' K-ranges summed in K order)."""
from __future__ import annotations

import pytest
import torch

from svdquant_hf.ops.reference import quantize_act_2l_ref

from test_kernels import _poison, _rel, ext  # noqa: F401  (ext: the fixture)
from test_kernels_2l import _acts, _check_graph_replay, _fused_quant, _switched, hopper, no_lr_chain  # noqa: F401

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.usefixtures("no_lr_chain", "per_row_quantizer"),
]


@pytest.fixture
def per_row_quantizer(hopper):  # noqa: F811
    """The per-row quantizer for every test here (the suite may start from a fused mode: conftest.py), since the down
    projection beside it is what these tests ask for."""
    with _fused_quant(hopper, 0):
        yield


def _beside(ext, mode: int = 1, ctas: int = 0):
    """set_lowrank_down_beside(mode) for a block (1: wherever the shape fits, 0: never, -1: its rule)."""
    before = ext.lowrank_down_beside()
    return _switched(lambda m: ext.set_lowrank_down_beside(m, -1.0, ctas if m == mode else 0), mode, before)


def _call(ext, x, smooth, pd, k1: int = 0):
    M, K = x.shape
    _poison(2 * M * K + 8 * M + 2 * M * pd.shape[1], 0x7F)
    if k1:
        return ext.quantize_act_2l_cat(x[:, :k1].contiguous(), x[:, k1:].contiguous(), smooth, pd, 64)
    return ext.quantize_act_2l(x, smooth, pd, 64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("R", [16, 32, 48, 64])
@pytest.mark.parametrize("M,K,k1", [(1, 1024, 0), (63, 2304, 0), (64, 8192, 0), (65, 12288, 0), (1000, 1536, 0),
                                    (4097, 3072, 0), (300, 15360, 3072), (130, 1280, 384)])
def test_beside_gives_the_side_streams_xq_and_lr(hopper, dtype, R, M, K, k1):
    """Forced wherever the shape fits (any M, K a multiple of 128, the cat form with its first width a multiple of 128):
    xq and xscale bit for bit the side-stream path's and the reference's, lr everywhere written and within a 16-bit
    rounding of the exact product (and 1e-3 of cuBLAS's where that rounds once: not its cat form); a second call gives
    the same bits (each call zeroes its own counters)."""
    x, smooth, pd = _acts(M, K, R, dtype, seed=M + K + R + 5)
    with _beside(hopper, 0):
        side = _call(hopper, x, smooth, pd, k1)
    n0 = hopper.lowrank_down_beside_launches()
    with _beside(hopper, 1):
        first = _call(hopper, x, smooth, pd, k1)
        again = _call(hopper, x, smooth, pd, k1)
    torch.cuda.synchronize()
    assert hopper.lowrank_down_beside_launches() == n0 + 2
    assert torch.equal(first[0], side[0]) and torch.equal(first[1], side[1])
    # one rounding of the fp32 sum: within a 16-bit rounding of the exact product (bf16: 2^-8 relative at most per
    # element); cuBLAS's cat form rounds its first part before adding the second, so the side path is compared plainly
    exact = (x.double() @ pd.double()).to(torch.float32)
    assert torch.isfinite(first[2]).all() and _rel(first[2], exact) < (3e-3 if dtype == torch.bfloat16 else 4e-4)
    if not k1:
        assert _rel(first[2], side[2]) < 1e-3
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    rq, rs, rl = quantize_act_2l_ref(x, smooth, pd, 64)
    assert torch.equal(first[0], rq) and torch.equal(first[1], rs) and _rel(first[2], rl) < 1e-2


@pytest.mark.parametrize("ctas", [1, 3, 200])
def test_beside_with_any_number_of_ctas(hopper, ctas):
    """One CTA walking every item, a few, and more CTAs than items: the same bits (each block's partials are added in K
    order whichever CTA computed them)."""
    x, smooth, pd = _acts(700, 12288, 32, torch.bfloat16, seed=ctas + 3)
    with _beside(hopper, 1):
        ref = _call(hopper, x, smooth, pd)
    with _beside(hopper, 1, ctas=ctas):
        out = _call(hopper, x, smooth, pd)
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(out, ref))


def test_beside_under_cuda_graph_replay(hopper):
    """Captured in a CUDA graph (the counters' memset, the side stream's fork and join inside it) and replayed on new
    inputs, twice."""
    x, smooth, pd = _acts(1100, 8192, 32, torch.bfloat16, seed=41)
    n0 = hopper.lowrank_down_beside_launches()
    with _beside(hopper, 1):
        for seed in (42, 43):
            _check_graph_replay(hopper, x, smooth, pd, seed=seed)
    assert hopper.lowrank_down_beside_launches() > n0


def test_beside_rule(hopper):
    """The rule (-1) takes the path only past L2 at K >= 8192 (FLUX.1's fc2 and single-block proj_out at 4096-4608
    tokens), and never at rank 0 or a rank it has no kernel for; either way the outputs match the reference."""
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    M = l2 // (2 * 12288) + 64  # x just past L2
    x, smooth, pd = _acts(M, 12288, 32, torch.bfloat16, seed=51)
    n0 = hopper.lowrank_down_beside_launches()
    with _beside(hopper, -1):
        out = _call(hopper, x, smooth, pd)
        assert hopper.lowrank_down_beside_launches() == n0 + 1, "past L2 at K = 12288: beside"
        small = _call(hopper, x[:256].contiguous(), smooth, pd)
        assert hopper.lowrank_down_beside_launches() == n0 + 1, "x in L2: the side stream"
        narrow = _call(hopper, x[:, :3072].contiguous(), smooth[:3072].contiguous(), pd[:3072].contiguous())
        assert hopper.lowrank_down_beside_launches() == n0 + 1, "K = 3072: the side stream"
        odd = _call(hopper, x, smooth, torch.cat([pd, pd[:, :8]], 1))
        assert hopper.lowrank_down_beside_launches() == n0 + 1, "rank 40: the side stream"
    torch.cuda.synchronize()
    assert torch.isfinite(narrow[2]).all() and torch.isfinite(odd[2]).all()
    rq, rs, rl = quantize_act_2l_ref(x, smooth, pd, 64)
    assert torch.equal(out[0], rq) and torch.equal(out[1], rs) and _rel(out[2], rl) < 1e-2
    assert torch.equal(small[0], rq[:256]) and _rel(small[2], rl[:256]) < 1e-2

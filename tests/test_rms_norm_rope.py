"""svdquant::rms_norm_rope (FLUX's q/k: RMSNorm per head, then the rotary embedding): the reference against diffusers'
own modules (bit for bit), its errors, its fake for torch.compile, and on a GPU the kernel against the reference."""
from __future__ import annotations

import pytest
import torch

from svdquant_hf.ops import library as ops
from svdquant_hf.ops.reference import rms_norm_rope_ref

diffusers = pytest.importorskip("diffusers")


def _inputs(B, S, H, D, dtype, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(B, S, H, D, generator=g) * 3).to(dtype)
    x[0, 0, 0] = 0  # an all-zero head: eps alone in the norm
    w = (torch.rand(D, generator=g) + 0.5).to(dtype)
    pos = torch.arange(S, dtype=torch.float64)[:, None] * (10000.0 ** (-torch.arange(0, D, 2) / D))[None]
    cos = pos.cos().repeat_interleave(2, 1).float()
    sin = pos.sin().repeat_interleave(2, 1).float()
    return tuple(t.to(device) for t in (x, w, cos, sin))


def _diffusers(x, w, eps, cos, sin):
    """diffusers' apply_rotary_emb after torch's RMSNorm, as FLUX's attention computes them."""
    from diffusers.models.embeddings import apply_rotary_emb

    norm = torch.nn.RMSNorm(x.shape[-1], eps=eps).to(x.device, w.dtype)
    with torch.no_grad():
        norm.weight.copy_(w)
        return apply_rotary_emb(norm(x), (cos, sin), sequence_dim=1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,S,H,D", [(1, 7, 3, 128), (2, 5, 2, 64), (1, 3, 1, 256), (1, 4, 2, 6)])
def test_reference_is_diffusers_bit_for_bit(dtype, B, S, H, D):
    x, w, cos, sin = _inputs(B, S, H, D, dtype, seed=S)
    ref = rms_norm_rope_ref(x, w, 1e-6, cos, sin)
    assert ref.dtype == dtype and ref.shape == x.shape
    assert torch.equal(ref, _diffusers(x, w, 1e-6, cos, sin))
    assert torch.equal(ops.rms_norm_rope(x, w, 1e-6, cos, sin), ref)  # the op on the CPU is the reference


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_front_part_is_the_concatenation(dtype):
    """With a front part (its own weight): cat of the two parts' norms, then the rotary embedding over all rows, as
    FLUX's double blocks compute the text and image tokens' q / k."""
    x, w, cos, sin = _inputs(2, 9, 3, 64, dtype, seed=4)
    front, w0 = x[:, :4].contiguous(), (w.flip(0) * 0.7).to(dtype)
    rest = x[:, 4:].contiguous()
    out = ops.rms_norm_rope(rest, w, 1e-6, cos, sin, front, w0)
    from diffusers.models.embeddings import apply_rotary_emb

    def norm(t, weight):
        return torch.nn.functional.rms_norm(t, (64,), weight, 1e-6)

    expected = apply_rotary_emb(torch.cat([norm(front, w0), norm(rest, w)], 1), (cos, sin), sequence_dim=1)
    assert out.shape == x.shape and torch.equal(out, expected)
    with pytest.raises(ValueError, match="front and front_weight go together"):
        ops.rms_norm_rope(rest, w, 1e-6, cos, sin, front, None)
    with pytest.raises(ValueError, match=r"cos must be float32 \[5, 64\]"):
        ops.rms_norm_rope(rest, w, 1e-6, cos, sin, front[:, :0], w0)


def test_errors_name_the_op_and_the_tensor():
    x, w, cos, sin = _inputs(1, 4, 2, 64, torch.bfloat16)
    with pytest.raises(ValueError, match=r"rms_norm_rope: x must be \[B, S, H, D\]"):
        ops.rms_norm_rope(x[0], w, 1e-6, cos, sin)
    with pytest.raises(ValueError, match=r"rms_norm_rope: weight must be \[64\]"):
        ops.rms_norm_rope(x, w.float(), 1e-6, cos, sin)
    with pytest.raises(ValueError, match=r"rms_norm_rope: sin must be float32 \[4, 64\]"):
        ops.rms_norm_rope(x, w, 1e-6, cos, sin[:3])


def test_compiles_without_graph_breaks():
    x, w, cos, sin = _inputs(1, 6, 2, 64, torch.bfloat16)
    f = torch.compile(lambda *a: ops.rms_norm_rope(*a) * 2, backend="aot_eager", fullgraph=True)
    assert torch.equal(f(x, w, 1e-6, cos, sin), ops.rms_norm_rope(x, w, 1e-6, cos, sin) * 2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,S,H,D", [(1, 4608, 24, 128), (2, 40, 3, 128), (2, 37, 3, 128), (1, 255, 5, 64),
                                     (3, 9, 2, 256), (1, 7, 13, 128), (2, 5, 7, 64)])
@pytest.mark.parametrize("version", [4, 3])
def test_kernel_matches_the_reference(dtype, B, S, H, D, version):
    """Within one 16-bit rounding of the reference (its sum of squares and rsqrt run in another order), nearly all
    outputs identical, every output written (the allocator's memory poisoned first), cos / sin rows taken from an
    offset into a longer table, or a front part of 3 tokens with its own weight (as the double blocks' text q / k);
    both kernels (4: a warp per token, the default; 3: the previous one), head counts that leave a warp's last load
    part-filled (13 heads of 128, 7 of 64)."""
    from svdquant_hf.ops import build

    ext = build.load_extension()
    if ext is None or not hasattr(ext, "rms_norm_rope"):
        pytest.skip("the extension (with rms_norm_rope) is not built")
    if hasattr(ext, "set_rms_norm_rope_version"):
        ext.set_rms_norm_rope_version(version)
    elif version != 4:
        pytest.skip("one kernel version in this build")
    try:
        _check_kernel(dtype, B, S, H, D)
    finally:
        if hasattr(ext, "set_rms_norm_rope_version"):
            ext.set_rms_norm_rope_version(4)


def _check_kernel(dtype, B, S, H, D):
    x, w, cos, sin = _inputs(B, S + 3, H, D, dtype, seed=B + S, device="cuda")
    front, w0 = x[:, :3].contiguous(), w.flip(0).contiguous()
    if S % 2:  # odd S: cos / sin rows at an offset (a table longer than the tokens)
        x, cos, sin, front = x[:, 3:].contiguous(), cos[3:], sin[3:], None
    else:  # even S: the first 3 tokens as the front part, with their own weight
        x = x[:, 3:].contiguous()
    poison = torch.empty(2 * x.numel(), dtype=torch.uint8, device="cuda").fill_(0xFF)  # NaN in 16 bits
    del poison
    extra = () if front is None else (front, w0)
    y = ops.rms_norm_rope(x, w, 1e-6, cos, sin, *extra).cpu().float()
    ref = rms_norm_rope_ref(x.cpu(), w.cpu(), 1e-6, cos.cpu(), sin.cpu(), *(t.cpu() for t in extra)).float()
    assert torch.isfinite(y).all()
    assert float((y - ref).norm() / ref.norm()) < 4e-3
    assert float((y - ref).abs().max()) <= 2 ** -6 * float(ref.abs().max())
    assert (y == ref).float().mean() > 0.97

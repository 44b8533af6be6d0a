"""Signed INT4 with one 16-bit scale per group of ``group_size`` along the last axis.

scale = absmax(group) / 7, computed in fp32, saturated to the scale dtype's largest finite value
and rounded to the 16-bit scale dtype;
q = clamp(round_half_even(x / scale), -8, 7), the division in fp32 by the *rounded* scale;
an all-zero group has scale 0 and q = 0. Dequantized value: q * scale.
Packing: two values per byte along the last axis, element 2j in the low nibble and 2j+1 in
the high nibble, two's complement; stored as torch.int8.
"""
from __future__ import annotations

import torch

INT4_MIN = -8
INT4_MAX = 7
SUPPORTED_GROUP_SIZES = (32, 64, 128)


def _check_groups(x: torch.Tensor, group_size: int, what: str) -> None:
    if group_size <= 0 or x.shape[-1] % group_size != 0:
        raise ValueError(
            f"{what}: last dimension {x.shape[-1]} is not a multiple of group_size={group_size}"
        )


def round_scale(scale_f32: torch.Tensor, scale_dtype: torch.dtype) -> torch.Tensor:
    """Round fp32 scales to ``scale_dtype``, saturating (fp16 would overflow to inf, and 0 * inf = NaN)."""
    return scale_f32.clamp(max=torch.finfo(scale_dtype).max).to(scale_dtype)


def quantize_int4(
    x: torch.Tensor, group_size: int, scale_dtype: torch.dtype = torch.bfloat16, what: str = "tensor"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` [..., K] to INT4 values (int8 storage) [..., K] and scales [..., K/group_size]."""
    _check_groups(x, group_size, what)
    xf = x.float()
    groups = xf.reshape(*xf.shape[:-1], xf.shape[-1] // group_size, group_size)
    scale = round_scale(groups.abs().amax(dim=-1) / INT4_MAX, scale_dtype)
    sf = scale.float().unsqueeze(-1)
    safe = torch.where(sf > 0, sf, torch.ones_like(sf))
    # a zero scale means |x| < 7 * (smallest 16-bit scale): x / 1 then rounds to 0 as well
    q = (groups / safe).round_().clamp_(INT4_MIN, INT4_MAX).to(torch.int8)
    return q.reshape(x.shape), scale


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor:
    """Inverse of :func:`quantize_int4`, in fp32 (every product is exact in fp32)."""
    groups = q.float().reshape(*q.shape[:-1], q.shape[-1] // group_size, group_size)
    return (groups * scale.float().unsqueeze(-1)).reshape(q.shape)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack INT4 values [..., K] (int8 storage, values in [-8, 7]) into bytes [..., K/2]."""
    if q.shape[-1] % 2:
        raise ValueError(f"pack_int4: last dimension {q.shape[-1]} must be even")
    u = (q.to(torch.int16) & 0xF).reshape(*q.shape[:-1], q.shape[-1] // 2, 2)
    byte = u[..., 0] | (u[..., 1] << 4)
    return byte.to(torch.uint8).view(torch.int8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Unpack bytes [..., K/2] into signed INT4 values [..., K] (int8 storage)."""
    b = packed.view(torch.uint8).to(torch.int16)
    lo = b & 0xF
    hi = (b >> 4) & 0xF
    vals = torch.stack([lo, hi], dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)
    return (vals - ((vals & 0x8) << 1)).to(torch.int8)

"""Signed INT4 with two-level scales: one fp32 scale per row, one 4-bit integer multiplier per group.

For a tensor x [..., K] quantized along the last axis in groups of ``group_size`` (G):

    xf      = float32(x)
    amax_g  = max |xf| over each group                         [..., K/G]
    amax    = max over the groups of amax_g                    [...]
    s_row   = amax / 112                                       fp32 (first level, per row)
    s_int   = clamp(ceil((amax_g / amax) * 16), 1, 16)         uint8 (second level; 1 where amax == 0)
    scale   = s_row * s_int                                    fp32 multiply
    inv     = 1 / scale                                        fp32 IEEE reciprocal; 0 where it is not finite
                                                               (scale == 0, or a subnormal scale whose
                                                               reciprocal overflows)
    q       = clamp(round_half_even(xf * inv), -8, 7)          int8 (the product in fp32)
    value   = float32(q * s_int) * s_row                       q * s_int is an integer in [-128, 112]

112 = 16 * 7: the group holding the row's absmax gets s_int = 16 and its absmax maps to +-7.
Why two levels: q * s_int is an 8-bit integer, so a GEMM over the whole K is one exact integer sum
and both fp32 scales (per row of each operand) apply once, after it.
"""
from __future__ import annotations

import torch

from .int4 import INT4_MAX, INT4_MIN, _check_groups

S_INT_MAX = 16  # the largest second-level multiplier; 4 bits of information, stored as uint8
ROW_DIVISOR = INT4_MAX * S_INT_MAX  # 112: s_row = amax / 112
# |q * s_int| <= 128 on both GEMM operands: |acc| <= 2^14 K stays inside int32 up to K = 131072;
# half of that is the guaranteed bound (K > MAX_K_2L is rejected)
MAX_K_2L = 65536


def group_absmax(x: torch.Tensor, group_size: int, what: str = "tensor") -> tuple[torch.Tensor, torch.Tensor]:
    """(amax_g [..., K/G], amax [...]) of float32(x), the two maxima the rule starts from."""
    _check_groups(x, group_size, what)
    xf = x.float()
    amax_g = xf.reshape(*xf.shape[:-1], xf.shape[-1] // group_size, group_size).abs().amax(dim=-1)
    return amax_g, amax_g.amax(dim=-1)


def second_level_scales(amax_g: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """s_int = clamp(ceil((amax_g / amax) * 16), 1, 16) as uint8; 1 for rows whose amax is 0."""
    a = amax.unsqueeze(-1)
    ratio = torch.where(a > 0, amax_g / torch.where(a > 0, a, torch.ones_like(a)), torch.zeros_like(amax_g))
    return torch.ceil(ratio * S_INT_MAX).clamp_(1, S_INT_MAX).to(torch.uint8)


def reciprocal_or_zero(scale: torch.Tensor) -> torch.Tensor:
    """fp32 1 / scale, or 0 where that is not finite (scale 0, or subnormal with an overflowing reciprocal)."""
    inv = torch.reciprocal(scale.float())
    return torch.where(torch.isfinite(inv), inv, torch.zeros_like(inv))


def quantize_with_scales_2l(
    x: torch.Tensor, s_int: torch.Tensor, s_row: torch.Tensor, group_size: int
) -> torch.Tensor:
    """q = clamp(rne(float32(x) * (1 / (s_row * s_int))), -8, 7) for given scales; int8 [..., K]."""
    xf = x.float()
    groups = xf.reshape(*xf.shape[:-1], xf.shape[-1] // group_size, group_size)
    scale = s_row.float().unsqueeze(-1) * s_int.float()  # [..., K/G], exact small-integer multiply in fp32
    inv = reciprocal_or_zero(scale).unsqueeze(-1)
    q = (groups * inv).round_().clamp_(INT4_MIN, INT4_MAX).to(torch.int8)
    return q.reshape(x.shape)


def quantize_int4_2l(
    x: torch.Tensor, group_size: int, what: str = "tensor"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize x [..., K] -> (q int8 [..., K] in [-8, 7], s_int uint8 [..., K/G] in [1, 16], s_row fp32 [...])."""
    amax_g, amax = group_absmax(x, group_size, what)
    # a tensor divisor: torch divides by a Python scalar as a multiply by its reciprocal on CUDA (1 ulp off)
    s_row = amax / torch.full_like(amax, float(ROW_DIVISOR))
    s_int = second_level_scales(amax_g, amax)
    return quantize_with_scales_2l(x, s_int, s_row, group_size), s_int, s_row


def combine_2l(q: torch.Tensor, s_int: torch.Tensor, group_size: int) -> torch.Tensor:
    """The 8-bit integer operand q * s_int [..., K] (int8, values in [-128, 112]) the GEMM consumes."""
    wide = q.to(torch.int16).reshape(*q.shape[:-1], q.shape[-1] // group_size, group_size)
    return (wide * s_int.to(torch.int16).unsqueeze(-1)).reshape(q.shape).to(torch.int8)


def dequantize_int4_2l(q: torch.Tensor, s_int: torch.Tensor, s_row: torch.Tensor, group_size: int) -> torch.Tensor:
    """Inverse of :func:`quantize_int4_2l` in fp32: float32(q * s_int) * s_row."""
    return combine_2l(q, s_int, group_size).float() * s_row.float().unsqueeze(-1)


def invalid_2l_tensor(tensor: str, value: torch.Tensor) -> str | None:
    """Why a stored int4_2l layer tensor breaks the format's guarantees (None: it does not).

    Only the second-level scales are checked: s_int outside [1, 16] would void the exact int32
    accumulation bound (|q * s_int| <= 128) the kernels rely on.
    """
    if tensor != "wscales" or value.numel() == 0 or value.is_meta:
        return None
    lo, hi = int(value.min()), int(value.max())
    if lo < 1 or hi > S_INT_MAX:
        return f"holds second-level scales in [{lo}, {hi}]; int4_2l needs integers in [1, {S_INT_MAX}]"
    return None

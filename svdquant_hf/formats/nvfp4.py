"""NVFP4: e2m1 values in groups of 16 with an fp8 e4m3 scale per group and one fp32 tensor scale.

Reference path only (for quality comparison): dequantized value = e2m1 * fp8_scale * tensor_scale,
tensor_scale = absmax(x) / (6 * 448). e2m1 codes are 4 bits (sign bit 3, magnitude index 0..7)
packed two per byte exactly like INT4 (element 2j in the low nibble).
"""
from __future__ import annotations

import torch

from .int4 import _check_groups

NVFP4_GROUP = 16
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
_E2M1_MAX = 6.0
_E4M3_MAX = 448.0


def _round_to_e2m1_index(a: torch.Tensor) -> torch.Tensor:
    """Magnitude index of the nearest e2m1 value, ties to the even index."""
    grid = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=a.device)
    a = a.clamp(max=_E2M1_MAX)
    hi = torch.bucketize(a, grid).clamp(max=len(E2M1_VALUES) - 1)  # first grid >= a
    lo = (hi - 1).clamp(min=0)
    d_lo = a - grid[lo]
    d_hi = grid[hi] - a
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
    return torch.where(pick_hi, hi, lo)


def quantize_nvfp4(
    x: torch.Tensor, tensor_scale: torch.Tensor | None = None, what: str = "tensor"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (codes uint8 [..., K] in 0..15, fp8 scales [..., K/16], fp32 tensor scale [])."""
    _check_groups(x, NVFP4_GROUP, what)
    xf = x.float()
    if tensor_scale is None:
        amax = xf.abs().amax()
        tensor_scale = torch.where(amax > 0, amax / (_E2M1_MAX * _E4M3_MAX), torch.ones_like(amax))
    ts = tensor_scale.float()
    groups = xf.reshape(*xf.shape[:-1], xf.shape[-1] // NVFP4_GROUP, NVFP4_GROUP)
    gscale = (groups.abs().amax(-1) / _E2M1_MAX / ts).clamp(max=_E4M3_MAX).to(torch.float8_e4m3fn)
    eff = (gscale.float() * ts).unsqueeze(-1)
    safe = torch.where(eff > 0, eff, torch.ones_like(eff))
    scaled = torch.where(eff > 0, groups / safe, torch.zeros_like(groups))
    idx = _round_to_e2m1_index(scaled.abs())
    codes = (idx | ((scaled < 0) & (idx > 0)).to(idx.dtype) << 3).to(torch.uint8)
    return codes.reshape(x.shape), gscale, ts


def dequantize_nvfp4(codes: torch.Tensor, gscale: torch.Tensor, tensor_scale: torch.Tensor) -> torch.Tensor:
    grid = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=codes.device)
    c = codes.to(torch.int64)
    vals = grid[c & 7] * torch.where((c & 8) > 0, -1.0, 1.0)
    groups = vals.reshape(*codes.shape[:-1], codes.shape[-1] // NVFP4_GROUP, NVFP4_GROUP)
    out = groups * (gscale.float() * tensor_scale.float()).unsqueeze(-1)
    return out.reshape(codes.shape)


def pack_e2m1(codes: torch.Tensor) -> torch.Tensor:
    c = codes.to(torch.int16).reshape(*codes.shape[:-1], codes.shape[-1] // 2, 2)
    return (c[..., 0] | (c[..., 1] << 4)).to(torch.uint8).view(torch.int8)


def unpack_e2m1(packed: torch.Tensor) -> torch.Tensor:
    b = packed.view(torch.uint8).to(torch.int16)
    vals = torch.stack([b & 0xF, (b >> 4) & 0xF], dim=-1)
    return vals.reshape(*packed.shape[:-1], packed.shape[-1] * 2).to(torch.uint8)

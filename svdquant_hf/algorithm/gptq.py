"""GPTQ for the INT4 residual (per-group scales chosen on the updated weights).

One loop serves both INT4 formats: at the first column of each group a format-specific callback
picks the group's scales from the weights as GPTQ has updated them so far, and returns the
effective fp32 scale per row that the columns of that group are quantized with.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..formats.int4 import INT4_MAX, INT4_MIN, round_scale
from ..formats.int4_2l import S_INT_MAX
from .twolevel import best_multipliers


def gptq_quantize(
    w: torch.Tensor,
    hessian: torch.Tensor,
    group_size: int,
    group_scale: Callable[[torch.Tensor, int], torch.Tensor],
    damp: float = 0.01,
) -> torch.Tensor:
    """Quantize w [N, K] against H = X^T X [K, K]; returns q int8 [N, K].

    group_scale(w_group [N, G], group index) -> effective fp32 scale [N] of that group (it records
    whatever the format stores); q = clamp(rne(w / scale), -8, 7), 0 where the scale is 0.
    """
    w = w.float().clone()
    n, k = w.shape
    h = hessian.float().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += torch.eye(k, device=h.device) * (damp * torch.diag(h).mean())
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros(n, k, dtype=torch.int8, device=w.device)
    block = max(128, group_size)
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        w1 = w[:, b0:b1].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[b0:b1, b0:b1]
        s = None
        for i in range(b1 - b0):
            col = b0 + i
            if col % group_size == 0:
                s = group_scale(w1[:, i : i + group_size], col // group_size)
            wc = w1[:, i]
            safe = torch.where(s > 0, s, torch.ones_like(s))
            qc = torch.where(s > 0, torch.round(wc / safe), torch.zeros_like(wc)).clamp(INT4_MIN, INT4_MAX)
            q[:, col] = qc.to(torch.int8)
            e = (wc - qc * s) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, b1:] -= err1 @ hinv[b0:b1, b1:]
    return q


def gptq_int4(
    w: torch.Tensor, hessian: torch.Tensor, group_size: int, scale_dtype: torch.dtype, damp: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """INT4 (16-bit group scales): returns (q int8 [N, K], scales [N, K/G] in ``scale_dtype``)."""
    n, k = w.shape
    scales = torch.empty(n, k // group_size, dtype=scale_dtype, device=w.device)

    def group_scale(wg: torch.Tensor, g: int) -> torch.Tensor:
        s16 = round_scale(wg.abs().amax(dim=1) / INT4_MAX, scale_dtype)
        scales[:, g] = s16
        return s16.float()

    return gptq_quantize(w, hessian, group_size, group_scale, damp), scales


def gptq_int4_2l(
    w: torch.Tensor, hessian: torch.Tensor, group_size: int, s_row: torch.Tensor, damp: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """INT4 with two-level scales and a given first level s_row [N] (fp32): returns (q int8 [N, K],
    s_int uint8 [N, K/G]); each group's s_int in [1, 16] minimises its squared error on the updated weights."""
    n, k = w.shape
    s_int = torch.empty(n, k // group_size, dtype=torch.uint8, device=w.device)
    s_row = s_row.float()

    def group_scale(wg: torch.Tensor, g: int) -> torch.Tensor:
        best, _ = best_multipliers(wg.unsqueeze(1), s_row)
        s_int[:, g] = best[:, 0].clamp(1, S_INT_MAX)
        return s_row * s_int[:, g].float()

    return gptq_quantize(w, hessian, group_size, group_scale, damp), s_int

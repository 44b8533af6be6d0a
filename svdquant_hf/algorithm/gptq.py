"""GPTQ for the INT4 residual (per-group scales chosen on the updated weights)."""
from __future__ import annotations

import torch

from ..formats.int4 import INT4_MAX, INT4_MIN, round_scale


def gptq_int4(
    w: torch.Tensor, hessian: torch.Tensor, group_size: int, scale_dtype: torch.dtype, damp: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize w [N, K] against H = X^T X [K, K]; returns (q int8 [N, K], scales [N, K/G])."""
    w = w.float().clone()
    n, k = w.shape
    h = hessian.float().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += torch.eye(k, device=h.device) * (damp * torch.diag(h).mean())
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros(n, k, dtype=torch.int8, device=w.device)
    scales = torch.empty(n, k // group_size, dtype=scale_dtype, device=w.device)
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
                s16 = round_scale(w1[:, i : i + group_size].abs().amax(dim=1) / INT4_MAX, scale_dtype)
                scales[:, col // group_size] = s16
                s = s16.float()
            wc = w1[:, i]
            safe = torch.where(s > 0, s, torch.ones_like(s))
            qc = torch.where(s > 0, torch.round(wc / safe), torch.zeros_like(wc)).clamp(INT4_MIN, INT4_MAX)
            q[:, col] = qc.to(torch.int8)
            e = (wc - qc * s) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, b1:] -= err1 @ hinv[b0:b1, b1:]
    return q, scales

"""The weight side of INT4 with two-level scales (quant_format "int4_2l").

Weights are quantized offline, so the kernels accept ANY s_int in [1, 16] with q in [-8, 7]: the
weight path may choose its scales better than the activation rule (formats/int4_2l.py), which must
stay cheap and fixed because it runs on every token. What this module does:

1. Per row, a short grid of first-level scales s_row = c * amax / 112 (c in ``ROW_GRID``; c < 1
   clips the row's largest values a little and refines every other group's step).
2. For each candidate s_row, per group, the multiplier s_int in [1, 16] that minimises the group's
   squared error sum (w - float32(q * s_int) * s_row)^2 with q = clamp(rne(w / scale), -8, 7).
3. Per row, the candidate with the smallest total squared error.

The plain rule (c = 1 and s_int = ceil(16 amax_g / amax)) is one of the candidates, so the search
never has a larger weight error than the plain rule.
"""
from __future__ import annotations

import torch

from ..formats.int4_2l import (
    ROW_DIVISOR,
    S_INT_MAX,
    group_absmax,
    quantize_int4_2l,
    quantize_with_scales_2l,
)

ROW_GRID = (1.0, 0.95, 0.9, 0.85, 0.8)


def best_multipliers(
    groups: torch.Tensor, s_row: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For groups [..., NG, G] (fp32) and s_row [...]: (s_int uint8 [..., NG], squared error [..., NG]).

    Each group's s_int is the one in [1, 16] with the smallest squared dequantization error; ties
    keep the smaller multiplier.
    """
    best_err = torch.full(groups.shape[:-1], float("inf"), device=groups.device)
    best = torch.ones(groups.shape[:-1], dtype=torch.uint8, device=groups.device)
    flat = groups.reshape(*groups.shape[:-2], -1)
    group_size = groups.shape[-1]
    for s in range(1, S_INT_MAX + 1):
        s_int = torch.full_like(best, s)
        q = quantize_with_scales_2l(flat, s_int, s_row, group_size).reshape(groups.shape)
        deq = (q.float() * s) * s_row.float().unsqueeze(-1).unsqueeze(-1)
        err = (deq - groups).square_().sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, s_int, best)
    return best, best_err


def quantize_weight_2l(
    w: torch.Tensor, group_size: int, search: bool = True, row_grid: tuple[float, ...] = ROW_GRID
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize a weight [N, K] to int4_2l: (q int8 [N, K], s_int uint8 [N, K/G], s_row fp32 [N]).

    search False: the plain rule of the activations (formats.quantize_int4_2l).
    """
    if not search:
        return quantize_int4_2l(w, group_size, what="weight residual")
    wf = w.float()
    _, amax = group_absmax(wf, group_size, "weight residual")
    groups = wf.reshape(*wf.shape[:-1], wf.shape[-1] // group_size, group_size)
    plain_row = amax / ROW_DIVISOR
    best_s_row, best_s_int, best_err = None, None, None
    for c in row_grid:
        s_row = plain_row if c == 1.0 else plain_row * c
        s_int, err = best_multipliers(groups, s_row)
        row_err = err.sum(-1)
        if best_err is None:
            best_s_row, best_s_int, best_err = s_row, s_int, row_err
            continue
        better = row_err < best_err
        best_err = torch.where(better, row_err, best_err)
        best_s_row = torch.where(better, s_row, best_s_row)
        best_s_int = torch.where(better.unsqueeze(-1), s_int, best_s_int)
    assert best_s_row is not None and best_s_int is not None
    return quantize_with_scales_2l(wf, best_s_int, best_s_row, group_size), best_s_int, best_s_row


__all__ = ["ROW_GRID", "best_multipliers", "quantize_weight_2l"]

"""The weight side of INT4 with two-level scales (quant_format "int4_2l").

Weights are quantized offline, so the kernels accept ANY s_int in [1, 16] with q in [-8, 7]: the
weight path may choose its scales better than the activation rule (formats/int4_2l.py), which must
stay cheap and fixed because it runs on every token. What this module does:

1. Per row, the first-level scale s_row = c * amax / 112 for each c of ``row_grid`` (default: only
   c = 1, the plain first level; c < 1 would clip the row's largest values a little and refine
   every other group's step).
2. For each candidate s_row, per group, the multiplier s_int in [1, 16] that minimises the group's
   squared error sum (w - float32(q * s_int) * s_row)^2 with q = clamp(rne(w * (1 / scale)), -8, 7).
3. Per row, the candidate with the smallest total squared error.

The plain rule (c = 1 and s_int = ceil(16 amax_g / amax)) is one of the candidates, so the search
never has a larger weight error than the plain rule. Why c = 1 only by default: a five-point grid
(1, 0.95, 0.9, 0.85, 0.8) cost five times the time and bought nothing measurable (all-MiniLM-L6-v2
calibrated: mean cos 0.9688 with the grid, 0.9699 without; synthetic layers: 0.6 % less output
error; docs/quality.md).
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

ROW_GRID = (1.0,)
_CHUNK_ELEMENTS = 1 << 22  # rows are searched in chunks of about this many weights (bounded scratch)


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

    search False: the plain rule of the activations (formats.quantize_int4_2l). The search runs
    over chunks of rows, so its scratch memory stays a few times 16 MiB whatever the layer's size.
    """
    if not search:
        return quantize_int4_2l(w, group_size, what="weight residual")
    wf = w.float()
    _, amax = group_absmax(wf, group_size, "weight residual")
    n, k = wf.shape
    plain_row = amax / ROW_DIVISOR
    s_row = torch.empty_like(plain_row)
    s_int = torch.empty(n, k // group_size, dtype=torch.uint8, device=wf.device)
    step = max(1, _CHUNK_ELEMENTS // k)
    for r0 in range(0, n, step):
        groups = wf[r0 : r0 + step].reshape(-1, k // group_size, group_size)
        s_row[r0 : r0 + step], s_int[r0 : r0 + step] = _search_rows(groups, plain_row[r0 : r0 + step], row_grid)
    return quantize_with_scales_2l(wf, s_int, s_row, group_size), s_int, s_row


def _search_rows(
    groups: torch.Tensor, plain_row: torch.Tensor, row_grid: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_row [n], s_int [n, NG]) with the smallest total squared error per row over ``row_grid``."""
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
    return best_s_row, best_s_int


__all__ = ["ROW_GRID", "best_multipliers", "quantize_weight_2l"]

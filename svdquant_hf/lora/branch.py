"""Fold LoRA factors into an SVDQuant low-rank branch (pure PyTorch, no PEFT)."""
from __future__ import annotations

from collections.abc import Sequence

import torch

RANK_GRANULARITY = 16


def padded_rank(rank: int, granularity: int = RANK_GRANULARITY) -> int:
    """Smallest multiple of ``granularity`` that is >= ``rank``."""
    return -(-rank // granularity) * granularity


def extend_branch(
    proj_down: torch.Tensor,
    proj_up: torch.Tensor,
    factors: Sequence[tuple[torch.Tensor, torch.Tensor, float]],
    granularity: int = RANK_GRANULARITY,
    name: str = "",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate LoRA factors onto the branch: x @ down @ up^T gains sum_i scale_i * B_i A_i x.

    proj_down [K, R], proj_up [N, R]; each factor is (A [r, K], B [N, r], scale). The scale goes on
    the down projection (it acts on the unsmoothed input, like proj_down). The added rank is padded
    with zero columns so the total rank is a multiple of ``granularity``; the base columns come first
    and are copied unchanged.
    """
    k, base_rank = proj_down.shape
    n = proj_up.shape[0]
    dtype, device = proj_down.dtype, proj_down.device
    downs, ups = [proj_down], [proj_up]
    added = 0
    for a, b, scale in factors:
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != k or b.shape[0] != n or a.shape[0] != b.shape[1]:
            raise ValueError(
                f"LoRA on SVDQuant layer {name or '?'}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not "
                f"fit a layer with in_features={k}, out_features={n} (expected A [r, {k}], B [{n}, r])"
            )
        downs.append((a.detach().float().t() * float(scale)).to(device=device, dtype=dtype))
        ups.append(b.detach().to(device=device, dtype=dtype))
        added += a.shape[0]
    total = base_rank + added
    pad = padded_rank(total, granularity) - total
    if pad:
        downs.append(proj_down.new_zeros(k, pad))
        ups.append(proj_up.new_zeros(n, pad))
    return torch.cat(downs, dim=1).contiguous(), torch.cat(ups, dim=1).contiguous()


__all__ = ["RANK_GRANULARITY", "padded_rank", "extend_branch"]

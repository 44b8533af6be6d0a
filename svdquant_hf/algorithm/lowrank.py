"""Low-rank split of a matrix with a deterministic randomized SVD for large shapes."""
from __future__ import annotations

import torch

_EXACT_SVD_MAX_DIM = 1024


def top_singular(m: torch.Tensor, rank: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U [N, r], S [r], Vh [r, K]) of fp32 ``m``: exact SVD when small, else randomized (seeded)."""
    if rank == 0:
        n, k = m.shape
        return m.new_zeros(n, 0), m.new_zeros(0), m.new_zeros(0, k)
    if min(m.shape) <= _EXACT_SVD_MAX_DIM:
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
        return u[:, :rank], s[:rank], vh[:rank]
    oversample = min(rank + 16, min(m.shape))
    gen = torch.Generator(device=m.device).manual_seed(seed)
    omega = torch.randn(m.shape[1], oversample, generator=gen, device=m.device, dtype=m.dtype)
    q, _ = torch.linalg.qr(m @ omega)
    for _ in range(3):  # power iterations sharpen the spectrum decay
        q, _ = torch.linalg.qr(m.t() @ q)
        q, _ = torch.linalg.qr(m @ q)
    ub, s, vh = torch.linalg.svd(q.t() @ m, full_matrices=False)
    return (q @ ub)[:, :rank], s[:rank], vh[:rank]


def lowrank_factors(
    w_smoothed: torch.Tensor, smooth: torch.Tensor, rank: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """proj_down [K, r] (acting on the UNSMOOTHED input) and proj_up [N, r], both in ``dtype``."""
    u, s, vh = top_singular(w_smoothed, rank)
    root = s.sqrt()
    proj_up = (u * root).to(dtype)
    proj_down = (vh.t() * root / smooth.float().unsqueeze(1)).to(dtype)
    return proj_down, proj_up


def lowrank_weight_smoothed(proj_down: torch.Tensor, proj_up: torch.Tensor, smooth: torch.Tensor) -> torch.Tensor:
    """The 16-bit branch as an [N, K] matrix in the smoothed space (what the residual must complement)."""
    return proj_up.float() @ (proj_down.float() * smooth.float().unsqueeze(1)).t()

"""Per-input-channel smoothing: lambda = max|X|^alpha / max|W|^(1 - alpha)."""
from __future__ import annotations

import torch

_LAMBDA_MIN, _LAMBDA_MAX = 1e-4, 1e4


def smoothing_factors(
    weight: torch.Tensor, act_absmax: torch.Tensor | None, alpha: float | None, dtype: torch.dtype
) -> torch.Tensor:
    """Smoothing vector [K], rounded to ``dtype`` (the stored value is the one the math uses).

    Without activation statistics (or alpha None) the data-free rule returns ones: activation
    outliers cannot be seen without data, and weight outliers go to the low-rank branch.
    """
    K = weight.shape[1]
    if act_absmax is None or alpha is None:
        return torch.ones(K, dtype=dtype, device=weight.device)
    wmax = weight.float().abs().amax(dim=0)
    xmax = act_absmax.float().to(weight.device)
    lam = xmax.pow(alpha) / wmax.pow(1.0 - alpha)
    ok = (xmax > 0) & (wmax > 0) & torch.isfinite(lam)
    lam = torch.where(ok, lam, torch.ones_like(lam)).clamp(_LAMBDA_MIN, _LAMBDA_MAX)
    return lam.to(dtype)

"""Layers that read the same input, quantized as one (Nunchaku's fused QKV) and split back exactly.

Quantizing the concatenation [W_1; W_2; ...] of sibling layers gives them one smoothing vector and one
low-rank down projection: their activation quantization and down projection are then the same
computation, so the siblings can run as one W4A4 GEMM with the same numerics (outputs concatenated).
Splitting along the outputs is exact: every output channel keeps its packed weights, group scales,
channel scale and row of proj_up.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from .svdquant import QuantizationError, QuantizedWeights


def split_outputs(qw: QuantizedWeights, sizes: Sequence[int], names: Sequence[str] | None = None) -> list[QuantizedWeights]:
    """Split a quantized layer [sum(sizes), K] along its outputs into layers of ``sizes`` outputs."""
    n = qw.qweight.shape[0]
    if sum(sizes) != n or any(s <= 0 for s in sizes):
        label = f" ({', '.join(names)})" if names else ""
        raise QuantizationError(f"split_outputs{label}: sizes {list(sizes)} do not partition {n} output channels")
    parts, start = [], 0
    for size in sizes:
        rows = slice(start, start + size)
        parts.append(
            replace(
                qw,
                qweight=qw.qweight[rows].contiguous(),
                wscales=qw.wscales[:, rows].contiguous(),
                proj_up=qw.proj_up[rows].contiguous(),
                wchannel=None if qw.wchannel is None else qw.wchannel[rows].contiguous(),
                # equal in every part; copies, since checkpoints (safetensors) refuse tensors sharing memory
                smooth_factor=qw.smooth_factor.clone(),
                proj_down=qw.proj_down.clone(),
                wtscale=None if qw.wtscale is None else qw.wtscale.clone(),
            )
        )
        start += size
    return parts


def concat_group(
    weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor | None], names: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The group's weight [sum N_i, K] and bias (zeros stand in for a member without one; None if none has)."""
    ks = {w.shape[1] for w in weights}
    if len(ks) != 1:
        shapes = ", ".join(f"{n}: {tuple(w.shape)}" for n, w in zip(names, weights))
        raise QuantizationError(f"shared-input group needs one in_features, got {shapes}")
    weight = torch.cat(list(weights), 0)
    if all(b is None for b in biases):
        return weight, None
    bias = torch.cat([b if b is not None else weight.new_zeros(w.shape[0]) for w, b in zip(weights, biases)])
    return weight, bias


__all__ = ["split_outputs", "concat_group"]

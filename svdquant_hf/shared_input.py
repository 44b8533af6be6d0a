"""One activation quantization for several 4-bit layers that read the same input.

Layers whose input quantization is identical (the same smoothing, group size and format: FLUX's q/k/v, and in its
single blocks the MLP's first layer too, quantized on load or with shared smoothing) can share one quantizer call.
Its down projection takes their branches side by side (their ``proj_down`` concatenated, so the input is read once
for all of them), and each layer's GEMM reads its own columns of the result in place (the GEMM takes a column block
of a wider matrix). The numerics are those of calling the layers one by one: the quantizer works per token and the
down projection's columns are independent of each other.

Whether layers share is decided once (``shares_input``: it compares their smoothing, a device sync), when a model is
set up (``epilogues.fuse_epilogues``); whether they can take the shared path is checked per call (``ready``), since a
LoRA or an offloading hook may have wrapped a layer since.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .modules import SVDQuantLinear


def quantize_alike(layers: Sequence[torch.nn.Module]) -> bool:
    """Whether ``layers`` are plain SVDQuantLinear layers (no wrapper) that quantize a common input identically: the
    same features, format, group size and compute dtype, and equal smoothing (a device sync)."""
    if not all(type(m) is SVDQuantLinear for m in layers):
        return False
    a = layers[0]
    same = [(m.in_features, m.quant_format, m.group_size, m.weight_only, m.compute_dtype) for m in layers]
    return (
        len(set(same)) == 1
        and all(torch.equal(m.smooth_factor, a.smooth_factor) for m in layers)
        and (a.wtscale is None or all(torch.equal(m.wtscale, a.wtscale) for m in layers))
    )


def shares_input(layers: Sequence[torch.nn.Module]) -> bool:
    """Whether ``layers`` (two or more) can share one quantizer call: int4_2l W4A4 layers that quantize alike."""
    return (len(layers) > 1 and quantize_alike(layers) and layers[0].quant_format == "int4_2l"
            and not layers[0].weight_only)


def ready(layers: Sequence[torch.nn.Module], x: torch.Tensor) -> bool:
    """Whether every layer is still a plain SVDQuantLinear that can take the fused GEMM on ``x``'s device."""
    return all(type(m) is SVDQuantLinear and m.fused_path_ready(x) for m in layers)


def quantize_shared(layers: Sequence[SVDQuantLinear], x: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """Quantize ``x`` once for ``layers``: per layer (xq, xscale, its low-rank activations), the latter a column
    block of one [tokens, sum of ranks] matrix."""
    first = layers[0]
    first._check_features(x)
    ranks = [m.proj_down.shape[1] for m in layers]
    proj_down = torch.cat([m.proj_down for m in layers], 1)
    xq, xscale, lr = first._quantize_2l(x.reshape(-1, first.in_features).to(first.proj_up.dtype), proj_down)
    out, start = [], 0
    for r in ranks:
        out.append((xq, xscale, lr[:, start : start + r]))
        start += r
    return out


__all__ = ["quantize_alike", "shares_input", "ready", "quantize_shared"]

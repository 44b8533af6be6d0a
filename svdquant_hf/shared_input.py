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


def base_layer(m: torch.nn.Module, lora: bool = True) -> SVDQuantLinear | None:
    """The SVDQuantLinear that computes ``m``: ``m`` itself, or (``lora``) the base of svdquant's LoRA layer around
    one (lora/layer.py); None for anything else."""
    if type(m) is SVDQuantLinear:
        return m
    base = m._modules.get("base_layer") if lora and type(m).__name__ == "SVDQuantLoraLinear" else None
    return base if type(base) is SVDQuantLinear else None


def quantize_alike(layers: Sequence[torch.nn.Module], lora: bool = False) -> bool:
    """Whether ``layers`` are SVDQuantLinear layers (plain, or with ``lora`` also svdquant's LoRA layers around one)
    that quantize a common input identically: the same features, format, group size and compute dtype, and equal
    smoothing (a device sync)."""
    bases = [base_layer(m, lora) for m in layers]
    if any(b is None for b in bases):
        return False
    a = bases[0]
    same = [(m.in_features, m.quant_format, m.group_size, m.weight_only, m.compute_dtype) for m in bases]
    return (
        len(set(same)) == 1
        and all(torch.equal(m.smooth_factor, a.smooth_factor) for m in bases)
        and (a.wtscale is None or all(torch.equal(m.wtscale, a.wtscale) for m in bases))
    )


def shares_input(layers: Sequence[torch.nn.Module], lora: bool = False) -> bool:
    """Whether ``layers`` (two or more) can share one quantizer call: int4_2l W4A4 layers that quantize alike."""
    if len(layers) < 2 or not quantize_alike(layers, lora):
        return False
    a = base_layer(layers[0], lora)
    return a.quant_format == "int4_2l" and not a.weight_only


def ready(layers: Sequence[torch.nn.Module], x: torch.Tensor, lora: bool = False) -> bool:
    """Whether every layer (a plain SVDQuantLinear, or with ``lora`` svdquant's LoRA layer around one, adapters on)
    can take the fused GEMM on ``x``'s device now."""
    return all(base_layer(m, lora) is not None and m.fused_path_ready(x) for m in layers)


def _branch(m: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The (proj_down, proj_up) the layer's GEMM runs with: its own, or with a LoRA layer's adapters concatenated."""
    branch = m._branch() if type(m) is not SVDQuantLinear else None
    base = base_layer(m)
    return branch if branch is not None else (base.proj_down, base.proj_up)


def quantize_shared(layers: Sequence[torch.nn.Module], x: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """Quantize ``x`` once for ``layers``: per layer (xq, xscale, its low-rank activations), the latter a column
    block of one [tokens, sum of ranks] matrix (a LoRA layer's block: its branch with the adapters)."""
    first = base_layer(layers[0])
    first._check_features(x)
    downs = [_branch(m)[0] for m in layers]
    ranks = [d.shape[1] for d in downs]
    proj_down = torch.cat(downs, 1)
    xq, xscale, lr = first._quantize_2l(x.reshape(-1, first.in_features).to(first.proj_up.dtype), proj_down)
    out, start = [], 0
    for r in ranks:
        out.append((xq, xscale, lr[:, start : start + r]))
        start += r
    return out


__all__ = ["base_layer", "quantize_alike", "shares_input", "ready", "quantize_shared"]

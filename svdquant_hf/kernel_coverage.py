"""Which 4-bit layers the fused CUDA kernels take on a given GPU, and why the others run the reference ops.

The kernels cover the shapes of the common diffusion models; a layer outside them still computes the same result
through the pure-PyTorch reference ops on the GPU, only slower. ``kernel_gaps(model)`` names those layers and the
reason, from their shapes alone (no GPU needed with ``capability=``). The rules mirror the dispatch checks in
``ops/cuda.py`` and the kernels' own (``csrc/quantize_act_2l.cu``, ``csrc/w4a4_gemm_2l_sm90.cu``).
"""
from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from .modules import SVDQuantLinear
from .ops.kernel_shapes import HOPPER, shape_gap


def layer_gap(layer: SVDQuantLinear, capability: tuple[int, int]) -> str | None:
    """Why the fused kernels do not take this layer on a GPU of compute ``capability``; None when they do."""
    gap = shape_gap(layer.in_features, layer.out_features, layer.proj_up.shape[-1], layer.group_size,
                    layer.quant_format, layer.weight_only, str(layer.proj_up.dtype).removeprefix("torch."), capability)
    features = (layer.in_features, layer.out_features)
    if gap is None and tuple(capability) == HOPPER and layer.kernel_shape() != features:
        if layer.holds_int8_weights:
            return f"features {features[0]} x {features[1]} (not multiples of 128) with the int8 weight copy"
        if not layer.holds_fragment_order:  # a layer set up by hand: loading on Hopper pads it
            return (f"features {features[0]} x {features[1]} are not multiples of 128: set_fragment_order(model) "
                    f"pads them to the GEMM's tiles")
    return gap


def _capability(capability: tuple[int, int] | None) -> tuple[int, int]:
    if capability is not None:
        return tuple(capability)
    if not torch.cuda.is_available():
        raise ValueError("kernel_gaps: no CUDA device here; pass capability=(9, 0) to ask about Hopper, (8, 9) Ada, ...")
    return torch.cuda.get_device_capability()


def kernel_gaps(model: nn.Module, capability: tuple[int, int] | None = None) -> dict[str, str]:
    """Name -> reason for each SVDQuant layer of ``model`` the fused kernels do not take on a GPU of ``capability``
    (default: the current CUDA device's); those layers run the reference ops there (same results, slower)."""
    cap = _capability(capability)
    gaps = {}
    for name, mod in model.named_modules():
        if isinstance(mod, SVDQuantLinear):
            reason = layer_gap(mod, cap)
            if reason is not None:
                gaps[name] = reason
    return gaps


def describe_gaps(model: nn.Module, capability: tuple[int, int] | None = None) -> str | None:
    """One paragraph for people: how many 4-bit layers leave the kernels and why (the first layer of each reason);
    None when every layer is covered."""
    gaps = kernel_gaps(model, capability)
    if not gaps:
        return None
    total = sum(isinstance(m, SVDQuantLinear) for m in model.modules())
    first: dict[str, str] = {}
    for name, reason in gaps.items():
        first.setdefault(reason, name)
    counts = Counter(gaps.values())
    parts = "; ".join(f"{counts[r]} x {r} (e.g. {first[r]})" for r in counts)
    return (f"SVDQuant: {len(gaps)} of {total} 4-bit layers run the reference ops on this GPU instead of the fused "
            f"kernels (same results, slower): {parts}")


__all__ = ["describe_gaps", "kernel_gaps", "layer_gap"]

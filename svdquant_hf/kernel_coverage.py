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
from .ops.kernel_shapes import (
    GEMM_2L_MAX_K,
    GEMM_2L_MAX_RANK,
    GEMM_2L_STAGE_K,
    KERNEL_DTYPES,
    KERNEL_GROUPS,
    QUANTIZER_MAX_K,
    gemm_2l_shape_ok,
    quantizer_2l_takes,
)

HOPPER = (9, 0)


def layer_gap(layer: SVDQuantLinear, capability: tuple[int, int]) -> str | None:
    """Why the fused kernels do not take this layer on a GPU of compute ``capability``; None when they do."""
    k, n, gs = layer.in_features, layer.out_features, layer.group_size
    dtype = layer.proj_up.dtype
    if layer.quant_format == "nvfp4":
        return "NVFP4 has no CUDA kernel"
    if layer.weight_only:
        return "W4A16 (weight-only) layers run the reference ops"
    if dtype not in KERNEL_DTYPES:
        return f"compute dtype {str(dtype).removeprefix('torch.')}: the kernels take bfloat16 / float16"
    if gs not in KERNEL_GROUPS:
        return f"group size {gs}: the kernels take 32, 64 or 128"
    if capability < (8, 0):
        return f"compute capability {capability[0]}.{capability[1]}: the kernels need 8.0 or newer"
    if layer.quant_format == "int4":
        return None if n % 8 == 0 else f"out_features {n} is not a multiple of 8"
    if not quantizer_2l_takes(k, gs):
        return f"in_features {k}: the quantizer kernel takes multiples of 8 up to {QUANTIZER_MAX_K}"
    if capability != HOPPER:
        return "the int4_2l GEMM kernel is Hopper-only (sm_90a); elsewhere the exact int8 reference GEMM runs"
    if k % GEMM_2L_STAGE_K or k > GEMM_2L_MAX_K:
        return f"in_features {k} is not a multiple of {GEMM_2L_STAGE_K} (up to {GEMM_2L_MAX_K})"
    if n % GEMM_2L_STAGE_K:
        return f"out_features {n} is not a multiple of {GEMM_2L_STAGE_K}"
    rank = layer.proj_up.shape[-1]
    if rank > GEMM_2L_MAX_RANK:
        return f"low-rank branch of rank {rank} (LoRAs folded in): the GEMM takes up to {GEMM_2L_MAX_RANK}"
    return None


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


__all__ = ["describe_gaps", "gemm_2l_shape_ok", "kernel_gaps", "layer_gap", "quantizer_2l_takes"]

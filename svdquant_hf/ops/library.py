"""The fused ops as torch.library custom ops (schemas + fake implementations).

The default implementation is the reference; csrc kernels register a CUDA implementation under
the same names (see svdquant_hf/ops/cuda.py), so torch.compile traces the ops without graph breaks.
"""
from __future__ import annotations

import torch

from .reference import quantize_act_ref, w4a4_gemm_ref


@torch.library.custom_op("svdquant::quantize_act", mutates_args=())
def quantize_act(
    x: torch.Tensor, smooth: torch.Tensor, proj_down: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return quantize_act_ref(x, smooth, proj_down, group_size)


@quantize_act.register_fake
def _(x, smooth, proj_down, group_size):
    M, K = x.shape
    return (
        x.new_empty((M, K), dtype=torch.int8),
        x.new_empty((M, K // group_size)),
        x.new_empty((M, proj_down.shape[1])),
    )


@torch.library.custom_op("svdquant::w4a4_gemm", mutates_args=())
def w4a4_gemm(
    xq: torch.Tensor,
    ascales: torch.Tensor,
    qweight: torch.Tensor,
    wscales: torch.Tensor,
    lr_act: torch.Tensor,
    proj_up: torch.Tensor,
    bias: torch.Tensor | None,
    group_size: int,
) -> torch.Tensor:
    return w4a4_gemm_ref(xq, ascales, qweight, wscales, lr_act, proj_up, bias, group_size)


@w4a4_gemm.register_fake
def _(xq, ascales, qweight, wscales, lr_act, proj_up, bias, group_size):
    return lr_act.new_empty((xq.shape[0], qweight.shape[0]))


# CUDA implementations (csrc/ kernels, compiled lazily on first use on a GPU; never on CPU-only machines).
from . import cuda as _cuda  # noqa: E402,F401

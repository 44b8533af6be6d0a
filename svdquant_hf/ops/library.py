"""The fused ops as torch.library custom ops (schemas + fake implementations).

Ops: ``svdquant::quantize_act`` / ``svdquant::w4a4_gemm`` (INT4, per-group 16-bit scales) and
``svdquant::quantize_act_2l`` / ``svdquant::w4a4_gemm_2l`` (INT4 with two-level scales, quant_format
"int4_2l"). The default implementation is the reference; csrc kernels register a CUDA implementation
under the same names (see svdquant_hf/ops/cuda.py), so torch.compile traces the ops without graph breaks.
"""
from __future__ import annotations

import torch

from .reference import check_k_2l, quantize_act_2l_ref, quantize_act_ref, w4a4_gemm_2l_ref, w4a4_gemm_ref


@torch.library.custom_op("svdquant::quantize_act", mutates_args=())
def quantize_act(
    x: torch.Tensor, smooth: torch.Tensor, proj_down: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return quantize_act_ref(x, smooth, proj_down, group_size)


def _fake_activations(x: torch.Tensor, proj_down: torch.Tensor, scales: torch.Tensor):
    """(xq int8 [M, K], the given scales tensor, lr_act [M, R] in x.dtype): the outputs' metadata."""
    M, K = x.shape
    return x.new_empty((M, K), dtype=torch.int8), scales, x.new_empty((M, proj_down.shape[1]))


@quantize_act.register_fake
def _(x, smooth, proj_down, group_size):
    return _fake_activations(x, proj_down, x.new_empty((x.shape[0], x.shape[1] // group_size)))


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


@torch.library.custom_op("svdquant::quantize_act_2l", mutates_args=())
def quantize_act_2l(
    x: torch.Tensor, smooth: torch.Tensor, proj_down: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int4_2l activations: (xq int8 [M, K] = q * s_int, xscale fp32 [M], lr_act [M, R] in x.dtype)."""
    return quantize_act_2l_ref(x, smooth, proj_down, group_size)


@quantize_act_2l.register_fake
def _(x, smooth, proj_down, group_size):
    return _fake_activations(x, proj_down, x.new_empty((x.shape[0],), dtype=torch.float32))


@torch.library.custom_op("svdquant::w4a4_gemm_2l", mutates_args=())
def w4a4_gemm_2l(
    xq: torch.Tensor,
    xscale: torch.Tensor,
    qweight: torch.Tensor,
    wscales: torch.Tensor,
    wchannel: torch.Tensor,
    lr_act: torch.Tensor,
    proj_up: torch.Tensor,
    bias: torch.Tensor | None,
    group_size: int,
) -> torch.Tensor:
    """int4_2l GEMM: y = (float32(exact int acc) * wchannel) * xscale + lr_act @ proj_up^T + bias."""
    return w4a4_gemm_2l_ref(xq, xscale, qweight, wscales, wchannel, lr_act, proj_up, bias, group_size)


@w4a4_gemm_2l.register_fake
def _(xq, xscale, qweight, wscales, wchannel, lr_act, proj_up, bias, group_size):
    check_k_2l(xq.shape[1])
    return lr_act.new_empty((xq.shape[0], qweight.shape[0]))


# CUDA implementations (csrc/ kernels, compiled lazily on first use on a GPU; never on CPU-only machines).
from . import cuda as _cuda  # noqa: E402,F401

"""Pure-PyTorch reference of the fused ops: the CPU path, the test oracle and the fallback.

Numerics (the CUDA kernels reproduce them):
  quantize_act: lr = round16(x_f32 @ proj_down_f32); xs = x_f32 / smooth_f32 (IEEE division);
                per token and group: scale = round16(absmax(xs)/7), q = clamp(rne(xs/scale), -8, 7).
  w4a4_gemm:    y = round16( sum_g sx[m,g] sw[n,g] (xq . wq)_g + lr_f32 @ proj_up_f32^T + bias_f32 ).
Every product sx*sw*xq*wq is exact in fp32 for bf16 scales, so one fp32 matmul of the
dequantized operands equals the group-wise sum up to fp32 summation order.
"""
from __future__ import annotations

import torch

from ..formats.int4 import dequantize_int4, quantize_int4, unpack_int4
from ..formats.nvfp4 import dequantize_nvfp4, quantize_nvfp4, unpack_e2m1


def quantize_act_ref(
    x: torch.Tensor, smooth: torch.Tensor, proj_down: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [M, K] -> (xq int8 [M, K] in [-8, 7], ascales [M, K/G] x.dtype, lr_act [M, R] x.dtype)."""
    xf = x.float()
    lr = (xf @ proj_down.float()).to(x.dtype)
    xs = xf / smooth.float()
    xq, ascales = quantize_int4(xs, group_size, x.dtype, what="activations")
    return xq, ascales, lr


def w4a4_gemm_ref(
    xq: torch.Tensor,
    ascales: torch.Tensor,
    qweight: torch.Tensor,
    wscales: torch.Tensor,
    lr_act: torch.Tensor,
    proj_up: torch.Tensor,
    bias: torch.Tensor | None,
    group_size: int,
) -> torch.Tensor:
    """y [M, N] in lr_act.dtype; qweight [N, K/2] packed, wscales [K/G, N]."""
    x_dq = dequantize_int4(xq, ascales, group_size)
    w_dq = dequantize_int4(unpack_int4(qweight), wscales.t(), group_size)
    y = x_dq @ w_dq.t()
    if lr_act.shape[-1]:
        y = y + lr_act.float() @ proj_up.float().t()
    if bias is not None:
        y = y + bias.float()
    return y.to(lr_act.dtype)


def w4a4_group_dots(xq: torch.Tensor, qweight: torch.Tensor, group_size: int) -> torch.Tensor:
    """The integer part the kernels compute: dots[m, n, g] = sum_{k in g} xq[m,k] wq[n,k] (int32)."""
    wq = unpack_int4(qweight).to(torch.int32)
    M, K = xq.shape
    G = K // group_size
    xg = xq.to(torch.int32).reshape(M, 1, G, group_size)
    wg = wq.reshape(1, -1, G, group_size)
    return (xg * wg).sum(-1, dtype=torch.int32)


def w4a16_linear_ref(
    x: torch.Tensor,
    qweight: torch.Tensor,
    wscales: torch.Tensor,
    proj_down: torch.Tensor,
    proj_up: torch.Tensor,
    bias: torch.Tensor | None,
    group_size: int,
) -> torch.Tensor:
    """Weight-only 4-bit linear: y = x @ dequant(W)^T + (x @ proj_down) @ proj_up^T + bias."""
    xf = x.float()
    w = dequantize_int4(unpack_int4(qweight), wscales.t(), group_size)
    y = xf @ w.t()
    if proj_down.shape[-1]:
        lr = (xf @ proj_down.float()).to(x.dtype)
        y = y + lr.float() @ proj_up.float().t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


def nvfp4_linear_ref(
    x: torch.Tensor,
    qweight: torch.Tensor,
    wscales: torch.Tensor,
    wtscale: torch.Tensor,
    smooth: torch.Tensor,
    proj_down: torch.Tensor,
    proj_up: torch.Tensor,
    bias: torch.Tensor | None,
    act_quant: bool = True,
) -> torch.Tensor:
    """NVFP4 W4A4 (reference only): activations quantized dynamically with a per-tensor scale."""
    xf = x.float()
    xs = xf / smooth.float()
    if act_quant:
        codes, gs, ts = quantize_nvfp4(xs, what="activations")
        xs = dequantize_nvfp4(codes, gs, ts)
    w = dequantize_nvfp4(unpack_e2m1(qweight), wscales.t(), wtscale)
    y = xs @ w.t()
    if proj_down.shape[-1]:
        lr = (xf @ proj_down.float()).to(x.dtype)
        y = y + lr.float() @ proj_up.float().t()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)

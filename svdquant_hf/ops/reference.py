"""Pure-PyTorch reference of the fused ops: the CPU path, the test oracle and the fallback.

Numerics (the CUDA kernels reproduce them):
  quantize_act: lr = round16(x_f32 @ proj_down_f32); xs = x_f32 / smooth_f32 (IEEE division);
                per token and group: scale = round16(absmax(xs)/7), q = clamp(rne(xs/scale), -8, 7).
  w4a4_gemm:    y = round16( sum_g sx[m,g] sw[n,g] (xq . wq)_g + lr_f32 @ proj_up_f32^T + bias_f32 ).
Every product sx*sw*xq*wq is exact in fp32 for bf16 scales, so one fp32 matmul of the
dequantized operands equals the group-wise sum up to fp32 summation order.

INT4 with two-level scales (quant_format "int4_2l", formats/int4_2l.py):
  quantize_act_2l: lr as above; xs = x_f32 * (1 / smooth_f32) (fp32 reciprocal, then a multiply);
                   per token: xq = q * s_int (int8 in [-128, 112]), xscale = s_row (fp32).
  w4a4_gemm_2l:    acc = sum_k xq[m,k] * (q_w * s_int_w)[n,k], an EXACT integer (int32 range for
                   K <= 65536); y = round16( (float32(acc) * wchannel[n]) * xscale[m]
                   + lr_f32 @ proj_up_f32^T + bias_f32 ).
"""
from __future__ import annotations

import torch

from ..formats.int4 import dequantize_int4, quantize_int4, unpack_int4
from ..formats.int4_2l import MAX_K_2L, combine_2l, quantize_int4_2l
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
    return _add_branch_and_bias(x_dq @ w_dq.t(), lr_act, proj_up, bias).to(lr_act.dtype)


def _add_branch_and_bias(
    y: torch.Tensor, lr_act: torch.Tensor, proj_up: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """fp32 y + float32(lr_act) @ float32(proj_up)^T + float32(bias), in that order."""
    if lr_act.shape[-1]:
        y = y + lr_act.float() @ proj_up.float().t()
    if bias is not None:
        y = y + bias.float()
    return y


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
    w = dequantize_int4(unpack_int4(qweight), wscales.t(), group_size)
    return dense_weight_linear_ref(x, w, proj_down, proj_up, bias)


def dense_weight_linear_ref(
    x: torch.Tensor,
    w: torch.Tensor,
    proj_down: torch.Tensor,
    proj_up: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """W4A16 given the dequantized fp32 weight w [N, K]: y = x @ w^T + round16(x @ proj_down) @ proj_up^T + bias."""
    xf = x.float()
    lr = (xf @ proj_down.float()).to(x.dtype)
    return _add_branch_and_bias(xf @ w.t(), lr, proj_up, bias).to(x.dtype)


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
    lr = (xf @ proj_down.float()).to(x.dtype)
    return _add_branch_and_bias(xs @ w.t(), lr, proj_up, bias).to(x.dtype)


# ----------------------------------------------------------------------------- INT4 with two-level scales


def check_k_2l(k: int, op: str = "svdquant::w4a4_gemm_2l") -> None:
    """Reject reductions whose exact integer sum could leave the guaranteed int32 range."""
    if k > MAX_K_2L:
        raise ValueError(
            f"{op}: K={k} exceeds {MAX_K_2L}, the largest reduction whose exact int32 accumulation the "
            "int4_2l format guarantees (|q * s_int| <= 128 on both sides); keep this layer in 16 bits "
            "(modules_to_not_convert) or use quant_format='int4'"
        )


def int_dot_exact(xq: torch.Tensor, w8: torch.Tensor) -> torch.Tensor:
    """acc[m, n] = sum_k xq[m, k] * w8[n, k] as an exact int32 [M, N]; xq int8 [M, K], w8 int8 [N, K].

    CPU: a float64 matmul of the integer values (exact: every partial sum is an integer below 2^31,
    far inside float64's 2^53). CUDA: torch._int_mm (int8 x int8 -> int32 on tensor cores) where it
    applies (M > 16, K and N multiples of 8), otherwise the same float64 matmul.
    """
    if xq.dtype != torch.int8 or w8.dtype != torch.int8:
        raise ValueError(f"int_dot_exact: expected int8 operands, got {xq.dtype} and {w8.dtype}")
    if xq.dim() != 2 or w8.dim() != 2 or xq.shape[1] != w8.shape[1]:
        raise ValueError(
            f"int_dot_exact: expected xq [M, K] and w8 [N, K], got {tuple(xq.shape)} and {tuple(w8.shape)}"
        )
    m, k = xq.shape
    n = w8.shape[0]
    check_k_2l(k, "int_dot_exact")
    if xq.is_cuda and m > 16 and k % 8 == 0 and n % 8 == 0 and k > 0:
        return torch._int_mm(xq.contiguous(), w8.contiguous().t())
    return (xq.double() @ w8.double().t()).to(torch.int32)


def weight_operand_2l(qweight: torch.Tensor, wscales: torch.Tensor, group_size: int) -> torch.Tensor:
    """w8[n, k] = q_w[n, k] * s_int_w[n, k // G] (int8 [N, K]) from qweight [N, K/2] and wscales uint8 [K/G, N]."""
    return combine_2l(unpack_int4(qweight), wscales.t(), group_size)


def quantize_act_2l_ref(
    x: torch.Tensor, smooth: torch.Tensor, proj_down: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [M, K] -> (xq int8 [M, K] = q * s_int in [-128, 112], xscale fp32 [M] = s_row, lr [M, R] x.dtype)."""
    xf = x.float()
    lr = (xf @ proj_down.float()).to(x.dtype)
    xs = xf * torch.reciprocal(smooth.float())  # a multiply by the fp32 reciprocal (not a division)
    q, s_int, s_row = quantize_int4_2l(xs, group_size, what="activations")
    return combine_2l(q, s_int, group_size), s_row, lr


def quantize_act_2l_cat_ref(
    a: torch.Tensor, b: torch.Tensor, smooth: torch.Tensor, proj_down: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """quantize_act_2l_ref of cat([a, b], -1) (FLUX single blocks' proj_out input: attention and MLP)."""
    check_cat_parts(a, b, "quantize_act_2l_cat")
    return quantize_act_2l_ref(torch.cat([a, b], -1), smooth, proj_down, group_size)


def check_cat_parts(a: torch.Tensor, b: torch.Tensor, op: str) -> None:
    """Clear errors for two parts of a concatenation along the last dimension."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"svdquant::{op}: a and b must be 2-D with the same rows, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if a.dtype != b.dtype or a.device != b.device:
        raise ValueError(f"svdquant::{op}: a and b must share dtype and device, got {a.dtype} on {a.device} and "
                         f"{b.dtype} on {b.device}")


def _check_gemm_2l_dtypes(xq, xscale, qweight, wscales, wchannel) -> None:
    expected = {
        "xq": (xq, torch.int8), "xscale": (xscale, torch.float32), "qweight": (qweight, torch.int8),
        "wscales": (wscales, torch.uint8), "wchannel": (wchannel, torch.float32),
    }
    for name, (t, dt) in expected.items():
        if t.dtype != dt:
            raise ValueError(f"svdquant::w4a4_gemm_2l: {name} has dtype {t.dtype}, expected {dt}")


def w4a4_gemm_2l_ref(
    xq: torch.Tensor,
    xscale: torch.Tensor,
    qweight: torch.Tensor,
    wscales: torch.Tensor,
    wchannel: torch.Tensor,
    lr_act: torch.Tensor,
    proj_up: torch.Tensor,
    bias: torch.Tensor | None,
    group_size: int,
    fp32_out: bool = False,
) -> torch.Tensor:
    """y [M, N] in lr_act.dtype (fp32_out: before that rounding): (float32(exact int acc) * wchannel[n]) * xscale[m]
    + branch + bias."""
    _check_gemm_2l_dtypes(xq, xscale, qweight, wscales, wchannel)
    w8 = weight_operand_2l(qweight, wscales, group_size)
    return w8a4_gemm_2l_ref(xq, xscale, w8, wchannel, lr_act, proj_up, bias, fp32_out)


def w8a4_gemm_2l_ref(
    xq: torch.Tensor,
    xscale: torch.Tensor,
    w8: torch.Tensor,
    wchannel: torch.Tensor,
    lr_act: torch.Tensor,
    proj_up: torch.Tensor,
    bias: torch.Tensor | None,
    fp32_out: bool = False,
) -> torch.Tensor:
    """w4a4_gemm_2l_ref with the weights given widened (w8 = weight_operand_2l(qweight, wscales, G))."""
    check_k_2l(xq.shape[-1])
    acc = int_dot_exact(xq, w8)
    y = (acc.float() * wchannel.float().unsqueeze(0)) * xscale.float().unsqueeze(1)
    y = _add_branch_and_bias(y, lr_act, proj_up, bias)
    return y if fp32_out else y.to(lr_act.dtype)


#: epilogue activations of the int4_2l GEMM (w4a4_gemm_2l_fo_ep's ``activation``), by the codes the kernels take
EPILOGUE_ACTIVATIONS = {None: 0, "gelu_tanh": 1}


def gelu_tanh_ep(y: torch.Tensor) -> torch.Tensor:
    """The epilogue's GELU (tanh approximation) in fp32, as the kernel writes it: y * sigmoid(2u) =
    y / (1 + e^(-2u)), u = sqrt(2 / pi) (y + 0.044715 y^3) (the kernel's ex2 / divide approximations stay
    within ~1e-6 relative of this: far below a 16-bit output's rounding)."""
    y = y.float()
    u = y * (0.7978845608 + 0.0356774081 * y * y)
    return y / (1.0 + torch.exp(-2.0 * u))


def check_epilogue_args(rows: int, activation: int, prefix: torch.Tensor | None) -> None:
    """Clear errors for w4a4_gemm_2l_fo_ep's epilogue arguments (an activation code, a prefix [rows, P])."""
    op = "svdquant::w4a4_gemm_2l_fo_ep"
    if activation not in EPILOGUE_ACTIVATIONS.values():
        raise ValueError(f"{op}: activation must be one of {sorted(EPILOGUE_ACTIVATIONS.values())} (none, GELU tanh), "
                         f"got {activation}")
    if prefix is not None and (prefix.dim() != 2 or prefix.shape[0] != rows):
        raise ValueError(f"{op}: prefix has shape {tuple(prefix.shape)}, expected ({rows}, P)")


def gemm_epilogue_ref(
    y32: torch.Tensor, dtype: torch.dtype, activation: int, prefix: torch.Tensor | None
) -> torch.Tensor:
    """The GEMM's epilogue on its fp32 result: the activation (0 none, 1 GELU tanh) before the rounding to
    ``dtype``, and with ``prefix`` [M, P] the output cat([prefix, y], 1) [M, P + N]."""
    check_epilogue_args(y32.shape[0], activation, prefix)
    y = (gelu_tanh_ep(y32) if activation == 1 else y32).to(dtype)
    return y if prefix is None else torch.cat([prefix.to(dtype), y], 1)


def rms_norm_rope_ref(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    cos: torch.Tensor,
    sin: torch.Tensor,
    front: torch.Tensor | None = None,
    front_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """torch's RMSNorm per head (a 16-bit weight: FLUX's norm_q / norm_k) then diffusers' rotary embedding on pairs
    (2i, 2i+1) (apply_rotary_emb, use_real), with their roundings: x [B, S, H, D], cos / sin [S, D] fp32. With
    ``front`` [B, S0, H, D] (its own weight; cos / sin then [S0 + S, D]): cat([front's, x's], 1), as FLUX's double
    blocks concatenate the text tokens' q / k before the rotary embedding."""
    check_rms_norm_rope_args(x, weight, cos, sin, front, front_weight)
    h = torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)
    if front is not None:
        h = torch.cat([torch.nn.functional.rms_norm(front, (x.shape[-1],), front_weight, eps), h], 1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    real, imag = h.reshape(*h.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imag, real], dim=-1).flatten(3)
    return (h.float() * c + rotated.float() * s).to(h.dtype)


def check_rms_norm_rope_args(
    x: torch.Tensor,
    weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    front: torch.Tensor | None = None,
    front_weight: torch.Tensor | None = None,
) -> None:
    """Clear errors for svdquant::rms_norm_rope's arguments."""
    op = "svdquant::rms_norm_rope"
    if x.dim() != 4 or x.shape[-1] % 2:
        raise ValueError(f"{op}: x must be [B, S, H, D] with D even, got {tuple(x.shape)}")
    B, S, H, D = x.shape
    if (front is None) != (front_weight is None):
        raise ValueError(f"{op}: front and front_weight go together")
    weights = [("weight", weight)]
    if front is not None:
        if front.dim() != 4 or (front.shape[0], front.shape[2], front.shape[3]) != (B, H, D) or front.dtype != x.dtype:
            raise ValueError(f"{op}: front must be [{B}, S0, {H}, {D}] in {x.dtype}, got {tuple(front.shape)} in "
                             f"{front.dtype}")
        S += front.shape[1]
        weights.append(("front_weight", front_weight))
    for name, w in weights:
        if tuple(w.shape) != (D,) or w.dtype != x.dtype:
            raise ValueError(f"{op}: {name} must be [{D}] in {x.dtype}, got {tuple(w.shape)} in {w.dtype}")
    for name, t in (("cos", cos), ("sin", sin)):
        if tuple(t.shape) != (S, D) or t.dtype != torch.float32:
            raise ValueError(f"{op}: {name} must be float32 [{S}, {D}], got {t.dtype} {tuple(t.shape)}")


def dequantize_weight_2l(
    qweight: torch.Tensor, wscales: torch.Tensor, wchannel: torch.Tensor, group_size: int
) -> torch.Tensor:
    """The int4_2l weight in fp32 [N, K]: float32(q * s_int) * wchannel[n]."""
    return weight_operand_2l(qweight, wscales, group_size).float() * wchannel.float().unsqueeze(1)


def w4a16_2l_linear_ref(
    x: torch.Tensor,
    qweight: torch.Tensor,
    wscales: torch.Tensor,
    wchannel: torch.Tensor,
    proj_down: torch.Tensor,
    proj_up: torch.Tensor,
    bias: torch.Tensor | None,
    group_size: int,
) -> torch.Tensor:
    """Weight-only int4_2l linear (W4A16), reference path: activations stay 16-bit."""
    return dense_weight_linear_ref(x, dequantize_weight_2l(qweight, wscales, wchannel, group_size), proj_down, proj_up, bias)

"""SVDQuant for one linear layer: smooth, split off a 16-bit low-rank branch, quantize the residual."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import SVDQuantOptions
from ..formats.int4 import dequantize_int4, pack_int4, quantize_int4
from ..formats.int4_2l import dequantize_int4_2l
from ..formats.nvfp4 import dequantize_nvfp4, pack_e2m1, quantize_nvfp4
from ..ops.reference import (
    nvfp4_linear_ref,
    quantize_act_2l_ref,
    quantize_act_ref,
    w4a4_gemm_2l_ref,
    w4a4_gemm_ref,
    w4a16_2l_linear_ref,
    w4a16_linear_ref,
)
from .gptq import gptq_int4, gptq_int4_2l
from .twolevel import quantize_weight_2l
from .lowrank import lowrank_factors, top_singular
from .smoothing import smoothing_factors


class QuantizationError(ValueError):
    """Bad input to the quantizer; the message names the layer and the tensor."""


@dataclass
class QuantizedWeights:
    """The tensors of one SVDQuantLinear (layouts in docs/format.md)."""

    qweight: torch.Tensor  # int8 [N, K/2], two 4-bit values per byte
    wscales: torch.Tensor  # [K/G, N] 16-bit (int4), uint8 s_int in [1, 16] (int4_2l) or float8_e4m3fn (nvfp4)
    smooth_factor: torch.Tensor  # [K]
    proj_down: torch.Tensor  # [K, R], applies to the unsmoothed input
    proj_up: torch.Tensor  # [N, R]
    wtscale: torch.Tensor | None = None  # fp32 [] (nvfp4 only)
    alpha: float | None = None
    error: float | None = None  # relative output error on calibration rows, when measured
    wchannel: torch.Tensor | None = None  # fp32 [N], the per-output-channel scale s_row (int4_2l only)


def check_weight(weight: torch.Tensor, options: SVDQuantOptions, name: str) -> None:
    if not weight.is_floating_point():
        raise QuantizationError(f"layer {name!r}: weight has dtype {weight.dtype}; SVDQuant needs a float weight")
    if weight.dim() != 2:
        raise QuantizationError(f"layer {name!r}: weight must be 2-D, got shape {tuple(weight.shape)}")
    n, k = weight.shape
    g = options.effective_group_size
    if k % g:
        raise QuantizationError(
            f"layer {name!r}: in_features={k} is not a multiple of group_size={g} (skip the layer with "
            f"modules_to_not_convert or choose another group size)"
        )
    if options.rank > min(n, k):
        raise QuantizationError(f"layer {name!r}: rank={options.rank} exceeds min(out, in) = {min(n, k)}")
    why = options.in_features_problem(k)
    if why:
        raise QuantizationError(
            f"layer {name!r}: {why} (skip the layer with modules_to_not_convert or use quant_format='int4')"
        )
    if not weight.is_meta and not torch.isfinite(weight).all():
        raise QuantizationError(f"layer {name!r}: weight contains NaN or Inf")


def _quantize_residual(
    residual: torch.Tensor, options: SVDQuantOptions, dtype: torch.dtype, hessian: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], Callable[[], torch.Tensor]]:
    """(packed qweight, wscales [K/G, N], the format's extra tensors by QuantizedWeights field
    (wtscale for nvfp4, wchannel for int4_2l), a thunk giving the dequantized residual in fp32)."""
    if options.quant_format == "nvfp4":
        codes, gs, ts = quantize_nvfp4(residual, what="weight residual")
        return pack_e2m1(codes), gs.t().contiguous(), {"wtscale": ts}, lambda: dequantize_nvfp4(codes, gs, ts)
    g = options.group_size
    if options.quant_format == "int4_2l":
        q, s_int, s_row = quantize_weight_2l(residual, g)
        if hessian is not None:  # GPTQ on the searched first level; second level re-chosen per group
            q, s_int = gptq_int4_2l(residual, hessian, g, s_row)
        return (
            pack_int4(q), s_int.t().contiguous(), {"wchannel": s_row.float().contiguous()},
            lambda: dequantize_int4_2l(q, s_int, s_row, g),
        )
    if hessian is not None:
        q, s = gptq_int4(residual, hessian, g, dtype)
    else:
        q, s = quantize_int4(residual, g, dtype, what="weight residual")
    return pack_int4(q), s.t().contiguous(), {}, lambda: dequantize_int4(q, s, g)


def _subtract_lowrank_(w_s: torch.Tensor, proj_down: torch.Tensor, proj_up: torch.Tensor, smooth: torch.Tensor) -> torch.Tensor:
    """w_s -= the 16-bit branch in the smoothed space, in place (no N x K temporary)."""
    return w_s.addmm_(proj_up.float(), (proj_down.float() * smooth.float().unsqueeze(1)).t(), alpha=-1.0)


def quantize_weight(
    weight: torch.Tensor,
    options: SVDQuantOptions,
    dtype: torch.dtype,
    act_absmax: torch.Tensor | None = None,
    alpha: float | None = None,
    hessian: torch.Tensor | None = None,
    name: str = "<linear>",
) -> QuantizedWeights:
    """SVDQuant one weight [N, K] with a given smoothing exponent (None: data-free rule).

    Memory: about two fp32 copies of the weight at a time (more with refine_iters), so quantizing
    on load needs the quantized model plus a few layers' worth of scratch on the device.
    """
    check_weight(weight, options, name)
    if options.weight_only:
        smooth = torch.ones(weight.shape[1], dtype=dtype, device=weight.device)
    else:
        smooth = smoothing_factors(weight, act_absmax, alpha, dtype)
    w_s = weight.to(torch.float32, copy=True).mul_(smooth.float().unsqueeze(0))
    proj_down, proj_up = lowrank_factors(w_s, smooth, options.rank, dtype)
    refine = options.refine_iters if options.rank else 0
    w_keep = w_s.clone() if refine else None
    residual = _subtract_lowrank_(w_s, proj_down, proj_up, smooth)
    h = None
    if hessian is not None and options.quant_format in ("int4", "int4_2l"):
        inv = 1.0 / smooth.float()
        h = hessian * inv.unsqueeze(0) * inv.unsqueeze(1)  # Hessian of the smoothed inputs
    qweight, wscales, extra, dequant = _quantize_residual(residual, options, dtype, h)
    if not refine:
        return QuantizedWeights(qweight, wscales, smooth, proj_down, proj_up, alpha=alpha, **extra)
    assert w_keep is not None
    deq = dequant()
    best = (torch.linalg.matrix_norm(residual - deq), proj_down, proj_up, qweight, wscales, extra)
    for _ in range(refine):
        # fit the branch to what the quantized residual misses, then re-quantize the rest
        u, s, vh = top_singular(w_keep - deq, options.rank)
        root = s.sqrt()
        pu = (u * root).to(dtype)
        pd = (vh.t() * root / smooth.float().unsqueeze(1)).to(dtype)
        residual = _subtract_lowrank_(w_keep.clone(), pd, pu, smooth)
        qw, ws, ex, dequant = _quantize_residual(residual, options, dtype, h)
        deq = dequant()
        err = torch.linalg.matrix_norm(residual - deq)
        if err < best[0]:
            best = (err, pd, pu, qw, ws, ex)
    _, proj_down, proj_up, qweight, wscales, extra = best
    return QuantizedWeights(qweight, wscales, smooth, proj_down, proj_up, alpha=alpha, **extra)


def reference_forward(qw: QuantizedWeights, x: torch.Tensor, bias: torch.Tensor | None, options: SVDQuantOptions) -> torch.Tensor:
    """The layer's output for 2-D ``x`` through the reference numerics."""
    if options.quant_format == "nvfp4":
        return nvfp4_linear_ref(
            x, qw.qweight, qw.wscales, qw.wtscale, qw.smooth_factor, qw.proj_down, qw.proj_up, bias,
            act_quant=not options.weight_only,
        )
    g = options.group_size
    if options.quant_format == "int4_2l":
        if options.weight_only:
            return w4a16_2l_linear_ref(x, qw.qweight, qw.wscales, qw.wchannel, qw.proj_down, qw.proj_up, bias, g)
        xq, xscale, lr = quantize_act_2l_ref(x, qw.smooth_factor, qw.proj_down, g)
        return w4a4_gemm_2l_ref(xq, xscale, qw.qweight, qw.wscales, qw.wchannel, lr, qw.proj_up, bias, g)
    if options.weight_only:
        return w4a16_linear_ref(x, qw.qweight, qw.wscales, qw.proj_down, qw.proj_up, bias, options.group_size)
    xq, asc, lr = quantize_act_ref(x, qw.smooth_factor, qw.proj_down, options.group_size)
    return w4a4_gemm_ref(xq, asc, qw.qweight, qw.wscales, lr, qw.proj_up, bias, options.group_size)


def relative_output_error(
    qw: QuantizedWeights, weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor, options: SVDQuantOptions
) -> float:
    ref = x.float() @ weight.float().t()
    if bias is not None:
        ref = ref + bias.float()
    out = reference_forward(qw, x, bias, options).float()
    return float((out - ref).pow(2).sum() / ref.pow(2).sum().clamp_min(1e-30))


def search_alpha(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    options: SVDQuantOptions,
    dtype: torch.dtype,
    act_absmax: torch.Tensor,
    calib_x: torch.Tensor,
    hessian: torch.Tensor | None = None,
    name: str = "<linear>",
) -> QuantizedWeights:
    """Grid search of alpha in [0, 1] (low-rank branch in the loop) minimising the output error.

    Besides the ``alpha_grid`` points the search tries no smoothing at all (alpha None, the
    data-free solution), so calibration never does worse than data-free on the cached rows.
    """
    x = calib_x.to(device=weight.device, dtype=dtype)
    best: QuantizedWeights | None = None
    grid: list[float | None]
    if options.alpha is not None:
        grid = [float(options.alpha)]
    else:
        grid = [None, *torch.linspace(0.0, 1.0, options.alpha_grid).tolist()]
    for a in grid:
        qw = quantize_weight(weight, options, dtype, act_absmax, a, None, name)
        qw.error = relative_output_error(qw, weight, bias, x, options)
        if best is None or qw.error < best.error:
            best = qw
    assert best is not None
    if hessian is not None and options.gptq:
        qw = quantize_weight(weight, options, dtype, act_absmax, best.alpha, hessian, name)
        qw.error = relative_output_error(qw, weight, bias, x, options)
        if qw.error < best.error:
            best = qw
    return best

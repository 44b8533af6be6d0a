"""The Python CUDA path of the svdquant ops: checks, then the csrc/ kernels or the reference.

library.py registers these for CUDA tensors. The extension is compiled lazily on the first call on a
CUDA tensor (see build.py). Inputs the kernels do not cover (fp32 compute dtype, group sizes other
than 32/64/128, mixed dtypes) and machines where the build failed take the reference implementation,
which has the same semantics. Once the extension is loaded, its C++ kernels serve the int4_2l ops'
CUDA calls and hand back here (``register_fallbacks``) only the inputs they do not take.
"""
from __future__ import annotations

import torch

from . import build
from .kernel_shapes import KERNEL_DTYPES as _KERNEL_DTYPES
from .kernel_shapes import KERNEL_GROUPS as _KERNEL_GROUPS
from .kernel_shapes import gemm_2l_shape_ok
from .layout_2l import canonical_order
from .reference import (
    check_cat_parts,
    check_epilogue_args,
    check_rms_norm_rope_args,
    gemm_epilogue_ref,
    quantize_act_2l_cat_ref,
    quantize_act_2l_ref,
    quantize_act_ref,
    rms_norm_rope_ref,
    w4a4_gemm_2l_ref,
    w4a4_gemm_ref,
    w8a4_gemm_2l_ref,
)


def kernels_available() -> bool:
    """True when the compiled kernels can be used (builds them on first call on a GPU machine)."""
    return build.load_extension() is not None


def _quantize_supported(x: torch.Tensor, smooth: torch.Tensor, proj_down: torch.Tensor, group_size: int) -> bool:
    return (
        x.dtype in _KERNEL_DTYPES
        and smooth.dtype == x.dtype
        and proj_down.dtype == x.dtype
        and group_size in _KERNEL_GROUPS
        and x.dim() == 2
        and x.shape[1] % group_size == 0
        and smooth.is_cuda
        and proj_down.is_cuda
    )


def _gemm_supported(xq, ascales, qweight, wscales, lr_act, proj_up, bias, group_size) -> bool:
    dt = lr_act.dtype
    return (
        dt in _KERNEL_DTYPES
        and ascales.dtype == dt
        and wscales.dtype == dt
        and proj_up.dtype == dt
        and (bias is None or bias.dtype == dt)
        and group_size in _KERNEL_GROUPS
        and xq.dtype == torch.int8
        and qweight.dtype == torch.int8
        and qweight.shape[0] % 8 == 0
        and xq.shape[1] % group_size == 0
        and all(t.is_cuda for t in (ascales, qweight, wscales, lr_act, proj_up))
    )


def _require_shapes(op: str, expected: dict, M: int, K: int, N: int, group_size: int) -> None:
    """Clear errors naming the op and the tensor, before anything reaches the kernels."""
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise ValueError(
                f"svdquant::{op}: {name} has shape {tuple(t.shape)}, expected {shape} "
                f"(M={M}, K={K}, N={N}, group_size={group_size})"
            )


def _check_gemm_shapes(xq, ascales, qweight, wscales, lr_act, proj_up, bias, group_size) -> None:
    M, K = xq.shape
    N = qweight.shape[0]
    G = K // group_size
    R = lr_act.shape[-1] if lr_act.dim() == 2 else -1
    expected = {
        "ascales": (ascales, (M, G)), "qweight": (qweight, (N, K // 2)), "wscales": (wscales, (G, N)),
        "lr_act": (lr_act, (M, R)), "proj_up": (proj_up, (N, R)),
    }
    if bias is not None:
        expected["bias"] = (bias, (N,))
    _require_shapes("w4a4_gemm", expected, M, K, N, group_size)


def _check_quantize_shapes(x, smooth, proj_down, op: str = "quantize_act") -> None:
    if x.dim() != 2:
        raise ValueError(f"svdquant::{op}: x must be 2-D [M, K], got shape {tuple(x.shape)}")
    K = x.shape[1]
    if tuple(smooth.shape) != (K,):
        raise ValueError(f"svdquant::{op}: smooth has shape {tuple(smooth.shape)}, expected ({K},)")
    if proj_down.dim() != 2 or proj_down.shape[0] != K:
        raise ValueError(f"svdquant::{op}: proj_down has shape {tuple(proj_down.shape)}, expected ({K}, R)")


def _dispatch(name: str, supported, ref, *args):
    """The extension's ``name`` when it is built and ``supported(ext)``, else the reference ``ref``."""
    ext = build.load_extension()
    if ext is None or not hasattr(ext, name) or not supported(ext):
        return ref(*args)
    out = getattr(ext, name)(*args)
    if out is None or (isinstance(out, (tuple, list)) and out[0] is None):
        raise ValueError(ext.last_error())
    return tuple(out) if isinstance(out, (tuple, list)) else out


def quantize_act_cuda(
    x: torch.Tensor, smooth: torch.Tensor, proj_down: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_quantize_shapes(x, smooth, proj_down)
    supported = lambda ext: _quantize_supported(x, smooth, proj_down, group_size)  # noqa: E731
    return _dispatch("quantize_act", supported, quantize_act_ref, x, smooth, proj_down, group_size)


def w4a4_gemm_cuda(
    xq: torch.Tensor,
    ascales: torch.Tensor,
    qweight: torch.Tensor,
    wscales: torch.Tensor,
    lr_act: torch.Tensor,
    proj_up: torch.Tensor,
    bias: torch.Tensor | None,
    group_size: int,
) -> torch.Tensor:
    if xq.dim() != 2 or qweight.dim() != 2:
        raise ValueError("svdquant::w4a4_gemm: xq and qweight must be 2-D")
    _check_gemm_shapes(xq, ascales, qweight, wscales, lr_act, proj_up, bias, group_size)
    args = (xq, ascales, qweight, wscales, lr_act, proj_up, bias, group_size)
    return _dispatch("w4a4_gemm", lambda ext: _gemm_supported(*args), w4a4_gemm_ref, *args)


# --- two-level INT4 (int4_2l) ------------------------------------------------------------------------


def _quantize_2l_supported(ext, x: torch.Tensor, smooth: torch.Tensor, proj_down: torch.Tensor, group_size: int) -> bool:
    return (
        x.dtype in _KERNEL_DTYPES
        and smooth.dtype == x.dtype
        and proj_down.dtype == x.dtype
        and group_size in _KERNEL_GROUPS
        and x.dim() == 2
        and smooth.is_cuda
        and proj_down.is_cuda
        and proj_down.dim() == 2
        and x.shape[1] % group_size == 0
        and ext.quantize_act_2l_supported(x.shape[1])
    )


def gemm_2l_kernel_usable(ext, device: torch.device) -> bool:
    """The wgmma kernel exists only for Hopper (sm_90a); other GPUs take the exact int8 fallback."""
    return bool(getattr(ext, "sm90a_built", False)) and torch.cuda.get_device_capability(device) == (9, 0)


def _gemm_2l_operands_ok(ext, xq, xscale, weight, wchannel, lr_act, proj_up, bias) -> bool:
    """What the int4_2l GEMM kernels need of everything but the weights' own layout."""
    dt = lr_act.dtype
    K, N = xq.shape[1], weight.shape[0]
    return (
        dt in _KERNEL_DTYPES
        and proj_up.dtype == dt
        and (bias is None or bias.dtype == dt)
        and xq.dtype == torch.int8
        and weight.dtype == torch.int8
        and xscale.dtype == torch.float32
        and wchannel.dtype == torch.float32
        and gemm_2l_shape_ok(K, N)
        and lr_act.shape[-1] <= ext.max_rank_2l
        and all(t.is_cuda for t in (xscale, weight, wchannel, lr_act, proj_up))
        and gemm_2l_kernel_usable(ext, xq.device)
    )


def _gemm_2l_supported(ext, xq, xscale, qweight, wscales, wchannel, lr_act, proj_up, bias, group_size) -> bool:
    return (
        group_size in _KERNEL_GROUPS
        and wscales.dtype == torch.uint8
        and wscales.is_cuda
        and _gemm_2l_operands_ok(ext, xq, xscale, qweight, wchannel, lr_act, proj_up, bias)
    )


def _pad_rank16(lr_act: torch.Tensor, proj_up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel reads the rank in steps of 16: zero columns are exact no-ops."""
    r = lr_act.shape[-1]
    pad = -r % 16
    if pad == 0:
        return lr_act, proj_up
    return torch.nn.functional.pad(lr_act, (0, pad)), torch.nn.functional.pad(proj_up, (0, pad))


def quantize_act_2l_cuda(
    x: torch.Tensor, smooth: torch.Tensor, proj_down: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_quantize_shapes(x, smooth, proj_down, "quantize_act_2l")
    supported = lambda ext: _quantize_2l_supported(ext, x, smooth, proj_down, group_size)  # noqa: E731
    return _dispatch("quantize_act_2l", supported, quantize_act_2l_ref, x, smooth, proj_down, group_size)


def quantize_act_2l_cat_cuda(
    a: torch.Tensor, b: torch.Tensor, smooth: torch.Tensor, proj_down: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """quantize_act_2l of cat([a, b], 1): the extension reads both parts in place (no concatenation written)."""
    check_cat_parts(a, b, "quantize_act_2l_cat")
    K = a.shape[1] + b.shape[1]
    if tuple(smooth.shape) != (K,) or proj_down.dim() != 2 or proj_down.shape[0] != K:
        raise ValueError(f"svdquant::quantize_act_2l_cat: smooth {tuple(smooth.shape)} / proj_down "
                         f"{tuple(proj_down.shape)} must be ({K},) / ({K}, R)")
    def supported(ext) -> bool:
        return (a.shape[1] % 8 == 0 and a.dtype in _KERNEL_DTYPES and smooth.dtype == a.dtype
                and proj_down.dtype == a.dtype and group_size in _KERNEL_GROUPS and smooth.is_cuda
                and proj_down.is_cuda and ext.quantize_act_2l_supported(K))

    return _dispatch("quantize_act_2l_cat", supported, quantize_act_2l_cat_ref, a, b, smooth, proj_down, group_size)


def _check_packed_2l_shapes(op: str, xq, xscale, qweight, wscales, wchannel, lr_act, proj_up, bias, group_size) -> None:
    if xq.dim() != 2 or qweight.dim() != 2:
        raise ValueError(f"svdquant::{op}: xq and qweight must be 2-D")
    M, K = xq.shape
    N = qweight.shape[0]
    G = K // group_size
    R = lr_act.shape[-1] if lr_act.dim() == 2 else -1
    expected = {
        "xscale": (xscale, (M,)), "qweight": (qweight, (N, K // 2)), "wscales": (wscales, (G, N)),
        "wchannel": (wchannel, (N,)), "lr_act": (lr_act, (M, R)), "proj_up": (proj_up, (N, R)),
    }
    if bias is not None:
        expected["bias"] = (bias, (N,))
    _require_shapes(op, expected, M, K, N, group_size)


def _packed_gemm_2l_cuda(op: str, fragment_order: bool, xq: torch.Tensor, xscale: torch.Tensor, qweight: torch.Tensor,
                         wscales: torch.Tensor, wchannel: torch.Tensor, lr_act: torch.Tensor, proj_up: torch.Tensor,
                         bias: torch.Tensor | None, group_size: int) -> torch.Tensor:
    args = (xq, xscale, qweight, wscales, wchannel, lr_act, proj_up, bias, group_size)
    _check_packed_2l_shapes(op, *args)
    ext = build.load_extension()
    if ext is None or not hasattr(ext, op) or not _gemm_2l_supported(ext, *args):
        if fragment_order:
            return w4a4_gemm_2l_ref(xq, xscale, canonical_order(qweight), *args[3:])
        return w4a4_gemm_2l_ref(*args)
    lr_k, pu_k = _pad_rank16(lr_act, proj_up)  # the kernel's rank steps of 16; zero columns add exactly 0
    y = getattr(ext, op)(xq, xscale, qweight, wscales, wchannel, lr_k, pu_k, bias, group_size)
    if y is None:
        raise ValueError(ext.last_error())
    return y


def w4a4_gemm_2l_cuda(xq, xscale, qweight, wscales, wchannel, lr_act, proj_up, bias, group_size) -> torch.Tensor:
    """The int4_2l GEMM on canonical packed weights: the kernel when it applies, else the reference."""
    return _packed_gemm_2l_cuda("w4a4_gemm_2l", False, xq, xscale, qweight, wscales, wchannel, lr_act, proj_up, bias,
                                group_size)


def w4a4_gemm_2l_fo_cuda(xq, xscale, qweight, wscales, wchannel, lr_act, proj_up, bias, group_size) -> torch.Tensor:
    """The same on packed weights in fragment order (ops/layout_2l.py)."""
    return _packed_gemm_2l_cuda("w4a4_gemm_2l_fo", True, xq, xscale, qweight, wscales, wchannel, lr_act, proj_up,
                                bias, group_size)


def w4a4_gemm_2l_fo_ep_cuda(xq, xscale, qweight, wscales, wchannel, lr_act, proj_up, bias, group_size: int,
                            activation: int, prefix: torch.Tensor | None) -> torch.Tensor:
    """w4a4_gemm_2l_fo with its epilogue (ops/reference.py gemm_epilogue_ref): the kernel when it applies (a prefix
    it cannot write in place is concatenated after it), else the reference."""
    args = (xq, xscale, qweight, wscales, wchannel, lr_act, proj_up, bias, group_size)
    _check_packed_2l_shapes("w4a4_gemm_2l_fo_ep", *args)
    check_epilogue_args(xq.shape[0], activation, prefix)
    if prefix is not None and prefix.device != xq.device:
        raise ValueError(f"svdquant::w4a4_gemm_2l_fo_ep: prefix is on {prefix.device}, the GEMM's inputs on {xq.device}")
    ext = build.load_extension()
    if ext is None or not hasattr(ext, "w4a4_gemm_2l_fo_ep") or not _gemm_2l_supported(ext, *args):
        y32 = w4a4_gemm_2l_ref(xq, xscale, canonical_order(qweight), *args[3:], fp32_out=True)
        return gemm_epilogue_ref(y32, lr_act.dtype, activation, prefix)
    lr_k, pu_k = _pad_rank16(lr_act, proj_up)
    takes_prefix = prefix is None or (prefix.shape[1] % 8 == 0 and prefix.dtype == lr_act.dtype)
    y = ext.w4a4_gemm_2l_fo_ep(xq, xscale, qweight, wscales, wchannel, lr_k, pu_k, bias, group_size, activation,
                               prefix if takes_prefix else None)
    if y is None:
        raise ValueError(ext.last_error())
    return y if takes_prefix else torch.cat([prefix.to(y.dtype), y], 1)


def w8a4_gemm_2l_cuda(xq: torch.Tensor, xscale: torch.Tensor, w8: torch.Tensor, wchannel: torch.Tensor,
                      lr_act: torch.Tensor, proj_up: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The int4_2l GEMM on weights stored widened (int8 q * s_int [N, K]): the kernel when it applies."""
    if xq.dim() != 2 or w8.dim() != 2:
        raise ValueError("svdquant::w8a4_gemm_2l: xq and w8 must be 2-D")
    M, K = xq.shape
    N = w8.shape[0]
    R = lr_act.shape[-1] if lr_act.dim() == 2 else -1
    expected = {"xscale": (xscale, (M,)), "w8": (w8, (N, K)), "wchannel": (wchannel, (N,)),
                "lr_act": (lr_act, (M, R)), "proj_up": (proj_up, (N, R))}
    if bias is not None:
        expected["bias"] = (bias, (N,))
    _require_shapes("w8a4_gemm_2l", expected, M, K, N, 0)
    ext = build.load_extension()
    args = (xq, xscale, w8, wchannel, lr_act, proj_up, bias)
    if ext is None or not hasattr(ext, "w8a4_gemm_2l") or not _gemm_2l_operands_ok(ext, *args):
        return w8a4_gemm_2l_ref(*args)
    lr_k, pu_k = _pad_rank16(lr_act, proj_up)
    y = ext.w8a4_gemm_2l(xq, xscale, w8, wchannel, lr_k, pu_k, bias)
    if y is None:
        raise ValueError(ext.last_error())
    return y


def _hand_over_fallbacks(ext) -> None:
    """The extension's C++ op kernels send the inputs they do not take to these Python paths."""
    if hasattr(ext, "register_fallbacks"):
        ext.register_fallbacks(quantize_act_2l_cuda, w4a4_gemm_2l_cuda, w8a4_gemm_2l_cuda, w4a4_gemm_2l_fo_cuda,
                               w4a4_gemm_2l_fo_ep_cuda)


build.on_load(_hand_over_fallbacks)


def rms_norm_rope_cuda(x: torch.Tensor, weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor,
                       front: torch.Tensor | None = None, front_weight: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm per head then the rotary embedding (after ``front``'s tokens) in one kernel (csrc/rms_norm_rope.cu)
    where it applies, else the reference: head dims 64 / 128 / 256, 16-bit x and weights, fp32 cos / sin, all on
    x's GPU."""
    check_rms_norm_rope_args(x, weight, cos, sin, front, front_weight)
    tensors = (weight, cos, sin) + (() if front is None else (front, front_weight))

    def supported(ext) -> bool:
        return (x.dtype in _KERNEL_DTYPES and x.shape[-1] in (64, 128, 256)
                and all(t.device == x.device for t in tensors))

    return _dispatch("rms_norm_rope", supported, rms_norm_rope_ref, x.contiguous(), weight, eps, cos.contiguous(),
                     sin.contiguous(), None if front is None else front.contiguous(), front_weight)

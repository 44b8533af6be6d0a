"""CUDA implementations of ``svdquant::quantize_act`` and ``svdquant::w4a4_gemm`` (csrc/ kernels).

Registered for the "cuda" dispatch key when this module is imported (library.py does that); the
extension is compiled lazily on the first call on a CUDA tensor (see build.py). Inputs the kernels
do not cover (fp32 compute dtype, group sizes other than 32/64/128, mixed dtypes) and machines where
the build failed take the reference implementation, which has the same semantics.
"""
from __future__ import annotations

import torch

from . import build
from .reference import quantize_act_ref, w4a4_gemm_ref

_KERNEL_DTYPES = (torch.bfloat16, torch.float16)
_KERNEL_GROUPS = (32, 64, 128)


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


def _check_gemm_shapes(xq, ascales, qweight, wscales, lr_act, proj_up, bias, group_size) -> None:
    """Clear errors naming the tensor, before anything reaches the kernels."""
    M, K = xq.shape
    N = qweight.shape[0]
    G = K // group_size
    expected = {
        "ascales": (ascales, (M, G)),
        "qweight": (qweight, (N, K // 2)),
        "wscales": (wscales, (G, N)),
        "lr_act": (lr_act, (M, lr_act.shape[-1] if lr_act.dim() == 2 else -1)),
        "proj_up": (proj_up, (N, lr_act.shape[-1] if lr_act.dim() == 2 else -1)),
    }
    if bias is not None:
        expected["bias"] = (bias, (N,))
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise ValueError(
                f"svdquant::w4a4_gemm: {name} has shape {tuple(t.shape)}, expected {shape} "
                f"(M={M}, K={K}, N={N}, group_size={group_size})"
            )


def _check_quantize_shapes(x, smooth, proj_down) -> None:
    if x.dim() != 2:
        raise ValueError(f"svdquant::quantize_act: x must be 2-D [M, K], got shape {tuple(x.shape)}")
    K = x.shape[1]
    if tuple(smooth.shape) != (K,):
        raise ValueError(f"svdquant::quantize_act: smooth has shape {tuple(smooth.shape)}, expected ({K},)")
    if proj_down.dim() != 2 or proj_down.shape[0] != K:
        raise ValueError(f"svdquant::quantize_act: proj_down has shape {tuple(proj_down.shape)}, expected ({K}, R)")


@torch.library.register_kernel("svdquant::quantize_act", "cuda")
def quantize_act_cuda(
    x: torch.Tensor, smooth: torch.Tensor, proj_down: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_quantize_shapes(x, smooth, proj_down)
    ext = build.load_extension()
    if ext is None or not _quantize_supported(x, smooth, proj_down, group_size):
        return quantize_act_ref(x, smooth, proj_down, group_size)
    out = ext.quantize_act(x, smooth, proj_down, group_size)
    if out[0] is None:
        raise ValueError(ext.last_error())
    return tuple(out)  # type: ignore[return-value]


@torch.library.register_kernel("svdquant::w4a4_gemm", "cuda")
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
    ext = build.load_extension()
    if ext is None or not _gemm_supported(xq, ascales, qweight, wscales, lr_act, proj_up, bias, group_size):
        return w4a4_gemm_ref(xq, ascales, qweight, wscales, lr_act, proj_up, bias, group_size)
    y = ext.w4a4_gemm(xq, ascales, qweight, wscales, lr_act, proj_up, bias, group_size)
    if y is None:
        raise ValueError(ext.last_error())
    return y

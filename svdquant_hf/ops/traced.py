"""The int4_2l activation quantizer as plain torch ops, for torch.compile to fuse with its producer.

By default a compiled model calls the quantizer's CUDA kernel, an opaque op: the norm, modulation or GELU
that produces its input is written to memory and read back. With ``set_trace_quantizer(True)`` the
quantizer is traced instead (the reference numerics, the down projection as the kernel's own matmul),
so Inductor can emit one kernel from the producer through the quantized int8 operand. Eager calls
always take the kernel. An experiment: its speed is not measured yet (benchmarks/flux_e2e.py
``svdq2l_tq_*`` variants), so it is off by default.
"""
from __future__ import annotations

import torch

from ..formats.int4_2l import combine_2l, quantize_int4_2l

_enabled = False


def set_trace_quantizer(enabled: bool) -> None:
    """Trace the int4_2l quantizer as torch ops under torch.compile (True) or call its kernel (False, default)."""
    global _enabled
    _enabled = bool(enabled)


def trace_quantizer() -> bool:
    """Whether the layer being traced now should use :func:`quantize_act_2l_traced`."""
    return _enabled and torch.compiler.is_compiling()


def quantize_act_2l_traced(
    x: torch.Tensor, smooth: torch.Tensor, proj_down: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """quantize_act_2l in torch ops: xq and xscale by the reference rule, lr = x @ proj_down in x's dtype (the
    matmul the CUDA op runs)."""
    lr = torch.mm(x, proj_down)
    q, s_int, s_row = quantize_int4_2l(x.float() * torch.reciprocal(smooth.float()), group_size, what="activations")
    return combine_2l(q, s_int, group_size), s_row, lr


__all__ = ["set_trace_quantizer", "trace_quantizer", "quantize_act_2l_traced"]

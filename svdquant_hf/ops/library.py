"""The fused ops as torch.library ops (schemas + fake implementations).

Ops: ``svdquant::quantize_act`` / ``svdquant::w4a4_gemm`` (INT4, per-group 16-bit scales) and
``svdquant::quantize_act_2l`` / ``svdquant::w4a4_gemm_2l`` (INT4 with two-level scales, quant_format
"int4_2l"). Off CUDA the implementation is the reference; on CUDA the Python path in cuda.py, and for
the int4_2l ops the extension's C++ kernels once it is loaded. The fake implementations let
torch.compile trace the ops without graph breaks.
"""
from __future__ import annotations

import torch

from . import cuda as _cuda  # CUDA implementations (csrc/ kernels, built lazily on first use on a GPU)
from .layout_2l import canonical_order
from .reference import (
    check_k_2l,
    gemm_epilogue_ref,
    quantize_act_2l_cat_ref,
    quantize_act_2l_ref,
    quantize_act_ref,
    rms_norm_rope_ref,
    w4a4_gemm_2l_ref,
    w4a4_gemm_ref,
    w8a4_gemm_2l_ref,
)


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


quantize_act.register_kernel("cuda")(_cuda.quantize_act_cuda)


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


w4a4_gemm.register_kernel("cuda")(_cuda.w4a4_gemm_cuda)

# The int4_2l ops are declared with torch.library.define rather than custom_op: custom_op adds Python
# kernels for the Autograd and device keys, so every call from a compiled graph would pass through
# Python two or three times. Declared this way, the extension's C++ kernels (TORCH_LIBRARY_IMPL in
# csrc/bindings.cpp, registered when it loads) take CUDA calls from the dispatcher directly; inputs they
# do not cover come back to the Python CUDA path in cuda.py (checks, clear errors, reference fallback).
_TAGS = (torch.Tag.pt2_compliant_tag,)
torch.library.define(
    "svdquant::quantize_act_2l",
    "(Tensor x, Tensor smooth, Tensor proj_down, int group_size) -> (Tensor, Tensor, Tensor)",
    tags=_TAGS,
)
_GEMM_2L_SCHEMA = ("(Tensor xq, Tensor xscale, Tensor qweight, Tensor wscales, Tensor wchannel, Tensor lr_act, "
                   "Tensor proj_up, Tensor? bias, int group_size) -> Tensor")
torch.library.define("svdquant::w4a4_gemm_2l", _GEMM_2L_SCHEMA, tags=_TAGS)


@torch.library.impl("svdquant::quantize_act_2l", "CompositeExplicitAutograd")
def _quantize_act_2l_impl(x, smooth, proj_down, group_size):
    if x.is_cuda:
        return _cuda.quantize_act_2l_cuda(x, smooth, proj_down, group_size)
    return quantize_act_2l_ref(x, smooth, proj_down, group_size)


@torch.library.register_fake("svdquant::quantize_act_2l")
def _(x, smooth, proj_down, group_size):
    return _fake_activations(x, proj_down, x.new_empty((x.shape[0],), dtype=torch.float32))


# cat([a, b], 1) quantized without being written (FLUX single blocks' proj_out input); a Python CUDA path only: its few
# calls per forward run inside compiled graphs / CUDA graphs, where the host cost does not show
torch.library.define(
    "svdquant::quantize_act_2l_cat",
    "(Tensor a, Tensor b, Tensor smooth, Tensor proj_down, int group_size) -> (Tensor, Tensor, Tensor)",
    tags=_TAGS,
)


@torch.library.impl("svdquant::quantize_act_2l_cat", "CompositeExplicitAutograd")
def _quantize_act_2l_cat_impl(a, b, smooth, proj_down, group_size):
    if a.is_cuda:
        return _cuda.quantize_act_2l_cat_cuda(a, b, smooth, proj_down, group_size)
    return quantize_act_2l_cat_ref(a, b, smooth, proj_down, group_size)


@torch.library.register_fake("svdquant::quantize_act_2l_cat")
def _(a, b, smooth, proj_down, group_size):
    rows, k = a.shape[0], a.shape[1] + b.shape[1]
    return (a.new_empty((rows, k), dtype=torch.int8), a.new_empty((rows,), dtype=torch.float32),
            a.new_empty((rows, proj_down.shape[1])))


@torch.library.impl("svdquant::w4a4_gemm_2l", "CompositeExplicitAutograd")
def _w4a4_gemm_2l_impl(xq, xscale, qweight, wscales, wchannel, lr_act, proj_up, bias, group_size):
    args = (xq, xscale, qweight, wscales, wchannel, lr_act, proj_up, bias, group_size)
    return _cuda.w4a4_gemm_2l_cuda(*args) if xq.is_cuda else w4a4_gemm_2l_ref(*args)


@torch.library.register_fake("svdquant::w4a4_gemm_2l")
def _fake_gemm_2l(xq, xscale, qweight, wscales, wchannel, lr_act, proj_up, bias, group_size):
    check_k_2l(xq.shape[1])
    return lr_act.new_empty((xq.shape[0], qweight.shape[0]))


# The int4_2l GEMM on weights stored widened (int8 q * s_int [N, K]; SVDQuantLinear.set_int8_weights).
torch.library.define(
    "svdquant::w8a4_gemm_2l",
    "(Tensor xq, Tensor xscale, Tensor w8, Tensor wchannel, Tensor lr_act, Tensor proj_up, Tensor? bias) -> Tensor",
    tags=_TAGS,
)


@torch.library.impl("svdquant::w8a4_gemm_2l", "CompositeExplicitAutograd")
def _w8a4_gemm_2l_impl(xq, xscale, w8, wchannel, lr_act, proj_up, bias):
    args = (xq, xscale, w8, wchannel, lr_act, proj_up, bias)
    return _cuda.w8a4_gemm_2l_cuda(*args) if xq.is_cuda else w8a4_gemm_2l_ref(*args)


@torch.library.register_fake("svdquant::w8a4_gemm_2l")
def _(xq, xscale, w8, wchannel, lr_act, proj_up, bias):
    check_k_2l(xq.shape[1])
    return lr_act.new_empty((xq.shape[0], w8.shape[0]))


# The int4_2l GEMM on packed weights in fragment order (ops/layout_2l.py; SVDQuantLinear.set_fragment_order).
torch.library.define("svdquant::w4a4_gemm_2l_fo", _GEMM_2L_SCHEMA, tags=_TAGS)
torch.library.register_fake("svdquant::w4a4_gemm_2l_fo")(_fake_gemm_2l)


@torch.library.impl("svdquant::w4a4_gemm_2l_fo", "CompositeExplicitAutograd")
def _w4a4_gemm_2l_fo_impl(xq, xscale, qweight, wscales, wchannel, lr_act, proj_up, bias, group_size):
    if xq.is_cuda:
        return _cuda.w4a4_gemm_2l_fo_cuda(xq, xscale, qweight, wscales, wchannel, lr_act, proj_up, bias, group_size)
    return w4a4_gemm_2l_ref(xq, xscale, canonical_order(qweight), wscales, wchannel, lr_act, proj_up, bias, group_size)


# The same GEMM with an epilogue (ops/reference.py gemm_epilogue_ref): an activation on the fp32 result (0 none,
# 1 GELU tanh) and, with prefix [M, P], the output cat([prefix, y], 1) written in one allocation.
torch.library.define(
    "svdquant::w4a4_gemm_2l_fo_ep",
    "(Tensor xq, Tensor xscale, Tensor qweight, Tensor wscales, Tensor wchannel, Tensor lr_act, Tensor proj_up, "
    "Tensor? bias, int group_size, int activation, Tensor? prefix) -> Tensor",
    tags=_TAGS,
)


@torch.library.register_fake("svdquant::w4a4_gemm_2l_fo_ep")
def _(xq, xscale, qweight, wscales, wchannel, lr_act, proj_up, bias, group_size, activation, prefix):
    check_k_2l(xq.shape[1])
    width = qweight.shape[0] + (prefix.shape[1] if prefix is not None else 0)
    return lr_act.new_empty((xq.shape[0], width))


@torch.library.impl("svdquant::w4a4_gemm_2l_fo_ep", "CompositeExplicitAutograd")
def _w4a4_gemm_2l_fo_ep_impl(xq, xscale, qweight, wscales, wchannel, lr_act, proj_up, bias, group_size, activation,
                             prefix):
    if xq.is_cuda:
        return _cuda.w4a4_gemm_2l_fo_ep_cuda(xq, xscale, qweight, wscales, wchannel, lr_act, proj_up, bias, group_size,
                                             activation, prefix)
    y32 = w4a4_gemm_2l_ref(xq, xscale, canonical_order(qweight), wscales, wchannel, lr_act, proj_up, bias, group_size,
                           fp32_out=True)
    return gemm_epilogue_ref(y32, lr_act.dtype, activation, prefix)


# RMSNorm per head then the rotary embedding (FLUX's q / k; reference.rms_norm_rope_ref), after a front part's tokens
# (the double blocks' text q / k, their own weight) when given: one pass on CUDA.
torch.library.define(
    "svdquant::rms_norm_rope",
    "(Tensor x, Tensor weight, float eps, Tensor cos, Tensor sin, Tensor? front=None, Tensor? front_weight=None) "
    "-> Tensor",
    tags=_TAGS,
)


@torch.library.register_fake("svdquant::rms_norm_rope")
def _(x, weight, eps, cos, sin, front=None, front_weight=None):
    B, S, H, D = x.shape
    return x.new_empty((B, S + (front.shape[1] if front is not None else 0), H, D))


@torch.library.impl("svdquant::rms_norm_rope", "CompositeExplicitAutograd")
def _rms_norm_rope_impl(x, weight, eps, cos, sin, front=None, front_weight=None):
    if x.is_cuda:
        return _cuda.rms_norm_rope_cuda(x, weight, eps, cos, sin, front, front_weight)
    return rms_norm_rope_ref(x, weight, eps, cos, sin, front, front_weight)


#: int4_2l activations: (xq int8 [M, K] = q * s_int, xscale fp32 [M], lr_act [M, R] in x.dtype).
quantize_act_2l = torch.ops.svdquant.quantize_act_2l.default
#: quantize_act_2l of cat([a, b], 1), the concatenation read in place (never written).
quantize_act_2l_cat = torch.ops.svdquant.quantize_act_2l_cat.default
#: int4_2l GEMM: y = (float32(exact int acc) * wchannel) * xscale + lr_act @ proj_up^T + bias.
w4a4_gemm_2l = torch.ops.svdquant.w4a4_gemm_2l.default
#: the same GEMM on the weights widened once: w8 = weight_operand_2l(qweight, wscales, G).
w8a4_gemm_2l = torch.ops.svdquant.w8a4_gemm_2l.default
#: the same GEMM on packed weights in fragment order: qweight = layout_2l.fragment_order(canonical qweight).
w4a4_gemm_2l_fo = torch.ops.svdquant.w4a4_gemm_2l_fo.default
#: the fragment-order GEMM with its epilogue: cat([prefix, act(y)], 1) (prefix None: act(y)).
w4a4_gemm_2l_fo_ep = torch.ops.svdquant.w4a4_gemm_2l_fo_ep.default
#: RMSNorm per head (16-bit weight) then the rotary embedding: x [B, S, H, D], cos / sin [S, D] fp32 (front: below).
rms_norm_rope = torch.ops.svdquant.rms_norm_rope.default

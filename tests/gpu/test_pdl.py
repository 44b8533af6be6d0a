"""Programmatic dependent launch (set_pdl, csrc/pdl.cuh): the int4_2l GEMM, the few-token weight stream and the
per-row quantizer launched to start under the previous kernel's tail must give the same bits as plain stream order,
eager and inside a CUDA graph, whatever kernel comes before them (a torch kernel, the quantizer, the down projection
on the side stream, the prefix copy, the previous layer's GEMM whose output is the next quantizer's input)."""
from __future__ import annotations

import contextlib
import itertools

import pytest
import torch

from svdquant_hf.ops.layout_2l import fragment_order
from svdquant_hf.ops.reference import weight_operand_2l

from test_kernels import _poison, ext  # noqa: F401  (ext: the fixture)
from test_kernels_2l import _acts, _forced_plan, _gemv_mode, _quantize, _weights, hopper  # noqa: F401

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@contextlib.contextmanager
def _pdl(ext, on: bool):  # noqa: F811
    before = ext.pdl()
    ext.set_pdl(on)
    try:
        yield
    finally:
        ext.set_pdl(before)


def _layers(M, K, layers, dtype, R, seed):
    """A stack of K -> K layers: each GEMM's output is the next quantizer's input."""
    out = []
    for i in range(layers):
        _, smooth, pd = _acts(8, K, R, dtype, seed=seed + 7 * i)
        out.append((smooth, pd, *_weights(K, K, R, dtype, 64, seed=seed + 7 * i)))
    return out


def _forward(ext, x, scale, layers, frag):  # noqa: F811
    h = x * scale  # a torch kernel writes the first quantizer's input
    for smooth, pd, qw, wsc, wch, pu, b in layers:
        xq, xs, lr = ext.quantize_act_2l(h, smooth, pd, 64)
        gemm = ext.w4a4_gemm_2l_fo if frag else ext.w4a4_gemm_2l
        h = gemm(xq, xs, qw, wsc, wch, lr, pu, b, 64)
    return h


def _graph(fn, *static):
    """fn(*static) captured in a CUDA graph after a warm-up on a side stream; returns (graph, its output)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn(*static)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*static)
    return graph, out


@pytest.mark.parametrize("frag", [False, True], ids=["canonical", "fragment_order"])
@pytest.mark.parametrize("M,K,layers", [(1, 3072, 3), (2, 256, 4), (7, 768, 3), (256, 3072, 4), (300, 1024, 4),
                                        (1024, 3072, 3), (4097, 512, 3), (300, 12288, 2)])
def test_pdl_layer_stack_bit_identical_eager_and_in_a_graph(hopper, frag, M, K, layers):
    """Layers whose GEMM feeds the next quantizer, PDL on against off: the same bits eagerly, and replayed from a CUDA
    graph captured with PDL against one captured without it, on two input sets (the few-token weight stream at M <= 2,
    split and persistent GEMMs, the quantizer's side stream and its persistent ring at K = 12288 all take part; the
    graphs are compared with each other, so cuBLAS's down projection runs the same way on both sides)."""
    dtype = torch.bfloat16
    stack = _layers(M, K, layers, dtype, 32, seed=M + K)
    if frag:
        stack = [(s, p, fragment_order(q), *rest) for s, p, q, *rest in stack]
    xs = [_acts(M, K, 32, dtype, seed=M + K + i)[0] for i in (1, 2)]
    scale = torch.full((K,), 0.5, device="cuda", dtype=dtype)
    outs = {}
    for on in (False, True):
        with _pdl(hopper, on):
            assert hopper.pdl() == on
            eager = []
            for x in xs:
                _poison(4 * M * K, 0xFF)
                eager.append(_forward(hopper, x, scale, stack, frag))
            static_x = xs[0].clone()
            graph, out = _graph(lambda t: _forward(hopper, t, scale, stack, frag), static_x)
        replayed = []
        for x in (xs[1], xs[0]):
            static_x.copy_(x)
            graph.replay()
            torch.cuda.synchronize()
            replayed.append(out.clone())
        outs[on] = (eager, replayed)
    (eager_off, graph_off), (eager_on, graph_on) = outs[False], outs[True]
    assert all(torch.isfinite(y).all() for y in eager_off + graph_off)
    assert all(torch.equal(a, b) for a, b in zip(eager_off, eager_on)), "eager, PDL on against off"
    assert all(torch.equal(a, b) for a, b in zip(graph_off, graph_on)), "CUDA graph, PDL on against off"


@pytest.mark.parametrize("M,K,N,R,P", [(1, 256, 128, 32, 64), (7, 512, 384, 16, 64), (255, 1024, 768, 32, 8),
                                       (1000, 3072, 1536, 32, 3072)])
def test_pdl_every_gemm_kernel_bit_identical(hopper, M, K, N, R, P):
    """Every kernel the GEMM can run (each token tile, K splits 1 / 2, persistent or not, the register-fragment loop
    split over clusters of 2 and 4, three warpgroups where N allows, int8 weights, the few-token weight stream), each
    launched right after the quantizer and after the prefix copy (fragment order's epilogue), PDL on against off."""
    gs = 64
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=M + N + 3)
    qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, gs, seed=N + R + 3)
    qf = fragment_order(qw)
    prefix = torch.randn(M, P, device="cuda").to(torch.bfloat16)
    w8 = weight_operand_2l(qw, wsc, gs)

    def runs():
        xq, xs, lr = hopper.quantize_act_2l(x, smooth, pd, gs)
        a = hopper.w4a4_gemm_2l(xq, xs, qw, wsc, wch, lr, pu, b, gs)
        xq, xs, lr = hopper.quantize_act_2l(x, smooth, pd, gs)
        c = hopper.w4a4_gemm_2l_fo_ep(xq, xs, qf, wsc, wch, lr, pu, b, gs, 1, prefix)
        d = hopper.w8a4_gemm_2l(xq, xs, w8, wch, lr, pu, b)
        return a, c, d

    plans = [(bt, s, p, 0, 0) for bt, s, p in itertools.product(hopper.gemm_2l_tiles, (1, 2), (0, 1))]
    plans += [(0, 0, -1, 0, s) for s in (2, 4)] + ([(0, 0, 1, 3, 0)] if N % 192 == 0 else [])
    for bt, splits, persistent, cw, rf_splits in plans:
        outs = []
        for on in (False, True):
            with _forced_plan(hopper, bt, splits), _pdl(hopper, on):
                hopper.set_gemm_2l_persistent(persistent)
                hopper.set_gemm_2l_rf_splits(rf_splits)
                if cw:
                    hopper.set_gemm_2l_rf_warpgroups(cw, 0)
                try:
                    _poison(4 * M * (N + P), 0xFF)
                    outs.append(runs())
                finally:
                    hopper.set_gemm_2l_rf_splits(0)
        where = f"tile {bt}, splits {splits}, persistent {persistent}, warpgroups {cw or 'auto'}, rf splits {rf_splits}"
        for off, on in zip(*outs):
            assert off is not None and on is not None, hopper.last_error()
            assert torch.isfinite(off).all() and torch.equal(off, on), where
    if M <= 8:
        with _gemv_mode(hopper, 8):
            launches = hopper.gemv_2l_launches()
            with _pdl(hopper, False):
                off = runs()
            with _pdl(hopper, True):
                on = runs()
            assert hopper.gemv_2l_launches() - launches == 4
        assert all(torch.equal(a, c) for a, c in zip(off, on)), "few-token weight stream"


def test_pdl_switch_defaults_off_and_quantizer_alone_unchanged(hopper):
    """PDL is off by default; with it on, the quantizer alone (after a torch kernel, its persistent ring and its
    one-CTA-per-row form) writes the same bits."""
    assert not hopper.pdl()
    for M, K in ((1, 3072), (300, 12288), (4097, 3072)):
        x, smooth, pd = _acts(M, K, 32, torch.bfloat16, seed=M + K + 5)
        with _pdl(hopper, False):
            ref = _quantize(hopper, x * 1.0, smooth, pd, 64)
        with _pdl(hopper, True):
            got = _quantize(hopper, x * 1.0, smooth, pd, 64)
        assert all(torch.equal(a, b) for a, b in zip(ref, got)), (M, K)
    assert not hopper.pdl()

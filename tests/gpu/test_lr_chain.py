"""The chained down projection (set_lr_chain, Hopper, M <= 256): the quantizer's lr = x @ proj_down on the quantizer's
stream, launched programmatically beside it, and the GEMM that reads those xq and lr started before lr is done
(its low-rank tile loaded late). Outputs are poisoned first; the late GEMM must give the bits of the same GEMM
launched in order on the same inputs. Mode 1 (forced) for the kernels; the default rule (-1) in its own test."""
from __future__ import annotations

import pytest
import torch

from svdquant_hf.ops.layout_2l import fragment_order
from svdquant_hf.ops.reference import quantize_act_2l_ref, w4a4_gemm_2l_ref

from test_kernels import _rel, ext  # noqa: F401  (ext: the fixture)
from test_kernels_2l import _acts, _quantize, _switched, _weights, hopper  # noqa: F401  (hopper: the fixture)
from test_kernels_2l import _gemm_fo as _gemm

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _chain(ext, mode: int = 1):
    """set_lr_chain(mode) for a block (1: wherever the shape allows, 0: never, -1: its rule), as before after it."""
    return _switched(ext.set_lr_chain, mode, ext.lr_chain())


@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("R", [16, 32, 96])
@pytest.mark.parametrize("M,K", [(1, 3072), (7, 256), (100, 3072), (255, 12288), (256, 3072), (256, 15360),
                                 (257, 3072)])
def test_chained_quantizer_gives_the_same_xq_and_lr(hopper, dtype, R, M, K, deep):
    """xq and xscale bit for bit the side-stream path's; lr written everywhere, bit for bit the side stream's where that
    runs our few-token kernel too (M <= 256, K <= 4096, rank <= 64: the same K slices summed in the same order on fewer
    CTAs), else within fp32 summation order of cuBLAS's; M = 257 keeps the side stream."""
    x, smooth, pd = _acts(M, K, R, dtype, seed=M + K + R)
    cq, cs, cl = _quantize(hopper, x, smooth, pd)
    with _chain(hopper), _switched(hopper.set_lowrank_down_deep, deep, False):  # (deep: more stages in flight)
        q, s, lr = _quantize(hopper, x, smooth, pd)
        torch.cuda.synchronize()
    assert lr.shape == (M, R) and torch.isfinite(lr).all(), "unwritten (poisoned) low-rank activations"
    assert torch.equal(q, cq) and torch.equal(s, cs)
    if M <= 256 and K <= 4096 and R <= 64:
        assert torch.equal(lr, cl), f"{(lr != cl).sum().item()} low-rank activations differ from the side stream's"
    assert _rel(lr, cl) < 1e-3, f"off the side-stream down projection by {_rel(lr, cl):.2e}"
    assert _rel(lr, quantize_act_2l_ref(x, smooth, pd, 64)[2]) < 1e-2


# (M, K, N, whether the default plan is a persistent kernel there, so that the GEMM takes lr late)
# (None: not asserted; the plan may pick a non-persistent kernel, which takes lr in order)
GEMMS = [(256, 3072, 3072, None), (256, 3072, 9216, True), (255, 12288, 3072, True), (256, 3072, 12288, True),
         (100, 15360, 3072, None), (9, 3072, 3072, None), (1, 3072, 3072, False)]


@pytest.mark.parametrize("pipes", [1, 2])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,K,N,late", GEMMS)
def test_late_gemm_gives_the_in_order_bits(hopper, dtype, M, K, N, late, pipes):
    """quantize (chained) then the GEMM at once: the GEMM takes lr late where a persistent kernel runs, and its output
    is bit for bit the same GEMM's on a copy of lr (launched in order), within 1e-2 of the reference; eagerly and from
    a CUDA graph replayed on new activations. pipes 2: the chained kernel on two rings per CTA (set_lr_chain_pipes,
    g.59, the default), taken at 256 x 3072 (four slices per CTA)."""
    R = 32
    x, smooth, pd = _acts(M, K, R, dtype, seed=3 * M + K + N)
    qw, wsc, wch, pu, b = _weights(N, K, R, dtype, 64, seed=M + N)
    qf, w = fragment_order(qw), (wsc, wch, pu, b)
    with _chain(hopper), _switched(hopper.set_lr_chain_pipes, pipes, hopper.lr_chain_pipes()):
        n0, p0 = hopper.gemm_2l_late_launches(), hopper.lr_chain_pipes_launches()
        xq, xs, lr = _quantize(hopper, x, smooth, pd)
        y = _gemm(hopper, xq, xs, qf, w, lr)
        n1 = hopper.gemm_2l_late_launches()
        if pipes == 2 and (M, K) == (256, 3072):
            assert n1 - n0 == 1 and hopper.lr_chain_pipes_launches() - p0 == 1
        in_order = _gemm(hopper, xq, xs, qf, w, lr.clone())
        assert hopper.gemm_2l_late_launches() == n1, "a GEMM on a copy of lr took it late"
        torch.cuda.synchronize()
        if late is not None:
            assert (n1 - n0 == 1) == late, f"late launches {n1 - n0}"
        assert torch.isfinite(y).all(), "unwritten (poisoned) outputs"
        assert torch.equal(y, in_order), f"{(y != in_order).sum().item()} outputs differ from the in-order GEMM"
        ref = w4a4_gemm_2l_ref(xq, xs, qw, wsc, wch, lr, pu, b, 64)
        assert _rel(y, ref) < 1e-2

        xin = x.clone()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            gq, gs, glr = hopper.quantize_act_2l(xin, smooth, pd, 64)
            gy = hopper.w4a4_gemm_2l_fo(gq, gs, qf, wsc, wch, glr, pu, b, 64)
        for seed in (7, 9):  # (two replays on new activations)
            x2 = _acts(M, K, R, dtype, seed=seed * M + K + N)[0]
            xin.copy_(x2)
            gy.fill_(float("nan"))
            graph.replay()
            torch.cuda.synchronize()
            q2, s2, lr2 = hopper.quantize_act_2l(x2, smooth, pd, 64)
            y2 = hopper.w4a4_gemm_2l_fo(q2, s2, qf, wsc, wch, lr2, pu, b, 64)
            assert torch.equal(gq, q2) and torch.equal(gs, s2) and torch.equal(glr, lr2)
            assert torch.equal(gy, y2), f"graph replay: {(gy != y2).sum().item()} outputs differ"


def test_late_gemm_reads_a_column_block_of_a_shared_lr(hopper):
    """q / k / v sharing one quantizer call (rank 96, each GEMM reads its 32 columns in place): the first GEMM, whose
    lr starts where the chained kernel's does, takes it late; all three give the in-order bits."""
    M, K, N, dtype = 256, 3072, 3072, torch.bfloat16
    x, smooth, pd = _acts(M, K, 96, dtype, seed=11)
    layers = [_weights(N, K, 32, dtype, 64, seed=20 + i) for i in range(3)]
    with _chain(hopper):
        n0 = hopper.gemm_2l_late_launches()
        xq, xs, lr = _quantize(hopper, x, smooth, pd)
        ys = [_gemm(hopper, xq, xs, fragment_order(qw), (wsc, wch, pu, b), lr[:, 32 * i:32 * (i + 1)])
              for i, (qw, wsc, wch, pu, b) in enumerate(layers)]
        assert hopper.gemm_2l_late_launches() - n0 == 1
        for i, (qw, wsc, wch, pu, b) in enumerate(layers):
            in_order = _gemm(hopper, xq, xs, fragment_order(qw), (wsc, wch, pu, b), lr[:, 32 * i:32 * (i + 1)].clone())
            assert torch.equal(ys[i], in_order), f"layer {i}: {(ys[i] != in_order).sum().item()} outputs differ"


def test_a_gemm_after_another_quantizer_call_is_not_late(hopper):
    """Two chained quantizer calls, then the GEMM on the first call's outputs: it is launched in order (its lr was
    not the last one chained) and correct; a GEMM on outputs of a call that did not chain is never late."""
    M, K, N, dtype = 200, 3072, 3072, torch.bfloat16
    x, smooth, pd = _acts(M, K, 32, dtype, seed=5)
    x2 = _acts(M, K, 32, dtype, seed=6)[0]
    qw, wsc, wch, pu, b = _weights(N, K, 32, dtype, 64, seed=7)
    qf, w = fragment_order(qw), (wsc, wch, pu, b)
    with _chain(hopper):
        n0 = hopper.gemm_2l_late_launches()
        a = _quantize(hopper, x, smooth, pd)
        _quantize(hopper, x2, smooth, pd)
        y = _gemm(hopper, *a[:2], qf, w, a[2])
        assert hopper.gemm_2l_late_launches() == n0
    with _chain(hopper, 0):
        c = _quantize(hopper, x, smooth, pd)
        _gemm(hopper, *c[:2], qf, w, c[2])
        assert hopper.gemm_2l_late_launches() == n0
    assert torch.equal(y, _gemm(hopper, *a[:2], qf, w, a[2].clone()))


# (M, K, N, whether the rule chains the second call: the GEMM before it a persistent kernel leaving an SM per 16 tokens
# free, K <= 4096; None: not asserted, the plan's kernel there not pinned down)
RULE = [(256, 3072, 9216, True), (256, 3072, 12288, True), (256, 12288, 3072, False), (128, 3072, 3072, None),
        (300, 3072, 3072, False)]


@pytest.mark.parametrize("M,K,N,chains", RULE)
def test_the_default_rule_learns_from_the_gemm(hopper, M, K, N, chains):
    """Mode -1 (the default): a first call with a proj_down never seen at this M keeps the side stream; its GEMM's grid
    decides whether the next call with them chains (3072 x 9216 and, since perf-notes v2.36's 256-token tiles, 3072 x
    12288 at 256 tokens: 72 / 96 CTAs, 60 / 36 SMs left for 16 row blocks; K = 12288: past the rule's K; 300 tokens:
    past 256); every output the same bits either way."""
    x, smooth, pd = _acts(M, K, 32, torch.bfloat16, seed=M + N)
    qw, wsc, wch, pu, b = _weights(N, K, 32, torch.bfloat16, 64, seed=N)
    qf, w = fragment_order(qw), (wsc, wch, pu, b)
    def chain_once():
        xq, xs, lr = _quantize(hopper, x, smooth, pd)
        return _gemm(hopper, xq, xs, qf, w, lr)

    with _chain(hopper, 0):
        ref = chain_once()
    hopper.lr_chain_forget()
    with _chain(hopper, -1):
        n0 = hopper.gemm_2l_late_launches()
        y1 = chain_once()  # nothing learned yet: the side stream
        assert hopper.gemm_2l_late_launches() == n0
        xq, xs, lr = _quantize(hopper, x, smooth, pd)
        y2 = _gemm(hopper, xq, xs, qf, w, lr)
        late = hopper.gemm_2l_late_launches() - n0
    if chains is not None:
        assert late == (1 if chains else 0)
    assert torch.equal(y1, ref) and torch.equal(y2, ref)  # (chained or not: the same bits)
    assert torch.equal(y2, _gemm(hopper, xq, xs, qf, w, lr.clone()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("R", [16, 32, 48, 64, 96])
@pytest.mark.parametrize("M,K", [(7, 256), (100, 3072), (256, 3072), (255, 12288), (130, 2048)])
def test_two_groups_of_warps_give_the_same_lr(hopper, dtype, R, M, K):
    """set_lr_chain_pipes(2) (g.59, the default): the chained kernel's slices taken by two groups of four warps, each on
    its own ring: xq, xscale and lr bit for bit the one-group kernel's (set_lr_chain_pipes(1)); taken where a CTA has an
    even slice count (256 / 255 / 100 tokens here: 4, 4 and 2 slices), ranks <= 64."""
    assert hopper.lr_chain_pipes() == 2, "two rings are the default"
    x, smooth, pd = _acts(M, K, R, dtype, seed=M + K + R + 11)
    with _chain(hopper):
        with _switched(hopper.set_lr_chain_pipes, 1, 2):
            n0 = hopper.lr_chain_pipes_launches()
            q1, s1, l1 = _quantize(hopper, x, smooth, pd)
            assert hopper.lr_chain_pipes_launches() == n0, "set_lr_chain_pipes(1) ran two rings"
        q2, s2, l2 = _quantize(hopper, x, smooth, pd)
        torch.cuda.synchronize()
        ran = hopper.lr_chain_pipes_launches() - n0
    assert hopper.lr_chain_pipes() == 2
    if R <= 64 and (M, K) in {(100, 3072), (256, 3072), (255, 12288)}:
        assert ran == 1
    if R > 64:
        assert ran == 0
    assert torch.isfinite(l2).all(), "unwritten (poisoned) low-rank activations"
    assert torch.equal(q2, q1) and torch.equal(s2, s1)
    assert torch.equal(l2, l1), f"{(l2 != l1).sum().item()} low-rank activations differ from one group's"


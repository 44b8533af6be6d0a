"""The SVDQuant algorithm: smoothing, the low-rank convention, refinement, GPTQ, the alpha search."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svdquant_hf import SVDQuantLinear, SVDQuantOptions
from svdquant_hf.algorithm import (
    quantize_weight,
    relative_output_error,
    search_alpha,
    smoothing_factors,
)
from svdquant_hf.algorithm.lowrank import lowrank_weight_smoothed
from svdquant_hf.formats import dequantize_int4, unpack_int4

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outlier_layer(n: int, k: int, seed: int, rows: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight with outlier rows/columns and correlated activations with outlier channels."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    cols = torch.randperm(k, generator=g)[:4]
    w[:, cols] *= 15
    w[torch.randperm(n, generator=g)[:2]] *= 6
    mix = torch.randn(k, k, generator=g) * 0.2 + torch.eye(k)
    x = torch.randn(rows, k, generator=g) @ mix
    x[:, torch.randperm(k, generator=g)[:6]] *= 30
    return w, x


def weight_error(qw, w: torch.Tensor, group: int) -> float:
    """|| W_smoothed - L - dequant(residual) ||_F, the quantity refinement minimises."""
    ws = w.float() * qw.smooth_factor.float()
    deq = dequantize_int4(unpack_int4(qw.qweight), qw.wscales.t(), group)
    return float(torch.linalg.matrix_norm(ws - lowrank_weight_smoothed(qw.proj_down, qw.proj_up, qw.smooth_factor) - deq))


# ----------------------------------------------------------------------------- smoothing


@SETTINGS
@given(alpha=st.floats(0, 1), k=st.integers(1, 80), n=st.integers(1, 20), seed=st.integers(0, 2**31 - 1))
def test_smoothing_formula(alpha: float, k: int, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * torch.exp(torch.randn(k, generator=g))
    xmax = torch.rand(k, generator=g) * 50
    xmax[0] = 0.0  # a channel never active -> lambda 1
    lam = smoothing_factors(w, xmax, alpha, torch.bfloat16)
    assert lam.dtype == torch.bfloat16 and lam.shape == (k,)
    wmax = w.double().abs().amax(0).numpy()
    with np.errstate(divide="ignore"):
        ref = np.power(xmax.double().numpy(), alpha) / np.power(wmax, 1 - alpha)
    ref = np.where(xmax.numpy() > 0, np.clip(ref, 1e-4, 1e4), 1.0)
    assert np.allclose(lam.double().numpy(), ref, rtol=2**-7)
    assert float(lam[0]) == 1.0


def test_smoothing_data_free_and_clamp() -> None:
    w = torch.randn(4, 8)
    assert torch.equal(smoothing_factors(w, None, 0.5, torch.float16), torch.ones(8, dtype=torch.float16))
    assert torch.equal(smoothing_factors(w, torch.ones(8), None, torch.float16), torch.ones(8, dtype=torch.float16))
    w[:, 1] = 0.0  # dead weight column -> 1
    xmax = torch.ones(8)
    xmax[2], xmax[3] = 1e12, 1e-12
    lam = smoothing_factors(w, xmax, 1.0, torch.float32)
    assert float(lam[1]) == 1.0 and float(lam[2]) == 1e4 and float(lam[3]) == pytest.approx(1e-4)


# ----------------------------------------------------------------------------- the low-rank branch convention


@pytest.mark.parametrize("rank", [1, 8, 32])
def test_proj_down_applies_to_unsmoothed_input(rank: int) -> None:
    w, x = outlier_layer(48, 128, seed=rank)
    absmax = x.abs().amax(0)
    qw = quantize_weight(w, SVDQuantOptions(rank=rank), torch.float32, absmax, alpha=0.5)
    lam = qw.smooth_factor.double()
    assert not torch.allclose(lam, torch.ones_like(lam))
    ws = w.double() * lam
    # the branch is the best rank-r approximation of the SMOOTHED weight ...
    low = qw.proj_up.double() @ (qw.proj_down.double() * lam[:, None]).t()
    u, s, vh = torch.linalg.svd(ws, full_matrices=False)
    best = (u[:, :rank] * s[:rank]) @ vh[:rank]
    assert torch.allclose(low, best, atol=1e-4 * float(s[0]))
    # ... and proj_down takes the raw input: x @ pd @ pu^T + (x / lam) @ (Ws - L)^T == x @ W^T exactly
    xd = x.double()
    y = xd @ qw.proj_down.double() @ qw.proj_up.double().t() + (xd / lam) @ (ws - low).t()
    ref = xd @ w.double().t()
    assert torch.allclose(y, ref, atol=1e-9 * float(ref.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lora_concatenation_adds_exactly_x_a_bt(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    n, k, r, r2 = 40, 192, 16, 8
    w, x = outlier_layer(n, k, seed=2, rows=64)
    opts = SVDQuantOptions(rank=r)
    bias = torch.randn(n)
    qw = quantize_weight(w, opts, dtype, x.abs().amax(0), alpha=0.6)
    base = SVDQuantLinear.from_quantized(qw, bias, opts, dtype)
    a = (torch.randn(k, r2) * 0.1).to(dtype)
    b = (torch.randn(n, r2) * 0.1).to(dtype)
    opts2 = SVDQuantOptions(rank=r + r2)
    qw.proj_down = torch.cat([qw.proj_down, a], 1)
    qw.proj_up = torch.cat([qw.proj_up, b], 1)
    merged = SVDQuantLinear.from_quantized(qw, bias, opts2, dtype)
    assert merged.rank == r + r2 and merged.proj_down.shape == (k, r + r2)
    xs = x[:7].to(dtype)
    delta = merged(xs).double() - base(xs).double()
    lora = (xs.double() @ a.double()).to(dtype).double() @ b.double().t()  # lr is rounded to 16 bits
    ref = base(xs).double()
    if dtype == torch.float32:
        assert torch.allclose(delta, lora, atol=1e-5 * float(ref.abs().max()))
    else:
        # two outputs each rounded once to bf16
        assert bool(((delta - lora).abs() <= 2**-8 * (ref.abs() + (ref + lora).abs()) + 1e-6).all())


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("group", [32, 64, 128])
def test_rank_and_group_options(group: int) -> None:
    n, k = 72, 256
    w, x = outlier_layer(n, k, seed=group)
    errs = []
    for rank in (0, 8, 32):
        opts = SVDQuantOptions(rank=rank, group_size=group)
        qw = quantize_weight(w, opts, torch.bfloat16)
        assert qw.qweight.shape == (n, k // 2) and qw.wscales.shape == (k // group, n)
        assert qw.proj_down.shape == (k, rank) and qw.proj_up.shape == (n, rank)
        assert qw.wscales.dtype == torch.bfloat16 and qw.proj_up.dtype == torch.bfloat16
        mod = SVDQuantLinear.from_quantized(qw, None, opts, torch.bfloat16)
        assert mod(x[:3]).shape == (3, n)
        errs.append(weight_error(qw, w, group))
    assert errs[0] > errs[1] > errs[2], errs  # outlier rows/columns go to the branch


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), rank=st.sampled_from([1, 4, 16]), iters=st.integers(1, 3), gptq=st.booleans())
def test_refinement_never_increases_weight_error(seed: int, rank: int, iters: int, gptq: bool) -> None:
    w, x = outlier_layer(32, 128, seed=seed, rows=256)
    h = x.t() @ x if gptq else None
    base = quantize_weight(w, SVDQuantOptions(rank=rank), torch.bfloat16, hessian=h)
    refined = quantize_weight(w, SVDQuantOptions(rank=rank, refine_iters=iters), torch.bfloat16, hessian=h)
    assert weight_error(refined, w, 64) <= weight_error(base, w, 64)


def test_refinement_helps_on_outlier_weights() -> None:
    w, _ = outlier_layer(96, 256, seed=0)
    errs = [weight_error(quantize_weight(w, SVDQuantOptions(rank=16, refine_iters=i), torch.bfloat16), w, 64) for i in (0, 3)]
    assert errs[1] < 0.95 * errs[0], errs


# ----------------------------------------------------------------------------- GPTQ


def test_gptq_beats_rtn_on_correlated_inputs() -> None:
    k = 256
    w, _ = outlier_layer(64, k, seed=5)
    g = torch.Generator().manual_seed(9)
    mix = torch.randn(k, k, generator=g) * 0.3 + torch.eye(k)
    calib = torch.randn(1024, k, generator=g) @ mix
    held_out = torch.randn(512, k, generator=g) @ mix
    opts = SVDQuantOptions(rank=16, weight_only=True)
    rtn = quantize_weight(w, opts, torch.bfloat16)
    gptq = quantize_weight(w, opts, torch.bfloat16, hessian=calib.t() @ calib)
    e_rtn = relative_output_error(rtn, w, None, held_out, opts)
    e_gptq = relative_output_error(gptq, w, None, held_out, opts)
    assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)
    # the weight error itself is larger: GPTQ trades it for output error
    assert weight_error(gptq, w, 64) > weight_error(rtn, w, 64)


# ----------------------------------------------------------------------------- calibrated alpha search


@pytest.mark.parametrize("quant_format", ["int4", "nvfp4"])
def test_alpha_search_picks_the_grid_minimum(quant_format: str) -> None:
    w, x = outlier_layer(48, 128, seed=11, rows=256)
    bias = torch.randn(48) * 0.1
    opts = SVDQuantOptions(rank=8, alpha_grid=7, quant_format=quant_format)
    absmax = x.abs().amax(0)
    best = search_alpha(w, bias, opts, torch.bfloat16, absmax, x)
    grid = [None, *np.linspace(0, 1, 7).tolist()]  # None: no smoothing (the data-free solution)
    errs = []
    for a in grid:
        qw = quantize_weight(w, opts, torch.bfloat16, absmax, a)
        errs.append(relative_output_error(qw, w, bias, x.to(torch.bfloat16), opts))
    i = int(np.argmin(errs))
    assert i > 0  # smoothing helps on this layer (activation outlier channels)
    assert best.alpha == pytest.approx(grid[i])
    assert best.error == pytest.approx(min(errs), rel=1e-6)
    assert max(errs) > 1.2 * min(errs)  # the search matters on this layer
    # a fixed alpha bypasses the search
    fixed = search_alpha(w, bias, SVDQuantOptions(rank=8, alpha=0.3, quant_format=quant_format), torch.bfloat16, absmax, x)
    assert fixed.alpha == 0.3


def test_search_falls_back_to_no_smoothing_when_it_is_best() -> None:
    # flat cached rows, but the absmax saw a rare token 1000x larger on 8 channels: smoothing hurts
    g = torch.Generator().manual_seed(4)
    w = torch.randn(32, 128, generator=g) * 0.05
    x = torch.randn(256, 128, generator=g)
    absmax = x.abs().amax(0)
    absmax[:8] *= 1e3
    opts = SVDQuantOptions(rank=0, alpha_grid=5)
    best = search_alpha(w, None, opts, torch.bfloat16, absmax, x)
    data_free = quantize_weight(w, opts, torch.bfloat16)
    assert best.alpha is None and torch.equal(best.smooth_factor, data_free.smooth_factor)
    xb = x.to(torch.bfloat16)  # search_alpha evaluates on rows in the compute dtype
    assert best.error == pytest.approx(relative_output_error(data_free, w, None, xb, opts), rel=1e-6)
    smoothed = quantize_weight(w, opts, torch.bfloat16, absmax, 0.0)
    assert best.error < relative_output_error(smoothed, w, None, xb, opts)


def test_calibrated_search_with_gptq_keeps_the_better_result() -> None:
    w, x = outlier_layer(48, 128, seed=12, rows=512)
    opts = SVDQuantOptions(rank=8, alpha_grid=5, gptq=True)
    absmax = x.abs().amax(0)
    no_gptq = search_alpha(w, None, SVDQuantOptions(rank=8, alpha_grid=5), torch.bfloat16, absmax, x)
    with_gptq = search_alpha(w, None, opts, torch.bfloat16, absmax, x, hessian=x.t() @ x)
    assert with_gptq.error <= no_gptq.error


# ----------------------------------------------------------------------------- data-free path


def test_data_free_path() -> None:
    w, x = outlier_layer(64, 256, seed=3)
    errs = {}
    for rank in (0, 32):
        opts = SVDQuantOptions(rank=rank)
        qw = quantize_weight(w, opts, torch.bfloat16)
        assert qw.alpha is None
        assert torch.equal(qw.smooth_factor, torch.ones(256, dtype=torch.bfloat16))
        errs[rank] = relative_output_error(qw, w, None, x, opts)
    assert errs[32] < 0.7 * errs[0], errs
    assert errs[32] < 0.05

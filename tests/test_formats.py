"""Round trips and exact numerics of the INT4 and NVFP4 formats and of the reference ops.

Property-based (hypothesis) over random shapes, scales and seeds; each oracle is written
independently of the library (fp64 / numpy / brute force).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svdquant_hf import SVDQuantLinear
from svdquant_hf.formats import (
    E2M1_VALUES,
    dequantize_int4,
    dequantize_nvfp4,
    pack_e2m1,
    pack_int4,
    quantize_int4,
    quantize_nvfp4,
    unpack_e2m1,
    unpack_int4,
)
from svdquant_hf.ops.reference import quantize_act_ref, w4a4_gemm_ref, w4a4_group_dots

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GROUPS = st.sampled_from([32, 64, 128])
SCALE_DTYPES = st.sampled_from([torch.bfloat16, torch.float16])


def _randn(seed: int, *shape: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


# ----------------------------------------------------------------------------- INT4 packing


@SETTINGS
@given(rows=st.integers(1, 7), half_k=st.integers(1, 40), seed=st.integers(0, 2**31 - 1))
def test_int4_pack_unpack_round_trip(rows: int, half_k: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-8, 8, (rows, 2 * half_k), generator=g, dtype=torch.int8)
    packed = pack_int4(q)
    assert packed.dtype == torch.int8 and packed.shape == (rows, half_k)
    assert torch.equal(unpack_int4(packed), q)
    # canonical layout: element 2j in the low nibble, 2j+1 in the high nibble, two's complement
    b = packed.view(torch.uint8).numpy().astype(np.int64)
    qn = q.numpy().astype(np.int64)
    assert np.array_equal(b & 0xF, qn[:, 0::2] & 0xF)
    assert np.array_equal(b >> 4, qn[:, 1::2] & 0xF)


def test_int4_pack_known_bytes() -> None:
    q = torch.tensor([[1, -1, -8, 7, 0, -2]], dtype=torch.int8)
    assert pack_int4(q).view(torch.uint8).tolist() == [[0xF1, 0x78, 0xE0]]
    with pytest.raises(ValueError, match="even"):
        pack_int4(torch.zeros(2, 3, dtype=torch.int8))


# ----------------------------------------------------------------------------- INT4 quantization


@SETTINGS
@given(
    rows=st.integers(1, 6),
    ngroups=st.integers(1, 4),
    group=GROUPS,
    dtype=SCALE_DTYPES,
    log_scale=st.floats(-3, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_int4_quantize_matches_oracle_and_error_bound(
    rows: int, ngroups: int, group: int, dtype: torch.dtype, log_scale: float, seed: int
) -> None:
    x = _randn(seed, rows, ngroups * group, scale=10.0**log_scale)
    x[0, :group] = 0.0  # one all-zero group
    q, s = quantize_int4(x, group, dtype)
    assert q.dtype == torch.int8 and q.shape == x.shape
    assert s.dtype == dtype and s.shape == (rows, ngroups)
    assert int(q.min()) >= -8 and int(q.max()) <= 7
    # oracle: scale = round16(fp32 absmax / 7); q = clamp(rne(x / scale)) with the rounded scale
    xg = x.reshape(rows, ngroups, group)
    s_ref = (xg.abs().amax(-1) / 7).to(dtype)
    assert torch.equal(s, s_ref)
    sf = s_ref.double().unsqueeze(-1).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(sf > 0, xg.double().numpy() / sf, 0.0)
    q_ref = np.clip(np.round(ratio), -8, 7)  # numpy rounds half to even
    assert np.array_equal(q.reshape(rows, ngroups, group).numpy(), q_ref)
    # zero group -> zero scale, zero codes
    assert float(s[0, 0]) == 0.0 and not q[0, :group].any()
    # error bound: one half step of the rounded scale (absmax / scale <= 7 (1 + 2^-8) < 7.5: no clamping)
    dq = dequantize_int4(q, s, group).double().reshape(rows, ngroups, group)
    err = (dq - xg.double()).abs().numpy()
    assert bool((err <= sf * 0.5 * (1 + 1e-6) + 1e-30).all())
    # the largest magnitude of each nonzero group maps to +-7
    nz = s.float() > 0
    assert bool((q.reshape(rows, ngroups, group).abs().amax(-1)[nz] == 7).all())


def test_int4_round_half_to_even_ties() -> None:
    # absmax 7 -> scale exactly 1, so x / scale = x and the ties are exact
    x = torch.tensor([[7.0, 0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, -6.5, 4.5, 5.5, 6.49, -7.0, 0.0, 1.0, -3.5]])
    x = x.repeat(1, 2)
    q, s = quantize_int4(x, 32)
    assert float(s[0, 0]) == 1.0
    expect = [7, 0, 2, 2, 4, 0, -2, -2, -6, 4, 6, 6, -7, 0, 1, -4] * 2
    assert q[0].tolist() == expect


def test_int4_clamps_when_scale_rounding_undershoots() -> None:
    # fp16 cannot represent absmax/7 = 8.5e-8 (subnormal step 6e-8): the rounded scale is too small,
    # so x / scale exceeds the INT4 range and must be clamped to [-8, 7]
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1], x[0, 2] = 5.95e-7, -5.95e-7, 3e-7
    q, s = quantize_int4(x, 32, torch.float16)
    assert float(s[0, 0]) == 2.0**-24
    assert q[0, :3].tolist() == [7, -8, 5]


def test_int4_scale_saturates_instead_of_overflowing_fp16() -> None:
    # absmax/7 above the fp16 maximum: the scale saturates (no inf scale, no NaN on dequantization)
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1] = 1e6, -3e5
    q, s = quantize_int4(x, 32, torch.float16)
    assert torch.isfinite(s).all() and float(s[0, 0]) == 65504.0
    assert q[0, :2].tolist() == [7, -5]
    assert torch.isfinite(dequantize_int4(q, s, 32)).all()


def test_int4_bad_group() -> None:
    with pytest.raises(ValueError, match="not a multiple of group_size=64"):
        quantize_int4(torch.randn(2, 96), 64, what="weights")


# ----------------------------------------------------------------------------- NVFP4


def _e2m1_nearest_even(a: np.ndarray) -> np.ndarray:
    """Brute force: nearest e2m1 magnitude (saturating at 6), ties to the even index."""
    grid = np.array(E2M1_VALUES)
    d = np.abs(np.minimum(a, 6.0)[..., None] - grid)
    best = d.min(-1, keepdims=True)
    cand = np.where(d == best, np.arange(8), 99)
    even = np.where(cand % 2 == 0, cand, 99).min(-1)
    return np.where(even < 99, even, cand.min(-1))


def test_e2m1_ties_to_even() -> None:
    # tensor scale 1 and group absmax 6 -> fp8 group scale exactly 1; the values themselves are quantized
    vals = [6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -0.75, -2.5, -5.0, 0.1, 5.9, -6.0, 0.0]
    x = torch.tensor([vals])
    codes, gs, ts = quantize_nvfp4(x, tensor_scale=torch.tensor(1.0))
    assert float(gs.float()) == 1.0
    dq = dequantize_nvfp4(codes, gs, ts)[0].tolist()
    assert dq == [6.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 0.0, -1.0, -2.0, -4.0, 0.0, 6.0, -6.0, 0.0]
    # -0.25 rounds to zero: no negative-zero code
    assert int(codes[0, 8]) == 0


@SETTINGS
@given(rows=st.integers(1, 5), ngroups=st.integers(1, 6), log_scale=st.floats(-4, 4), seed=st.integers(0, 2**31 - 1))
def test_nvfp4_matches_brute_force(rows: int, ngroups: int, log_scale: float, seed: int) -> None:
    x = _randn(seed, rows, 16 * ngroups, scale=10.0**log_scale)
    x[-1, :16] = 0.0
    codes, gs, ts = quantize_nvfp4(x)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 15
    assert gs.dtype == torch.float8_e4m3fn and gs.shape == (rows, ngroups)
    # tensor scale: absmax / (6 * 448), fp32; group scale: fp8 of absmax / 6 / tensor scale
    amax = x.abs().amax()
    expect_ts = float(amax) / (6 * 448) if float(amax) > 0 else 1.0
    assert float(ts) == pytest.approx(expect_ts, rel=1e-6)
    xg = x.reshape(rows, ngroups, 16)
    gs_ref = (xg.abs().amax(-1) / 6 / ts).clamp(max=448).to(torch.float8_e4m3fn)
    assert torch.equal(gs.float(), gs_ref.float())
    eff = (gs.float() * ts).double().unsqueeze(-1).numpy()
    scaled = np.where(eff > 0, xg.double().numpy() / np.where(eff > 0, eff, 1), 0.0)
    idx = _e2m1_nearest_even(np.abs(scaled))
    expect = np.array(E2M1_VALUES)[idx] * np.sign(scaled) * eff
    dq = dequantize_nvfp4(codes, gs, ts).reshape(rows, ngroups, 16).double().numpy()
    # the library divides in fp32; compare against the fp64 brute force with a half-ulp margin on ties
    mism = ~np.isclose(dq, expect, rtol=1e-6, atol=0)
    if mism.any():
        r = np.abs(scaled[mism])
        mid = (np.array(E2M1_VALUES)[:-1] + np.array(E2M1_VALUES)[1:]) / 2
        assert np.min(np.abs(r[:, None] - mid), axis=1).max() < 1e-5, "NVFP4 rounding differs away from a tie"
    # the all-zero group stays exactly zero
    assert not dq[-1, 0].any()


@SETTINGS
@given(rows=st.integers(1, 5), half_k=st.integers(1, 30), seed=st.integers(0, 2**31 - 1))
def test_e2m1_pack_round_trip(rows: int, half_k: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (rows, 2 * half_k), generator=g).to(torch.uint8)
    packed = pack_e2m1(codes)
    assert packed.dtype == torch.int8 and packed.shape == (rows, half_k)
    b = packed.view(torch.uint8)
    assert torch.equal(b & 0xF, codes[:, 0::2]) and torch.equal(b >> 4, codes[:, 1::2])
    assert torch.equal(unpack_e2m1(packed), codes)


# ----------------------------------------------------------------------------- the kernels' integer arithmetic


@SETTINGS
@given(
    m=st.integers(1, 9),
    n=st.integers(1, 9),
    ngroups=st.integers(1, 4),
    group=GROUPS,
    dtype=SCALE_DTYPES,
    seed=st.integers(0, 2**31 - 1),
)
def test_group_dots_identity(m: int, n: int, ngroups: int, group: int, dtype: torch.dtype, seed: int) -> None:
    k = ngroups * group
    x = _randn(seed, m, k) * torch.exp(_randn(seed + 1, 1, k))  # channel-wise spread
    w = _randn(seed + 2, n, k)
    xq, xs = quantize_int4(x, group, dtype)
    wq, ws = quantize_int4(w, group, dtype)
    qweight = pack_int4(wq)
    dots = w4a4_group_dots(xq, qweight, group)
    assert dots.dtype == torch.int32 and dots.shape == (m, n, ngroups)
    # exact integer oracle in int64
    xi = xq.long().reshape(m, 1, ngroups, group)
    wi = wq.long().reshape(1, n, ngroups, group)
    assert torch.equal(dots.long(), (xi * wi).sum(-1))
    assert int(dots.abs().max()) <= 64 * group
    # y = sum_g sx sw dot_g in fp64 vs the reference (one fp32 matmul of dequantized operands)
    y64 = (xs.double().unsqueeze(1) * ws.double().unsqueeze(0) * dots.double()).sum(-1)
    empty = torch.zeros(m, 0)
    y32 = w4a4_gemm_ref(xq, xs, qweight, ws.t().contiguous(), empty, torch.zeros(n, 0), None, group)
    assert y32.dtype == torch.float32
    # every term is exact in fp32: the only error is fp32 summation over K terms
    terms = (xs.double().repeat_interleave(group, -1) * xq.double()).abs() @ (
        ws.double().repeat_interleave(group, -1) * wq.double()
    ).abs().t()
    tol = k * 2.0**-24 * terms + 1e-30
    assert bool(((y32.double() - y64).abs() <= tol).all())


def test_quantize_act_ref_matches_independent_oracle() -> None:
    torch.manual_seed(3)
    m, k, r, g = 5, 192, 7, 64
    x = (torch.randn(m, k) * 3).to(torch.bfloat16)
    smooth = (torch.rand(k) * 4 + 0.1).to(torch.bfloat16)
    pd = torch.randn(k, r).to(torch.bfloat16)
    xq, asc, lr = quantize_act_ref(x, smooth, pd, g)
    assert xq.dtype == torch.int8 and asc.dtype == torch.bfloat16 and lr.dtype == torch.bfloat16
    xs = x.float() / smooth.float()  # IEEE fp32 division
    s_ref = (xs.reshape(m, k // g, g).abs().amax(-1) / 7).to(torch.bfloat16)
    assert torch.equal(asc, s_ref)
    q_ref = np.clip(np.round(xs.reshape(m, k // g, g).double().numpy() / s_ref.double().unsqueeze(-1).numpy()), -8, 7)
    assert np.array_equal(xq.reshape(m, k // g, g).numpy(), q_ref)
    lr64 = x.double() @ pd.double()
    assert torch.allclose(lr.double(), lr64, rtol=2**-8, atol=1e-3 * float(lr64.abs().max()))


# ----------------------------------------------------------------------------- SVDQuantLinear forward


def _random_module(k: int, n: int, r: int, g: int, dtype: torch.dtype, seed: int) -> SVDQuantLinear:
    gen = torch.Generator().manual_seed(seed)
    mod = SVDQuantLinear(k, n, bias=True, rank=r, group_size=g, dtype=dtype)
    mod.qweight.copy_(pack_int4(torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8)))
    mod.wscales.copy_((torch.rand(k // g, n, generator=gen) * 0.1 + 0.01).to(dtype))
    mod.smooth_factor.copy_((torch.rand(k, generator=gen) * 3 + 0.2).to(dtype))
    mod.proj_down.copy_((torch.randn(k, r, generator=gen) * 0.1).to(dtype))
    mod.proj_up.copy_((torch.randn(n, r, generator=gen) * 0.1).to(dtype))
    mod.bias.data.copy_(torch.randn(n, generator=gen).to(dtype))
    return mod


def _formula_fp64(mod: SVDQuantLinear, x2: torch.Tensor) -> torch.Tensor:
    """y = sum_g sx sw (xq . wq)_g + round16(x @ proj_down) @ proj_up^T + bias, in fp64."""
    g = mod.group_size
    xq, sx, _ = quantize_act_ref(x2, mod.smooth_factor, mod.proj_down, g)
    wq = unpack_int4(mod.qweight).double()
    m, k = xq.shape
    n = wq.shape[0]
    dots = (xq.double().reshape(m, 1, k // g, g) * wq.reshape(1, n, k // g, g)).sum(-1)
    main = (sx.double().unsqueeze(1) * mod.wscales.double().t().unsqueeze(0) * dots).sum(-1)
    lr = (x2.double() @ mod.proj_down.double()).to(x2.dtype).double()
    return main + lr @ mod.proj_up.double().t() + mod.bias.double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(3, 5, 192, 33, 64, 8), (1, 7, 128, 40, 32, 0), (2, 1, 256, 17, 128, 32)])
def test_svdquant_linear_forward_equals_formula(dtype: torch.dtype, shape: tuple) -> None:
    b, t, k, n, g, r = shape
    mod = _random_module(k, n, r, g, dtype, seed=k + n + r)
    x = torch.randn(b, t, k) * 2
    y = mod(x)
    assert y.shape == (b, t, n) and y.dtype == x.dtype
    x2 = x.reshape(-1, k).to(dtype)
    ref = _formula_fp64(mod, x2).reshape(b, t, n)
    if dtype == torch.float32:
        # fp32 accumulation of exact terms: error within a few ulps of the magnitude
        assert torch.allclose(y.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    else:
        # fp32 accumulation then one rounding to 16 bits
        eps = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
        assert bool(((y.double() - ref).abs() <= eps * ref.abs() + 1e-5 * float(ref.abs().max())).all())

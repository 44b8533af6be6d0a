"""quant_format "int4_2l" (INT4 with two-level scales): the format, the reference ops, the weight path, the layer.

Each oracle is written independently of the library: numpy float32 arithmetic (IEEE, one rounding
per operation, exactly what the rule prescribes), float64 with an explicit rounding to float32 after
every step, or int64 integer sums.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svdquant_hf import SVDQuantLinear, SVDQuantOptions
from svdquant_hf.algorithm import quantize_weight, relative_output_error
from svdquant_hf.algorithm.lowrank import lowrank_weight_smoothed
from svdquant_hf.algorithm.twolevel import quantize_weight_2l
from svdquant_hf.formats.int4_2l import group_absmax, reciprocal_or_zero, second_level_scales
from svdquant_hf.formats import (
    combine_2l,
    dequantize_int4_2l,
    pack_int4,
    quantize_int4_2l,
    unpack_int4,
)
from svdquant_hf.ops import library as ops
from svdquant_hf.ops.layout_2l import fragment_order
from svdquant_hf.ops.reference import (
    MAX_K_2L,
    int_dot_exact,
    quantize_act_2l_ref,
    w4a4_gemm_2l_ref,
    w4a16_2l_linear_ref,
    weight_operand_2l,
)

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GROUPS = st.sampled_from([32, 64, 128])


def _randn(seed: int, *shape: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def rule_fp32(x: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two-level rule, literally, in numpy float32 (every operation rounds once, as IEEE fp32)."""
    x = x.astype(np.float32)
    rows, k = x.shape
    xg = x.reshape(rows, k // group, group)
    amax_g = np.abs(xg).max(-1)
    amax = amax_g.max(-1)
    s_row = amax / np.float32(112)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = np.where(amax[:, None] > 0, amax_g / amax[:, None], np.float32(0)).astype(np.float32)
        s_int = np.clip(np.ceil(ratio * np.float32(16)), 1, 16).astype(np.float32)
        scale = (s_row[:, None] * s_int).astype(np.float32)
        inv = (np.float32(1) / scale).astype(np.float32)
    inv = np.where(np.isfinite(inv), inv, np.float32(0)).astype(np.float32)
    q = np.clip(np.rint((xg * inv[..., None]).astype(np.float32)), -8, 7)  # rint: half to even
    return q.reshape(rows, k).astype(np.int8), s_int.astype(np.uint8), s_row.astype(np.float32)


# ----------------------------------------------------------------------------- the format


@SETTINGS
@given(
    rows=st.integers(1, 6),
    ngroups=st.integers(1, 5),
    group=GROUPS,
    log_scale=st.floats(-6, 6),
    spread=st.floats(0, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_quantize_matches_literal_fp32_rule_and_bounds(
    rows: int, ngroups: int, group: int, log_scale: float, spread: float, seed: int
) -> None:
    k = ngroups * group
    x = _randn(seed, rows, k, scale=10.0**log_scale) * torch.exp(_randn(seed + 1, 1, k) * spread)
    x[0] = 0.0  # an all-zero row
    q, s_int, s_row = quantize_int4_2l(x, group)
    assert q.dtype == torch.int8 and q.shape == x.shape
    assert s_int.dtype == torch.uint8 and s_int.shape == (rows, ngroups)
    assert s_row.dtype == torch.float32 and s_row.shape == (rows,)
    q_ref, s_int_ref, s_row_ref = rule_fp32(x.numpy(), group)
    assert np.array_equal(s_row.numpy(), s_row_ref)
    assert np.array_equal(s_int.numpy(), s_int_ref)
    assert np.array_equal(q.numpy(), q_ref)
    assert int(q.abs().max()) <= 8 and int(s_int.min()) >= 1 and int(s_int.max()) <= 16
    # the zero row: s_row 0, s_int 1, q 0
    assert float(s_row[0]) == 0.0 and bool((s_int[0] == 1).all()) and not q[0].any()
    # every nonzero row has a group at s_int = 16 whose absmax lands on +-7
    nz = s_row > 0
    assert bool((s_int[nz].amax(-1) == 16).all())
    # error bound: half a step of the group's scale (no clamping: |x| / scale <= 7 up to rounding)
    scale = (s_row.double().unsqueeze(-1) * s_int.double()).repeat_interleave(group, -1)
    err = (dequantize_int4_2l(q, s_int, s_row, group).double() - x.double()).abs()
    assert bool((err <= scale * 0.5 * (1 + 1e-5) + 1e-45).all())


def test_dequantize_is_float_of_q_times_s_int_times_s_row() -> None:
    x = _randn(3, 4, 192) * torch.exp(_randn(4, 1, 192))
    q, s_int, s_row = quantize_int4_2l(x, 64)
    w8 = combine_2l(q, s_int, 64)
    assert w8.dtype == torch.int8
    expect = q.long() * s_int.long().repeat_interleave(64, -1)
    assert torch.equal(w8.long(), expect) and int(expect.min()) >= -128 and int(expect.max()) <= 112
    dq = dequantize_int4_2l(q, s_int, s_row, 64)
    assert torch.equal(dq, expect.float() * s_row.unsqueeze(-1))


def test_row_with_one_huge_outlier_group() -> None:
    g = 32
    x = _randn(5, 3, 8 * g)
    x[1, 2 * g : 3 * g] *= 1e4  # one group 10^4 larger than the rest of its row
    q, s_int, s_row = quantize_int4_2l(x, g)
    assert int(s_int[1, 2]) == 16
    others = torch.cat([s_int[1, :2], s_int[1, 3:]])
    assert bool((others == 1).all())  # the small groups get the smallest multiplier ...
    small = torch.cat([x[1, : 2 * g], x[1, 3 * g :]])
    # ... and quantize to 0 (their values are far below half a step of s_row)
    assert float(small.abs().max()) < float(s_row[1]) / 2
    assert not torch.cat([q[1, : 2 * g], q[1, 3 * g :]]).any()
    # the outlier group and the other rows keep the usual half-step error bound
    dq = dequantize_int4_2l(q, s_int, s_row, g)
    out_err = (dq[1, 2 * g : 3 * g] - x[1, 2 * g : 3 * g]).abs().max()
    assert float(out_err) <= float(s_row[1]) * 16 / 2 * (1 + 1e-6)
    # the other rows are unaffected by row 1 (per-row first level)
    q0, si0, sr0 = quantize_int4_2l(x[[0, 2]], g)
    assert torch.equal(q0, q[[0, 2]]) and torch.equal(si0, s_int[[0, 2]]) and torch.equal(sr0, s_row[[0, 2]])


def test_round_half_to_even_and_exact_ties() -> None:
    # amax 112 -> s_row exactly 1; the max group gets s_int 16 (scale 16), a group of absmax 7 gets
    # ceil(7/112*16) = 1 (scale 1): x * (1 / 1) are exact ties
    x = torch.zeros(1, 64)
    x[0, 0] = 112.0
    ties = torch.tensor([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, -6.5, 7.0, 6.49, -7.0, 4.5])
    x[0, 32 : 32 + len(ties)] = ties
    q, s_int, s_row = quantize_int4_2l(x, 32)
    assert float(s_row[0]) == 1.0 and s_int[0].tolist() == [16, 1]
    assert q[0, 32 : 32 + len(ties)].tolist() == [0, 2, 2, 4, 0, -2, -2, -6, 7, 6, -7, 4]
    assert int(q[0, 0]) == 7


def test_tiny_and_subnormal_rows_never_give_nan() -> None:
    x = torch.zeros(3, 64)
    x[0, 5] = 1e-40  # subnormal: s_row underflows to 0 -> scale 0 -> q 0
    x[1, 5], x[1, 40] = 1e-38, -1e-39  # s_row subnormal, 1 / scale overflows -> treated as 0
    x[2, 7] = 1e-30  # tiny but normal: quantized as usual
    q, s_int, s_row = quantize_int4_2l(x, 32)
    assert torch.isfinite(dequantize_int4_2l(q, s_int, s_row, 32)).all()
    assert not q[0].any() and not q[1].any()
    assert int(q[2, 7]) == 7 and int(s_int[2, 0]) == 16
    q_ref, _, _ = rule_fp32(x.numpy(), 32)
    assert np.array_equal(q.numpy(), q_ref)


@pytest.mark.parametrize("group", [32, 64, 128])
def test_the_clamp_never_binds_on_finite_rows_above_2_pow_minus_100(group: int) -> None:
    """The lean per-row quantizer (csrc/quantize_act_2l.cu, set_quantize_act_2l_lean) leaves out the clamp to [-8, 7]
    where a row's amax lies in [2^-100, FLT_MAX]: there s_int >= 16 amax_g / amax and every rounding is of a normal
    number, so |x * inv| <= 7 (1 + 5 * 2^-24) and rounding gives [-7, 7] already. Checked on the rule's own fp32 ops
    for rows spanning that range: Gaussian, heavy-tailed, one outlier, groups at exactly k / 16 of the row's absmax
    and one ulp either side of it."""
    g = torch.Generator().manual_seed(group)
    k = 16 * group
    rows = [torch.randn(64, k, generator=g), torch.randn(64, k, generator=g) ** 5,
            torch.randn(64, k, generator=g) * (torch.rand(64, k, generator=g) < 0.01)]
    steps = torch.zeros(48, k)
    for j in range(16):
        steps[:, j * group] = (j + 1) / 16
    steps[16:32] = torch.nextafter(steps[16:32], torch.full_like(steps[16:32], 1.0))
    steps[32:48] = torch.nextafter(steps[32:48], torch.zeros_like(steps[32:48]))
    steps[:, 15 * group] = 1.0  # the row's absmax: the other groups at (j + 1) / 16 of it, or one ulp off
    rows.append(steps + torch.randn(48, k, generator=g) * 1e-9 * (torch.rand(48, k, generator=g) < 0.3))
    x = torch.cat(rows)
    x = x / x.abs().amax(dim=1, keepdim=True)
    exps = torch.linspace(-99.5, 127.5, x.shape[0]).floor()
    for xs in (x * torch.exp2(exps).unsqueeze(1), x * 3.4e38, x * 2.0**-100):
        xs = xs.float()
        amax_g, amax = group_absmax(xs, group)
        assert torch.isfinite(amax).all() and (amax >= 2.0**-100).all()
        s_row = amax / torch.full_like(amax, 112.0)
        inv = reciprocal_or_zero(s_row.unsqueeze(-1) * second_level_scales(amax_g, amax).float())
        p = xs.reshape(xs.shape[0], -1, group) * inv.unsqueeze(-1)
        assert p.abs().max() <= 7 * (1 + 5 * 2.0**-24)


def test_bad_group_is_named() -> None:
    with pytest.raises(ValueError, match="weights: last dimension 96 is not a multiple of group_size=64"):
        quantize_int4_2l(torch.randn(2, 96), 64, what="weights")
    with pytest.raises(ValueError, match="group_size=16.*int4_2l"):
        SVDQuantOptions(quant_format="int4_2l", group_size=16)
    assert SVDQuantOptions(quant_format="int4_2l").group_size == 64


# ----------------------------------------------------------------------------- exact integer dot products


@pytest.mark.parametrize("m, n, k", [(1, 1, 32), (3, 5, 96), (17, 8, 64), (40, 24, 4096), (2, 3, MAX_K_2L)])
def test_int_dot_exact_equals_int64(m: int, n: int, k: int) -> None:
    g = torch.Generator().manual_seed(m * n + k)
    xq = torch.randint(-128, 113, (m, k), generator=g, dtype=torch.int8)
    w8 = torch.randint(-128, 113, (n, k), generator=g, dtype=torch.int8)
    if m == 2:  # the worst case of the bound: every product 2^14, |acc| = 2^30
        xq.fill_(-128)
        w8.fill_(-128)
    acc = int_dot_exact(xq, w8)
    assert acc.dtype == torch.int32 and acc.shape == (m, n)
    assert torch.equal(acc.long(), xq.long() @ w8.long().t())
    if m == 2:
        assert int(acc.max()) == 2**30


def test_int_dot_exact_rejects_bad_operands() -> None:
    with pytest.raises(ValueError, match="int8"):
        int_dot_exact(torch.zeros(2, 8, dtype=torch.int16), torch.zeros(2, 8, dtype=torch.int8))
    with pytest.raises(ValueError, match=r"\[M, K\] and w8 \[N, K\]"):
        int_dot_exact(torch.zeros(2, 8, dtype=torch.int8), torch.zeros(2, 16, dtype=torch.int8))
    with pytest.raises(ValueError, match=f"K={MAX_K_2L + 8} exceeds {MAX_K_2L}"):
        int_dot_exact(torch.zeros(1, MAX_K_2L + 8, dtype=torch.int8), torch.zeros(1, MAX_K_2L + 8, dtype=torch.int8))


# ----------------------------------------------------------------------------- the reference ops


def r32(a: np.ndarray) -> np.ndarray:
    """Round float64 values to float32 and back (one IEEE fp32 rounding of an exact float64 result)."""
    return a.astype(np.float32).astype(np.float64)


@SETTINGS
@given(
    m=st.integers(1, 7),
    ngroups=st.integers(1, 4),
    group=GROUPS,
    r=st.integers(0, 9),
    dtype=st.sampled_from([torch.bfloat16, torch.float16]),
    seed=st.integers(0, 2**31 - 1),
)
def test_quantize_act_2l_matches_float64_reimplementation(
    m: int, ngroups: int, group: int, r: int, dtype: torch.dtype, seed: int
) -> None:
    k = ngroups * group
    x = (_randn(seed, m, k) * torch.exp(_randn(seed + 1, 1, k) * 2)).to(dtype)
    smooth = (torch.rand(k, generator=torch.Generator().manual_seed(seed + 2)) * 8 + 0.05).to(dtype)
    pd = (_randn(seed + 3, k, r) * 0.1).to(dtype)
    xq, xscale, lr = quantize_act_2l_ref(x, smooth, pd, group)
    assert xq.dtype == torch.int8 and xq.shape == (m, k)
    assert xscale.dtype == torch.float32 and xscale.shape == (m,)
    assert lr.dtype == dtype and lr.shape == (m, r)
    # float64 with an fp32 rounding after every operation the rule names
    xd, sd = x.double().numpy(), smooth.double().numpy()
    rcp = r32(1.0 / sd)  # fp32 reciprocal
    xs = r32(xd * rcp)  # fp32 multiply (not a division)
    xg = xs.reshape(m, ngroups, group)
    amax_g = np.abs(xg).max(-1)
    amax = amax_g.max(-1)
    s_row = r32(amax / 112.0)
    ratio = r32(np.where(amax[:, None] > 0, amax_g / np.where(amax[:, None] > 0, amax[:, None], 1.0), 0.0))
    s_int = np.clip(np.ceil(ratio * 16.0), 1, 16)
    scale = r32(s_row[:, None] * s_int)
    with np.errstate(divide="ignore"):
        inv = r32(np.where(scale > 0, 1.0 / np.where(scale > 0, scale, 1.0), 0.0))
    q = np.clip(np.rint(r32(xg * inv[..., None])), -8, 7)
    assert np.array_equal(xscale.double().numpy(), s_row)
    assert np.array_equal(xq.numpy().astype(np.int64), (q * s_int[..., None]).reshape(m, k).astype(np.int64))
    lr64 = xd @ pd.double().numpy()
    assert np.allclose(lr.double().numpy(), lr64, rtol=2**-7, atol=1e-3 * (np.abs(lr64).max() if r else 1.0))


def _gemm_operands(m: int, n: int, k: int, g: int, r: int, seed: int, dtype: torch.dtype):
    x = _randn(seed, m, k) * torch.exp(_randn(seed + 1, 1, k))
    w = _randn(seed + 2, n, k) * 0.05
    xq, xscale, _ = quantize_act_2l_ref(x.to(dtype), torch.ones(k, dtype=dtype), torch.zeros(k, 0, dtype=dtype), g)
    q, s_int, s_row = quantize_int4_2l(w, g)
    qweight, wscales = pack_int4(q), s_int.t().contiguous()
    lr = (_randn(seed + 3, m, r)).to(dtype)
    up = (_randn(seed + 4, n, r) * 0.1).to(dtype)
    bias = _randn(seed + 5, n).to(dtype)
    return xq, xscale, qweight, wscales, s_row, lr, up, bias


@SETTINGS
@given(
    m=st.integers(1, 9),
    n=st.integers(1, 9),
    ngroups=st.integers(1, 4),
    group=GROUPS,
    r=st.integers(0, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_gemm_2l_integer_part_exact_and_epilogue_order(m: int, n: int, ngroups: int, group: int, r: int, seed: int) -> None:
    k = ngroups * group
    xq, xscale, qweight, wscales, wchannel, lr, up, bias = _gemm_operands(m, n, k, group, r, seed, torch.float32)
    w8 = weight_operand_2l(qweight, wscales, group)
    # exact integer part against int64
    acc64 = xq.long() @ w8.long().t()
    assert torch.equal(int_dot_exact(xq, w8).long(), acc64)
    # without branch and bias the output is exactly (fp32(acc) * wchannel[n]) * xscale[m] in fp32
    empty_m, empty_n = torch.zeros(m, 0), torch.zeros(n, 0)
    y0 = w4a4_gemm_2l_ref(xq, xscale, qweight, wscales, wchannel, empty_m, empty_n, None, group)
    acc32 = acc64.numpy().astype(np.float32)
    expect = (acc32 * wchannel.numpy()[None, :]).astype(np.float32) * xscale.numpy()[:, None]
    assert y0.dtype == torch.float32 and np.array_equal(y0.numpy(), expect.astype(np.float32))
    # the whole output against a float64 computation of the dequantized operands
    y = w4a4_gemm_2l_ref(xq, xscale, qweight, wscales, wchannel, lr, up, bias, group)
    x_dq = xq.double() * xscale.double().unsqueeze(1)
    w_dq = w8.double() * wchannel.double().unsqueeze(1)
    y64 = x_dq @ w_dq.t() + lr.double() @ up.double().t() + bias.double()
    mag = (x_dq.abs() @ w_dq.abs().t()) + lr.double().abs() @ up.double().abs().t() + bias.double().abs()
    assert bool(((y.double() - y64).abs() <= 8 * 2.0**-24 * mag + 1e-30).all())


def test_gemm_2l_16bit_output_rounds_once() -> None:
    m, n, k, g, r = 6, 11, 256, 64, 8
    xq, xscale, qweight, wscales, wchannel, lr, up, bias = _gemm_operands(m, n, k, g, r, 9, torch.bfloat16)
    y = w4a4_gemm_2l_ref(xq, xscale, qweight, wscales, wchannel, lr, up, bias, g)
    assert y.dtype == torch.bfloat16
    y32 = w4a4_gemm_2l_ref(xq, xscale, qweight, wscales, wchannel, lr.float(), up.float(), bias.float(), g)
    assert torch.equal(y, y32.to(torch.bfloat16))


def test_gemm_2l_rejects_bad_dtypes_and_long_k() -> None:
    m, n, k, g = 2, 3, 128, 64
    xq, xscale, qweight, wscales, wchannel, lr, up, bias = _gemm_operands(m, n, k, g, 0, 1, torch.bfloat16)
    args = [xq, xscale, qweight, wscales, wchannel, lr, up, bias, g]
    for i, name, bad in [
        (3, "wscales", wscales.to(torch.bfloat16)),
        (4, "wchannel", wchannel.to(torch.bfloat16)),
        (1, "xscale", xscale.half()),
        (0, "xq", xq.to(torch.int16)),
    ]:
        bad_args = list(args)
        bad_args[i] = bad
        with pytest.raises(ValueError, match=rf"w4a4_gemm_2l: {name} has dtype"):
            w4a4_gemm_2l_ref(*bad_args)
    kk = MAX_K_2L + 64
    long = [
        torch.zeros(1, kk, dtype=torch.int8), torch.ones(1), torch.zeros(1, kk // 2, dtype=torch.int8),
        torch.ones(kk // 64, 1, dtype=torch.uint8), torch.ones(1), torch.zeros(1, 0), torch.zeros(1, 0), None, 64,
    ]
    with pytest.raises(ValueError, match=f"K={kk} exceeds 65536.*modules_to_not_convert"):
        w4a4_gemm_2l_ref(*long)
    with pytest.raises(ValueError, match=f"K={kk} exceeds 65536"):
        ops.w4a4_gemm_2l(*long)


def test_custom_ops_pass_opcheck() -> None:
    """Schemas, fake (meta) implementations and dispatch agree (what torch.compile relies on)."""
    m, n, k, g, r = 5, 16, 128, 32, 4
    x = _randn(1, m, k).to(torch.bfloat16)
    smooth = (torch.rand(k) + 0.5).to(torch.bfloat16)
    pd = _randn(2, k, r).to(torch.bfloat16)
    torch.library.opcheck(ops.quantize_act_2l, (x, smooth, pd, g))
    xq, xscale, lr = ops.quantize_act_2l(x, smooth, pd, g)
    q, s_int, s_row = quantize_int4_2l(_randn(3, n, k), g)
    up = _randn(4, n, r).to(torch.bfloat16)
    for bias in (None, _randn(5, n).to(torch.bfloat16)):
        torch.library.opcheck(ops.w4a4_gemm_2l, (xq, xscale, pack_int4(q), s_int.t().contiguous(), s_row, lr, up, bias, g))
        args = (xq, xscale, pack_int4(q), s_int.t().contiguous(), s_row, lr, up, bias, g)
        fo = (xq, xscale, fragment_order(pack_int4(q)), *args[3:])
        torch.library.opcheck(ops.w4a4_gemm_2l_fo, fo)
        assert torch.equal(ops.w4a4_gemm_2l_fo(*fo), ops.w4a4_gemm_2l(*args))


# ----------------------------------------------------------------------------- the weight path


@pytest.mark.parametrize("group", [32, 64, 128])
def test_weight_search_is_valid_and_never_worse_than_the_plain_rule(group: int) -> None:
    w = _randn(7, 48, 512) * torch.exp(_randn(8, 1, 512))
    w[3, :group] *= 50  # an outlier group
    w[5] = 0.0  # a zero row
    plain = quantize_weight_2l(w, group, search=False)
    assert all(torch.equal(a, b) for a, b in zip(plain, quantize_int4_2l(w, group)))
    q, s_int, s_row = quantize_weight_2l(w, group)
    assert q.dtype == torch.int8 and int(q.min()) >= -8 and int(q.max()) <= 7
    assert s_int.dtype == torch.uint8 and int(s_int.min()) >= 1 and int(s_int.max()) <= 16
    assert s_row.dtype == torch.float32 and s_row.shape == (48,)
    assert not q[5].any() and float(s_row[5]) == 0.0

    def row_err(parts):
        return (dequantize_int4_2l(*parts, group) - w).double().square().sum(-1)

    e_plain, e_search = row_err(plain), row_err((q, s_int, s_row))
    assert bool((e_search <= e_plain * (1 + 1e-6)).all())
    assert float(e_search.sum()) < 0.95 * float(e_plain.sum())  # the search buys something real
    print(f"g{group}: weight squared error plain {float(e_plain.sum()):.4e} -> searched {float(e_search.sum()):.4e}")
    # a first-level grid only adds candidates: never worse per row
    e_grid = row_err(quantize_weight_2l(w, group, row_grid=(1.0, 0.9, 0.8)))
    assert bool((e_grid <= e_search * (1 + 1e-6)).all())


def test_weight_search_in_row_chunks_equals_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    import svdquant_hf.algorithm.twolevel as twolevel

    w = _randn(11, 37, 256) * torch.exp(_randn(12, 1, 256))
    whole = quantize_weight_2l(w, 64)
    monkeypatch.setattr(twolevel, "_CHUNK_ELEMENTS", 3 * 256)  # 3 rows per chunk, a ragged last chunk
    chunked = quantize_weight_2l(w, 64)
    assert all(torch.equal(a, b) for a, b in zip(whole, chunked))


def _outlier_layer(n: int, k: int, seed: int, rows: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[:, torch.randperm(k, generator=g)[:4]] *= 15
    mix = torch.randn(k, k, generator=g) * 0.2 / k**0.5 + torch.eye(k)
    x = torch.randn(rows, k, generator=g) @ mix
    x[:, torch.randperm(k, generator=g)[:6]] *= 30
    return w, x


def _residual_error(qw, w: torch.Tensor, group: int) -> torch.Tensor:
    """W_smoothed - L - dequant(residual): what the quantized residual misses, [N, K] fp64."""
    ws = w.double() * qw.smooth_factor.double()
    deq = weight_operand_2l(qw.qweight, qw.wscales, group).double() * qw.wchannel.double().unsqueeze(1)
    return ws - lowrank_weight_smoothed(qw.proj_down, qw.proj_up, qw.smooth_factor).double() - deq


def test_gptq_and_refinement_work_with_int4_2l() -> None:
    w, x = _outlier_layer(64, 256, seed=4, rows=1024)
    absmax = x.abs().amax(0)
    plain = quantize_weight(w, SVDQuantOptions(rank=16, quant_format="int4_2l"), torch.float32, absmax, alpha=0.5)
    gptq = quantize_weight(
        w, SVDQuantOptions(rank=16, quant_format="int4_2l", gptq=True), torch.float32, absmax, 0.5, x.t() @ x
    )
    for qw in (plain, gptq):
        assert qw.wscales.dtype == torch.uint8 and 1 <= int(qw.wscales.min()) and int(qw.wscales.max()) <= 16
        assert qw.wchannel.dtype == torch.float32 and qw.wchannel.shape == (64,)
    assert torch.equal(plain.smooth_factor, gptq.smooth_factor) and torch.equal(plain.proj_up, gptq.proj_up)
    # GPTQ's objective: the residual's output error on the (smoothed) calibration inputs
    xs = x.double() / plain.smooth_factor.double()
    e_plain = float((xs @ _residual_error(plain, w, 64).t()).square().sum())
    e_gptq = float((xs @ _residual_error(gptq, w, 64).t()).square().sum())
    assert e_gptq < 0.9 * e_plain, (e_plain, e_gptq)  # int4 gains about as much here (0.83-0.87)
    # refinement minimises || W_s - L - dequant(residual) ||: never larger than without it
    refined = quantize_weight(w, SVDQuantOptions(rank=16, quant_format="int4_2l", refine_iters=2), torch.float32, absmax, 0.5)
    r_plain = float(torch.linalg.matrix_norm(_residual_error(plain, w, 64)))
    r_refined = float(torch.linalg.matrix_norm(_residual_error(refined, w, 64)))
    assert r_refined <= r_plain * (1 + 1e-9)
    print(f"int4_2l: GPTQ objective plain {e_plain:.4e} -> gptq {e_gptq:.4e}; weight error plain {r_plain:.4f} -> "
          f"refined {r_refined:.4f}")


# ----------------------------------------------------------------------------- SVDQuantLinear


def _random_layer(k: int, n: int, r: int, g: int, dtype: torch.dtype, seed: int) -> SVDQuantLinear:
    gen = torch.Generator().manual_seed(seed)
    mod = SVDQuantLinear(k, n, bias=True, rank=r, group_size=g, quant_format="int4_2l", dtype=dtype)
    mod.qweight.copy_(pack_int4(torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8)))
    mod.wscales.copy_(torch.randint(1, 17, (k // g, n), generator=gen, dtype=torch.uint8))
    mod.wchannel.copy_(torch.rand(n, generator=gen) * 0.01 + 1e-3)
    mod.smooth_factor.copy_((torch.rand(k, generator=gen) * 3 + 0.2).to(dtype))
    mod.proj_down.copy_((torch.randn(k, r, generator=gen) * 0.1).to(dtype))
    mod.proj_up.copy_((torch.randn(n, r, generator=gen) * 0.1).to(dtype))
    mod.bias.data.copy_(torch.randn(n, generator=gen).to(dtype))
    return mod


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(3, 5, 192, 33, 64, 8), (1, 7, 128, 40, 32, 0), (2, 1, 256, 17, 128, 32)])
def test_layer_forward_is_the_two_ops_and_the_formula(dtype: torch.dtype, shape: tuple) -> None:
    b, t, k, n, g, r = shape
    mod = _random_layer(k, n, r, g, dtype, seed=k + n + r)
    assert "W4A4 int4_2l g" in repr(mod)
    x = torch.randn(b, t, k) * 2
    y = mod(x)
    assert y.shape == (b, t, n) and y.dtype == x.dtype
    x2 = x.reshape(-1, k).to(dtype)
    xq, xscale, lr = quantize_act_2l_ref(x2, mod.smooth_factor, mod.proj_down, g)
    ops_y = w4a4_gemm_2l_ref(xq, xscale, mod.qweight, mod.wscales, mod.wchannel, lr, mod.proj_up, mod.bias, g)
    assert torch.equal(y, ops_y.reshape(b, t, n).float())
    # fp64 formula: sum over ALL of K of xq * w8 (no per-group promotion), scales once
    w8 = unpack_int4(mod.qweight).long() * mod.wscales.t().long().repeat_interleave(g, -1)
    main = (xq.double() @ w8.double().t()) * mod.wchannel.double() * xscale.double().unsqueeze(1)
    ref = main + lr.double() @ mod.proj_up.double().t() + mod.bias.double()
    eps = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    assert bool(((y.reshape(-1, n).double() - ref).abs() <= eps * ref.abs() + 1e-5 * float(ref.abs().max())).all())


def test_weight_only_int4_2l_is_w4a16() -> None:
    mod = _random_layer(128, 24, 8, 32, torch.bfloat16, seed=1)
    mod.weight_only = True
    x = torch.randn(5, 128).to(torch.bfloat16)
    y = mod(x)
    w = weight_operand_2l(mod.qweight, mod.wscales, 32).double() * mod.wchannel.double().unsqueeze(1)
    lr = (x.float() @ mod.proj_down.float()).to(torch.bfloat16)
    ref = x.double() @ w.t() + lr.double() @ mod.proj_up.double().t() + mod.bias.double()
    assert "W4A16 int4_2l" in repr(mod)
    assert torch.allclose(y.double(), ref, rtol=2**-7, atol=1e-3 * float(ref.abs().max()))
    assert torch.equal(y, w4a16_2l_linear_ref(x, mod.qweight, mod.wscales, mod.wchannel, mod.proj_down,
                                              mod.proj_up, mod.bias, 32))


def test_casts_keep_uint8_and_fp32_buffers() -> None:
    mod = _random_layer(128, 16, 4, 64, torch.bfloat16, seed=2)
    before = {k: v.clone() for k, v in mod.state_dict().items()}
    x = torch.randn(3, 128)
    y0 = mod(x)
    for cast in (lambda m: m.half(), lambda m: m.to(torch.float32), lambda m: m.to(torch.float16), lambda m: m.double()):
        cast(mod)
        for k, v in mod.state_dict().items():
            assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
    assert torch.equal(mod(x), y0)
    with torch.device("meta"):
        empty = SVDQuantLinear(128, 16, quant_format="int4_2l")
    empty.to_empty(device="cpu")
    assert empty.wscales.dtype == torch.uint8 and empty.wchannel.dtype == torch.float32
    assert empty.wscales.shape == (2, 16) and empty.wchannel.shape == (16,)


def test_int4_2l_layer_error_close_to_int4_g64() -> None:
    """The same outlier layer through each format, calibrated smoothing (alpha 0.5), rank 16."""
    errs = {}
    for fmt, g in (("int4", 64), ("int4_2l", 64), ("int4", 128)):
        es = []
        for seed in (1, 2, 3):
            w, x = _outlier_layer(96, 512, seed=seed)
            opts = SVDQuantOptions(rank=16, group_size=g, quant_format=fmt)
            bias = torch.randn(96) * 0.1
            qw = quantize_weight(w, opts, torch.bfloat16, x[:128].abs().amax(0), alpha=0.5)
            mod = SVDQuantLinear.from_quantized(qw, bias, opts, torch.bfloat16)
            xe = x[128:]
            ref = xe @ w.t() + bias
            es.append(float((mod(xe).float() - ref).square().sum() / ref.square().sum()))
        errs[f"{fmt} g{g}"] = sum(es) / len(es)
    print("relative squared output error:", {k: f"{v:.3e}" for k, v in errs.items()})
    assert errs["int4_2l g64"] < 1.5 * errs["int4 g64"], errs


def test_layers_wider_than_the_int32_bound_are_refused_or_skipped() -> None:
    from torch import nn

    from svdquant_hf.algorithm import QuantizationError
    from svdquant_hf.quantizers.common import skip_reason

    opts = SVDQuantOptions(quant_format="int4_2l", rank=0)
    wide = torch.empty(8, MAX_K_2L + 64, device="meta")
    with pytest.raises(QuantizationError, match=r"'wide': in_features=65600 exceeds 65536.*quant_format='int4'"):
        quantize_weight(wide, opts, torch.bfloat16, name="wide")
    lin = nn.Linear(MAX_K_2L + 64, 8, device="meta")
    assert "in_features=65600 exceeds 65536" in skip_reason("wide", lin, opts)
    assert skip_reason("wide", lin, SVDQuantOptions(rank=0)) is None  # int4 has no such bound

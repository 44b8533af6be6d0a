"""The fused quantizer for K <= 3072 in CTA pairs (set_quantize_act_2l_fused(3), Hopper; perf-notes v2.50): two CTAs
take each 8-row block, each computing half of lr's columns and quantizing half of the rows, x read from DRAM once.
Outputs are poisoned first; xq and xscale must be the reference's bits (and the per-row kernel's), lr within 16-bit
rounding of the fp32 reference."""
from __future__ import annotations

import pytest
import torch

from svdquant_hf.ops.reference import quantize_act_2l_ref

from test_kernels import _rel, ext  # noqa: F401  (ext: the fixture)
from test_kernels_2l import _acts, _fused_quant, _quantize, hopper, no_lr_chain  # noqa: F401
from test_quantize_cols import check_graph_capture_and_extreme_rows

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.usefixtures("no_lr_chain"),
]


def _check(hopper, M, K, R, gs, dtype=torch.bfloat16, seed=0):  # noqa: F811
    x, smooth, pd = _acts(M, K, R, dtype, seed=seed or M + K + gs + R)
    with _fused_quant(hopper, 3):
        assert hopper.quantize_act_2l_fused_applies(M, K, R, gs)
        xq, xs, lr = _quantize(hopper, x, smooth, pd, gs)
        grid = hopper.quantize_act_2l_fused_last_grid()
    assert grid == 2 * min((M + 7) // 8, torch.cuda.get_device_properties(0).multi_processor_count // 2), grid
    rq, rs, rl = quantize_act_2l_ref(x, smooth, pd, gs)
    assert torch.equal(xs, rs), "per-token scales differ"
    assert torch.equal(xq, rq), f"{(xq != rq).sum().item()} activation bytes differ"
    assert lr.shape == (M, R) and _rel(lr, rl) < 1e-2
    return xq, xs, lr


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gs", [32, 64, 128])
@pytest.mark.parametrize("M,K,R", [(1, 3072, 32), (7, 3072, 32), (255, 3072, 32), (4097, 3072, 32), (33, 3072, 16),
                                   (300, 1536, 32), (129, 768, 32), (17, 256, 32), (1000, 1152, 16), (90, 2432, 32),
                                   (4608, 3072, 32)])
def test_pairs_match_reference_and_per_row_kernel(hopper, dtype, gs, M, K, R):
    """Bits of the reference at awkward M (a last block of 1-7 rows, more blocks than pairs), FLUX.1's K = 3072 and
    smaller K (units a row not a multiple of 4: 1152 / 2432), every group size, ranks 16 and 32; the per-row kernel's
    bits too."""
    if K % gs:
        pytest.skip("K is not a multiple of the group")
    threads, mma_warps, smem = hopper.quantize_act_2l_pairs_shape(M, K, R, gs)
    assert threads == -(-4 * (K // 64) // 32) * 32 + 32 * mma_warps + 32 <= 512 and 1 <= mma_warps <= 8
    assert smem <= 227 * 1024
    xq, xs, lr = _check(hopper, M, K, R, gs, dtype)
    with _fused_quant(hopper, 0):
        pq, ps, pl = _quantize(hopper, *_acts(M, K, R, dtype, seed=M + K + gs + R), gs)
    assert torch.equal(pq, xq) and torch.equal(ps, xs) and _rel(lr, pl) < 1e-2


def test_pairs_shape_rule(hopper):
    """K up to 3072 (two 8 x K stages, K x R/2 of proj_down and 4 rows of staged xq fit 227 KB), multiples of 64, ranks
    16 and 32 only; elsewhere mode 3 leaves the call to the per-row pair."""
    shape = hopper.quantize_act_2l_pairs_shape
    assert shape(4608, 3072, 32, 64) == (192 + 8 * 32 + 32, 8, 228208)
    for K, R in [(3136, 32), (12288, 32), (3072, 64), (3072, 48), (3000, 32), (3072, 0)]:
        assert shape(4608, K, R, 64) == (0, 0, 0), (K, R)
    x, smooth, pd = _acts(64, 12288, 32, torch.bfloat16, seed=1)
    with _fused_quant(hopper, 3):
        assert not hopper.quantize_act_2l_fused_applies(64, 12288, 32, 64)
        xq, xs, _ = _quantize(hopper, x, smooth, pd, 64)  # the per-row pair
    rq, rs, _ = quantize_act_2l_ref(x, smooth, pd, 64)
    assert torch.equal(xq, rq) and torch.equal(xs, rs)


def test_pairs_graph_capture_and_extreme_rows(hopper):
    """Captured in a CUDA graph and replayed on new inputs; rows of huge, tiny and zero amax (the clamped path)."""
    check_graph_capture_and_extreme_rows(hopper, 3, 3072)


def test_pairs_few_ctas_walk_every_block(hopper):
    """One pair (cap_clusters = 1) takes all 75 blocks of 600 rows: both stages and both barrier phases wrap many
    times."""
    x, smooth, pd = _acts(600, 3072, 32, torch.bfloat16, seed=3)
    rq, rs, rl = quantize_act_2l_ref(x, smooth, pd, 64)
    before = hopper.quantize_act_2l_fused_mode()
    hopper.set_quantize_act_2l_fused(3, 0, 0, 1)
    try:
        xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
        assert hopper.quantize_act_2l_fused_last_grid() == 2
    finally:
        hopper.set_quantize_act_2l_fused(before, 0, 0, 0)
    assert torch.equal(xq, rq) and torch.equal(xs, rs) and _rel(lr, rl) < 1e-2


def test_auto_mode_takes_pairs_from_its_token_threshold(hopper):
    """Mode -1: the CTA pairs from set_quantize_act_2l_pairs_min_tokens tokens where they apply (K <= 3072, ranks
    16 / 32), the per-row pair below it and elsewhere; the same bits either way; a threshold below 1 is refused."""
    before = hopper.quantize_act_2l_pairs_min_tokens()
    try:
        hopper.set_quantize_act_2l_pairs_min_tokens(300)
        with _fused_quant(hopper, -1):
            assert hopper.quantize_act_2l_fused_mode() == -1
            assert not hopper.quantize_act_2l_fused_applies(299, 3072, 32, 64)
            assert hopper.quantize_act_2l_fused_applies(300, 3072, 32, 64)
            assert not hopper.quantize_act_2l_fused_applies(4608, 12288, 32, 64)
            assert not hopper.quantize_act_2l_fused_applies(4608, 3072, 64, 64)
            for M in (299, 301):
                x, smooth, pd = _acts(M, 3072, 32, torch.bfloat16, seed=M)
                xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
                rq, rs, rl = quantize_act_2l_ref(x, smooth, pd, 64)
                assert torch.equal(xq, rq) and torch.equal(xs, rs) and _rel(lr, rl) < 1e-2
        with pytest.raises(RuntimeError, match="set_quantize_act_2l_pairs_min_tokens"):
            hopper.set_quantize_act_2l_pairs_min_tokens(0)
        for bad in (-2, 4):
            with pytest.raises(RuntimeError, match="set_quantize_act_2l_fused: mode"):
                hopper.set_quantize_act_2l_fused(bad)
    finally:
        hopper.set_quantize_act_2l_pairs_min_tokens(before)


@pytest.mark.parametrize("mma_warps", [1, 3, 5])
def test_pairs_fewer_mma_warps_and_stamps_keep_the_bits(hopper, mma_warps):
    """The benchmarks' knobs: fewer mma warps (each takes more k-steps; 5 splits K = 1152's 72 unevenly) and the clock
    stamps leave the bits as they are, and the stamps of every CTA's first block are in program order."""
    M, K, R = 4097, 1152, 32  # at least 3 blocks a pair: the producer stamps too
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=mma_warps)
    rq, rs, rl = quantize_act_2l_ref(x, smooth, pd, 64)
    layout = hopper.quantize_act_2l_pairs_stamp_layout()
    blocks, steps = layout // 100, layout % 100
    hopper.set_quantize_act_2l_pairs_mma_warps(mma_warps)
    try:
        assert hopper.quantize_act_2l_pairs_shape(M, K, R, 64)[1] == mma_warps
        with _fused_quant(hopper, 3):
            _quantize(hopper, x, smooth, pd, 64)
            ctas = hopper.quantize_act_2l_fused_last_grid()
            buf = torch.zeros(ctas * blocks * steps, device="cuda", dtype=torch.int64)
            hopper.set_quantize_act_2l_pairs_stamps(buf.data_ptr())
            try:
                xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
                torch.cuda.synchronize()
            finally:
                hopper.set_quantize_act_2l_pairs_stamps(0)
    finally:
        hopper.set_quantize_act_2l_pairs_mma_warps(0)
    assert hopper.quantize_act_2l_pairs_shape(M, K, R, 64)[1] == 8
    assert torch.equal(xq, rq) and torch.equal(xs, rs) and _rel(lr, rl) < 1e-2
    first = buf.view(ctas, blocks, steps)[:, 0].cpu()
    for a, b in [(16, 17), (17, 0), (0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (7, 8), (8, 9), (9, 10),
                 (10, 11), (11, 12), (13, 14), (14, 15)]:
        assert bool((first[:, b] >= first[:, a]).all()), (a, b)
    assert bool((first[:, [0, 7, 13, 16]] > 0).all())
    with pytest.raises(RuntimeError, match="set_quantize_act_2l_pairs_mma_warps"):
        hopper.set_quantize_act_2l_pairs_mma_warps(17)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gs", [32, 64, 128])
@pytest.mark.parametrize("M,K,R", [(1, 3072, 32), (255, 3072, 32), (4097, 3072, 32), (33, 3072, 16), (1000, 1152, 16),
                                   (90, 2432, 32), (600, 192, 32)])
def test_pairs_v3_tma_proj_down_matches_reference(hopper, dtype, gs, M, K, R):
    """v3 (set_quantize_act_2l_pairs_pd_tma): proj_down's columns by TMA ([k][R/2], 32-byte swizzle at rank 32, none
    at 16) and ldmatrix.trans: the reference's bits and v2's, lr too."""
    if K % gs:
        pytest.skip("K is not a multiple of the group")
    before = hopper.quantize_act_2l_pairs_pd_tma()  # (SVDQ_TEST_PAIRS_V3 may have set it)
    try:
        hopper.set_quantize_act_2l_pairs_pd_tma(False)
        v2 = _check(hopper, M, K, R, gs, dtype)
        hopper.set_quantize_act_2l_pairs_pd_tma(True)
        assert hopper.quantize_act_2l_pairs_pd_tma()
        xq, xs, lr = _check(hopper, M, K, R, gs, dtype)
    finally:
        hopper.set_quantize_act_2l_pairs_pd_tma(before)
    assert torch.equal(xq, v2[0]) and torch.equal(xs, v2[1]) and torch.equal(lr, v2[2])  # the same mma, same order


@pytest.mark.parametrize("pd_tma", [False, True])
@pytest.mark.parametrize("gs", [32, 64, 128])
@pytest.mark.parametrize("M,K", [(1, 3072), (255, 3072), (4097, 3072), (90, 2432), (600, 192), (4608, 3072)])
def test_pairs_transposed_down_projection_matches_reference(hopper, pd_tma, gs, M, K):
    """set_quantize_act_2l_pairs_lr_t (rank 32): lr^T = proj_down^T x^T, one mma a k-step with no zero half, with
    either form of the resident proj_down: the reference's xq / xscale bits, lr within 16-bit rounding of the reference
    and of the untransposed product (the same products, summed by the mma in its own order)."""
    if K % gs:
        pytest.skip("K is not a multiple of the group")
    before = hopper.quantize_act_2l_pairs_pd_tma(), hopper.quantize_act_2l_pairs_lr_t()
    try:
        hopper.set_quantize_act_2l_pairs_pd_tma(pd_tma)
        hopper.set_quantize_act_2l_pairs_lr_t(False)
        _, _, lr_n = _check(hopper, M, K, 32, gs)
        hopper.set_quantize_act_2l_pairs_lr_t(True)
        assert hopper.quantize_act_2l_pairs_lr_t()
        _, _, lr_t = _check(hopper, M, K, 32, gs)
        _, _, lr16 = _check(hopper, M, K, 16, gs)  # rank 16 keeps the untransposed kernel
    finally:
        hopper.set_quantize_act_2l_pairs_pd_tma(before[0])
        hopper.set_quantize_act_2l_pairs_lr_t(before[1])
    assert _rel(lr_t, lr_n) < 1e-3 and lr16.shape == (M, 16)


@pytest.mark.parametrize("box3d,ahead", [(True, 0), (False, 2), (True, 3)])
@pytest.mark.parametrize("gs", [32, 64])
@pytest.mark.parametrize("M,K,R", [(1, 3072, 32), (255, 3072, 32), (4097, 3072, 32), (33, 3072, 16), (1000, 1152, 16),
                                   (600, 192, 32), (4608, 3072, 32)])
def test_pairs_loads_keep_the_bits(hopper, box3d, ahead, gs, M, K, R):  # noqa: F811
    """set_quantize_act_2l_pairs_loads (perf-notes v2.52): x's block as one 3-D TMA box ([unit][row][128 B], rows past M
    zero-filled) and / or blocks prefetched into L2 ahead of their loads: the reference's bits and the default loads'
    bits, lr too (the same data in the same shared-memory layout)."""
    before = hopper.quantize_act_2l_pairs_loads()
    try:
        hopper.set_quantize_act_2l_pairs_loads(False, 0)
        base = _check(hopper, M, K, R, gs)
        hopper.set_quantize_act_2l_pairs_loads(box3d, ahead)
        assert hopper.quantize_act_2l_pairs_loads() == (box3d, ahead)
        xq, xs, lr = _check(hopper, M, K, R, gs)
    finally:
        hopper.set_quantize_act_2l_pairs_loads(*before)
    assert torch.equal(xq, base[0]) and torch.equal(xs, base[1]) and torch.equal(lr, base[2])


@pytest.mark.parametrize("stores,warp_max", [(1, False), (2, False), (0, True), (1, True), (2, True)])
@pytest.mark.parametrize("gs", [32, 64, 128])
@pytest.mark.parametrize("M,K,R", [(1, 3072, 32), (255, 3072, 32), (4097, 3072, 32), (33, 3072, 16), (1000, 1152, 16),
                                   (90, 2432, 32), (600, 192, 32), (4608, 3072, 32)])
def test_pairs_units_keep_the_bits(hopper, stores, warp_max, gs, M, K, R):  # noqa: F811
    """set_quantize_act_2l_pairs_units (perf-notes v2.53): xq stored by each unit thread itself (1) or staged and copied
    out by all unit threads (2), and / or a row's maximum by shuffles within each warp (units a row not a multiple of
    8: 1152, 2432, 192; a last block of 1-7 rows): the reference's bits on poisoned outputs and the default units'
    bits, lr too; then, with a store form and the shuffles, rows of huge, tiny and zero amax (the clamped path) and a
    CUDA graph's replay."""
    if K % gs:
        pytest.skip("K is not a multiple of the group")
    before = hopper.quantize_act_2l_pairs_units()
    try:
        hopper.set_quantize_act_2l_pairs_units(0, False)
        base = _check(hopper, M, K, R, gs)
        hopper.set_quantize_act_2l_pairs_units(stores, warp_max)
        assert hopper.quantize_act_2l_pairs_units() == (stores, warp_max)
        xq, xs, lr = _check(hopper, M, K, R, gs)
        if stores and warp_max and M == 255 and gs == 64:
            check_graph_capture_and_extreme_rows(hopper, 3, K)
    finally:
        hopper.set_quantize_act_2l_pairs_units(*before)
    assert torch.equal(xq, base[0]) and torch.equal(xs, base[1]) and torch.equal(lr, base[2])


@pytest.mark.parametrize("what,bad_args", [("loads", [(True, -1), (True, 9)]), ("units", [(-1, True), (3, True)])])
def test_pairs_forms_refuse_bad_values(hopper, what, bad_args):  # noqa: F811
    """A prefetch distance outside 0..8 blocks, a store form other than 0, 1 or 2: refused by the setter's name,
    leaving the form as it was."""
    setter, getter = getattr(hopper, f"set_quantize_act_2l_pairs_{what}"), getattr(hopper, f"quantize_act_2l_pairs_{what}")
    before = getter()
    for args in bad_args:
        with pytest.raises(RuntimeError, match=f"set_quantize_act_2l_pairs_{what}"):
            setter(*args)
    assert getter() == before

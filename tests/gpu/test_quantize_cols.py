"""The fused quantizer with threads on fixed columns (set_quantize_act_2l_fused(2), Hopper): x read once for the
quantization and the down projection, a cluster of C CTAs splitting K. Outputs are poisoned first; xq and xscale must
be the reference's bits (and the per-row kernel's), lr within 16-bit rounding of the fp32 reference."""
from __future__ import annotations

import contextlib

import pytest
import torch

from svdquant_hf.ops.reference import quantize_act_2l_ref

from test_kernels import _rel, ext  # noqa: F401  (ext: the fixture)
from test_kernels_2l import _acts, _check_graph_replay, _fused_quant, _quantize, hopper, no_lr_chain  # noqa: F401

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.usefixtures("no_lr_chain"),
]


def _check(hopper, M, K, R, gs, dtype=torch.bfloat16, cluster=0, seed=0):  # noqa: F811
    x, smooth, pd = _acts(M, K, R, dtype, seed=seed or M + K + gs + R)
    with _fused_quant(hopper, 2, cluster):
        assert hopper.quantize_act_2l_fused_mode() == 2 and hopper.quantize_act_2l_fused_applies(M, K, R, gs)
        xq, xs, lr = _quantize(hopper, x, smooth, pd, gs)
        grid = hopper.quantize_act_2l_fused_last_grid()
    C = hopper.quantize_act_2l_cols_shape(M, K, R, gs, cluster)[0]
    assert grid > 0 and grid % C == 0, f"the fixed-column kernel did not run (grid {grid}, C {C})"
    rq, rs, rl = quantize_act_2l_ref(x, smooth, pd, gs)
    assert torch.equal(xs, rs), "per-token scales differ"
    assert torch.equal(xq, rq), f"{(xq != rq).sum().item()} activation bytes differ"
    assert lr.shape == (M, R) and _rel(lr, rl) < 1e-2
    return xq, xs, lr


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gs", [32, 64, 128])
@pytest.mark.parametrize("M,K,R", [(1, 3072, 32), (7, 3072, 32), (255, 15360, 32), (4097, 3072, 32), (33, 12288, 32),
                                   (300, 12288, 16), (129, 3072, 64), (64, 768, 48), (17, 256, 32), (1000, 1536, 64),
                                   (200, 12288, 64), (90, 9216, 32), (600, 12288, 32)])
def test_cols_matches_reference_and_per_row_kernel(hopper, dtype, gs, M, K, R):
    """Bits of the reference at awkward M, FLUX.1's K (12288: 384 unit threads, one a 64-value unit; 15360 and rank 64
    at 12288: clusters of 16), every group size and rank; the per-row kernel's bits too."""
    C, threads, smem, mma_warps = hopper.quantize_act_2l_cols_shape(M, K, R, gs)
    if C == 0 or not _fits(hopper, M, K, R, gs):
        assert not (gs == 64 and K in (3072, 12288) and R <= 32), f"no shape for K={K} R={R}"
        pytest.skip(f"no fixed-column shape here (C={C}): the per-row kernel runs")
    unit_threads = -(-16 * (K // C // 64) // 32) * 32  # one a 64-value unit of the block's rows, whole warps
    assert K % C == 0 and threads == unit_threads + 32 * mma_warps + 32 <= 512 and smem <= 227 * 1024  # + producer
    assert 1 <= mma_warps <= 3
    xq, xs, lr = _check(hopper, M, K, R, gs, dtype)
    with _fused_quant(hopper, 0):
        pq, ps, pl = _quantize(hopper, *_acts(M, K, R, dtype, seed=M + K + gs + R), gs)
    assert torch.equal(pq, xq) and torch.equal(ps, xs) and _rel(lr, pl) < 1e-2


def _fits(hopper, M, K, R, gs, cluster=0):  # noqa: F811
    """Whether the fixed-column kernel takes this call on this GPU (a cluster of 16 may not be schedulable)."""
    with _fused_quant(hopper, 2, cluster):
        return hopper.quantize_act_2l_fused_applies(M, K, R, gs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [1, 255, 4097])
def test_cols_two_ctas_an_sm(hopper, dtype, M):
    """Clusters of 16 at 12288 x rank 32 (forced): one mma warp takes the down projection's 48 k-steps, so that a CTA
    needs 113 KB and 256 threads and two share an SM; the same bytes (where the GPU schedules such clusters)."""
    assert hopper.quantize_act_2l_cols_shape(M, 12288, 32, 64, 16)[3] == 1
    if not _fits(hopper, M, 12288, 32, 64, 16):
        pytest.skip("no cluster of 16 fits this GPU")
    _check(hopper, M, 12288, 32, 64, dtype, cluster=16)


@pytest.mark.parametrize("C", [4, 8, 16])
def test_cols_every_cluster_size(hopper, C):
    """Clusters of 4, 8 and 16 CTAs (16: non-portable, where the GPU schedules it) give the same bytes."""
    M, K, R = 150, 3072, 32
    assert hopper.quantize_act_2l_cols_shape(M, K, R, 64, C)[0] == C
    if C == 16 and not _fits(hopper, M, K, R, 64, C):
        pytest.skip("no cluster of 16 fits this GPU")
    _check(hopper, M, K, R, 64, cluster=C)


def test_cols_one_cluster_walks_every_block(hopper):
    """A single cluster (cap_clusters = 1) takes all 38 row blocks: both x stages, both barrier parities and their
    phases wrap many times."""
    x, smooth, pd = _acts(600, 12288, 32, torch.bfloat16, seed=3)
    rq, rs, rl = quantize_act_2l_ref(x, smooth, pd, 64)
    before = hopper.quantize_act_2l_fused_mode()
    hopper.set_quantize_act_2l_fused(2, 0, 0, 1)
    try:
        xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
        assert hopper.quantize_act_2l_fused_last_grid() == hopper.quantize_act_2l_cols_shape(600, 12288, 32, 64)[0]
    finally:
        hopper.set_quantize_act_2l_fused(before, 0, 0, 0)
    assert torch.equal(xq, rq) and torch.equal(xs, rs) and _rel(lr, rl) < 1e-2


def check_graph_capture_and_extreme_rows(hopper, mode, K):  # noqa: F811
    """A fused mode's quantizer at 300 x K captured in a CUDA graph and replayed on new inputs; then rows of huge, tiny
    and zero amax (the clamped path): the reference's bits."""
    x, smooth, pd = _acts(300, K, 32, torch.bfloat16, seed=5)
    with _fused_quant(hopper, mode):
        _check_graph_replay(hopper, x, smooth, pd, seed=6)
    x[5] = 1e-38
    x[6] = 0
    x[7, :100] = 1e37
    x[8, 3] = 1e-30
    with _fused_quant(hopper, mode):
        xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    rq, rs, _ = quantize_act_2l_ref(x, smooth, pd, 64)
    assert torch.equal(xs, rs) and torch.equal(xq, rq)


def test_cols_graph_capture_and_extreme_rows(hopper):
    """Captured in a CUDA graph and replayed on new inputs; rows of huge, tiny and zero amax (the clamped path)."""
    check_graph_capture_and_extreme_rows(hopper, 2, 12288)


def test_cols_shape_rule(hopper):
    """The rule: clusters of 8 where a slice fits (FLUX.1's K = 3072, 12288 at rank 32), 16 where it does not (15360),
    a thread for each 64-value unit of the block's 16 rows (whole warps), 1-3 mma warps after them (one for each
    16 k-steps of the slice) and a producer warp, within 512 threads; the shared memory within the H100's 227 KB, and
    within 113 KB (two CTAs an SM) where fewer mma warps get it there; no shape at ranks the kernel lacks."""
    shape = hopper.quantize_act_2l_cols_shape
    assert shape(4608, 3072, 32, 64) == (8, 96 + 32 + 32, 62272, 1)
    assert shape(4608, 12288, 32, 64) == (8, 384 + 3 * 32 + 32, 224832, 3)
    assert shape(4608, 15360, 32, 64) == (16, 256 + 3 * 32 + 32, 148672, 3)
    for R in (0, 8, 20, 128):
        assert shape(4608, 3072, R, 64)[0] == 0, R
    assert shape(4608, 12288, 32, 64, 4)[0] == 0  # a slice of 3072 does not fit
    # clusters of 16 at 12288 (slices of 768): one mma warp, so that two CTAs fit an SM (113 KB and 256 threads each)
    assert shape(4608, 12288, 32, 64, 16) == (16, 192 + 32 + 32, 114752, 1)


@pytest.mark.parametrize("M,K1,K2", [(255, 3072, 12288), (33, 1536, 1536), (100, 576, 1472), (100, 520, 1016)])
def test_cols_reads_the_concatenation_in_place(hopper, M, K1, K2):
    """quantize_act_2l_cat (FLUX.1's single blocks: the attention's 3072 columns beside the MLP's 12288) in the
    fixed-column kernel: the reference's bits of cat([x1, x2]), with the seam inside a slice (15360 at C = 16: slices
    of 960; 2048 at C = 8: slices of 256, the seam at 576) and on a slice's edge (3072 at C = 8). A seam inside a
    64-value unit (520) is left to the per-row path (the kernel's TMA boxes are whole units), with the same bits."""
    K = K1 + K2
    x, smooth, pd = _acts(M, K, 32, torch.bfloat16, seed=M + K1)
    C = hopper.quantize_act_2l_cols_shape(M, K, 32, 64)[0]
    if C == 0 or not _fits(hopper, M, K, 32, 64):
        pytest.skip("no schedulable cluster for this shape")
    before = hopper.quantize_act_2l_fused_mode()
    try:
        hopper.set_quantize_act_2l_fused(2, 0, 0, 2)
        _quantize(hopper, x[:32], smooth, pd, 64)  # two clusters
        assert hopper.quantize_act_2l_fused_last_grid() == 2 * C
        hopper.set_quantize_act_2l_fused(2, 0, 0, 1)  # one cluster: grid == C says this kernel took the call
        xq, xs, lr = hopper.quantize_act_2l_cat(x[:, :K1].contiguous(), x[:, K1:].contiguous(), smooth, pd, 64)
        assert hopper.quantize_act_2l_fused_last_grid() == (C if K1 % 64 == 0 else 2 * C)
    finally:
        hopper.set_quantize_act_2l_fused(before, 0, 0, 0)
    rq, rs, rl = quantize_act_2l_ref(x, smooth, pd, 64)
    assert torch.equal(xs, rs) and torch.equal(xq, rq)
    assert _rel(lr, rl) < 1e-2


@contextlib.contextmanager
def _tuning(hopper, stagger_cycles=0, stagger_phases=1, probe=0, mma_sets=0):  # noqa: F811
    """set_quantize_act_2l_cols_tuning for a block, the tuning before it restored after it."""
    before = hopper.quantize_act_2l_cols_tuning()
    hopper.set_quantize_act_2l_cols_tuning(stagger_cycles, stagger_phases, probe, mma_sets)
    try:
        yield
    finally:
        hopper.set_quantize_act_2l_cols_tuning(*before)


@pytest.mark.parametrize("tuning", [(3000, 2, 0, 0), (1000, 4, 0, 0), (0, 1, 0, 4), (2500, 3, 0, 4)])
@pytest.mark.parametrize("M,K,R", [(1000, 12288, 32), (4097, 3072, 32), (301, 15360, 16), (77, 3072, 64)])
def test_cols_tuning_keeps_the_bits(hopper, tuning, M, K, R):
    """The clusters' staggered starts and the four accumulator sets (rank <= 32; rank 64 ignores it) change only
    timing: xq and xscale stay the reference's bits, lr within 16-bit rounding; the tuning reads back."""
    with _tuning(hopper, *tuning):
        assert hopper.quantize_act_2l_cols_tuning() == tuning
        if not _fits(hopper, M, K, R, 64):
            pytest.skip("no schedulable cluster for this shape")
        _check(hopper, M, K, R, 64)
    assert hopper.quantize_act_2l_cols_tuning() == (0, 1, 0, 0)


def test_cols_store_probe_leaves_xq_unwritten(hopper):
    """probe 1 (a timing diagnostic) computes xq but stores (almost) none of it: whatever the output's memory held stays
    (not this input's xq), while xscale and lr are still written; bad tuning values are refused by name."""
    M, K, R = 600, 12288, 32
    if not _fits(hopper, M, K, R, 64):
        pytest.skip("no schedulable cluster for this shape")
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=11)
    rq, rs, rl = quantize_act_2l_ref(x, smooth, pd, 64)
    with _tuning(hopper, probe=1), _fused_quant(hopper, 2):
        torch.cuda.synchronize()  # no cached block left but the one _quantize poisons (else xq may land on a block
        torch.cuda.empty_cache()  # that held the reference's int8 values of this x, stores skipped or not)
        xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    assert (xq != rq).float().mean().item() > 0.5, "the probe wrote xq"
    assert torch.equal(xs, rs) and _rel(lr, rl) < 1e-2
    for bad in [(-1, 1, 0, 0), (0, 0, 0, 0), (0, 1, 2, 0), (0, 1, 0, 3)]:
        with pytest.raises(RuntimeError, match="set_quantize_act_2l_cols_tuning"):
            hopper.set_quantize_act_2l_cols_tuning(*bad)

"""CUDA kernels of the two-level INT4 format (int4_2l) against the reference ops.

quantize_act_2l runs on every CUDA GPU; the wgmma GEMM on Hopper (sm_90a) only (elsewhere the op
takes the exact int8 fallback, which these tests then check instead). Outputs are poisoned first.
"""
from __future__ import annotations

import contextlib
import itertools

import pytest
import torch

from svdquant_hf.formats.int4 import pack_int4
from svdquant_hf.ops import library
from svdquant_hf.ops.cuda import gemm_2l_kernel_usable
from svdquant_hf.ops.layout_2l import fragment_order
from svdquant_hf.ops.reference import quantize_act_2l_ref, w4a4_gemm_2l_ref, w8a4_gemm_2l_ref, weight_operand_2l

from test_kernels import AWKWARD_M, FLUX_SHAPES, _poison, _rel, ext  # noqa: F401  (ext: the fixture)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def hopper(ext):  # noqa: F811
    if not gemm_2l_kernel_usable(ext, torch.device("cuda")):
        pytest.skip("the int4_2l wgmma GEMM needs sm_90a (Hopper)")
    return ext


@pytest.fixture
def no_lr_chain(ext):  # noqa: F811
    """The chained down projection off for a test (its rule may have learned a proj_down address the test reuses, and
    it takes a few-token call before the side-stream, beside or fused paths are asked)."""
    before = ext.lr_chain()
    ext.set_lr_chain(0)
    yield
    ext.set_lr_chain(before)


@pytest.fixture
def three_warpgroups(hopper):
    """hopper with three consumer warpgroups on 192-token tiles forced for the test (the cost model's choice after)."""
    hopper.set_gemm_2l_rf_warpgroups(3, 192)
    yield hopper
    hopper.set_gemm_2l_rf_warpgroups(0, 0)


def _acts(M, K, R, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = (torch.randn(M, K, device="cuda", generator=g) * 2).to(dtype)
    x[:, torch.randint(0, K, (4,), device="cuda", generator=g)] *= 30  # outlier channels
    if M > 3:
        x[2] = 0  # an all-zero token
    smooth = (torch.rand(K, device="cuda", generator=g) * 3 + 0.25).to(dtype)
    pd = (torch.randn(K, R, device="cuda", generator=g) / K**0.5).to(dtype)
    return x, smooth, pd


def _weights(N, K, R, dtype, gs, seed, bias=True):
    g = torch.Generator(device="cuda").manual_seed(seed + 1)
    qweight = pack_int4(torch.randint(-8, 8, (N, K), device="cuda", generator=g, dtype=torch.int8))
    wscales = torch.randint(1, 17, (K // gs, N), device="cuda", generator=g, dtype=torch.uint8)
    wchannel = torch.rand(N, device="cuda", generator=g) * 1e-3 + 1e-5
    pu = (torch.randn(N, R, device="cuda", generator=g) / max(R, 1) ** 0.5).to(dtype)
    b = torch.randn(N, device="cuda", generator=g).to(dtype) if bias else None
    return qweight, wscales, wchannel, pu, b


def _quantize(ext, x, smooth, pd, gs=64):
    M, K = x.shape
    _poison(2 * M * K + 8 * M + 2 * M * pd.shape[1], 0x7F)  # 127 is not a q * s_int value
    return ext.quantize_act_2l(x, smooth, pd, gs)


@contextlib.contextmanager
def _forced_plan(ext, tile: int = 0, splits: int = 0, persistent: int | None = None,
                 warpgroups: tuple[int, int] | None = None):
    """Token tile and K split forced for a block (and the persistent kernels' mode, the register-fragment loop's
    warpgroups and their tile, where given); the plan, the persistent kernels' auto mode and the warpgroups' model
    after it."""
    ext.set_gemm_2l_tile_tokens(tile)
    ext.set_gemm_2l_splits(splits)
    if persistent is not None:
        ext.set_gemm_2l_persistent(persistent)
    if warpgroups is not None:
        ext.set_gemm_2l_rf_warpgroups(*warpgroups)
    try:
        yield
    finally:
        ext.set_gemm_2l_persistent(-1)
        ext.set_gemm_2l_splits(0)
        ext.set_gemm_2l_tile_tokens(0)
        ext.set_gemm_2l_rf_warpgroups(0, 0)


@contextlib.contextmanager
def _switched(setter, value, after):
    """setter(value) for a block, setter(after) after it, also when the block fails."""
    setter(value)
    try:
        yield
    finally:
        setter(after)


def _gemv_mode(ext, mode: int):
    """The few-token kernel (w4a4_gemv_2l.cu) forced for a block: 0 never (every M in the tile GEMM), m every M <= m."""
    return _switched(ext.set_gemv_2l_mode, mode, -1)


def _tile_gemm(ext):
    return _gemv_mode(ext, 0)


def _gemm(ext, xq, xs, qw, wsc, wch, lr, pu, b, gs):
    _poison(4 * xq.shape[0] * qw.shape[0], 0xFF)  # NaN in bf16/fp16
    return ext.w4a4_gemm_2l(xq, xs, qw, wsc, wch, lr, pu, b, gs)


def _gemm_fo(ext, xq, xs, qf, w, lr, gs=64):
    """The fragment-order GEMM (qf) with w = (wscales, wchannel, proj_up, bias), its output poisoned first."""
    wsc, wch, pu, b = w
    _poison(2 * xq.shape[0] * qf.shape[0], 0xFF)  # 0xFFFF: a NaN in bf16 and fp16
    y = ext.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, gs)
    assert y is not None, ext.last_error()
    return y


def _fo_problem(ext, M, K, N, dtype, act_seed, weight_seed, bias=True, R=32):
    """A fragment-order GEMM's inputs, the activations quantized: (xq, xscale, lr, qweight, its fragment order,
    (wscales, wchannel, proj_up, bias))."""
    x, smooth, pd = _acts(M, K, R, dtype, seed=act_seed)
    qw, wsc, wch, pu, b = _weights(N, K, R, dtype, 64, seed=weight_seed, bias=bias)
    qf = fragment_order(qw)
    xq, xs, lr = _quantize(ext, x, smooth, pd)
    return xq, xs, lr, qw, qf, (wsc, wch, pu, b)


def _late_gemm(ext, M, K, N, switch: str, reference):
    """The GEMM after the chained down projection (set_lr_chain(1): its first low-rank tile late) with
    set_gemm_2l_<switch>(True) for the call: (its output, reference(ext, xq, xs, qf, w, a copy of lr): the in-order GEMM,
    whether both the late path and the switched kernel ran)."""
    x, smooth, pd = _acts(M, K, 32, torch.bfloat16, seed=5 * M + K + N)
    qw, wsc, wch, pu, b = _weights(N, K, 32, torch.bfloat16, 64, seed=M + N)
    qf, w = fragment_order(qw), (wsc, wch, pu, b)
    count = getattr(ext, f"gemm_2l_{switch}_launches")
    with _switched(ext.set_lr_chain, 1, ext.lr_chain()), _switched(getattr(ext, f"set_gemm_2l_{switch}"), True,
                                                                    getattr(ext, f"gemm_2l_{switch}")()):
        n0, p0 = ext.gemm_2l_late_launches(), count()
        xq, xs, lr = _quantize(ext, x, smooth, pd)
        y = _gemm_fo(ext, xq, xs, qf, w, lr).clone()
        ran = ext.gemm_2l_late_launches() > n0 and count() > p0
    in_order = reference(ext, xq, xs, qf, w, lr.clone())
    torch.cuda.synchronize()
    return y, in_order, ran


def _late_or_skip(ext, M, K, N, switch: str, what: str):
    """_late_gemm with the in-order GEMM as the reference: (the switched GEMM's output, the reference); skips where the
    plan at that shape is not `what` taking the low-rank tile late."""
    y, in_order, ran = _late_gemm(ext, M, K, N, switch, lambda e, *args: _gemm_fo(e, *args).clone())
    if not ran:
        pytest.skip(f"the plan at {M} x {K} x {N} is not {what} taking lr late here")
    return y, in_order


def _switched_gemm(ext, switch: str, *args):
    """The fragment-order GEMM (_gemm_fo's arguments) with set_gemm_2l_<switch>(True) for the call (as before after it),
    a copy of its output, and how many launches took the switch's path (gemm_2l_<switch>_launches)."""
    count = getattr(ext, f"gemm_2l_{switch}_launches")
    n0 = count()
    with _switched(getattr(ext, f"set_gemm_2l_{switch}"), True, getattr(ext, f"gemm_2l_{switch}")()):
        y = _gemm_fo(ext, *args).clone()
    return y, count() - n0


def _graph_replayed(ext, switch: str, reference, seed: int, value=True, forced: bool = True):
    """The fragment-order GEMM (2000 x 1024 x 1536, bfloat16; forced: persistent on 224-token tiles, else the plan as
    set) warmed up and captured into a CUDA graph with set_gemm_2l_<switch>(value), then replayed into its NaN-filled
    output: (that output, reference(ext, xq, xs, qf, w, lr) computed before, the switched kernel's launches)."""
    xq, xs, lr, _, qf, w = _fo_problem(ext, 2000, 1024, 1536, torch.bfloat16, seed, seed + 1)
    wsc, wch, pu, b = w
    count = getattr(ext, f"gemm_2l_{switch}_launches")
    with _forced_plan(ext, 224, 1, persistent=1) if forced else contextlib.nullcontext():
        ref = reference(ext, xq, xs, qf, w, lr).clone()
        n0 = count()
        with _switched(getattr(ext, f"set_gemm_2l_{switch}"), value, getattr(ext, f"gemm_2l_{switch}")()):
            graph, y = _captured(lambda: ext.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64))
        launches = count() - n0
        y.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
    return y, ref, launches


def _stamped(ext, stamps, call):
    """call() with set_gemm_2l_tile_life(stamps) (off after it, also when it fails), synchronized: its result."""
    ext.set_gemm_2l_tile_life(stamps.data_ptr())
    try:
        out = call()
        torch.cuda.synchronize()
    finally:
        ext.set_gemm_2l_tile_life(0)
    return out


def _captured(call):
    """call() once on a side stream (a warm-up), then captured there into a CUDA graph: (the graph, its output)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        call()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            y = call()
    torch.cuda.current_stream().wait_stream(stream)
    return graph, y


def _lean(ext, on: bool):
    """The per-row quantizer's lean form (set_quantize_act_2l_lean, on by default) on or off for a block; the form
    before it restored after it."""
    return _switched(ext.set_quantize_act_2l_lean, on, ext.quantize_act_2l_lean())


@pytest.mark.parametrize("lean", [False, True], ids=["plain", "lean"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gs", [32, 64, 128])
@pytest.mark.parametrize("M,K", [(1, 256), (7, 3072), (255, 15360), (4097, 3072), (33, 12288), (64, 768),
                                 (5, 1152), (300, 2432), (3, 384), (17, 8320), (1, 31872)])
def test_quantize_act_2l_bit_exact(ext, dtype, gs, M, K, lean):
    """The per-row quantizer bit-exact against the reference; lean: its default form (scale reciprocals by table, no
    clamp where it cannot bind), plain: the form before it. K / 8 not a multiple of 32 V (PixArt's 1152, SD3.5 Large's
    2432, 384, 8320 persistent, 31872 with 512 threads): the block's last warp reaches past the row."""
    x, smooth, pd = _acts(M, K, 32, dtype, seed=M + K + gs)
    with _lean(ext, lean):
        xq, xs, lr = _quantize(ext, x, smooth, pd, gs)
    rq, rs, rl = quantize_act_2l_ref(x, smooth, pd, gs)
    assert torch.equal(xs, rs), "per-token scales differ"
    assert torch.equal(xq, rq), f"{(xq != rq).sum().item()} activation bytes differ"
    assert _rel(lr, rl) < 1e-2


@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("R", [16, 32, 48, 64, 96, 128, 80])
@pytest.mark.parametrize("M,K", [(1, 3072), (7, 256), (255, 15360), (256, 3072), (300, 12288), (512, 1280),
                                 (513, 3072), (97, 768)])
def test_quantize_act_2l_few_token_down_projection(ext, dtype, R, M, K, deep):
    """quantize_act_2l's down projection by our one kernel (sm_90a: M <= 512, K % 128 == 0, R 16 / 32 / 48 / 64 / 96 /
    128 with the limit set explicitly (wide); by default M <= 256, K <= 4096 and R <= 64; cuBLAS otherwise, e.g.
    R = 80, M = 513): lr written everywhere (poisoned first), within fp32 summation-order rounding of cuBLAS's lr (the
    limit at 0) and within 16-bit rounding of the fp32 reference; xq and xscale unchanged; with up to 8 stages in
    flight (set_lowrank_down_deep, opt-in) as well."""
    x, smooth, pd = _acts(M, K, R, dtype, seed=M + K + R + 61)
    limit = ext.lowrank_down_max_tokens()
    ext.set_lowrank_down_max_tokens(0)
    try:
        cq, cs, cl = _quantize(ext, x, smooth, pd, 64)
    finally:
        ext.set_lowrank_down_max_tokens(limit)
    assert ext.lowrank_down_max_tokens() == 256
    ext.set_lowrank_down_max_tokens(512, True)  # every K and R 96 / 128 too
    ext.set_lowrank_down_deep(deep)
    try:
        q, s, lr = _quantize(ext, x, smooth, pd, 64)
        torch.cuda.synchronize()
    finally:
        ext.set_lowrank_down_max_tokens(-1)  # the default
        ext.set_lowrank_down_deep(False)
    assert ext.lowrank_down_max_tokens() == 256
    assert lr.shape == (M, R) and torch.isfinite(lr).all(), "unwritten (poisoned) low-rank activations"
    assert torch.equal(q, cq) and torch.equal(s, cs)
    assert _rel(lr, cl) < 1e-3, f"off cuBLAS's down projection by {_rel(lr, cl):.2e}"
    assert _rel(lr, quantize_act_2l_ref(x, smooth, pd, 64)[2]) < 1e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("K", [256, 3072, 12288, 15360])
def test_quantize_act_2l_lean_at_the_ends_of_the_range(ext, dtype, K):
    """The lean quantizer on rows at the edges of its unclamped path: all zero, tiny (amax below 2^-100: the clamped
    path, subnormal scales), half the dtype's maximum (doubled in one column by the smoothing), a group at exactly k / 16
    of the row's absmax for every k (and next to it), a single nonzero value, and an ordinary row; bit-exact against
    the reference."""
    g = torch.Generator(device="cuda").manual_seed(K)
    big = torch.finfo(dtype).max
    rows = [torch.zeros(K), torch.randn(K, generator=g, device="cuda").cpu() * 1e-34,
            torch.randn(K, generator=g, device="cuda").cpu() * 1e-37,  # bf16: s_row = amax / 112 is subnormal
            torch.full((K,), big / 2) * torch.randn(K, generator=g, device="cuda").cpu().sign(),
            torch.randn(K, generator=g, device="cuda").cpu() * 1e3]
    steps = torch.zeros(K)
    for k in range(1, 17):
        steps[(k - 1) * 64 % K] = k  # group (k - 1) holds k: its s_int is exactly k (groups of 64)
    rows += [steps, steps * (1 + 2**-7), torch.zeros(K).index_fill_(0, torch.tensor([K // 3]), -3.0)]
    x = torch.stack(rows).to(dtype).cuda()
    smooth = torch.ones(K, device="cuda", dtype=dtype)
    smooth[-1] = 0.5  # x / smooth doubles the last column: still finite for the row at half the dtype's maximum
    pd = torch.randn(K, 16, device="cuda", dtype=dtype) / K**0.5
    rq, rs, _ = quantize_act_2l_ref(x, smooth, pd, 64)
    for lean in (False, True):
        with _lean(ext, lean):
            xq, xs, _ = _quantize(ext, x, smooth, pd, 64)
        assert torch.equal(xs, rs), f"lean={lean}: per-token scales differ"
        assert torch.equal(xq, rq), f"lean={lean}: {(xq != rq).sum().item()} activation bytes differ"


@pytest.mark.parametrize("lean", [False, True], ids=["plain", "lean"])
@pytest.mark.parametrize("persistent,max_ctas", [(1, 1), (1, 3), (1, 0), (0, 0)])
@pytest.mark.parametrize("M,K", [(1, 3072), (37, 15360), (300, 3072), (9, 24576), (130, 256), (1000, 12288),
                                 (41, 8320), (6, 2432)])
def test_quantize_act_2l_persistent_ring(ext, persistent, max_ctas, M, K, lean):
    """The per-row quantizer's persistent CTAs (rows streaming through a ring of 4 / 3 / 2 shared-memory slots by K,
    none for a CTA with one row) are bit-exact: one CTA walking every row (the ring wraps many times), three, as many
    as fit (persistent from K = 8192 on), and one CTA per row; the grid launched is what was asked for."""
    x, smooth, pd = _acts(M, K, 0, torch.float16 if M % 2 else torch.bfloat16, seed=M * 7 + K)
    ext.set_quantize_act_2l_persistent(persistent, max_ctas)
    try:
        with _lean(ext, lean):
            xq, xs, _ = _quantize(ext, x, smooth, pd, 64)
        ctas = ext.quantize_act_2l_last_ctas()
    finally:
        ext.set_quantize_act_2l_persistent(1, 0)
    rq, rs, _ = quantize_act_2l_ref(x, smooth, pd, 64)
    assert torch.equal(xs, rs), "per-token scales differ"
    assert torch.equal(xq, rq), f"{(xq != rq).sum().item()} activation bytes differ"
    if max_ctas:
        assert ctas == min(M, max_ctas)
    elif not persistent or K < 8192:
        assert ctas == M
    else:
        assert 1 <= ctas <= M
        if M == 1000:  # a 72 KB ring: at most 3 CTAs per SM, so fewer CTAs than rows
            assert ctas <= 3 * _sms() < M


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,K1,K2", [(1, 3072, 12288), (7, 8, 248), (300, 3072, 12288), (4608, 3072, 12288),
                                     (33, 128, 128), (5, 1024, 7168), (130, 3072, 3072), (9, 1152, 1280)])
def test_quantize_act_2l_cat_reads_the_concatenation_in_place(ext, dtype, M, K1, K2):
    """quantize_act_2l_cat(a, b) (FLUX single blocks' proj_out input): xq and xscale bit-identical to the quantizer
    on cat([a, b], 1) (one CTA per row below K = 8192, persistent CTAs with their ring from there), the low-rank
    activations within 16-bit rounding (two cuBLAS calls instead of one), every output written; the op the same."""
    x, smooth, pd = _acts(M, K1 + K2, 32, dtype, seed=M + K1)
    a, b = x[:, :K1].contiguous(), x[:, K1:].contiguous()
    rq, rs, rl = _quantize(ext, x, smooth, pd, 64)
    _poison(2 * M * (K1 + K2) + 8 * M + 64 * M, 0x7F)
    xq, xs, lr = ext.quantize_act_2l_cat(a, b, smooth, pd, 64)
    assert torch.equal(xs, rs) and torch.equal(xq, rq), f"{(xq != rq).sum().item()} activation bytes differ"
    assert _rel(lr, rl) < 1e-2
    oq, os_, ol = library.quantize_act_2l_cat(a, b, smooth, pd, 64)
    assert torch.equal(oq, rq) and torch.equal(os_, rs) and torch.equal(ol, lr)


@pytest.mark.parametrize("R", [0, 8, 20, 48, 64])
def test_quantize_act_2l_ranks(ext, R):
    x, smooth, pd = _acts(45, 1536, R, torch.bfloat16, seed=R)
    xq, xs, lr = _quantize(ext, x, smooth, pd, 64)
    rq, rs, rl = quantize_act_2l_ref(x, smooth, pd, 64)
    assert torch.equal(xq, rq) and torch.equal(xs, rs)
    assert lr.shape == (45, R) and (R == 0 or _rel(lr, rl) < 1e-2)


def test_quantize_act_2l_side_stream_overlap_and_graph_capture(ext):
    """The down projection runs on a side stream joined back: same results as in order, also when the call
    is captured in a CUDA graph and replayed on new inputs."""
    x, smooth, pd = _acts(300, 3072, 32, torch.bfloat16, seed=21)
    on = ext.quantize_act_2l(x, smooth, pd, 64)
    ext.set_quantize_act_2l_overlap(False)
    try:
        off = ext.quantize_act_2l(x, smooth, pd, 64)
    finally:
        ext.set_quantize_act_2l_overlap(True)
    assert all(torch.equal(a, b) for a, b in zip(on, off))
    _check_graph_replay(ext, x, smooth, pd, seed=22)


def _chunked(ext, n_bytes: int):
    return _switched(ext.set_quantize_act_2l_chunk_bytes, n_bytes, 0)


@pytest.mark.parametrize("cat", [False, True])
@pytest.mark.parametrize("M,K,rows", [(1000, 3072, 128), (4097, 1152, 384), (300, 15360, 128), (129, 2432, 128),
                                      (513, 12288, 256)])
def test_quantize_act_2l_in_row_chunks(ext, cat, M, K, rows):
    """set_quantize_act_2l_chunk_bytes: the quantizer and its side-stream down projection run in row chunks (the last
    one short; M = 1000 in runs of 128 rows takes our few-token down projection per run, the others cuBLAS's): xq and
    xscale bit-identical to one call, every row written (poisoned first), lr within fp32 summation-order rounding of
    cuBLAS's whole-M product; the cat form (FLUX's proj_out input) too; and captured in a CUDA graph, replayed on new
    inputs."""
    assert ext.quantize_act_2l_chunk_bytes() == 0, "off by default"
    x, smooth, pd = _acts(M, K, 32, torch.bfloat16, seed=M + K + 71)
    k1 = K // 5 // 64 * 64 if cat else 0
    a, b = x[:, :k1].contiguous(), x[:, k1:].contiguous()

    def call():
        _poison(2 * M * K + 8 * M + 64 * M, 0x7F)
        if cat:
            return ext.quantize_act_2l_cat(a, b, smooth, pd, 64)
        return ext.quantize_act_2l(x, smooth, pd, 64)

    whole = call()
    with _chunked(ext, rows * K * 2 + 100):  # rows per chunk: n_bytes // (2 K) rounded down to 128s
        parts = call()
        torch.cuda.synchronize()
        assert torch.equal(parts[0], whole[0]) and torch.equal(parts[1], whole[1])
        assert torch.isfinite(parts[2]).all() and _rel(parts[2], whole[2]) < 1e-3
        if not cat:
            _check_graph_replay(ext, x, smooth, pd, seed=M + 5)
    rq, rs, rl = quantize_act_2l_ref(x, smooth, pd, 64)
    assert torch.equal(parts[0], rq) and torch.equal(parts[1], rs) and _rel(parts[2], rl) < 1e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_quantize_act_2l_smooth_reciprocal_cached_per_tensor(ext, dtype):
    """1 / smooth is cached per smoothing-factor tensor: bit-identical to the launch per call, recomputed after an
    in-place change of the tensor and for a new tensor (same address reused), computed into the graph (not cached) on a
    miss during CUDA graph capture, read from the cache when a graph is captured on a hit."""
    x, smooth, pd = _acts(37, 3072, 32, dtype, seed=31)

    def uncached(s):
        ext.set_smooth_rcp_cache(False)
        try:
            return ext.quantize_act_2l(x, s, pd, 64)
        finally:
            ext.set_smooth_rcp_cache(True)

    def same(a, b):
        return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])

    first, again = _quantize(ext, x, smooth, pd, 64), _quantize(ext, x, smooth, pd, 64)  # miss, then hit
    assert same(first, again) and same(first, uncached(smooth))
    assert torch.equal(first[0], quantize_act_2l_ref(x, smooth, pd, 64)[0])
    smooth.mul_(1.75)  # in place: the version counter moves
    changed = _quantize(ext, x, smooth, pd, 64)
    assert same(changed, uncached(smooth)) and not torch.equal(changed[0], first[0])
    smooth.data = (smooth * 0.5).contiguous()  # new storage under the same tensor object
    assert same(_quantize(ext, x, smooth, pd, 64), uncached(smooth))
    for _ in range(3):  # new tensors, freed right after: an address reused must not hit a stale entry
        other = (torch.rand_like(smooth, dtype=torch.float32) * 2 + 0.5).to(dtype)
        assert same(_quantize(ext, x, other, pd, 64), uncached(other))
        del other
    with torch.inference_mode():  # an inference tensor (no version counter): computed per call, not cached
        inf = smooth * 1.25
        assert same(_quantize(ext, x, inf, pd, 64), uncached(inf))
        inf.mul_(0.5)
        assert same(_quantize(ext, x, inf, pd, 64), uncached(inf))
    fresh = smooth.clone()  # first seen during capture
    for s in (fresh, smooth):
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            if s is smooth:
                ext.quantize_act_2l(x, s, pd, 64)  # warm: a hit inside the capture
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            out = ext.quantize_act_2l(x, s, pd, 64)
        graph.replay()
        torch.cuda.synchronize()
        assert same(out, uncached(s))


def _check_graph_replay(ext, x, smooth, pd, seed):
    """quantize_act_2l captured in a CUDA graph (after a warm-up on a side stream), replayed on new inputs."""
    static_x = x.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        ext.quantize_act_2l(static_x, smooth, pd, 64)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ext.quantize_act_2l(static_x, smooth, pd, 64)
    x2 = _acts(*x.shape, pd.shape[1], x.dtype, seed=seed)[0]
    static_x.copy_(x2)
    graph.replay()
    torch.cuda.synchronize()
    ref = quantize_act_2l_ref(x2, smooth, pd, 64)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1]) and _rel(out[2], ref[2]) < 1e-2
    return x2, ref


@pytest.mark.parametrize("gs", [32, 64])
@pytest.mark.parametrize("M,K", [(5, 192), (130, 2240), (1, 64), (9, 16448)])
def test_quantize_act_2l_k_not_a_multiple_of_128(ext, gs, M, K):
    """K a multiple of the group only (SANA's 2240, 192, 64; 16448 = 257 x 64, persistent, 416 threads of 5 vectors):
    the kernel, bit-exact, through the op too."""
    x, smooth, pd = _acts(M, K, 16, torch.bfloat16, seed=K + gs)
    assert ext.quantize_act_2l_supported(K)
    xq, xs, _ = _quantize(ext, x, smooth, pd, gs)
    rq, rs, rl = quantize_act_2l_ref(x, smooth, pd, gs)
    assert torch.equal(xs, rs) and torch.equal(xq, rq), f"{(xq != rq).sum().item()} activation bytes differ"
    oq, os_, ol = library.quantize_act_2l(x, smooth, pd, gs)
    assert torch.equal(oq, rq) and torch.equal(os_, rs) and _rel(ol, rl) < 1e-2


def test_kernel_shape_rules_match_the_extension(ext):
    """ops/kernel_shapes.py (kernel_gaps, the dispatcher) says what the compiled quantizer says, K by K; and a layer
    kernel_gaps names on this GPU still gives the reference's bits."""
    from svdquant_hf import SVDQuantLinear, kernel_gaps
    from svdquant_hf.ops.kernel_shapes import quantizer_2l_takes

    for K in [*range(8, 4096, 8), *range(4096, 40000, 136), 32768, 32776]:
        assert quantizer_2l_takes(K, 32) == (bool(ext.quantize_act_2l_supported(K)) and K % 32 == 0), K
    layer = SVDQuantLinear(192, 128, rank=16, quant_format="int4_2l", device="cuda")  # K % 128 == 64
    x, smooth, pd = _acts(5, 192, 16, torch.bfloat16, seed=9)
    qw, wsc, wch, pu, b = _weights(128, 192, 16, torch.bfloat16, 64, seed=9)
    layer.qweight, layer.wscales, layer.wchannel, layer.smooth_factor = qw, wsc, wch, smooth
    layer.proj_down, layer.proj_up = pd, pu
    layer.bias.data.copy_(b)
    gaps = kernel_gaps(torch.nn.ModuleDict({"l": layer}))
    if gemm_2l_kernel_usable(ext, x.device):
        assert gaps == {"l": "features 192 x 128 are not multiples of 128: set_fragment_order(model) pads them to the "
                             "GEMM's tiles"}
    with torch.no_grad():
        y = layer(x)
    xq, xs, lr = quantize_act_2l_ref(x, smooth, pd, 64)
    assert _rel(y, w4a4_gemm_2l_ref(xq, xs, qw, wsc, wch, lr, pu, layer.bias, 64)) < 1e-2
    layer.set_fragment_order()
    assert kernel_gaps(torch.nn.ModuleDict({"l": layer})) == {}


@pytest.mark.parametrize("K, N, gs", [(2240, 2240, 64), (192, 200, 64), (1152, 4608 + 64, 32), (320, 384, 64)])
@pytest.mark.parametrize("M", [1, 7, 255, 1030])
def test_padded_fragment_order_layer_runs_the_kernels(hopper, monkeypatch, K, N, gs, M):
    """A layer whose K / N the GEMM's 128-wide tiles do not divide (SANA 1600M's 2240), padded by set_fragment_order:
    the Hopper kernels run (the reference GEMM is never called), the activations are quantized to the reference's
    bits, the output is the kernel's on the padded operands, sliced, and within bf16 rounding of the reference for
    the unpadded layer; every element written (poisoned first); eagerly and from a CUDA graph."""
    from svdquant_hf import SVDQuantLinear
    from svdquant_hf.ops import cuda as ops_cuda
    from svdquant_hf.ops.layout_2l import kernel_padded

    layer = SVDQuantLinear(K, N, rank=32, group_size=gs, quant_format="int4_2l", device="cuda")
    x, smooth, pd = _acts(M, K, 32, torch.bfloat16, seed=K + N + M)
    qw, wsc, wch, pu, b = _weights(N, K, 32, torch.bfloat16, gs, seed=K + N)
    layer.qweight, layer.wscales, layer.wchannel, layer.smooth_factor = qw, wsc, wch, smooth
    layer.proj_down, layer.proj_up = pd, pu
    layer.bias.data.copy_(b)
    assert layer.set_fragment_order()
    kp, np_ = layer.kernel_shape()
    assert (kp, np_) == (-(-K // 128) * 128, -(-N // 128) * 128) != (K, N)

    def no_reference(*args, **kwargs):
        raise AssertionError("the reference GEMM ran")

    def expected(x):
        xq, xs, lr = quantize_act_2l_ref(x, smooth, pd, gs)
        ref = w4a4_gemm_2l_ref(xq, xs, qw, wsc, wch, lr, pu, b, gs)
        kq, ks, lr = hopper.quantize_act_2l(x, smooth, pd, gs)  # lr: the kernels' down projection (fp32 sum order)
        assert torch.equal(kq, xq) and torch.equal(ks, xs)
        direct = hopper.w4a4_gemm_2l_fo(kernel_padded(xq, M, kp), xs, layer.qweight_fo, layer.wscales_kp,
                                        layer.wchannel_kp, lr, layer.proj_up_kp, layer.bias_kp, gs)[:, :N]
        return ref, direct

    monkeypatch.setattr(ops_cuda, "w4a4_gemm_2l_ref", no_reference)
    with torch.no_grad():
        _poison(4 * M * np_ + 2 * M * kp, 0x7F)
        y = layer(x)
        ref, direct = expected(x)
        assert y.shape == (M, N) and y.is_contiguous() and torch.isfinite(y).all()
        assert torch.equal(y, direct) and _rel(y, ref) < 1e-2
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            yg = layer(x)
        x.copy_(x.flip(0) * 0.5)
        g.replay()
        ref, direct = expected(x)
        assert torch.equal(yg, direct) and _rel(yg, ref) < 1e-2


def test_quantize_act_2l_unsupported_k_falls_back(ext):
    K = 33024  # 4128 vectors: more than 512 threads of 8
    x, smooth, pd = _acts(5, K, 16, torch.bfloat16, seed=3)
    assert not ext.quantize_act_2l_supported(K)
    out = library.quantize_act_2l(x, smooth, pd, 64)
    ref = quantize_act_2l_ref(x, smooth, pd, 64)
    assert all(torch.equal(a, b) for a, b in zip(out[:2], ref[:2]))


@contextlib.contextmanager
def _fused_quant(ext, mode: int, cluster: int = 0):
    """The fused quantizer on (1) or off (0) for a block, its cluster size forced (0: its cost model); the mode
    before it restored after it."""
    before = ext.quantize_act_2l_fused_mode()
    ext.set_quantize_act_2l_fused(mode, cluster)
    try:
        yield
    finally:
        ext.set_quantize_act_2l_fused(before, 0)


def _sms() -> int:
    return torch.cuda.get_device_properties(0).multi_processor_count


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gs", [32, 64, 128])
@pytest.mark.parametrize("M,K,R", [(1, 3072, 32), (7, 3072, 32), (255, 15360, 32), (4097, 3072, 32), (33, 12288, 32),
                                   (300, 12288, 16), (129, 3072, 64), (64, 768, 48), (17, 256, 32), (1000, 1536, 64)])
def test_quantize_act_2l_fused_matches_reference_and_per_row_kernel(hopper, dtype, gs, M, K, R):
    """The quantizer with the down projection fused (x read once, thread-block clusters): xq and xscale bit for
    bit those of the reference and of the per-row kernel, lr within 16-bit rounding of the fp32 reference."""
    C = hopper.quantize_act_2l_fused_shape(M, K, R, gs, _sms())[0]
    if gs == 64 or (gs == 32 and K != 15360):
        assert C > 0, f"no fused shape for M={M} K={K} R={R} G={gs}"
    if C == 0:
        pytest.skip("no fused shape: the per-row kernel runs (checked by test_quantize_act_2l_bit_exact)")
    x, smooth, pd = _acts(M, K, R, dtype, seed=M + K + gs + R)
    with _fused_quant(hopper, 1):
        xq, xs, lr = _quantize(hopper, x, smooth, pd, gs)
    rq, rs, rl = quantize_act_2l_ref(x, smooth, pd, gs)
    assert torch.equal(xs, rs), "per-token scales differ"
    assert torch.equal(xq, rq), f"{(xq != rq).sum().item()} activation bytes differ"
    assert lr.shape == (M, R) and _rel(lr, rl) < 1e-2
    with _fused_quant(hopper, 0):
        pq, ps, pl = _quantize(hopper, x, smooth, pd, gs)
    assert torch.equal(pq, xq) and torch.equal(ps, xs) and _rel(lr, pl) < 1e-2


@pytest.mark.parametrize("M,K,R", [(100, 3072, 32), (45, 6144, 32), (3, 1536, 64)])
def test_quantize_act_2l_fused_every_cluster_size(hopper, M, K, R):
    """Each cluster size with a shape (the row maxima and low-rank partials meet over 2 to 8 CTAs): same bytes."""
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=K + R)
    rq, rs, rl = quantize_act_2l_ref(x, smooth, pd, 64)
    ran = []
    for C in range(1, 9):
        with _fused_quant(hopper, 1, C):
            if hopper.quantize_act_2l_fused_shape(M, K, R, 64, _sms())[0] != C:
                continue
            xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
        ran.append(C)
        assert torch.equal(xq, rq) and torch.equal(xs, rs), f"cluster of {C}"
        assert _rel(lr, rl) < 1e-2, f"cluster of {C}"
    assert len(ran) >= 2, ran


def test_quantize_act_2l_fused_cost_model_and_limits(hopper):
    """Where the fused kernel applies: rank a multiple of 16 up to 64, a K slice per CTA (a multiple of 64) whose
    proj_down and one x stage fit in shared memory; FLUX.1's shapes all get one, with two stages at least where
    K <= 12288; elsewhere (rank 0, 8, 20, 128) the per-row kernel runs."""
    sms = _sms()
    for K in (3072, 12288, 15360):
        C, S, smem = hopper.quantize_act_2l_fused_shape(4608, K, 32, 64, sms)
        assert K % C == 0 and (K // C) % 64 == 0 and 2 <= C <= 8 and 1 <= S <= 4 and smem <= 227 * 1024, (K, C, S)
        assert K == 15360 or S >= 2, (K, C, S)
    for R in (0, 8, 20, 128):
        assert hopper.quantize_act_2l_fused_shape(4608, 3072, R, 64, sms)[0] == 0, R
    before = hopper.quantize_act_2l_fused_mode()
    with _fused_quant(hopper, 1 - before):
        assert hopper.quantize_act_2l_fused_mode() == 1 - before
    assert hopper.quantize_act_2l_fused_mode() == before


def test_quantize_act_2l_fused_probes_run_and_leave_the_kernel_exact(hopper):
    """The probe kernels (benchmarks/quantize_2l_sweep.py: no exchange, no down projection, a spinning wait) launch
    and finish at a multi-round shape; the fused kernel after them is exact again, also with a single cluster
    launched (cap_clusters = 1)."""
    x, smooth, pd = _acts(700, 3072, 32, torch.bfloat16, seed=9)
    rq, rs, rl = quantize_act_2l_ref(x, smooth, pd, 64)
    before = hopper.quantize_act_2l_fused_mode()
    for probe in (1, 2, 3, 4):
        hopper.set_quantize_act_2l_fused(1, 0, probe)
        try:
            xq, xs, _ = hopper.quantize_act_2l(x, smooth, pd, 64)
            torch.cuda.synchronize()
        finally:
            hopper.set_quantize_act_2l_fused(before, 0, 0)
        if probe in (2, 4):  # the exchange ran (4: the whole kernel): the row maxima, so the bytes, are right
            assert torch.equal(xq, rq) and torch.equal(xs, rs)
    with _fused_quant(hopper, 1):
        xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    assert torch.equal(xq, rq) and torch.equal(xs, rs) and _rel(lr, rl) < 1e-2
    hopper.set_quantize_act_2l_fused(1, 0, 0, 1)  # one cluster walks all 44 row blocks (parities, stages wrap)
    try:
        xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
        C = hopper.quantize_act_2l_fused_shape(700, 3072, 32, 64, _sms())[0]
        assert hopper.quantize_act_2l_fused_last_grid() == C
    finally:
        hopper.set_quantize_act_2l_fused(before, 0, 0, 0)
    assert torch.equal(xq, rq) and torch.equal(xs, rs) and _rel(lr, rl) < 1e-2


def test_quantize_act_2l_fused_graph_capture_and_unaligned_proj_down(hopper):
    """Captured in a CUDA graph and replayed on new inputs; a proj_down view that is not 16-byte aligned takes the
    per-row path with the same results."""
    x, smooth, pd = _acts(200, 3072, 32, torch.bfloat16, seed=5)
    with _fused_quant(hopper, 1):
        x2, ref = _check_graph_replay(hopper, x, smooth, pd, seed=6)
        wide = torch.empty(3072 * 32 + 1, device="cuda", dtype=torch.bfloat16)
        odd = wide[1:].view(3072, 32)
        odd.copy_(pd)
        assert odd.data_ptr() % 16 != 0
        got = hopper.quantize_act_2l(x2, smooth, odd, 64)
    assert torch.equal(got[0], ref[0]) and _rel(got[2], ref[2]) < 1e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gs", [32, 64, 128])
@pytest.mark.parametrize("M,K,N", [(1, 256, 128), (7, 3072, 384), (255, 1024, 256), (4097, 3072, 3072), (300, 15360, 128)])
def test_gemm_2l_integer_part_exact(hopper, dtype, gs, M, K, N):
    """No branch, no bias: y = round16((float(acc) * wchannel) * xscale) bit for bit."""
    x, smooth, pd = _acts(M, K, 0, dtype, seed=M + N)
    qw, wsc, wch, pu, _ = _weights(N, K, 0, dtype, gs, seed=K)
    xq, xs, lr = quantize_act_2l_ref(x, smooth, pd, gs)
    y = _gemm(hopper, xq, xs, qw, wsc, wch, lr, pu, None, gs)
    ref = w4a4_gemm_2l_ref(xq, xs, qw, wsc, wch, lr, pu, None, gs)
    assert torch.equal(y, ref), f"{(y != ref).sum().item()} of {y.numel()} outputs differ"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("R", [16, 32, 48])
@pytest.mark.parametrize("M", AWKWARD_M)
def test_gemm_2l_chain_awkward_m(hopper, dtype, R, M):
    K, N, gs = 1024, 384, 64
    x, smooth, pd = _acts(M, K, R, dtype, seed=M * 7 + R)
    qw, wsc, wch, pu, b = _weights(N, K, R, dtype, gs, seed=R)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, gs)
    y = _gemm(hopper, xq, xs, qw, wsc, wch, lr, pu, b, gs)
    ref = w4a4_gemm_2l_ref(*quantize_act_2l_ref(x, smooth, pd, gs)[:2], qw, wsc, wch, lr, pu, b, gs)
    assert torch.isfinite(y).all(), "unwritten (NaN-poisoned) or non-finite outputs"
    assert _rel(y, ref) < 1e-2


@pytest.mark.parametrize("bt", [64, 128, 224, 256])
def test_gemm_2l_every_token_tile(hopper, bt):
    assert bt in hopper.gemm_2l_tiles
    M, K, N, R, gs = 515, 2048, 512, 32, 128
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=bt)
    qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, gs, seed=bt)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, gs)
    hopper.set_gemm_2l_tile_tokens(bt)
    try:
        y = _gemm(hopper, xq, xs, qw, wsc, wch, lr, pu, b, gs)
    finally:
        hopper.set_gemm_2l_tile_tokens(0)
    ref = w4a4_gemm_2l_ref(xq, xs, qw, wsc, wch, lr, pu, b, gs)
    assert torch.isfinite(y).all()
    assert _rel(y, ref) < 1e-2


@pytest.mark.parametrize("splits", [2, 4, 8])
@pytest.mark.parametrize("bt", [64, 128, 224, 256])
@pytest.mark.parametrize(
    "M,K,N", [(1, 1024, 128), (7, 3072, 384), (255, 3072, 256), (300, 15360, 128), (513, 1536, 256)]
)
def test_gemm_2l_split_k_bit_identical(hopper, splits, bt, M, K, N):
    """The cluster K split sums exact int32 partials: bit-identical to the unsplit kernel, every element written."""
    R, gs = 32, 64
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=M + splits)
    qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, gs, seed=bt)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, gs)
    hopper.set_gemm_2l_tile_tokens(bt)
    try:
        hopper.set_gemm_2l_splits(1)
        y1 = _gemm(hopper, xq, xs, qw, wsc, wch, lr, pu, b, gs)
        hopper.set_gemm_2l_splits(splits)
        ys = _gemm(hopper, xq, xs, qw, wsc, wch, lr, pu, b, gs)
    finally:
        hopper.set_gemm_2l_splits(0)
        hopper.set_gemm_2l_tile_tokens(0)
    assert torch.isfinite(ys).all(), "unwritten (NaN-poisoned) outputs"
    assert torch.equal(ys, y1), f"{(ys != y1).sum().item()} of {ys.numel()} outputs differ"


def test_gemm_2l_plan_splits_small_m_only(hopper):
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert hopper.gemm_2l_plan(256, 3072, 3072, sms)[1] > 1  # 24 tiles: split K
    assert hopper.gemm_2l_plan(256, 3072, 12288, sms)[1] > 1
    for K, N in FLUX_SHAPES:
        assert hopper.gemm_2l_plan(4608, N, K, sms)[1] == 1  # full waves already


@pytest.mark.parametrize("K,N", FLUX_SHAPES)
@pytest.mark.parametrize("M", [256, 4608])
def test_gemm_2l_flux_shapes(hopper, K, N, M):
    x, smooth, pd = _acts(M, K, 32, torch.bfloat16, seed=K + N + M)
    qw, wsc, wch, pu, b = _weights(N, K, 32, torch.bfloat16, 64, seed=N)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    y = _gemm(hopper, xq, xs, qw, wsc, wch, lr, pu, b, 64)
    ref = w4a4_gemm_2l_ref(xq, xs, qw, wsc, wch, lr, pu, b, 64)
    assert torch.isfinite(y).all()
    assert _rel(y, ref) < 1e-2


@pytest.mark.parametrize("dtype,R,M,bias,K", [(torch.bfloat16, 32, 300, True, 3072), (torch.float16, 20, 1, False, 3072),
                                                (torch.bfloat16, 64, 4097, True, 3072), (torch.bfloat16, 32, 333, True, 2432),
                                                (torch.float16, 32, 77, False, 1152)])
def test_linear_2l_eager_matches_the_kernels_called_directly(hopper, dtype, R, M, bias, K):
    """SVDQuantLinear in eager mode (the ops, dispatched to the C++ kernels) = the extension's functions
    called directly, bit for bit (odd rank 20: padded to 32 in C++ there, in Python here); SD3.5 Large's K = 2432 and
    PixArt's 1152 in the kernels too (the quantizer's block reaching past the row), equal to the reference's bits."""
    from svdquant_hf import SVDQuantLinear
    from svdquant_hf.ops.cuda import _pad_rank16

    N, gs = 384, 64
    x, smooth, pd = _acts(M, K, R, dtype, seed=R + M)
    qw, wsc, wch, pu, b = _weights(N, K, R, dtype, gs, seed=R, bias=bias)
    layer = SVDQuantLinear(K, N, bias=bias, rank=R, quant_format="int4_2l", dtype=dtype, device="cuda")
    layer.qweight, layer.wscales, layer.wchannel, layer.smooth_factor = qw, wsc, wch, smooth
    layer.proj_down, layer.proj_up = pd, pu
    if bias:
        layer.bias.data.copy_(b)
    with torch.no_grad():
        y = layer(x)
    xq, xs, lr = hopper.quantize_act_2l(x, smooth, pd, gs)
    rq, rs, _ = quantize_act_2l_ref(x, smooth, pd, gs)
    assert torch.equal(xq, rq) and torch.equal(xs, rs)
    lr16, pu16 = _pad_rank16(lr, pu)
    assert torch.equal(y, hopper.w4a4_gemm_2l(xq, xs, qw, wsc, wch, lr16, pu16, layer.bias, gs))


def test_ops_2l_dispatch_pad_fallback_and_compile(ext):
    """Library ops on CUDA: odd rank (padded to 16), N not a multiple of 128 (exact int8 fallback),
    and torch.compile(fullgraph=True) of a function calling both ops."""
    for M, K, N, R in [(37, 512, 256, 20), (37, 512, 200, 32)]:
        x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=N + R)
        qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, 64, seed=R)

        def f(x):
            xq, xs, lr = library.quantize_act_2l(x, smooth, pd, 64)
            return library.w4a4_gemm_2l(xq, xs, qw, wsc, wch, lr, pu, b, 64)

        y = f(x)
        cpu = [t.cpu() if t is not None else None for t in (x, smooth, pd, qw, wsc, wch, pu, b)]
        xq_c, xs_c, lr_c = quantize_act_2l_ref(cpu[0], cpu[1], cpu[2], 64)
        ref = w4a4_gemm_2l_ref(xq_c, xs_c, cpu[3], cpu[4], cpu[5], lr_c, cpu[6], cpu[7], 64)
        assert _rel(y.cpu(), ref) < 1e-2
        yc = torch.compile(f, fullgraph=True)(x)
        assert _rel(yc.cpu(), ref) < 1e-2


def test_ops_2l_cpp_kernels_and_python_fallbacks(hopper):
    """Once the extension is loaded, the int4_2l ops' CUDA calls reach its C++ kernels (no Python in
    between); inputs those kernels do not take come back to the Python path, which raises clear errors
    (through the C++ kernel) and runs the reference."""
    from svdquant_hf.ops import cuda

    for op in ("svdquant::quantize_act_2l", "svdquant::w4a4_gemm_2l", "svdquant::w8a4_gemm_2l", "svdquant::w4a4_gemm_2l_fo"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), op
    M, K, N, gs = 300, 3072, 384, 64
    for R in (32, 20):  # 20: the C++ kernel pads the rank to 16
        x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=R + 7)
        qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, gs, seed=R)
        q_op = library.quantize_act_2l(x, smooth, pd, gs)
        q_py = cuda.quantize_act_2l_cuda(x, smooth, pd, gs)
        assert all(torch.equal(a, c) for a, c in zip(q_op, q_py))
        xq, xs, lr = q_op
        y_op = library.w4a4_gemm_2l(xq, xs, qw, wsc, wch, lr, pu, b, gs)
        assert torch.equal(y_op, cuda.w4a4_gemm_2l_cuda(xq, xs, qw, wsc, wch, lr, pu, b, gs))
        w8 = weight_operand_2l(qw, wsc, gs)
        assert torch.equal(library.w8a4_gemm_2l(xq, xs, w8, wch, lr, pu, b), y_op)
    # N = 200 (not a multiple of 128): the int8-weight op's C++ kernel hands over, the Python path runs the reference
    w8_200, wch200, pu200, b200 = w8[:200].contiguous(), wch[:200].contiguous(), pu[:200].contiguous(), b[:200].contiguous()
    y200 = library.w8a4_gemm_2l(xq, xs, w8_200, wch200, lr, pu200, b200)
    assert _rel(y200.cpu(), w8a4_gemm_2l_ref(*(t.cpu() for t in (xq, xs, w8_200, wch200, lr, pu200, b200)))) < 1e-2
    with pytest.raises(ValueError, match=r"w8a4_gemm_2l: w8 has shape"):
        library.w8a4_gemm_2l(xq, xs, w8[:, :-128], wch, lr, pu, b)
    # fp32 activations: the kernels do not take them; the Python path runs the reference
    x32 = x.float()
    out = library.quantize_act_2l(x32, smooth.float(), pd.float(), gs)
    ref = quantize_act_2l_ref(x32, smooth.float(), pd.float(), gs)
    assert all(torch.equal(a, c) for a, c in zip(out, ref))
    # malformed inputs: the Python path's ValueError surfaces through the C++ kernel, naming the tensor
    with pytest.raises(ValueError, match=r"w4a4_gemm_2l: wscales has shape"):
        library.w4a4_gemm_2l(xq, xs, qw, wsc[:-1], wch, lr, pu, b, gs)
    with pytest.raises(ValueError, match=r"quantize_act_2l: smooth has shape"):
        library.quantize_act_2l(x, smooth[:-1], pd, gs)


# --- the epilogue's output by TMA store (set_gemm_2l_tma_store: [token][64] tiles in shared memory, one TMA store)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bt", [64, 128, 224, 256])
@pytest.mark.parametrize("M,K,N,R", [(1, 256, 128, 32), (255, 1024, 384, 0), (300, 3072, 256, 256), (4097, 512, 128, 48)])
def test_gemm_2l_tma_store_bit_identical(hopper, dtype, bt, M, K, N, R):
    """The output written by TMA store equals the per-thread stores bit for bit, every element written (poisoned
    first), rows past M untouched; unsplit and split (which keeps the per-thread stores), the packed and the
    int8-weight kernels (both loops, not persistent), rank 256 (no room left: the per-thread stores); and the
    persistent kernels (which always store by TMA, where they apply: unsplit, packed rank <= 32, int8 rank <= 64)."""
    gs = 64
    x, smooth, pd = _acts(M, K, R, dtype, seed=M + bt + 3)
    qw, wsc, wch, pu, b = _weights(N, K, R, dtype, gs, seed=bt + R)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, gs)
    w8 = weight_operand_2l(qw, wsc, gs)
    hopper.set_gemm_2l_tile_tokens(bt)
    try:
        for splits in (1, 2):
            hopper.set_gemm_2l_splits(splits)
            hopper.set_gemm_2l_persistent(0)  # the plain kernel's two epilogue stores
            hopper.set_gemm_2l_tma_store(False)
            ref = _gemm(hopper, xq, xs, qw, wsc, wch, lr, pu, b, gs)
            hopper.set_gemm_2l_tma_store(True)
            y = _gemm(hopper, xq, xs, qw, wsc, wch, lr, pu, b, gs)
            assert torch.isfinite(y).all(), f"splits={splits}: unwritten (NaN-poisoned) outputs"
            assert torch.equal(y, ref), f"splits={splits}: {(y != ref).sum().item()} of {y.numel()} outputs differ"
            hopper.set_gemm_2l_persistent(1)
            y = _gemm(hopper, xq, xs, qw, wsc, wch, lr, pu, b, gs)
            assert torch.equal(y, ref), f"packed, persistent, splits={splits}"
            for producer, persistent in ((False, 0), (True, 0), (False, 1), (True, 1)):
                hopper.set_gemm_2l_w8_producer(producer)
                hopper.set_gemm_2l_persistent(persistent)
                _poison(4 * M * N, 0xFF)
                y8 = hopper.w8a4_gemm_2l(xq, xs, w8, wch, lr, pu, b)
                assert torch.equal(y8, ref), (f"int8 weights, producer={producer}, persistent={persistent}, "
                                              f"splits={splits}")
    finally:
        hopper.set_gemm_2l_tma_store(False)
        hopper.set_gemm_2l_w8_producer(False)
        hopper.set_gemm_2l_persistent(-1)
        hopper.set_gemm_2l_splits(0)
        hopper.set_gemm_2l_tile_tokens(0)


# --- weights stored widened (w8a4_gemm_2l: int8 q * s_int [N, K] by TMA straight into the wgmma A tiles)


@pytest.fixture(params=["shared_loop", "producer_warp", "persistent"])
def w8_loop(request, hopper):
    """The main loops of the int8-weight GEMM: the shared one and the producer warpgroup's (WS), both with the
    persistent kernel off (0; the default is auto), and the persistent kernel wherever it applies (1: unsplit plans
    with branch rank <= 64; the others fall back to the shared loop)."""
    hopper.set_gemm_2l_w8_producer(request.param == "producer_warp")
    hopper.set_gemm_2l_persistent(1 if request.param == "persistent" else 0)
    yield request.param
    hopper.set_gemm_2l_w8_producer(False)
    hopper.set_gemm_2l_persistent(-1)


def _w8_problem(hopper, M, K, N, R, act_seed, weight_seed):
    """Quantized bf16 activations and group-64 weights, packed and widened: (xq, xs, lr, qw, wsc, wch, pu, b, w8)."""
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=act_seed)
    qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, 64, seed=weight_seed)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    return xq, xs, lr, qw, wsc, wch, pu, b, weight_operand_2l(qw, wsc, 64)


def _w8_loop_matches_packed(hopper, bt, M, K, N, R, seed, switches, splits=0):
    """With `switches` ({name: value} for set_gemm_2l_<name>) set, the int8-weight GEMM equals the packed kernel (not
    persistent) bit for bit, every element written (poisoned first), over three launches; all switches and forced
    plans reset after."""
    gs = 64
    xq, xs, lr, qw, wsc, wch, pu, b, w8 = _w8_problem(hopper, M, K, N, R, M + bt + seed, bt + R + seed)
    hopper.set_gemm_2l_tile_tokens(bt)
    hopper.set_gemm_2l_splits(splits)
    try:
        hopper.set_gemm_2l_persistent(0)
        y4 = _gemm(hopper, xq, xs, qw, wsc, wch, lr, pu, b, gs)
        for name, value in switches.items():
            getattr(hopper, f"set_gemm_2l_{name}")(value)
        for _ in range(3):
            _poison(4 * M * N, 0xFF)
            y8 = hopper.w8a4_gemm_2l(xq, xs, w8, wch, lr, pu, b)
            assert torch.isfinite(y8).all(), "unwritten (NaN-poisoned) outputs"
            assert torch.equal(y8, y4), f"{(y8 != y4).sum().item()} of {y8.numel()} outputs differ"
    finally:
        hopper.set_gemm_2l_w8_producer(False)
        hopper.set_gemm_2l_persistent(-1)
        hopper.set_gemm_2l_splits(0)
        hopper.set_gemm_2l_tile_tokens(0)


@pytest.mark.parametrize("bt", [64, 128, 224, 256])
@pytest.mark.parametrize("M,K,N,R", [(1, 256, 128, 32), (97, 1024, 384, 0), (2000, 256, 3072, 64),
                                     (4097, 512, 1024, 32), (515, 2048, 768, 96)])
def test_gemm_2l_int8_weights_persistent_bit_identical(hopper, bt, M, K, N, R):
    """One CTA per SM walking tiles (216 and 152 tiles for 132 SMs at the two big shapes: several per CTA, the
    stage count running on across tiles); rank 96 (no room for its low-rank tile) and forced 256-token tiles
    (224 instead) take the other paths."""
    _w8_loop_matches_packed(hopper, bt, M, K, N, R, 19, {"persistent": 1}, splits=1)


def test_gemm_2l_persistent_mode_defaults_to_auto(hopper):
    """set_gemm_2l_persistent: -1 (auto) at import and after every test here; other values clamp to 1 / 0 / -1."""
    assert hopper.gemm_2l_persistent() == -1
    try:
        for mode, want in ((1, 1), (0, 0), (5, 1), (-3, -1)):
            hopper.set_gemm_2l_persistent(mode)
            assert hopper.gemm_2l_persistent() == want
    finally:
        hopper.set_gemm_2l_persistent(-1)


@pytest.mark.parametrize("bt", [64, 128, 224, 256])
@pytest.mark.parametrize("gs", [32, 64, 128])
@pytest.mark.parametrize("M,K,N,R", [(1, 256, 128, 32), (97, 1024, 384, 0), (2000, 256, 3072, 16),
                                     (4097, 512, 1024, 32), (515, 2048, 768, 64)])
def test_gemm_2l_packed_persistent_bit_identical(hopper, bt, gs, M, K, N, R):
    """The packed GEMM's persistent kernel (group 64, branch rank <= 32, unsplit) equals the non-persistent one bit
    for bit, every element written (poisoned first), over three launches (several tiles per CTA at the big shapes,
    the stage count running on across tiles); groups 32 and 128, rank 64 and forced 256-token tiles (224 instead)
    take the other paths."""
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=M + bt + gs + 29)
    qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, gs, seed=bt + R + 29)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, gs)
    with _forced_plan(hopper, bt, 1):
        hopper.set_gemm_2l_persistent(0)
        ref = _gemm(hopper, xq, xs, qw, wsc, wch, lr, pu, b, gs)
        assert torch.isfinite(ref).all(), "unwritten (NaN-poisoned) outputs, not persistent"
        hopper.set_gemm_2l_persistent(1)
        for _ in range(3):
            y = _gemm(hopper, xq, xs, qw, wsc, wch, lr, pu, b, gs)  # poisons first
            assert torch.isfinite(y).all(), "unwritten (NaN-poisoned) outputs"
            assert torch.equal(y, ref), f"{(y != ref).sum().item()} of {y.numel()} outputs differ"


def _fo_launches_match(hopper, ref, xq, xs, qf, wsc, wch, lr, pu, b):
    """Three launches of w4a4_gemm_2l_fo (group 64), the output poisoned before each: every element written and
    equal to `ref` bit for bit. Returns the last output."""
    for _ in range(3):
        _poison(4 * ref.numel(), 0xFF)
        y = hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64)
        assert y is not None, hopper.last_error()
        assert torch.isfinite(y).all(), "unwritten (NaN-poisoned) outputs"
        assert torch.equal(y, ref), f"{(y != ref).sum().item()} of {y.numel()} outputs differ"
    return y


@pytest.mark.parametrize("bt", [64, 128, 224, 256])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,K,N,R", [(1, 256, 128, 32), (97, 1024, 384, 0), (2000, 256, 3072, 16),
                                     (4097, 512, 1024, 32), (300, 1280, 896, 32), (4608, 3072, 3072, 32)])
def test_gemm_2l_fragment_order_register_loop_bit_identical(hopper, bt, dtype, M, K, N, R):
    """w4a4_gemm_2l_fo (weights in fragment order) through the persistent kernel's register-fragment loop equals the
    persistent shared-memory kernel on the canonical weights bit for bit, every element written (poisoned first),
    over three launches (several tiles per CTA at the big shapes: the warpgroups' turns run on across tiles), and
    the reference within bf16 / fp16 rounding."""
    x, smooth, pd = _acts(M, K, R, dtype, seed=M + bt + 31)
    qw, wsc, wch, pu, b = _weights(N, K, R, dtype, 64, seed=bt + R + 31, bias=R != 16)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    qf = fragment_order(qw)
    with _forced_plan(hopper, bt, 1):
        hopper.set_gemm_2l_persistent(1)
        ref = _gemm(hopper, xq, xs, qw, wsc, wch, lr, pu, b, 64)
        assert torch.isfinite(ref).all(), "unwritten (NaN-poisoned) outputs, shared-memory loop"
        y = _fo_launches_match(hopper, ref, xq, xs, qf, wsc, wch, lr, pu, b)
    want = w4a4_gemm_2l_ref(xq, xs, qw, wsc, wch, lr, pu, b, 64)
    assert _rel(y, want) < 1e-2


@pytest.mark.parametrize("bt", [128, 192])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,K,N,R", [(1, 256, 384, 32), (97, 1024, 384, 0), (2000, 256, 3072, 16),
                                     (4097, 512, 1152, 32), (300, 1280, 768, 32), (4608, 3072, 3072, 32),
                                     (256, 3072, 12288, 32)])
def test_gemm_2l_fragment_order_three_warpgroups_bit_identical(hopper, bt, dtype, M, K, N, R):
    """The register-fragment loop with three consumer warpgroups (192-row tiles, N % 192 == 0, turns of three)
    equals the canonical persistent kernel bit for bit, every element written (poisoned first), over three
    launches (several tiles per CTA at the big shapes), and the reference within bf16 / fp16 rounding."""
    x, smooth, pd = _acts(M, K, R, dtype, seed=M + bt + 37)
    qw, wsc, wch, pu, b = _weights(N, K, R, dtype, 64, seed=bt + R + 37, bias=R != 16)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    qf = fragment_order(qw)
    with _forced_plan(hopper, 128, 1):
        hopper.set_gemm_2l_persistent(1)
        ref = _gemm(hopper, xq, xs, qw, wsc, wch, lr, pu, b, 64)
        assert torch.isfinite(ref).all(), "unwritten (NaN-poisoned) outputs, canonical kernel"
        hopper.set_gemm_2l_rf_warpgroups(3, bt)
        assert hopper.gemm_2l_rf_warpgroups() == 3
        y = _fo_launches_match(hopper, ref, xq, xs, qf, wsc, wch, lr, pu, b)
    assert hopper.gemm_2l_rf_warpgroups() == 0
    want = w4a4_gemm_2l_ref(xq, xs, qw, wsc, wch, lr, pu, b, 64)
    assert _rel(y, want) < 1e-2


@pytest.mark.parametrize("M,K,N", [(4608, 3072, 3072), (4608, 15360, 3072), (256, 3072, 12288), (1, 3072, 3072),
                                   (4608, 3072, 1152), (1024, 3072, 640), (4096, 3072, 3072), (4096, 3072, 12288),
                                   (4250, 2432, 2432), (333, 9728, 2432), (4096, 1152, 4608), (4096, 4608, 1152)])
def test_gemm_2l_fragment_order_auto_warpgroups_bit_identical(hopper, M, K, N):
    """Default switches: whatever the cost model picks (two or three warpgroups, or a non-persistent plan; N = 640
    has no 192-row tiles) gives the canonical default kernel's outputs bit for bit."""
    R = 32
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=M + N + 41)
    qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, 64, seed=K + 41)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    ref = _gemm(hopper, xq, xs, qw, wsc, wch, lr, pu, b, 64)
    _poison(4 * M * N, 0xFF)
    y = hopper.w4a4_gemm_2l_fo(xq, xs, fragment_order(qw), wsc, wch, lr, pu, b, 64)
    assert y is not None, hopper.last_error()
    assert torch.isfinite(ref).all() and torch.isfinite(y).all(), "unwritten (NaN-poisoned) outputs"
    assert torch.equal(y, ref), f"{(y != ref).sum().item()} of {y.numel()} outputs differ"


@pytest.mark.parametrize("bt", [64, 128, 224, 256])
@pytest.mark.parametrize("splits", [2, 3, 5, 8])
@pytest.mark.parametrize("dtype,M,K,N,R", [(torch.bfloat16, 1, 1024, 128, 32), (torch.bfloat16, 97, 3072, 384, 0),
                                           (torch.bfloat16, 255, 12288, 3072, 32), (torch.float16, 300, 1280, 896, 16),
                                           (torch.bfloat16, 256, 3072, 3072, 64), (torch.float16, 513, 2048, 768, 32)])
def test_gemm_2l_fragment_order_split_register_loop_bit_identical(hopper, bt, splits, dtype, M, K, N, R):
    """The register-fragment loop with K split over a cluster of CTAs (set_gemm_2l_rf_splits: one tile per CTA,
    the int32 partials summed in distributed shared memory, each CTA storing its token octets) equals the unsplit
    loop at the same token tile bit for bit, every element written (poisoned first), over three launches; cluster
    sizes 2-8 (3 and 5: not powers of two), tiles of M past its end, rank 0, 16, 32 and 64 (the wide low-rank tile)."""
    x, smooth, pd = _acts(M, K, R, dtype, seed=M + bt + splits + 53)
    qw, wsc, wch, pu, b = _weights(N, K, R, dtype, 64, seed=bt + R + 53, bias=R != 16)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    qf = fragment_order(qw)
    with _forced_plan(hopper, bt, 1):
        hopper.set_gemm_2l_persistent(1)
        hopper.set_gemm_2l_rf_warpgroups(2, 0)
        _poison(4 * M * N, 0xFF)
        ref = hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64)
        assert torch.isfinite(ref).all(), "unwritten (NaN-poisoned) outputs, unsplit register-fragment loop"
        hopper.set_gemm_2l_rf_splits(splits)
        try:
            assert hopper.gemm_2l_rf_splits() == splits
            y = _fo_launches_match(hopper, ref, xq, xs, qf, wsc, wch, lr, pu, b)
        finally:
            hopper.set_gemm_2l_rf_splits(0)
    want = w4a4_gemm_2l_ref(xq, xs, qw, wsc, wch, lr, pu, b, 64)
    assert _rel(y, want) < 1e-2


@pytest.mark.parametrize("M,K,N,R", [(256, 3072, 3072, 32), (512, 3072, 3072, 32), (512, 3072, 9216, 32),
                                     (1024, 12288, 3072, 32), (1024, 15360, 3072, 32), (97, 3072, 3072, 64),
                                     (512, 12288, 3072, 32), (33, 768, 640, 16), (256, 12288, 3072, 32),
                                     (256, 15360, 3072, 32), (255, 12288, 3072, 64), (256, 3072, 12288, 32)])
def test_gemm_2l_fragment_order_rf_by_cost_bit_identical(hopper, M, K, N, R):
    """set_gemm_2l_rf_by_cost(True) (the default since v2.23): the register-fragment loop also where the plan splits K
    or under-fills the SMs, unsplit or split over a cluster, wherever its cost model says so (M = 256 / 512 / 1024);
    the canonical default kernel's outputs bit for bit, every output written; off, the same bits again."""
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=M + N + 47)
    qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, 64, seed=K + 47)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    ref = _gemm(hopper, xq, xs, qw, wsc, wch, lr, pu, b, 64)
    qf = fragment_order(qw)
    assert hopper.gemm_2l_rf_by_cost()
    _poison(4 * M * N, 0xFF)
    y = hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64)
    hopper.set_gemm_2l_rf_by_cost(False)
    try:
        _poison(4 * M * N, 0xFF)
        off = hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64)
    finally:
        hopper.set_gemm_2l_rf_by_cost(True)
    assert y is not None and off is not None, hopper.last_error()
    assert torch.equal(off, ref), f"off: {(off != ref).sum().item()} of {off.numel()} outputs differ"
    assert torch.isfinite(y).all(), "unwritten (NaN-poisoned) outputs"
    assert torch.equal(y, ref), f"{(y != ref).sum().item()} of {y.numel()} outputs differ"


def test_gemm_probes_run_and_leave_the_kernel_exact(hopper):
    """The register-fragment GEMM's epilogue probes (benchmarks/gemm_2l_ksweep.py --probes: without the low-rank mma,
    without the output's TMA store, without the epilogue; the low-rank branch by mma.sync; CTA barriers around the
    epilogue) launch and finish over several tiles per CTA; the no-low-rank probe gives the kernel's result without
    the branch (rank 0), the mma.sync one the kernel's within rounding, the barrier one exactly, and the kernel after
    them is exact. The probes exist in the two-warpgroup loop only, so it is forced while they run (since v2.25 the
    default picks three warpgroups at this shape, which ran the unprobed kernel)."""
    M, K, N, R = 4608, 768, 3072, 32
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=43)
    qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, 64, seed=43)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    qf = fragment_order(qw)
    ref = _gemm(hopper, xq, xs, qw, wsc, wch, lr, pu, b, 64)
    no_branch = _gemm(hopper, xq, xs, qw, wsc, wch, lr[:, :0], pu[:, :0], b, 64)
    hopper.set_gemm_2l_rf_warpgroups(2, 0)
    try:
        for probe in (1, 2, 3, 4, 5):
            hopper.set_gemm_2l_probe(probe)
            y = hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64)
            torch.cuda.synchronize()
            if probe == 1:
                assert torch.equal(y, no_branch)
            if probe == 4:  # the low-rank branch by mma.sync (the epilogue before v2.18): the same within rounding
                assert torch.isfinite(y).all() and _rel(y, ref) < 1e-3
            if probe == 5:  # the warpgroups meeting at CTA barriers around the epilogue (before v2.18): exact
                assert torch.equal(y, ref)
    finally:
        hopper.set_gemm_2l_probe(0)
        hopper.set_gemm_2l_rf_warpgroups(0, 0)
    y = hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64)
    assert torch.equal(y, ref) and not torch.equal(ref, no_branch)


def test_gemm_2l_rf_warpgroups_mode(hopper):
    """set_gemm_2l_rf_warpgroups: 0 (auto) by default; 1 (g.56), 2 and 3 kept, anything else back to auto."""
    assert hopper.gemm_2l_rf_warpgroups() == 0
    try:
        for cw, want in ((3, 3), (2, 2), (1, 1), (4, 0), (0, 0), (-1, 0)):
            hopper.set_gemm_2l_rf_warpgroups(cw, 192)
            assert hopper.gemm_2l_rf_warpgroups() == want
    finally:
        hopper.set_gemm_2l_rf_warpgroups(0, 0)


@pytest.mark.parametrize("M,K,N", [(512, 3072, 3072), (512, 3072, 12288), (1024, 3072, 9216), (4608, 12288, 3072),
                                   (4096, 3072, 9216)])
def test_gemm_2l_rf3_models_bit_identical(hopper, M, K, N):
    """set_gemm_2l_rf3_model: 1 by default (stages of 1100 / 1250 cycles), 0 the v2.24 fit (1290 / 1525); at shapes
    where the two choose different warpgroup counts, the same bits as the canonical default kernel, every output
    written."""
    assert hopper.gemm_2l_rf3_model() == 1 and list(hopper.gemm_2l_rf3_stage()) == [1100, 1250]
    R = 32
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=M + N + 53)
    qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, 64, seed=K + 53)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    ref = _gemm(hopper, xq, xs, qw, wsc, wch, lr, pu, b, 64)
    qf = fragment_order(qw)
    outs = []
    try:
        for model in (0, 1):
            hopper.set_gemm_2l_rf3_model(model)
            assert list(hopper.gemm_2l_rf3_stage()) == ([1290, 1525] if model == 0 else [1100, 1250])
            _poison(4 * M * N, 0xFF)
            outs.append(hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, 64))
    finally:
        hopper.set_gemm_2l_rf3_model(1)
    for model, y in enumerate(outs):
        assert y is not None, hopper.last_error()
        assert torch.equal(y, ref), f"model {model}: {(y != ref).sum().item()} of {y.numel()} outputs differ"


@pytest.mark.parametrize("gs", [32, 64, 128])
@pytest.mark.parametrize("M,K,N,R", [(1, 256, 128, 32), (97, 1024, 384, 64), (515, 2048, 768, 0), (2000, 512, 256, 96)])
def test_gemm_2l_fragment_order_every_kernel_bit_identical(hopper, gs, M, K, N, R):
    """Weights in fragment order give the canonical weights' outputs bit for bit in every kernel that can run them:
    each token tile, K splits 1 / 2 / 8 (the shared loop widening from fragment order into its A tiles), persistent
    or not (the register-fragment loop where it applies), groups 32 / 64 / 128, ranks 0-96."""
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=M + gs + R)
    qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, gs, seed=gs + R)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, gs)
    qf = fragment_order(qw)
    for bt, splits, persistent in itertools.product(hopper.gemm_2l_tiles, (1, 2, 8), (0, 1)):
        with _forced_plan(hopper, bt, splits):
            hopper.set_gemm_2l_persistent(persistent)
            ref = _gemm(hopper, xq, xs, qw, wsc, wch, lr, pu, b, gs)
            _poison(4 * M * N, 0xFF)
            y = hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, gs)
        assert y is not None, hopper.last_error()
        where = f"tile {bt}, splits {splits}, persistent {persistent}"
        assert torch.isfinite(ref).all() and torch.isfinite(y).all(), where
        assert torch.equal(y, ref), f"{where}: {(y != ref).sum().item()} of {y.numel()} outputs differ"


@pytest.mark.parametrize("M", [1, 300, 4608])
def test_linear_2l_fragment_order_same_outputs_compiled_too(hopper, M):
    """SVDQuantLinear.set_fragment_order on the GPU: the layer's outputs are bit-identical (eager and compiled, the
    op dispatched to the C++ kernel), the canonical bytes sit in host memory and the state dict is unchanged."""
    from svdquant_hf import SVDQuantLinear

    K, N, R, gs = 3072, 3072, 32, 64
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=M + 3)
    qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, gs, seed=M)
    layer = SVDQuantLinear(K, N, rank=R, quant_format="int4_2l", device="cuda")
    layer.qweight, layer.wscales, layer.wchannel, layer.smooth_factor = qw, wsc, wch, smooth
    layer.proj_down, layer.proj_up = pd, pu
    layer.bias.data.copy_(b)
    with torch.no_grad():
        before = layer(x)
        state = {k: v.clone() for k, v in layer.state_dict().items()}
        assert layer.set_fragment_order()
        assert layer.qweight.device.type == "cpu" and layer.qweight_fo.is_cuda
        assert torch.equal(layer(x), before)
        torch._dynamo.reset()
        assert torch.equal(torch.compile(layer, fullgraph=True)(x), before)
        torch._dynamo.reset()
    sd = layer.state_dict()
    assert all(torch.equal(sd[k].cpu(), v.cpu()) for k, v in state.items())


def test_enable_cuda_graphs_replays_the_forward(hopper):
    """svdquant_hf.enable_cuda_graphs on a two-layer int4_2l block: every call's outputs equal the eager forward's bit
    for bit (new inputs copied into the graph's buffers), one graph per input signature (token count, a scalar
    argument), earlier outputs are not overwritten by later replays, and disable_cuda_graphs restores the eager
    forward."""
    from svdquant_hf import SVDQuantLinear, disable_cuda_graphs, enable_cuda_graphs

    K, R, gs = 3072, 32, 64

    def layer(seed):
        _, smooth, pd = _acts(1, K, R, torch.bfloat16, seed=seed)
        qw, wsc, wch, pu, b = _weights(K, K, R, torch.bfloat16, gs, seed=seed)
        lin = SVDQuantLinear(K, K, rank=R, quant_format="int4_2l", device="cuda")
        lin.qweight, lin.wscales, lin.wchannel, lin.smooth_factor = qw, wsc, wch, smooth
        lin.proj_down, lin.proj_up = pd, pu
        lin.bias.data.copy_(b)
        return lin

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = layer(51), layer(52)

        def forward(self, x, scale: float, gate=None):
            h = torch.nn.functional.gelu(self.fc1(x), approximate="tanh")
            y = self.fc2(h) * scale
            return (y if gate is None else y * gate,)

    model = Block()
    xs = [torch.randn(m, K, device="cuda", dtype=torch.bfloat16) for m in (300, 300, 512)]
    with torch.no_grad():
        want = [model(x, 0.5)[0] for x in xs] + [model(xs[0], 0.25)[0]]
        assert enable_cuda_graphs(model) is model
        got = [model(x, 0.5)[0] for x in xs] + [model(xs[0], 0.25)[0]]
        for g, w in zip(got, want):
            assert torch.equal(g, w)
        assert len(model._svdquant_cuda_graphs.graphs) == 3  # 300 and 512 tokens at 0.5, 300 at 0.25
        disable_cuda_graphs(model)
        assert not hasattr(model, "_svdquant_cuda_graphs") and "forward" not in vars(model)
        assert torch.equal(model(xs[1], 0.5)[0], want[1])


@pytest.mark.parametrize("splits", [1, 2, 8])
@pytest.mark.parametrize("bt", [64, 128, 224, 256])
@pytest.mark.parametrize("M,K,N", [(1, 1024, 128), (33, 256, 384), (300, 15360, 128), (515, 2048, 512)])
def test_gemm_2l_int8_weights_bit_identical_every_tile_and_split(hopper, w8_loop, splits, bt, M, K, N):
    """The same exact int32 sums from the widened weights: bit-identical to the packed kernel with the branch and
    bias, for every token tile and K split (incl. CTAs with one stage and with none)."""
    gs = 64
    xq, xs, lr, qw, wsc, wch, pu, b, w8 = _w8_problem(hopper, M, K, N, 32, M + bt + splits + 7, bt + 7)
    hopper.set_gemm_2l_tile_tokens(bt)
    hopper.set_gemm_2l_splits(splits)
    try:
        y4 = _gemm(hopper, xq, xs, qw, wsc, wch, lr, pu, b, gs)
        _poison(4 * M * N, 0xFF)
        y8 = hopper.w8a4_gemm_2l(xq, xs, w8, wch, lr, pu, b)
    finally:
        hopper.set_gemm_2l_splits(0)
        hopper.set_gemm_2l_tile_tokens(0)
    assert torch.isfinite(y8).all(), "unwritten (NaN-poisoned) outputs"
    assert torch.equal(y8, y4), f"{(y8 != y4).sum().item()} of {y8.numel()} outputs differ"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gs", [32, 128])
def test_gemm_2l_int8_weights_integer_part_exact(hopper, w8_loop, dtype, gs):
    """No branch, no bias: y equals the reference bit for bit (K = 128: one stage; M = 4097: a partial tile)."""
    for M, K, N in [(4097, 3072, 3072), (7, 128, 256)]:
        x, smooth, pd = _acts(M, K, 0, dtype, seed=M + N + 8)
        qw, wsc, wch, pu, _ = _weights(N, K, 0, dtype, gs, seed=K + 8)
        xq, xs, lr = quantize_act_2l_ref(x, smooth, pd, gs)
        _poison(4 * M * N, 0xFF)
        y = hopper.w8a4_gemm_2l(xq, xs, weight_operand_2l(qw, wsc, gs), wch, lr, pu, None)
        ref = w4a4_gemm_2l_ref(xq, xs, qw, wsc, wch, lr, pu, None, gs)
        assert torch.equal(y, ref), f"M={M}: {(y != ref).sum().item()} of {y.numel()} outputs differ"


@pytest.mark.parametrize("K,N", FLUX_SHAPES)
def test_gemm_2l_int8_weights_flux_shapes(hopper, w8_loop, K, N):
    M = 4608
    x, smooth, pd = _acts(M, K, 32, torch.bfloat16, seed=K + N + 9)
    qw, wsc, wch, pu, b = _weights(N, K, 32, torch.bfloat16, 64, seed=N + 9)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, 64)
    y4 = _gemm(hopper, xq, xs, qw, wsc, wch, lr, pu, b, 64)
    y8 = hopper.w8a4_gemm_2l(xq, xs, weight_operand_2l(qw, wsc, 64), wch, lr, pu, b)
    assert torch.equal(y8, y4)


# --- the quantizer traced as torch ops under torch.compile (svdquant_hf.ops.set_trace_quantizer)


@pytest.mark.parametrize("M,K", [(1, 256), (255, 3072), (4097, 3072), (33, 15360)])
def test_traced_quantizer_compiled_by_inductor_matches_the_kernel(ext, M, K):
    """Inductor's code for the traced quantizer against the CUDA kernel: the same per-token scales and int8
    operand up to rare rounding-boundary flips (Triton's fp32 division may differ by an ulp), lr as cuBLAS."""
    from svdquant_hf.ops import quantize_act_2l_traced

    x, smooth, pd = _acts(M, K, 32, torch.bfloat16, seed=M + K + 11)
    kq, ks, kl = _quantize(ext, x, smooth, pd, 64)
    torch._dynamo.reset()
    tq, ts, tl = torch.compile(quantize_act_2l_traced, fullgraph=True)(x, smooth, pd, 64)
    assert torch.allclose(ts, ks, rtol=1e-6, atol=0)
    assert (tq != kq).float().mean().item() < 1e-3, f"{(tq != kq).sum().item()} of {tq.numel()} bytes differ"
    assert _rel(tl, kl) < 1e-2


# --- the raw extension on input its checks reject: None and a message, in a process that survives

_REJECTED = """
import torch
from svdquant_hf.ops import build
ext = build.load_extension()
x = torch.randn(4, 192, device="cuda", dtype=torch.bfloat16)
s = torch.ones(192, device="cuda", dtype=torch.bfloat16)
pd = torch.zeros(192, 16, device="cuda", dtype=torch.bfloat16)
big = torch.randn(2, 33024, device="cuda", dtype=torch.bfloat16)
big_s = torch.ones(33024, device="cuda", dtype=torch.bfloat16)
big_pd = torch.zeros(33024, 16, device="cuda", dtype=torch.bfloat16)
for args in [(x, s, pd, 128), (x, s[:-1], pd, 64), (big, big_s, big_pd, 64)]:
    out = ext.quantize_act_2l(*args)
    print("REJECTED", out is None or out[0] is None, ext.last_error())
"""


def test_raw_extension_rejects_bad_input_with_a_message(ext):  # noqa: F811
    """The checks' messages carry numbers (K, shapes): formatted without iostreams since a message with a number
    in it crashed the process on the lent H100 image. Run in a child process, so a crash fails this test only."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _REJECTED], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"the process died with {r.returncode}: {r.stderr[-800:]}"
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("REJECTED")]
    assert lines == ["REJECTED True svdquant quantize_act_2l: K=192 is not a multiple of group_size=128",
                     "REJECTED True svdquant quantize_act_2l: smooth must be [192]",
                     "REJECTED True svdquant quantize_act_2l: K=33024 not supported"], r.stdout


def test_int8_weights_with_packed_on_host_keep_outputs_and_free_gpu_memory(hopper):
    """set_int8_weights(packed_on_host=True): the layer's outputs stay bit-identical, its packed weights and
    scales sit in host memory (the GPU holds only the int8 copy), its state_dict still holds them, and turning
    the copy off brings them back to the GPU."""
    from svdquant_hf import SVDQuantLinear

    K, N, R, gs = 3072, 640, 32, 64
    x, smooth, pd = _acts(333, K, R, torch.bfloat16, seed=41)
    qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, gs, seed=41)
    layer = SVDQuantLinear(K, N, bias=True, rank=R, quant_format="int4_2l", dtype=torch.bfloat16, device="cuda")
    layer.qweight, layer.wscales, layer.wchannel, layer.smooth_factor = qw, wsc, wch, smooth
    layer.proj_down, layer.proj_up = pd, pu
    layer.bias.data.copy_(b)
    del qw, wsc
    with torch.no_grad():
        before = layer(x)
        state = {k: v.clone() for k, v in layer.state_dict().items()}
        assert layer.set_int8_weights(packed_on_host=True)
        assert layer.qweight.device.type == "cpu" and layer.wscales.device.type == "cpu"
        assert layer.qweight_i8.is_cuda and layer.proj_up.is_cuda
        assert torch.equal(layer(x), before)
        after = layer.state_dict()
        assert set(after) == set(state) and all(torch.equal(after[k].cpu(), v.cpu()) for k, v in state.items())
        assert layer.set_int8_weights() and layer.qweight.is_cuda and layer.wscales.is_cuda  # back, copy kept
        assert layer.set_int8_weights(packed_on_host=True) and layer.qweight.device.type == "cpu"
        assert not layer.set_int8_weights(False)
        assert layer.qweight.is_cuda and layer.wscales.is_cuda and not hasattr(layer, "qweight_i8")
        assert torch.equal(layer(x), before)


@pytest.mark.parametrize("R", [0, 20, 32])
def test_w8a4_op_equals_the_packed_op(hopper, R):
    """The torch op on widened weights (what SVDQuantLinear.set_int8_weights runs) against the packed op, through
    the dispatcher's CUDA paths, rank padding included: bit-identical."""
    M, K, N, gs = 777, 3072, 384, 64
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=R + 12)
    qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, gs, seed=R + 12)
    xq, xs, lr = library.quantize_act_2l(x, smooth, pd, gs)
    y4 = library.w4a4_gemm_2l(xq, xs, qw, wsc, wch, lr, pu, b, gs)
    y8 = library.w8a4_gemm_2l(xq, xs, weight_operand_2l(qw, wsc, gs), wch, lr, pu, b)
    assert torch.equal(y8, y4)


@pytest.mark.parametrize("M,K,N,R,P", [(1, 256, 128, 32, 0), (7, 512, 384, 16, 64), (255, 1024, 768, 32, 8),
                                       (1000, 3072, 1536, 32, 3072), (4097, 1024, 1152, 64, 128)])
def test_gemm_2l_fo_epilogue_gelu_and_prefix_every_kernel(hopper, M, K, N, R, P):
    """w4a4_gemm_2l_fo_ep in every kernel that runs fragment order (each token tile, K splits 1 / 2, persistent or
    not, three warpgroups where N allows): without activation the output's GEMM columns are the plain GEMM's bits and
    the prefix columns the prefix's; with GELU within 16-bit rounding of the reference (GELU on the fp32 result);
    every element written (poisoned first)."""
    from svdquant_hf.ops.reference import gemm_epilogue_ref

    gs = 64
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=M + N)
    qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, gs, seed=N + R)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, gs)
    qf = fragment_order(qw)
    prefix = torch.randn(M, P, device="cuda").to(torch.bfloat16) if P else None
    ref = gemm_epilogue_ref(w4a4_gemm_2l_ref(xq, xs, qw, wsc, wch, lr, pu, b, gs, fp32_out=True), torch.bfloat16, 1, prefix)
    plans = [(bt, s, p, 0) for bt, s, p in itertools.product(hopper.gemm_2l_tiles, (1, 2), (0, 1))]
    plans += [(0, 0, 1, 3)] if N % 192 == 0 else []
    for bt, splits, persistent, cw in plans:
        with _forced_plan(hopper, bt, splits):
            hopper.set_gemm_2l_persistent(persistent)
            if cw:
                hopper.set_gemm_2l_rf_warpgroups(cw, 0)
            plain = _gemm(hopper, xq, xs, qw, wsc, wch, lr, pu, b, gs)
            _poison(2 * M * (N + P) + 4096, 0xFF)
            y0 = hopper.w4a4_gemm_2l_fo_ep(xq, xs, qf, wsc, wch, lr, pu, b, gs, 0, prefix)
            _poison(2 * M * (N + P) + 4096, 0xFF)
            y1 = hopper.w4a4_gemm_2l_fo_ep(xq, xs, qf, wsc, wch, lr, pu, b, gs, 1, prefix)
        where = f"tile {bt}, splits {splits}, persistent {persistent}, warpgroups {cw or 'auto'}"
        assert y0 is not None and y1 is not None, hopper.last_error()
        assert y0.shape == (M, P + N) and torch.isfinite(y0).all() and torch.isfinite(y1).all(), where
        assert torch.equal(y0[:, P:], plain), where
        if P:
            assert torch.equal(y0[:, :P], prefix) and torch.equal(y1[:, :P], prefix), where
        torch.testing.assert_close(y1.float(), ref.float(), rtol=2**-7, atol=1e-3, msg=lambda m: f"{where}: {m}")


def test_gemm_2l_fo_epilogue_op_dispatch_and_fallbacks(hopper):
    """The dispatcher's op on CUDA: the C++ kernel for what it takes; a prefix it cannot write in place (P % 8 != 0)
    concatenated after it by the Python path, the same values; bad activation codes a clear error."""
    M, K, N, R, gs = 33, 512, 256, 32, 64
    x, smooth, pd = _acts(M, K, R, torch.bfloat16, seed=5)
    qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, gs, seed=6)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, gs)
    qf = fragment_order(qw)
    op = library.w4a4_gemm_2l_fo_ep
    gelu = op(xq, xs, qf, wsc, wch, lr, pu, b, gs, 1, None)
    for P in (8, 12):
        prefix = torch.randn(M, P, device="cuda").to(torch.bfloat16)
        y = op(xq, xs, qf, wsc, wch, lr, pu, b, gs, 1, prefix)
        assert torch.equal(y[:, :P], prefix) and torch.equal(y[:, P:], gelu), P
    with pytest.raises(ValueError, match="activation"):
        op(xq, xs, qf, wsc, wch, lr, pu, b, gs, 2, None)
    with torch.no_grad():
        torch._dynamo.reset()
        f = torch.compile(lambda *a: op(*a), fullgraph=True)
        assert torch.equal(f(xq, xs, qf, wsc, wch, lr, pu, b, gs, 1, None), gelu)
        torch._dynamo.reset()


@pytest.mark.parametrize("M,K,N", [(1, 256, 128), (300, 1024, 384), (4097, 512, 256)])
def test_gemm_2l_low_rank_activations_as_columns_of_a_wider_matrix(hopper, M, K, N):
    """The low-rank activations as a column block of a wider matrix (one quantizer call shared by several layers,
    svdquant_hf/shared_input.py) are read in place: the bits of a contiguous copy, in every token tile, persistent or
    not, split or not, canonical or fragment order, and through the epilogue op."""
    R, gs = 32, 64
    x, smooth, pd = _acts(M, K, 3 * R, torch.bfloat16, seed=M + 7)
    qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, gs, seed=5)
    xq, xs, lr_all = _quantize(hopper, x, smooth, pd, gs)
    qf = fragment_order(qw)
    for c in (1, 2):
        lr = lr_all[:, c * R : (c + 1) * R]
        assert M == 1 or not lr.is_contiguous()
        with _tile_gemm(hopper):
            ref = _gemm(hopper, xq, xs, qw, wsc, wch, lr.contiguous(), pu, b, gs)
            assert torch.equal(_gemm(hopper, xq, xs, qw, wsc, wch, lr, pu, b, gs), ref)
        few = _gemm(hopper, xq, xs, qw, wsc, wch, lr.contiguous(), pu, b, gs)  # the few-token kernel at M = 1
        assert torch.equal(_gemm(hopper, xq, xs, qw, wsc, wch, lr, pu, b, gs), few)
        for bt, splits, persistent in itertools.product(hopper.gemm_2l_tiles, (1, 2), (1, 0)):
            if persistent and splits > 1:
                continue
            with _forced_plan(hopper, bt, splits):
                hopper.set_gemm_2l_persistent(persistent)
                _poison(4 * M * N, 0xFF)
                y = hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, gs)
            assert y is not None, hopper.last_error()
            assert torch.equal(y, ref), f"tile {bt}, splits {splits}, persistent {persistent}: {(y != ref).sum()} differ"
        ep = hopper.w4a4_gemm_2l_fo_ep(xq, xs, qf, wsc, wch, lr, pu, b, gs, 1, None)
        assert torch.equal(ep, hopper.w4a4_gemm_2l_fo_ep(xq, xs, qf, wsc, wch, lr.contiguous(), pu, b, gs, 1, None))


@pytest.mark.parametrize("R", [48, 64])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,K,N", [(1, 256, 128), (300, 1024, 384), (4097, 512, 256), (4000, 640, 384)])
def test_gemm_2l_fragment_order_wide_low_rank_tile_bit_identical(hopper, R, dtype, M, K, N):
    """set_gemm_2l_rf_wide_lr: branches of rank 33-64 (a LoRA on the rank-32 branch) in the register-fragment loop's
    instances with a 64-wide low-rank tile (the default), each token tile, persistent forced, pipelined within each
    warpgroup (since perf-notes v2.36, g.53; 224-token tiles with the output in halves, last tiles ending in either half)
    and with the warpgroups taking turns as before: the canonical kernel's bits; switched off they take the
    non-persistent kernels, with the same bits."""
    gs = 64
    assert hopper.gemm_2l_rf_wide_lr() and hopper.gemm_2l_rf_pipelined()
    x, smooth, pd = _acts(M, K, R, dtype, seed=M + R)
    qw, wsc, wch, pu, b = _weights(N, K, R, dtype, gs, seed=R)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, gs)
    qf = fragment_order(qw)
    with _tile_gemm(hopper):
        ref = _gemm(hopper, xq, xs, qw, wsc, wch, lr, pu, b, gs)
    try:
        for wide, pipelined in ((True, True), (True, False), (False, True)):
            hopper.set_gemm_2l_rf_wide_lr(wide)
            hopper.set_gemm_2l_rf_pipelined(pipelined)
            for bt in hopper.gemm_2l_tiles:
                n0, h0 = hopper.gemm_2l_rf_pipelined_launches(), hopper.gemm_2l_out_halves_launches()
                with _forced_plan(hopper, bt, 1), _tile_gemm(hopper):
                    hopper.set_gemm_2l_persistent(1)
                    _poison(4 * M * N, 0xFF)
                    y = hopper.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, b, gs)
                assert y is not None, hopper.last_error()
                assert torch.equal(y, ref), (f"wide {wide}, pipelined {pipelined}, tile {bt}: "
                                             f"{(y != ref).sum().item()} of {y.numel()} outputs differ")
                if wide:
                    assert hopper.gemm_2l_rf_pipelined_launches() - n0 == int(pipelined)
                    assert hopper.gemm_2l_out_halves_launches() - h0 == int(pipelined and bt == 224)
    finally:
        hopper.set_gemm_2l_rf_wide_lr(True)
        hopper.set_gemm_2l_rf_pipelined(True)


# --- the few-token kernel (csrc/w4a4_gemv_2l.cu): M <= 8, group 64, canonical or fragment order ---------------------


@pytest.mark.parametrize("frag", [False, True], ids=["canonical", "fragment_order"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,K,N,R", [(1, 3072, 18432, 32), (2, 128, 128, 16), (3, 1152, 384, 48), (5, 15360, 3072, 32),
                                     (8, 3072, 9216, 64), (1, 256, 3072, 128)])
def test_gemv_2l_matches_the_reference_and_writes_every_output(hopper, frag, dtype, M, K, N, R):
    """A few tokens in the dp4a weight stream (forced for every M <= 8 here): within 16-bit rounding of the reference
    (only the fp32 order of the low-rank sum differs from the tile GEMM), every element written (poisoned first,
    three launches); no branch and no bias: the reference's bits (the integer part exact) and the tile GEMM's bits.
    K = 128 and 1152: 1 and 9 stages over the block's 4 warps."""
    gs = 64
    assert hopper.gemv_2l_mode() == -1
    x, smooth, pd = _acts(M, K, R, dtype, seed=M + K + N)
    qw, wsc, wch, pu, b = _weights(N, K, R, dtype, gs, seed=N + R)
    xq, xs, lr = _quantize(hopper, x, smooth, pd, gs)
    w = fragment_order(qw) if frag else qw
    run = hopper.w4a4_gemm_2l_fo if frag else hopper.w4a4_gemm_2l
    ref = w4a4_gemm_2l_ref(xq, xs, qw, wsc, wch, lr, pu, b, gs, fp32_out=True)
    with _gemv_mode(hopper, 8):
        launches = hopper.gemv_2l_launches()
        for _ in range(3):
            _poison(4 * M * N, 0xFF)
            y = run(xq, xs, w, wsc, wch, lr, pu, b, gs)
            assert y is not None, hopper.last_error()
            assert torch.isfinite(y).all(), "unwritten (NaN-poisoned) outputs"
            torch.testing.assert_close(y.float(), ref.to(dtype).float(), rtol=2**-7, atol=1e-3)
        assert hopper.gemv_2l_launches() - launches == 3
        assert (y == ref.to(dtype)).float().mean() > 0.9
        zero_pu = torch.zeros_like(pu)
        exact = run(xq, xs, w, wsc, wch, lr, zero_pu, None, gs)
    assert torch.equal(exact, w4a4_gemm_2l_ref(xq, xs, qw, wsc, wch, lr, zero_pu, None, gs))
    with _tile_gemm(hopper):
        assert torch.equal(run(xq, xs, w, wsc, wch, lr, zero_pu, None, gs), exact)


@pytest.mark.parametrize("M,K", [(1, 3072), (2, 12288), (4, 3072), (4, 12288), (8, 3072), (9, 3072)])
def test_gemv_2l_auto_mode_epilogue_and_columns(hopper, M, K):
    """The default mode sends M <= 2, and M = 4 at K <= 4096, to the few-token kernel (where it was measured faster),
    the rest to the tile GEMM; through the epilogue op (GELU, a prefix) and with the low-rank activations as a column
    block of a wider matrix it gives what the tile GEMM gives within 16-bit rounding, the prefix's bits, and the bits
    of a contiguous copy."""
    from svdquant_hf.ops.reference import gemm_epilogue_ref

    N, R, P, gs = 3072, 32, 64, 64
    x, smooth, pd = _acts(M, K, 2 * R, torch.bfloat16, seed=M + 40)
    qw, wsc, wch, pu, b = _weights(N, K, R, torch.bfloat16, gs, seed=M + 41)
    xq, xs, lr_all = _quantize(hopper, x, smooth, pd, gs)
    lr = lr_all[:, R:]
    qf = fragment_order(qw)
    prefix = torch.randn(M, P, device="cuda").to(torch.bfloat16)
    ref = gemm_epilogue_ref(w4a4_gemm_2l_ref(xq, xs, qw, wsc, wch, lr, pu, b, gs, fp32_out=True), torch.bfloat16, 1,
                            prefix)
    _poison(2 * M * (N + P) + 4096, 0xFF)
    launches = hopper.gemv_2l_launches()
    y = hopper.w4a4_gemm_2l_fo_ep(xq, xs, qf, wsc, wch, lr, pu, b, gs, 1, prefix)
    assert hopper.gemv_2l_launches() - launches == int(M <= 2 or (M <= 4 and K <= 4096))
    assert torch.isfinite(y).all() and torch.equal(y[:, :P], prefix)
    torch.testing.assert_close(y.float(), ref.float(), rtol=2**-7, atol=1e-3)
    assert torch.equal(y, hopper.w4a4_gemm_2l_fo_ep(xq, xs, qf, wsc, wch, lr.contiguous(), pu, b, gs, 1, prefix))
    with _gemv_mode(hopper, 8):
        forced = hopper.w4a4_gemm_2l_fo_ep(xq, xs, qf, wsc, wch, lr, pu, b, gs, 1, prefix)
    if M <= 8:
        torch.testing.assert_close(forced.float(), ref.float(), rtol=2**-7, atol=1e-3)
    launches = hopper.gemv_2l_launches()
    with _tile_gemm(hopper):
        tile = hopper.w4a4_gemm_2l_fo_ep(xq, xs, qf, wsc, wch, lr, pu, b, gs, 1, prefix)
    assert hopper.gemv_2l_launches() == launches
    torch.testing.assert_close(y.float(), tile.float(), rtol=2**-7, atol=1e-3)

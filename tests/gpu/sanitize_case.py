"""Small kernel run for compute-sanitizer (memcheck): awkward M, N, K and rank so every guard is hit."""
import os

import torch

from svdquant_hf.formats.int4 import pack_int4
from svdquant_hf.ops import build

ext = build.load_extension()
assert ext is not None
# SANITIZE_PDL=1: programmatic dependent launch (opt-in) and the quantizer's plain form (the lean one is the default)
if os.environ.get("SANITIZE_PDL") == "1":
    ext.set_pdl(True)
    ext.set_quantize_act_2l_lean(False)
# SANITIZE_CHAIN=1: the chained down projection forced wherever the shape allows (set_lr_chain(1)), GEMMs taking lr late
if os.environ.get("SANITIZE_CHAIN") == "1":
    ext.set_lr_chain(1)
g = torch.Generator(device="cuda").manual_seed(3)
for dtype, gs, (M, K, N, R) in [
    (torch.bfloat16, 64, (7, 192, 40, 40)),
    (torch.float16, 32, (33, 96, 24, 16)),
    (torch.bfloat16, 128, (130, 256, 136, 0)),
]:
    x = torch.randn(M, K, device="cuda", generator=g).to(dtype)
    smooth = (torch.rand(K, device="cuda", generator=g) + 0.5).to(dtype)
    pd = torch.randn(K, R, device="cuda", generator=g).to(dtype)
    pu = torch.randn(N, R, device="cuda", generator=g).to(dtype)
    qw = pack_int4(torch.randint(-8, 8, (N, K), device="cuda", generator=g, dtype=torch.int8))
    wsc = (torch.rand(K // gs, N, device="cuda", generator=g) * 0.01).to(dtype)
    b = torch.randn(N, device="cuda", generator=g).to(dtype)
    xq, asc, lr = ext.quantize_act(x, smooth, pd, gs)
    y = ext.w4a4_gemm(xq, asc, qw, wsc, lr, pu, b, gs)
torch.cuda.synchronize()
print("sanitize case done", float(y.float().abs().sum()))

# two-level INT4: quantize on any GPU (the cluster kernel on Hopper), the wgmma GEMM on Hopper (tails in M,
# every token tile, K splits)
from svdquant_hf.ops.cuda import gemm_2l_kernel_usable  # noqa: E402
from svdquant_hf.ops.layout_2l import fragment_order  # noqa: E402
from svdquant_hf.ops.reference import weight_operand_2l  # noqa: E402

for M, K, N, R, gs in [(7, 256, 128, 16, 64), (130, 512, 256, 32, 32), (300, 1024, 384, 0, 128), (17, 1280, 128, 48, 64),
                          (700, 256, 3072, 32, 64), (201, 512, 768, 32, 64), (5, 1152, 128, 16, 64), (9, 2432, 128, 32, 32)]:
    x = torch.randn(M, K, device="cuda", generator=g).to(torch.bfloat16)
    smooth = (torch.rand(K, device="cuda", generator=g) + 0.5).to(torch.bfloat16)
    pd = torch.randn(K, R, device="cuda", generator=g).to(torch.bfloat16)
    for max_ctas in (1, 3):  # the per-row quantizer's persistent CTAs walking many rows through their ring
        ext.set_quantize_act_2l_persistent(1, max_ctas)
        ext.quantize_act_2l(x, smooth, pd, gs)
    ext.set_quantize_act_2l_persistent(1, 0)
    xq, xs, lr = ext.quantize_act_2l(x, smooth, pd, gs)
    if gemm_2l_kernel_usable(ext, x.device):
        qw = pack_int4(torch.randint(-8, 8, (N, K), device="cuda", generator=g, dtype=torch.int8))
        wsc = torch.randint(1, 17, (K // gs, N), device="cuda", generator=g, dtype=torch.uint8)
        wch = torch.rand(N, device="cuda", generator=g)
        pu = torch.randn(N, R, device="cuda", generator=g).to(torch.bfloat16)
        w8 = weight_operand_2l(qw, wsc, gs)  # the weights stored widened: w8a4_gemm_2l
        for bt in ext.gemm_2l_tiles:
            ext.set_gemm_2l_tile_tokens(bt)
            for splits in (1, 2, 8):  # the cluster K split (distributed shared memory)
                ext.set_gemm_2l_splits(splits)
                for tma_store in (False, True):  # both epilogue stores
                    ext.set_gemm_2l_tma_store(tma_store)
                    for persistent in (0, 1):  # the persistent kernels where they apply (unsplit; packed: group 64)
                        ext.set_gemm_2l_persistent(persistent)
                        y = ext.w4a4_gemm_2l(xq, xs, qw, wsc, wch, lr, pu, None, gs)
                        # the weights in fragment order (the register-fragment loop where the persistent kernel runs)
                        ext.w4a4_gemm_2l_fo(xq, xs, fragment_order(qw), wsc, wch, lr, pu, None, gs)
                        if not tma_store:  # the epilogue's GELU, written after a prefix's columns (row stride P + N)
                            pre = torch.randn(M, 24, device="cuda", generator=g).to(torch.bfloat16)
                            ext.w4a4_gemm_2l_fo_ep(xq, xs, fragment_order(qw), wsc, wch, lr, pu, None, gs, 1, pre)
                        for producer in (False, True):  # the int8-weight loops (non-persistent)
                            ext.set_gemm_2l_w8_producer(producer)
                            y = ext.w8a4_gemm_2l(xq, xs, w8, wch, lr, pu, None)
                ext.set_gemm_2l_w8_producer(False)
                ext.set_gemm_2l_persistent(-1)
                ext.set_gemm_2l_tma_store(False)
        ext.set_gemm_2l_splits(0)
        ext.set_gemm_2l_tile_tokens(0)
        if N % 192 == 0:  # the register-fragment loop with three consumer warpgroups (192-row tiles)
            for bt in (128, 192):
                ext.set_gemm_2l_rf_warpgroups(3, bt)
                ext.w4a4_gemm_2l_fo(xq, xs, fragment_order(qw), wsc, wch, lr, pu, None, gs)
            ext.set_gemm_2l_rf_warpgroups(0, 0)
torch.cuda.synchronize()
print("sanitize case 2l done")

# the fused quantizer (Hopper: x read once, the down projection on mma.sync, clusters) at every cluster size with a
# shape, awkward M, both dtypes, ranks 16 / 48
if getattr(ext, "sm90a_built", False) and torch.cuda.get_device_capability() == (9, 0):
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    fused_before = ext.quantize_act_2l_fused_mode()
    for dtype, (M, K, R) in [(torch.bfloat16, (37, 3072, 32)), (torch.float16, (19, 1536, 48)),
                             (torch.bfloat16, (5, 768, 16))]:
        x = torch.randn(M, K, device="cuda", generator=g).to(dtype)
        smooth = (torch.rand(K, device="cuda", generator=g) + 0.5).to(dtype)
        pd = torch.randn(K, R, device="cuda", generator=g).to(dtype)
        for C in range(1, 9):
            ext.set_quantize_act_2l_fused(1, C)
            if ext.quantize_act_2l_fused_shape(M, K, R, 64, sms)[0] == C:
                ext.quantize_act_2l(x, smooth, pd, 64)
    # the fixed-column fused quantizer (mode 2): clusters of 4 / 8 / 16 where they apply, a last block of 5 rows, the
    # one-warp mma of two CTAs an SM (clusters of 16 at 12288 x rank 32), the concatenation
    chain_before = ext.lr_chain()
    ext.set_lr_chain(0)  # (a few-token call would chain before the fused path is asked)
    for dtype, (M, K, R, C) in [(torch.bfloat16, (37, 3072, 32, 8)), (torch.float16, (21, 12288, 64, 0)),
                                (torch.bfloat16, (5, 3072, 16, 16)), (torch.bfloat16, (53, 768, 48, 4)),
                                (torch.bfloat16, (19, 12288, 32, 16))]:
        x = torch.randn(M, K, device="cuda", generator=g).to(dtype)
        smooth = (torch.rand(K, device="cuda", generator=g) + 0.5).to(dtype)
        pd = torch.randn(K, R, device="cuda", generator=g).to(dtype)
        ext.set_quantize_act_2l_fused(2, C)
        if ext.quantize_act_2l_fused_applies(M, K, R, 64):
            ext.quantize_act_2l(x, smooth, pd, 64)
    # its concatenation form (the seam inside a slice: 15360 at C = 16, slices of 960)
    x = torch.randn(23, 15360, device="cuda", generator=g).to(torch.bfloat16)
    smooth = (torch.rand(15360, device="cuda", generator=g) + 0.5).to(torch.bfloat16)
    pd = torch.randn(15360, 32, device="cuda", generator=g).to(torch.bfloat16)
    ext.set_quantize_act_2l_fused(2, 0)
    if ext.quantize_act_2l_fused_applies(23, 15360, 32, 64):
        ext.quantize_act_2l_cat(x[:, :3072].contiguous(), x[:, 3072:].contiguous(), smooth, pd, 64)
    # the CTA pairs (mode 3, K <= 3072): a last block of 5 rows, rank 16, a small K, one pair walking several blocks
    for dtype, (M, K, R, cap) in [(torch.bfloat16, (37, 3072, 32, 0)), (torch.float16, (21, 1152, 16, 0)),
                                  (torch.bfloat16, (77, 3072, 32, 1))]:
        x = torch.randn(M, K, device="cuda", generator=g).to(dtype)
        smooth = (torch.rand(K, device="cuda", generator=g) + 0.5).to(dtype)
        pd = torch.randn(K, R, device="cuda", generator=g).to(dtype)
        ext.set_quantize_act_2l_fused(3, 0, 0, cap)
        if ext.quantize_act_2l_fused_applies(M, K, R, 64):
            ext.quantize_act_2l(x, smooth, pd, 64)
    ext.set_quantize_act_2l_fused(0, 0, 0, 0)
    ext.set_lr_chain(chain_before)
    # (left on, it took the later chain cases' quantizer calls, so their chained down projections never ran: v2.40)
    ext.set_quantize_act_2l_fused(fused_before, 0)
    torch.cuda.synchronize()
    print("sanitize case: fused quantizers done")

# the down projection beside the quantizer (set_lowrank_down_beside forced): awkward M (a last block of 3 rows), ranks
# 16 / 64, fp16, the cat form, one CTA walking every item and more CTAs than items; persistent quantizer or not
if hasattr(ext, "set_lowrank_down_beside") and torch.cuda.get_device_capability() == (9, 0):
    before, chain_before, fused_before = ext.lowrank_down_beside(), ext.lr_chain(), ext.quantize_act_2l_fused_mode()
    ext.set_lr_chain(0)  # (its rule may have learned a proj_down address reused here: M <= 256 would chain)
    ext.set_quantize_act_2l_fused(0)  # (the case above leaves the fused quantizer on, which would take these calls)
    for dtype, (M, K, R, k1, ctas) in [(torch.bfloat16, (131, 1280, 16, 0, 1)), (torch.float16, (67, 8192, 64, 0, 0)),
                                         (torch.bfloat16, (200, 1536, 32, 384, 500))]:
        ext.set_lowrank_down_beside(1, -1.0, ctas)
        x = torch.randn(M, K, device="cuda", generator=g).to(dtype)
        smooth = (torch.rand(K, device="cuda", generator=g) + 0.5).to(dtype)
        pd = torch.randn(K, R, device="cuda", generator=g).to(dtype)
        n0 = ext.lowrank_down_beside_launches()
        if k1:
            ext.quantize_act_2l_cat(x[:, :k1].contiguous(), x[:, k1:].contiguous(), smooth, pd, 64)
        else:
            ext.quantize_act_2l(x, smooth, pd, 64)
        assert ext.lowrank_down_beside_launches() == n0 + 1
    ext.set_lowrank_down_beside(before, -1.0, 0)
    ext.set_lr_chain(chain_before)
    ext.set_quantize_act_2l_fused(fused_before)
    torch.cuda.synchronize()
    print("sanitize case: down projection beside the quantizer done")


def _fragment_order_gemm_case(switch: str, shapes, forced_tile: bool = True, warpgroups: int = 0,
                              switch_value=True, counter: str = "") -> None:
    """The fragment-order GEMM with set_gemm_2l_<switch>(switch_value) (as before after it; a tuple value: the setter's
    leading arguments and the value, the getter's leading arguments the same), once per (M, K, N, R, tile): asserts that
    kernel ran (gemm_2l_<counter or switch>_launches). forced_tile: the persistent unsplit plan on that token tile (else
    the kernel's own tiles, and a GELU epilogue after a 64-column prefix); warpgroups 3: three consumer warpgroups on
    that token tile instead."""
    lead = switch_value[:-1] if isinstance(switch_value, tuple) else ()
    value = switch_value[-1] if isinstance(switch_value, tuple) else switch_value
    launches = getattr(ext, f"gemm_2l_{counter or switch}_launches")
    for M, K, N, R, tile in shapes:
        x = torch.randn(M, K, device="cuda", generator=g).to(torch.bfloat16)
        smooth = (torch.rand(K, device="cuda", generator=g) + 0.5).to(torch.bfloat16)
        pd = torch.randn(K, R, device="cuda", generator=g).to(torch.bfloat16)
        xq, xs, lr = ext.quantize_act_2l(x, smooth, pd, 64)
        qw = pack_int4(torch.randint(-8, 8, (N, K), device="cuda", generator=g, dtype=torch.int8))
        wsc = torch.randint(1, 17, (K // 64, N), device="cuda", generator=g, dtype=torch.uint8)
        pu = torch.randn(N, R, device="cuda", generator=g).to(torch.bfloat16)
        wch = torch.rand(N, device="cuda", generator=g)
        if warpgroups:
            ext.set_gemm_2l_rf_warpgroups(warpgroups, tile)
        elif forced_tile:
            ext.set_gemm_2l_persistent(1)
            ext.set_gemm_2l_splits(1)
            ext.set_gemm_2l_tile_tokens(tile)
        before = getattr(ext, f"gemm_2l_{switch}")(*lead)
        getattr(ext, f"set_gemm_2l_{switch}")(*lead, value)
        n0 = launches()
        if forced_tile:
            ext.w4a4_gemm_2l_fo(xq, xs, fragment_order(qw), wsc, wch, lr, pu, None, 64)
        else:
            pre = torch.randn(M, 64, device="cuda", generator=g).to(torch.bfloat16)
            ext.w4a4_gemm_2l_fo_ep(xq, xs, fragment_order(qw), wsc, wch, lr, pu, None, 64, 1, pre)
        assert launches() == n0 + 1
        getattr(ext, f"set_gemm_2l_{switch}")(*lead, before)
        ext.set_gemm_2l_persistent(-1)
        ext.set_gemm_2l_splits(0)
        ext.set_gemm_2l_tile_tokens(0)
        ext.set_gemm_2l_rf_warpgroups(0, 0)
    torch.cuda.synchronize()


if gemm_2l_kernel_usable(ext, torch.device("cuda")) and hasattr(ext, "set_gemm_2l_rf_pingpong"):
    # the register-fragment loop with leading turns (set_gemm_2l_rf_lead): persistent, 224-token tiles, K of 2 and 12
    # stages (fewer and more stages per tile than the lead)
    _fragment_order_gemm_case("rf_lead", [(300, 256, 512, 32, 224), (450, 1536, 256, 32, 224)])
    print("sanitize case: leading turns done")
    # the loop pipelined within each warpgroup (set_gemm_2l_rf_pipelined): 224- and 256-token tiles, K of 1 and 12
    # stages (a CTA's tiles of one stage each let one warpgroup run tiles ahead of the other)
    _fragment_order_gemm_case("rf_pipelined", [(300, 128, 512, 32, 224), (450, 1536, 256, 32, 256),
                                               (1100, 128, 1024, 32, 256)])
    _fragment_order_gemm_case("rf_pipelined", [(450, 1536, 384, 32, 192), (1100, 128, 768, 32, 128)], warpgroups=3)
    print("sanitize case: pipelined register-fragment loop done")
    # the consumer warpgroups in ping-pong (set_gemm_2l_rf_pingpong): a CTA's tiles of one stage (a warpgroup a tile
    # ahead of the other), 12 stages, an odd tile count per CTA, rank 16; GELU after a prefix
    _fragment_order_gemm_case("rf_pingpong", [(300, 128, 512, 32, 0), (450, 1536, 256, 32, 0),
                                              (1100, 256, 384, 16, 0)], forced_tile=False)
    print("sanitize case: ping-pong GEMM done")
if gemm_2l_kernel_usable(ext, torch.device("cuda")) and hasattr(ext, "set_gemm_2l_lr_by_producer"):
    # the low-rank tiles loaded by the producer's warps (set_gemm_2l_lr_by_producer): many one-stage tiles per CTA, ranks
    # 0 / 16 / 32, rows past M, three warpgroups
    _fragment_order_gemm_case("lr_by_producer", [(300, 128, 512, 32, 224), (450, 1536, 256, 16, 256),
                                                 (1100, 128, 1024, 0, 64)])
    _fragment_order_gemm_case("lr_by_producer", [(450, 1536, 384, 32, 192), (1100, 128, 768, 32, 128)], warpgroups=3)
    print("sanitize case: low-rank tiles by the producer done")
if gemm_2l_kernel_usable(ext, torch.device("cuda")) and hasattr(ext, "set_gemm_2l_l2_prefetch"):
    # the producer's L2 prefetch of the next tile's first stages (set_gemm_2l_l2_prefetch): rows and stages past the
    # matrices' ends in the last tiles, two and three warpgroups
    _fragment_order_gemm_case("l2_prefetch", [(300, 128, 512, 32, 224), (450, 1536, 256, 16, 256)])
    _fragment_order_gemm_case("l2_prefetch", [(450, 1536, 384, 32, 192)], warpgroups=3)
    print("sanitize case: L2 prefetch done")
if gemm_2l_kernel_usable(ext, torch.device("cuda")) and hasattr(ext, "set_gemm_2l_lr_unrolled"):
    # the last warpgroup's low-rank copies unrolled (set_gemm_2l_lr_unrolled): many one-stage tiles per CTA, the last
    # token tile's rows past M (clamped copies), two and three warpgroups
    _fragment_order_gemm_case("lr_unrolled", [(300, 128, 512, 32, 224), (1000, 128, 768, 32, 224)])
    _fragment_order_gemm_case("lr_unrolled", [(450, 1536, 384, 32, 192), (1100, 128, 768, 32, 192)], warpgroups=3)
    print("sanitize case: low-rank copies unrolled done")
if gemm_2l_kernel_usable(ext, torch.device("cuda")) and hasattr(ext, "set_gemm_2l_release_step"):
    # each stage released at the next stage's third / second k-step as before (set_gemm_2l_release_step; the default
    # first k-step runs in the other cases): one-, two- and twelve-stage tiles, the last token tile's rows past M, one,
    # two and three warpgroups
    for step in (2, 1):
        _fragment_order_gemm_case("release_step", [(300, 128, 512, 32, 224), (1000, 256, 768, 32, 224)],
                                  switch_value=step)
        _fragment_order_gemm_case("release_step", [(450, 1536, 384, 32, 192), (1100, 128, 768, 32, 192)],
                                  warpgroups=3, switch_value=step)
    # (v2.41) step 2 on one warpgroup's 128- and 256-token tiles
    _fragment_order_gemm_case("release_step", [(300, 128, 512, 32, 128), (1000, 256, 768, 32, 256)], warpgroups=1,
                              switch_value=2)
    print("sanitize case: later release done")
if gemm_2l_kernel_usable(ext, torch.device("cuda")) and hasattr(ext, "set_gemm_2l_out_halves"):
    # the three-warpgroup kernel's output in two token halves, four stages (set_gemm_2l_out_halves): one- and
    # twelve-stage tiles, a last token tile that ends in its first half and one that ends in its second
    _fragment_order_gemm_case("out_halves", [(450, 1536, 384, 32, 192), (1100, 128, 768, 32, 192),
                                             (4000, 640, 1152, 32, 192)], warpgroups=3)
    print("sanitize case: output in halves done")
if gemm_2l_kernel_usable(ext, torch.device("cuda")) and hasattr(ext, "set_gemm_2l_out_pieces"):
    # two warpgroups' 256-token tiles in halves (g.51, set_gemm_2l_out_pieces(256, 2)): one- and many-stage tiles, last
    # token tiles ending in either half
    _fragment_order_gemm_case("out_pieces", [(300, 128, 512, 32, 256), (4000, 640, 1152, 32, 256)],
                              switch_value=(256, 2), counter="out_halves")
    print("sanitize case: output in pieces done")
if gemm_2l_kernel_usable(ext, torch.device("cuda")) and hasattr(ext, "set_gemm_2l_split_halves"):
    # the 256-token split kernel's output in halves (g.54, set_gemm_2l_split_halves): two CTAs (one half each), three
    # (one CTA in both halves), rows past M
    for s_ in (2, 3):
        ext.set_gemm_2l_rf_warpgroups(2, 0)
        ext.set_gemm_2l_rf_splits(s_)
        _fragment_order_gemm_case("split_halves", [(300, 1280, 512, 32, 256)])
    ext.set_gemm_2l_rf_splits(0)
    ext.set_gemm_2l_rf_warpgroups(0, 0)
    print("sanitize case: split kernel in halves done")
if gemm_2l_kernel_usable(ext, torch.device("cuda")) and hasattr(ext, "gemm_2l_rf1_launches"):
    # one consumer warpgroup on 64-row tiles (g.56, set_gemm_2l_rf_warpgroups(1, tile)): 128- and 256-token tiles,
    # persistent (several tiles per CTA) and split over 2 / 3 CTAs, rows past M
    M, K, N, R, gs = 300, 1280, 512, 32, 64
    x = torch.randn(M, K, device="cuda", generator=g).to(torch.bfloat16)
    smooth = (torch.rand(K, device="cuda", generator=g) + 0.5).to(torch.bfloat16)
    pd = torch.randn(K, R, device="cuda", generator=g).to(torch.bfloat16)
    xq, xs, lr = ext.quantize_act_2l(x, smooth, pd, gs)
    qf = fragment_order(pack_int4(torch.randint(-8, 8, (N, K), device="cuda", generator=g, dtype=torch.int8)))
    wsc = torch.randint(1, 17, (K // gs, N), device="cuda", generator=g, dtype=torch.uint8)
    pu = torch.randn(N, R, device="cuda", generator=g).to(torch.bfloat16)
    wch = torch.rand(N, device="cuda", generator=g)
    n0 = ext.gemm_2l_rf1_launches()
    for tile, s_ in ((128, 1), (256, 1), (256, 2), (128, 3)):
        ext.set_gemm_2l_rf_warpgroups(1, tile)
        ext.set_gemm_2l_rf_splits(s_)
        ext.w4a4_gemm_2l_fo(xq, xs, qf, wsc, wch, lr, pu, None, gs)
    ext.set_gemm_2l_rf_splits(0)
    ext.set_gemm_2l_rf_warpgroups(0, 0)
    torch.cuda.synchronize()
    assert ext.gemm_2l_rf1_launches() == n0 + 4
    print("sanitize case: one warpgroup done")

# the register-fragment loop's wide low-rank tile (branch ranks 33-64, the default), each token tile; then low-rank
# activations read as a column block of a wider matrix (ldlr: the shared quantizer's), the last rows included
if gemm_2l_kernel_usable(ext, torch.device("cuda")):
    M, K, N, R, gs = 201, 512, 256, 48, 64
    x = torch.randn(M, K, device="cuda", generator=g).to(torch.bfloat16)
    smooth = (torch.rand(K, device="cuda", generator=g) + 0.5).to(torch.bfloat16)
    pd = torch.randn(K, R, device="cuda", generator=g).to(torch.bfloat16)
    xq, xs, lr = ext.quantize_act_2l(x, smooth, pd, gs)
    qw = pack_int4(torch.randint(-8, 8, (N, K), device="cuda", generator=g, dtype=torch.int8))
    wsc = torch.randint(1, 17, (K // gs, N), device="cuda", generator=g, dtype=torch.uint8)
    pu = torch.randn(N, R, device="cuda", generator=g).to(torch.bfloat16)
    ext.set_gemm_2l_persistent(1)
    for bt in ext.gemm_2l_tiles:
        ext.set_gemm_2l_tile_tokens(bt)
        ext.w4a4_gemm_2l_fo(xq, xs, fragment_order(qw), wsc, torch.rand(N, device="cuda", generator=g), lr, pu, None, gs)
    pu16 = pu[:, :16].contiguous()
    for persistent in (1, 0):
        ext.set_gemm_2l_persistent(persistent)
        for bt in ext.gemm_2l_tiles:
            ext.set_gemm_2l_tile_tokens(bt)
            ext.w4a4_gemm_2l_fo(xq, xs, fragment_order(qw), wsc, torch.rand(N, device="cuda", generator=g), lr[:, 32:],
                                pu16, None, gs)
    ext.set_gemm_2l_persistent(-1)
    ext.set_gemm_2l_tile_tokens(0)
    torch.cuda.synchronize()
    print("wide low-rank case done")

# the few-token kernel (w4a4_gemv_2l.cu, M <= 8): both weight orders, both dtypes, a bias, the GELU epilogue after a
# prefix, low-rank activations as a column block of a wider matrix
if gemm_2l_kernel_usable(ext, torch.device("cuda")) and hasattr(ext, "gemv_2l_mode"):
    ext.set_gemv_2l_mode(8)
    launches = ext.gemv_2l_launches()
    for dtype, (M, K, N, R) in [(torch.bfloat16, (1, 3072, 384, 32)), (torch.float16, (3, 256, 128, 16)),
                                (torch.bfloat16, (8, 1152, 256, 64))]:
        x = torch.randn(M, K, device="cuda", generator=g).to(dtype)
        smooth = (torch.rand(K, device="cuda", generator=g) + 0.5).to(dtype)
        pd = torch.randn(K, 2 * R, device="cuda", generator=g).to(dtype)
        xq, xs, lr = ext.quantize_act_2l(x, smooth, pd, 64)  # K = 1152: the quantizer's last warp past the row
        qw = pack_int4(torch.randint(-8, 8, (N, K), device="cuda", generator=g, dtype=torch.int8))
        wsc = torch.randint(1, 17, (K // 64, N), device="cuda", generator=g, dtype=torch.uint8)
        wch = torch.rand(N, device="cuda", generator=g)
        pu = torch.randn(N, R, device="cuda", generator=g).to(dtype)
        b = torch.randn(N, device="cuda", generator=g).to(dtype)
        ext.w4a4_gemm_2l(xq, xs, qw, wsc, wch, lr[:, R:], pu, b, 64)
        pre = torch.randn(M, 24, device="cuda", generator=g).to(dtype)
        ext.w4a4_gemm_2l_fo_ep(xq, xs, fragment_order(qw), wsc, wch, lr[:, :R], pu, None, 64, 1, pre)
    ext.set_gemv_2l_mode(-1)
    torch.cuda.synchronize()
    print(f"few-token case done ({ext.gemv_2l_launches() - launches} launches)")

# the quantizer reading cat([a, b], 1) in place: one CTA per row and persistent CTAs (K >= 8192), a 8-wide first part
if hasattr(ext, "quantize_act_2l_cat"):
    for M, K1, K2 in [(7, 8, 248), (37, 1024, 7168), (5, 3072, 12288)]:
        x = torch.randn(M, K1 + K2, device="cuda", generator=g).to(torch.bfloat16)
        smooth = (torch.rand(K1 + K2, device="cuda", generator=g) + 0.5).to(torch.bfloat16)
        pd = torch.randn(K1 + K2, 32, device="cuda", generator=g).to(torch.bfloat16)
        ext.quantize_act_2l_cat(x[:, :K1].contiguous(), x[:, K1:].contiguous(), smooth, pd, 64)
    torch.cuda.synchronize()
    print("cat quantizer case done")

# q/k's RMSNorm + RoPE (rms_norm_rope.cu): each head dim, an odd token count, cos / sin rows at an offset, a front part
if hasattr(ext, "rms_norm_rope"):
    for D in (64, 128, 256):
        S, H = 37, 3
        x = torch.randn(2, S, H, D, device="cuda", generator=g).to(torch.bfloat16)
        w = torch.rand(D, device="cuda", generator=g).to(torch.bfloat16)
        table = torch.rand(S + 5, D, device="cuda", generator=g)
        ext.rms_norm_rope(x, w, 1e-6, table[5:], table[5:])
        ext.rms_norm_rope(x[:, 5:].contiguous(), w, 1e-6, table[:S], table[:S], x[:, :5].contiguous(), w)  # front
    torch.cuda.synchronize()
    print("rms_norm_rope case done")


def _rank32_problem(M: int, K: int, N: int):
    """A bfloat16 rank-32 layer's inputs: x, smooth, proj_down, packed int4 weights, integer group scales, channel
    scales, proj_up."""
    x = torch.randn(M, K, device="cuda", generator=g).to(torch.bfloat16)
    smooth = (torch.rand(K, device="cuda", generator=g) + 0.5).to(torch.bfloat16)
    pd = torch.randn(K, 32, device="cuda", generator=g).to(torch.bfloat16)
    qw = pack_int4(torch.randint(-8, 8, (N, K), device="cuda", generator=g, dtype=torch.int8))
    wsc = torch.randint(1, 17, (K // 64, N), device="cuda", generator=g, dtype=torch.uint8)
    wch = torch.rand(N, device="cuda", generator=g)
    pu = torch.randn(N, 32, device="cuda", generator=g).to(torch.bfloat16)
    return x, smooth, pd, qw, wsc, wch, pu


# the chained down projection (set_lr_chain) and GEMMs taking lr late: the persistent kernels unsplit, split over a
# cluster and with three warpgroups, an awkward M, a rank-96 quantizer call read as a column block
if gemm_2l_kernel_usable(ext, torch.device("cuda")) and hasattr(ext, "set_lr_chain"):
    ext.set_lr_chain(1)
    late = ext.gemm_2l_late_launches()
    for M, K, N, R, forced in [(130, 1024, 256, 32, {}), (77, 512, 384, 32, {"rf_splits": 2}),
                               (200, 768, 384, 96, {"rf_warpgroups": 3}), (256, 384, 256, 16, {})]:
        x = torch.randn(M, K, device="cuda", generator=g).to(torch.bfloat16)
        smooth = (torch.rand(K, device="cuda", generator=g) + 0.5).to(torch.bfloat16)
        pd = torch.randn(K, R, device="cuda", generator=g).to(torch.bfloat16)
        qw = pack_int4(torch.randint(-8, 8, (N, K), device="cuda", generator=g, dtype=torch.int8))
        wsc = torch.randint(1, 17, (K // 64, N), device="cuda", generator=g, dtype=torch.uint8)
        wch = torch.rand(N, device="cuda", generator=g)
        pu = torch.randn(N, min(R, 32), device="cuda", generator=g).to(torch.bfloat16)
        ext.set_gemm_2l_rf_splits(forced.get("rf_splits", 0))
        ext.set_gemm_2l_rf_warpgroups(forced.get("rf_warpgroups", 0), 0)
        ext.set_gemm_2l_persistent(1)
        xq, xs, lr = ext.quantize_act_2l(x, smooth, pd, 64)
        ext.w4a4_gemm_2l_fo(xq, xs, fragment_order(qw), wsc, wch, lr[:, :min(R, 32)], pu, None, 64)
    ext.set_gemm_2l_rf_splits(0)
    ext.set_gemm_2l_rf_warpgroups(0, 0)
    ext.set_gemm_2l_persistent(-1)
    ext.set_lr_chain(-1)
    torch.cuda.synchronize()
    print(f"chained down projection case done ({ext.gemm_2l_late_launches() - late} late GEMMs)")
    if hasattr(ext, "set_lr_chain_pipes"):  # (g.59, the default) the chained kernel's two groups of warps, late GEMMs
        ext.set_lr_chain(1)
        ext.set_lr_chain_pipes(2)
        p0 = ext.lr_chain_pipes_launches()
        for M, K, N in [(130, 1024, 256), (256, 3072, 384), (100, 768, 256), (256, 3072, 3072)]:
            x, smooth, pd, qw, wsc, wch, pu = _rank32_problem(M, K, N)
            xq, xs, lr = ext.quantize_act_2l(x, smooth, pd, 64)
            ext.w4a4_gemm_2l_fo(xq, xs, fragment_order(qw), wsc, wch, lr, pu, None, 64)
        ext.set_lr_chain_pipes(2)
        ext.set_lr_chain(-1)
        torch.cuda.synchronize()
        assert ext.lr_chain_pipes_launches() > p0, "no chained down projection ran on two rings"
        print(f"chained down projection in two groups done ({ext.lr_chain_pipes_launches() - p0} launches)")

"""Random int4_2l layer problems on the FLUX.1 linear shapes, shared by the int4_2l benchmark scripts."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

FLUX_SHAPES = [(3072, 3072), (3072, 12288), (12288, 3072), (3072, 9216), (15360, 3072)]  # (K, N)


@dataclass
class Problem2l:
    xs: list[torch.Tensor]  # input sets [M, K] (several, so repeated runs do not all hit L2)
    smooth: torch.Tensor
    proj_down: torch.Tensor
    proj_up: torch.Tensor
    qweight: torch.Tensor
    wscales: torch.Tensor
    wchannel: torch.Tensor
    bias: torch.Tensor
    group_size: int


def random_2l(M: int, K: int, N: int, rank: int = 32, group_size: int = 64, sets: int = 3,
              dtype: torch.dtype = torch.bfloat16) -> Problem2l:
    from svdquant_hf.formats.int4 import pack_int4

    torch.manual_seed(M + K + N)
    return Problem2l(
        xs=[torch.randn(M, K, device="cuda", dtype=dtype) for _ in range(sets)],
        smooth=(torch.rand(K, device="cuda") + 0.5).to(dtype),
        proj_down=(torch.randn(K, rank, device="cuda") / K**0.5).to(dtype),
        proj_up=(torch.randn(N, rank, device="cuda") / rank**0.5).to(dtype),
        qweight=pack_int4(torch.randint(-8, 8, (N, K), device="cuda", dtype=torch.int8)),
        wscales=torch.randint(1, 17, (K // group_size, N), device="cuda", dtype=torch.uint8),
        wchannel=torch.rand(N, device="cuda") * 1e-3,
        bias=torch.randn(N, device="cuda", dtype=dtype),
        group_size=group_size,
    )


def quantizer_inputs(M: int, K: int, rank: int = 32):
    """The quantizer benchmarks' inputs (bfloat16, seeded by M + K): two activation sets [M, K], smoothing factors,
    proj_down [K, rank] and its rank-0 slice (a call without a down projection)."""
    torch.manual_seed(M + K)
    xs = [torch.randn(M, K, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
    smooth = (torch.rand(K, device="cuda") + 0.5).to(torch.bfloat16)
    pd = (torch.randn(K, rank, device="cuda") / K**0.5).to(torch.bfloat16)
    return xs, smooth, pd, pd[:, :0].contiguous()


def hopper_extension(script: str):
    """The built extension if it has the sm_90a kernels and this is a Hopper GPU, else None (says why)."""
    import sys

    from svdquant_hf.ops import build

    ext = build.load_extension()
    if ext is None or not getattr(ext, "sm90a_built", False) or torch.cuda.get_device_capability() != (9, 0):
        print(f"{script}: needs the sm_90a build on a Hopper GPU", file=sys.stderr)
        return None
    return ext


@contextmanager
def gemm_switches(ext, producer: bool = False, persistent: int = -1, tma_store: bool = False,
                  rf_warpgroups: int = 0, rf3_tile: int = 0, fused_quant: int | None = None,
                  quant_cluster: int = 0, rf_by_cost: bool | None = None, rf_splits: int = 0,
                  down_cublas: bool = False, down_wide: bool = False, down_deep: bool = False,
                  pdl: bool = False, rf3_stage: tuple[int, int] = (0, 0), lean_quant: bool = True,
                  rf3_model: int = 1, quant_chunk_bytes: int = 0, lr_chain: int | None = None,
                  down_beside: int | None = None, rf_lead: bool = False,
                  rf_pipelined: bool = True, rf_pingpong: int = 0, lr_by_producer: bool = False,
                  l2_prefetch: bool = False, act_in_loop: bool = False,
                  lr_unrolled: bool = True, release_step: int = 0, out_halves: bool = True,
                  out_pieces: tuple[int, int] | None = None, split_halves: bool = True,
                  rf1_auto: bool = True, lr_chain_pipes: int = 2) -> Iterator[None]:
    """The int4_2l GEMMs' global switches for a block of calls, back to the defaults after it.

    producer: the int8-weight GEMM's producer-warp main loop (non-persistent; False: the shared loop).
    persistent: the persistent kernels (packed group 64 with rank <= 32, int8 weights with rank <= 64; unsplit
    plans; elsewhere the non-persistent ones run): 1 wherever they apply, 0 never, -1 auto (the default: unsplit
    plans with at least two tiles per SM, and for int8 weights K <= 5120). tma_store: the non-persistent epilogue's output by TMA store (the persistent kernels always use it).
    rf_warpgroups: weights in fragment order, the register-fragment loop's consumer warpgroups (0 the cost model,
    2, or 3 wherever N % 192 == 0), rf3_tile: the three-warpgroup loop's token tile (128 / 192; 0 the model).
    fused_quant: quantize_act_2l with the down projection fused (1) or the per-row kernel and cuBLAS's down
    projection (0); None: as it is; quant_cluster: the fused quantizer's cluster size (0: its cost model).
    rf_by_cost: the register-fragment loop wherever its cost models beat the plan's kernel (the default: on), False only
    where the plan is unsplit with two tiles per SM; None: as it is (as it was after the block).
    rf_splits: 2-8 forces the register-fragment loop with K split over a cluster of that many CTAs (0 after the block).
    down_cublas: the quantizer's down projection by cuBLAS at every M (not our few-token kernel; as before after it);
    down_wide: our few-token kernel at every K and ranks 96 / 128 too (M <= 512; the default rule after the block);
    down_deep: that kernel with up to 8 stages in flight (set_lowrank_down_deep; off after the block).
    pdl: programmatic dependent launch (set_pdl: the GEMM, the few-token weight stream and the quantizer start under the
    previous kernel's tail; off after the block).
    rf3_stage: the register-fragment cost model's three-warpgroup stage cycles at 128 / 192 tokens ((0, 0): the
    model's; the model's after the block). rf3_model: the three-warpgroup choice (set_gemm_2l_rf3_model: 1 v2.25's, the
    default, 0 v2.24's; 1 after the block).
    lean_quant: the per-row quantizer's lean form (set_quantize_act_2l_lean; the default since v2.25, on after the
    block); False: the plain form.
    quant_chunk_bytes: the quantizer and its side-stream down projection in row chunks of about this many bytes of x
    (set_quantize_act_2l_chunk_bytes; 0, the default, after the block).
    lr_chain: the chained down projection at M <= 256 (set_lr_chain: after the quantizer on its stream, under the main
    loop of the GEMM that reads its lr): 1 wherever the shape allows, 0 never, -1 by its rule (the default); None: as
    it is (as it was after the block).
    down_beside: the down projection beside the persistent quantizer at many tokens (set_lowrank_down_beside: 1
    wherever the shape fits, 0 never, -1 by its rule); None: as it is (as it was after the block).
    rf_lead: the register-fragment loop with leading turns (set_gemm_2l_rf_lead; off after the block).
    rf_pipelined: the register-fragment loop pipelined within each warpgroup (set_gemm_2l_rf_pipelined, the default since
    perf-notes v2.32; False: the warpgroups take turns; on after the block). rf_pingpong: the GEMM with its consumer warpgroups in ping-pong (set_gemm_2l_rf_pingpong: 1 or True every GEMM
    it takes, 2 those with two tiles per SM; off after the block). lr_by_producer: the register-fragment kernels'
    low-rank tiles loaded by the producer warpgroup's idle warps (set_gemm_2l_lr_by_producer; off after the block).
    l2_prefetch: the producer asking L2 for the next tile's first stages halfway through each tile
    (set_gemm_2l_l2_prefetch; off after the block). act_in_loop: the output staging as before v2.34
    (set_gemm_2l_act_in_loop; off after). lr_unrolled: the last consumer warpgroup's low-rank copies unrolled
    (set_gemm_2l_lr_unrolled, the default since v2.35; False: in loops as before; on after the block). release_step: the k-step of the next stage after which the pipelined loop gives a
    stage back (set_gemm_2l_release_step: 0, the default since v2.35, or 1 / 2 as before; 0 after the block).
    out_halves: the three-warpgroup 192-token kernel's output staged in two token halves, its ring a stage deeper
    (set_gemm_2l_out_halves, the default since v2.36; False: three stages as before; on after the block).
    out_pieces: (tile, pieces) for set_gemm_2l_out_pieces after out_halves: (256, 1) two warpgroups' 256-token tiles on
    three stages, their output staged whole, as before v2.36 (g.51 off); None: as out_halves says for the 192-token
    tile (after the block: both tiles in halves, the defaults). split_halves: the 256-token split kernel's output in
    halves, a fourth stage (set_gemm_2l_split_halves, g.54, the default since v2.37; False: three stages as before; on
    after the block). rf1_auto: one warpgroup's 64-row tiles also where the cost model picks them, at M <= 512
    (set_gemm_2l_rf1_auto, g.56 by the cost model, v2.38, the default since v2.39; False: only where forced; on after
    the block). lr_chain_pipes: the chained down projection's groups of four warps per CTA (set_lr_chain_pipes, g.59,
    v2.39: 2 streams a CTA's slices on two rings at once, the default since v2.40; 1: one ring; 2 after the block).
    After the block: producer and tma_store off, persistent -1 (auto), rf_warpgroups 0 (auto), the fused quantizer's
    mode as before the block.
    """
    ext.set_gemm_2l_w8_producer(producer)
    ext.set_gemm_2l_persistent(persistent)
    ext.set_gemm_2l_tma_store(tma_store)
    ext.set_gemm_2l_rf_warpgroups(rf_warpgroups, rf3_tile)
    rbc_before = ext.gemm_2l_rf_by_cost()
    ext.set_gemm_2l_rf_by_cost(rbc_before if rf_by_cost is None else rf_by_cost)
    ext.set_gemm_2l_rf_splits(rf_splits)
    down_before = ext.lowrank_down_max_tokens()
    ext.set_lowrank_down_max_tokens(0 if down_cublas else down_before, down_wide)
    ext.set_lowrank_down_deep(down_deep)
    ext.set_pdl(pdl)
    ext.set_gemm_2l_rf3_stage(*rf3_stage)
    ext.set_gemm_2l_rf3_model(rf3_model)
    ext.set_quantize_act_2l_lean(lean_quant)
    ext.set_quantize_act_2l_chunk_bytes(quant_chunk_bytes)
    chain_before = ext.lr_chain()
    ext.set_lr_chain(chain_before if lr_chain is None else int(lr_chain))
    ext.set_gemm_2l_rf_lead(rf_lead)
    # switches an older build may lack: (value in the block, value after it)
    optional = {"set_gemm_2l_rf_pipelined": (rf_pipelined, True), "set_gemm_2l_rf_pingpong": (int(rf_pingpong), 0),
                "set_gemm_2l_lr_by_producer": (lr_by_producer, False), "set_gemm_2l_l2_prefetch": (l2_prefetch, False),
                "set_gemm_2l_act_in_loop": (act_in_loop, False),
                "set_gemm_2l_lr_unrolled": (lr_unrolled, True),
                "set_gemm_2l_release_step": (release_step, 0),
                "set_gemm_2l_out_halves": (out_halves, True),
                "set_gemm_2l_split_halves": (split_halves, True),
                "set_gemm_2l_rf1_auto": (rf1_auto, True),
                "set_lr_chain_pipes": (lr_chain_pipes, 2)}
    optional = {name: v for name, v in optional.items() if hasattr(ext, name)}
    for name, (during, _) in optional.items():
        getattr(ext, name)(during)
    if hasattr(ext, "set_gemm_2l_out_pieces"):
        pieces = out_pieces if out_pieces is not None else (192, 2 if out_halves else 1)
        if ext.set_gemm_2l_out_pieces(*pieces) is False:
            raise ValueError(f"set_gemm_2l_out_pieces{pieces}: not a tile and piece count of the kernels")
    beside_before = ext.lowrank_down_beside()
    ext.set_lowrank_down_beside(beside_before if down_beside is None else int(down_beside))
    fused_before = ext.quantize_act_2l_fused_mode()
    ext.set_quantize_act_2l_fused(fused_before if fused_quant is None else fused_quant, quant_cluster)
    try:
        yield
    finally:
        ext.set_gemm_2l_w8_producer(False)
        ext.set_gemm_2l_persistent(-1)
        ext.set_gemm_2l_tma_store(False)
        ext.set_gemm_2l_rf_warpgroups(0, 0)
        ext.set_quantize_act_2l_fused(fused_before, 0)
        ext.set_gemm_2l_rf_by_cost(rbc_before)
        ext.set_gemm_2l_rf_splits(0)
        ext.set_lowrank_down_max_tokens(down_before, False)
        ext.set_lowrank_down_deep(False)
        ext.set_pdl(False)
        ext.set_gemm_2l_rf3_stage(0, 0)
        ext.set_gemm_2l_rf3_model(1)
        ext.set_quantize_act_2l_lean(True)
        ext.set_quantize_act_2l_chunk_bytes(0)
        ext.set_lr_chain(chain_before)
        ext.set_lowrank_down_beside(beside_before)
        ext.set_gemm_2l_rf_lead(False)
        for name, (_, after) in optional.items():
            getattr(ext, name)(after)
        if hasattr(ext, "set_gemm_2l_out_pieces"):
            ext.set_gemm_2l_out_pieces(256, 2)
            ext.set_gemm_2l_out_pieces(192, 2)

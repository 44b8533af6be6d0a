"""The shapes the CUDA kernels take, as the dispatcher (cuda.py) and kernel_coverage.py check them."""
from __future__ import annotations

import torch

KERNEL_GROUPS = (32, 64, 128)
KERNEL_DTYPES = (torch.bfloat16, torch.float16)
KERNEL_DTYPE_NAMES = ("bfloat16", "float16")
HOPPER = (9, 0)
QUANTIZER_MAX_K = 32768  # csrc/quantize_act_2l.cu: a row in one CTA, at most 512 threads x 8 vectors of 8 values
GEMM_2L_STAGE_K = 128  # csrc/w4a4_gemm_2l_sm90.cu: the K stage and the weight-row tile
GEMM_2L_MAX_K = 65536
GEMM_2L_MAX_RANK = 256  # csrc/launch.h kMaxRank2l: the low-rank branch, LoRAs folded in


def quantizer_2l_takes(in_features: int, group_size: int) -> bool:
    """Whether the int4_2l activation quantizer kernel (any CUDA GPU) takes rows of ``in_features`` values."""
    k = in_features
    return group_size in KERNEL_GROUPS and 0 < k <= QUANTIZER_MAX_K and k % 8 == 0 and k % group_size == 0


def gemm_2l_shape_ok(in_features: int, out_features: int) -> bool:
    """Whether the Hopper int4_2l GEMM kernels take a K x N weight (their other checks are dtypes and the rank)."""
    k, n = in_features, out_features
    return k % GEMM_2L_STAGE_K == 0 and n % GEMM_2L_STAGE_K == 0 and 0 < k <= GEMM_2L_MAX_K


def padded_to_tile(features: int) -> int:
    """``features`` rounded up to the Hopper GEMM's 128-wide K stage / row tile (the fragment-order layers' padding)."""
    return -(-features // GEMM_2L_STAGE_K) * GEMM_2L_STAGE_K


def shape_gap(in_features: int, out_features: int, rank: int, group_size: int, quant_format: str, weight_only: bool,
              dtype: str, capability: tuple[int, int]) -> str | None:
    """Why the fused kernels do not take a 4-bit layer of these shapes (``dtype``: the compute dtype's name, e.g.
    "bfloat16") on a GPU of compute ``capability``, as the layer is set up when loaded there (on Hopper: in fragment
    order, padded to the GEMM's tiles); None when they do."""
    k, n, gs = in_features, out_features, group_size
    if quant_format == "nvfp4":
        return "NVFP4 has no CUDA kernel"
    if weight_only:
        return "W4A16 (weight-only) layers run the reference ops"
    if dtype not in KERNEL_DTYPE_NAMES:
        return f"compute dtype {dtype}: the kernels take bfloat16 / float16"
    if gs not in KERNEL_GROUPS:
        return f"group size {gs}: the kernels take 32, 64 or 128"
    if tuple(capability) < (8, 0):
        return f"compute capability {capability[0]}.{capability[1]}: the kernels need 8.0 or newer"
    if quant_format == "int4":
        return None if n % 8 == 0 else f"out_features {n} is not a multiple of 8"
    if not quantizer_2l_takes(k, gs):
        return f"in_features {k}: the quantizer kernel takes multiples of 8 up to {QUANTIZER_MAX_K}"
    if tuple(capability) != HOPPER:
        return "the int4_2l GEMM kernel is Hopper-only (sm_90a); elsewhere the exact int8 reference GEMM runs"
    # any other K and N: padded to the GEMM's tiles (padded_to_tile; SVDQuantLinear.set_fragment_order), and the
    # quantizer's K limit is below the GEMM's
    if rank > GEMM_2L_MAX_RANK:
        return f"low-rank branch of rank {rank} (LoRAs folded in): the GEMM takes up to {GEMM_2L_MAX_RANK}"
    return None

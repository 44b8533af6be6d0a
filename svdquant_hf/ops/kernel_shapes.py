"""The shapes the CUDA kernels take, as the dispatcher (cuda.py) and kernel_coverage.py check them."""
from __future__ import annotations

import torch

KERNEL_GROUPS = (32, 64, 128)
KERNEL_DTYPES = (torch.bfloat16, torch.float16)
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

"""Op dispatch: torch.library ops with reference (any device) and CUDA implementations."""
from .library import quantize_act, w4a4_gemm
from .reference import (
    nvfp4_linear_ref,
    quantize_act_ref,
    w4a4_gemm_ref,
    w4a4_group_dots,
    w4a16_linear_ref,
)

__all__ = [
    "quantize_act",
    "w4a4_gemm",
    "quantize_act_ref",
    "w4a4_gemm_ref",
    "w4a4_group_dots",
    "w4a16_linear_ref",
    "nvfp4_linear_ref",
]

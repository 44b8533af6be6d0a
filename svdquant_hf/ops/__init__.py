"""Op dispatch: torch.library ops with reference (any device) and CUDA implementations."""
from .library import quantize_act, quantize_act_2l, w4a4_gemm, w4a4_gemm_2l
from .reference import (
    dequantize_weight_2l,
    int_dot_exact,
    nvfp4_linear_ref,
    quantize_act_2l_ref,
    quantize_act_ref,
    w4a4_gemm_2l_ref,
    w4a4_gemm_ref,
    w4a4_group_dots,
    w4a16_2l_linear_ref,
    w4a16_linear_ref,
)
from .traced import quantize_act_2l_traced, set_trace_quantizer

__all__ = [
    "quantize_act",
    "w4a4_gemm",
    "quantize_act_2l",
    "w4a4_gemm_2l",
    "quantize_act_ref",
    "w4a4_gemm_ref",
    "w4a4_group_dots",
    "w4a16_linear_ref",
    "nvfp4_linear_ref",
    "quantize_act_2l_ref",
    "w4a4_gemm_2l_ref",
    "int_dot_exact",
    "dequantize_weight_2l",
    "w4a16_2l_linear_ref",
    "quantize_act_2l_traced",
    "set_trace_quantizer",
]

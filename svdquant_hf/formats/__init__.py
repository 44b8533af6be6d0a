"""Quantized tensor formats: INT4 (the SVDQuant default), INT4 with two-level scales, NVFP4 (reference only).

The formats are defined here once; docs/format.md describes the same bits in prose.
"""
from .int4 import (
    INT4_MAX,
    INT4_MIN,
    dequantize_int4,
    pack_int4,
    quantize_int4,
    unpack_int4,
)
from .int4_2l import (
    combine_2l,
    dequantize_int4_2l,
    quantize_int4_2l,
    quantize_with_scales_2l,
)
from .nvfp4 import (
    E2M1_VALUES,
    dequantize_nvfp4,
    pack_e2m1,
    quantize_nvfp4,
    unpack_e2m1,
)

__all__ = [
    "INT4_MAX",
    "INT4_MIN",
    "quantize_int4",
    "dequantize_int4",
    "pack_int4",
    "unpack_int4",
    "quantize_int4_2l",
    "dequantize_int4_2l",
    "quantize_with_scales_2l",
    "combine_2l",
    "E2M1_VALUES",
    "quantize_nvfp4",
    "dequantize_nvfp4",
    "pack_e2m1",
    "unpack_e2m1",
]

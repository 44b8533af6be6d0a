"""The SVDQuant algorithm, free of any host library."""
from .gptq import gptq_int4
from .lowrank import lowrank_factors, top_singular
from .smoothing import smoothing_factors
from .svdquant import (
    QuantizationError,
    QuantizedWeights,
    quantize_weight,
    reference_forward,
    relative_output_error,
    search_alpha,
)

__all__ = [
    "QuantizationError",
    "QuantizedWeights",
    "gptq_int4",
    "lowrank_factors",
    "quantize_weight",
    "reference_forward",
    "relative_output_error",
    "search_alpha",
    "smoothing_factors",
    "top_singular",
]

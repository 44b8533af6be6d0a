"""SVDQuant for transformers models: config, quantizer and their registration with transformers."""
from __future__ import annotations

import warnings

from .config import QUANT_METHOD, SVDQuantMethod, SVDQuantTransformersConfig
from .quantizer import SVDQuantHfQuantizer, attach_transformers_quantizer


def register() -> bool:
    """Register "svdquant" with transformers (idempotent); False, with a warning, when it cannot."""
    try:
        from transformers.quantizers import auto
    except Exception as e:  # pragma: no cover - transformers missing or broken
        warnings.warn(f"svdquant_hf: transformers integration not registered ({e})", stacklevel=2)
        return False
    try:
        if auto.AUTO_QUANTIZATION_CONFIG_MAPPING.get(QUANT_METHOD) is not SVDQuantTransformersConfig:
            auto.AUTO_QUANTIZATION_CONFIG_MAPPING.pop(QUANT_METHOD, None)
            auto.register_quantization_config(QUANT_METHOD)(SVDQuantTransformersConfig)
        if auto.AUTO_QUANTIZER_MAPPING.get(QUANT_METHOD) is not SVDQuantHfQuantizer:
            auto.AUTO_QUANTIZER_MAPPING.pop(QUANT_METHOD, None)
            auto.register_quantizer(QUANT_METHOD)(SVDQuantHfQuantizer)
    except Exception as e:  # pragma: no cover
        warnings.warn(f"svdquant_hf: transformers integration not registered ({e})", stacklevel=2)
        return False
    return True


__all__ = [
    "QUANT_METHOD",
    "SVDQuantMethod",
    "SVDQuantTransformersConfig",
    "SVDQuantHfQuantizer",
    "attach_transformers_quantizer",
    "register",
]

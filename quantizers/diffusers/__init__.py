"""SVDQuant as a diffusers quantization backend (quant_method "svdquant")."""
from __future__ import annotations


def register() -> bool:
    """Add "svdquant" to diffusers' quantizer and config mappings. False when diffusers is missing."""
    try:
        from diffusers.quantizers import auto
    except ImportError:
        return False
    from ..config import QUANT_METHOD, SVDQuantConfig
    from .quantizer import SVDQuantDiffusersQuantizer

    auto.AUTO_QUANTIZER_MAPPING[QUANT_METHOD.value] = SVDQuantDiffusersQuantizer
    auto.AUTO_QUANTIZATION_CONFIG_MAPPING[QUANT_METHOD.value] = SVDQuantConfig
    return True


__all__ = ["register"]

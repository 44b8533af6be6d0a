"""svdquant-hf: SVDQuant 4-bit (W4A4) quantization for diffusion models, native to Hugging Face."""
from .algorithm import QuantizationError
from .config import SVDQuantOptions
from .modules import SVDQuantLinear
from .quantize import quantize_model
from .lora import install as _install_lora_hooks

_install_lora_hooks()  # lazy: patches PEFT/diffusers only when they get imported (svdquant_hf/lora)

from .quantizers.config import SVDQuantConfig  # diffusers QuantizationConfigMixin (quantizers/config.py)
from .quantizers.diffusers import register as _register_diffusers

_register_diffusers()  # quant_method "svdquant" in diffusers' mappings (no-op without diffusers)

from .pipeline import quantize_pipeline

try:  # transformers integration: registers quant_method "svdquant" (never fails the import)
    from .quantizers.transformers import register as _register_transformers

    _register_transformers()
except Exception as _e:  # pragma: no cover - transformers missing or incompatible
    import warnings as _w

    _w.warn(f"svdquant_hf: transformers integration unavailable ({_e})", stacklevel=2)

__version__ = "0.1.0"
__all__ = ["SVDQuantConfig", "SVDQuantOptions", "SVDQuantLinear", "QuantizationError", "quantize_model", "quantize_pipeline"]

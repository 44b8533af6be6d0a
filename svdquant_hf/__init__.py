"""svdquant-hf: SVDQuant 4-bit (W4A4) quantization for diffusion models, native to Hugging Face."""
from .algorithm import QuantizationError
from .config import SVDQuantOptions
from .modules import SVDQuantLinear
from .quantize import quantize_model

SVDQuantConfig = SVDQuantOptions

__version__ = "0.1.0"
__all__ = ["SVDQuantConfig", "SVDQuantOptions", "SVDQuantLinear", "QuantizationError", "quantize_model"]

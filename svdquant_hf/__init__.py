"""svdquant-hf: SVDQuant 4-bit (W4A4) quantization for diffusion models, native to Hugging Face."""
from .lora import install as _install_lora_hooks

# LoRA patches for PEFT / diffusers, applied when (and only if) those libraries get imported:
# installed first so that every later import of them is seen (svdquant_hf/lora/hooks.py).
_install_lora_hooks()

from .algorithm import QuantizationError  # noqa: E402
from .config import SVDQuantOptions  # noqa: E402
from .modules import SVDQuantLinear, set_fragment_order, set_int8_weights  # noqa: E402
from .pipeline import quantize_pipeline  # noqa: E402
from .fusion import fuse_shared_input_projections, unfuse_shared_input_projections  # noqa: E402
from .cuda_graphs import disable_cuda_graphs, enable_cuda_graphs  # noqa: E402
from .epilogues import fuse_epilogues, unfuse_epilogues  # noqa: E402
from .kernel_coverage import kernel_gaps  # noqa: E402
from .quantize import qkv_groups, quantize_model  # noqa: E402
from .quantizers import register as _register_integrations  # noqa: E402
from .quantizers.config import SVDQuantConfig  # noqa: E402  (a diffusers QuantizationConfigMixin)

# quant_method "svdquant" in diffusers' and transformers' mappings; a missing or incompatible host
# library is skipped (with a warning when it is present but incompatible), never an import error.
_register_integrations()

__version__ = "0.1.0"
__all__ = ["SVDQuantConfig", "SVDQuantOptions", "SVDQuantLinear", "QuantizationError", "quantize_model", "qkv_groups", "quantize_pipeline",
           "fuse_shared_input_projections", "unfuse_shared_input_projections", "set_int8_weights",
           "set_fragment_order", "enable_cuda_graphs", "disable_cuda_graphs", "fuse_epilogues", "unfuse_epilogues",
           "kernel_gaps"]

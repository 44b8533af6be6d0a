"""Adapters of SVDQuant to the Hugging Face quantizer APIs (installed as ``svdquant_hf.quantizers``).

``register()`` runs on ``import svdquant_hf``: it adds quant_method "svdquant" to diffusers (always,
when installed) and to transformers (through ``svdquant_hf.quantizers.transformers.register`` when that
module exists). Missing host libraries are not an error.
"""
from __future__ import annotations

import importlib
import warnings

from .common import default_skip_patterns, quantizable_linears, replace_with_svdquant_linear
from .config import QUANT_METHOD, SVDQuantConfig, SVDQuantMethod

REGISTERED: dict[str, bool] = {"diffusers": False, "transformers": False}


def _register_submodule(name: str) -> bool:
    full = f"{__name__}.{name}"
    try:
        mod = importlib.import_module(full)
    except ModuleNotFoundError as e:
        if e.name in (full, name):  # the adapter itself, or its host library, is absent
            return False
        raise
    except ImportError as e:  # the host library is there but too old / incompatible
        warnings.warn(f"svdquant_hf: {name} integration unavailable ({e})", stacklevel=3)
        return False
    return bool(mod.register())


def register() -> dict[str, bool]:
    """Register "svdquant" with diffusers and transformers; returns which succeeded."""
    REGISTERED["diffusers"] = _register_submodule("diffusers")
    REGISTERED["transformers"] = _register_submodule("transformers")
    return dict(REGISTERED)


__all__ = [
    "QUANT_METHOD",
    "REGISTERED",
    "SVDQuantConfig",
    "SVDQuantMethod",
    "default_skip_patterns",
    "quantizable_linears",
    "register",
    "replace_with_svdquant_linear",
]

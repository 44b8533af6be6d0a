"""SVDQuantConfig: the diffusers quantization config (quant_method "svdquant"), also usable pipeline-wide.

Contract for the transformers-side config (quantizers/transformers/): subclass ``SVDQuantConfig`` together
with transformers' ``QuantizationConfigMixin`` and do NOT override ``__init__``, so that
``PipelineQuantizationConfig(quant_backend="svdquant", quant_kwargs=...)`` sees identical parameters:

    SVDQuantConfig(rank=32, group_size=64, quant_format="auto", weight_only=False, alpha=None,
                   alpha_grid=20, refine_iters=0, gptq=False, calib_tokens=1024,
                   modules_to_not_convert=None, joint_qkv=False, **kwargs)

The named parameters are the ``SVDQuantOptions`` fields (an SVDQuantConfig IS an SVDQuantOptions, so
it can be passed straight to ``quantize_model``). ``**kwargs`` accepts only ``quant_method`` (must be
"svdquant"; config.json carries it) and ``components_to_quantize`` (pipeline level, diffusers side only,
not written to a model's config.json); anything else is rejected naming the option.
"""
from __future__ import annotations

import copy
import json
from enum import Enum
from typing import Any

from ..config import SVDQuantOptions

try:  # diffusers is optional at import time: without it SVDQuantConfig is a plain options object
    from diffusers.quantizers.pipe_quant_config import PipelineQuantizationConfig as _PipelineConfigBase
    from diffusers.quantizers.quantization_config import QuantizationConfigMixin as _DiffusersConfigBase

    HAS_DIFFUSERS = True
except ImportError:  # pragma: no cover - exercised only without diffusers
    HAS_DIFFUSERS = False

    class _DiffusersConfigBase:  # type: ignore[no-redef]
        pass

    class _PipelineConfigBase:  # type: ignore[no-redef]
        pass


class SVDQuantMethod(str, Enum):
    """diffusers/transformers read ``quant_method.value``: it must be an Enum member."""

    SVDQUANT = "svdquant"


QUANT_METHOD = SVDQuantMethod.SVDQUANT

# Pipeline components quantized when ``components_to_quantize`` is None: the denoiser.
DENOISER_COMPONENTS = ("transformer", "transformer_2", "unet", "prior")

_OPTION_NAMES = tuple(SVDQuantOptions.__dataclass_fields__)
_DEFAULTS = SVDQuantOptions().options_dict()


class SVDQuantConfig(SVDQuantOptions, _DiffusersConfigBase, _PipelineConfigBase):
    """SVDQuant W4A4 quantization config for diffusers ``from_pretrained`` (model or pipeline level).

    Model level: ``FluxTransformer2DModel.from_pretrained(path, quantization_config=SVDQuantConfig())``
    quantizes every targeted linear as its weight is loaded. Pipeline level:
    ``FluxPipeline.from_pretrained(path, quantization_config=SVDQuantConfig())`` quantizes the denoiser,
    or the components named in ``components_to_quantize`` (transformers components, e.g. text
    encoders, go through the transformers-side SVDQuant config).
    Options: see ``SVDQuantOptions``.
    """

    quant_method = QUANT_METHOD
    # PipelineQuantizationConfig attributes diffusers reads (never granular, no backend string needed)
    quant_mapping = None
    is_granular = False
    quant_backend = QUANT_METHOD.value
    _exclude_attributes_at_init: list[str] = []

    def __init__(
        self,
        rank: int = 32,
        group_size: int = 64,
        quant_format: str = "auto",
        weight_only: bool = False,
        alpha: float | None = None,
        alpha_grid: int = 20,
        refine_iters: int = 0,
        gptq: bool = False,
        calib_tokens: int = 1024,
        modules_to_not_convert: list[str] | None = None,
        joint_qkv: bool = False,
        **kwargs: Any,
    ) -> None:
        # quant_method (written in config.json) and components_to_quantize (pipeline level) come
        # through **kwargs so that the parameter list equals the transformers-side config's
        quant_method = kwargs.pop("quant_method", QUANT_METHOD)
        components_to_quantize = kwargs.pop("components_to_quantize", None)
        if kwargs:
            raise ValueError(
                f"Unknown SVDQuant option(s): {sorted(kwargs)}; known: {sorted(_OPTION_NAMES + ('components_to_quantize',))}"
            )
        if str(getattr(quant_method, "value", quant_method)) != QUANT_METHOD.value:
            raise ValueError(f"SVDQuantConfig: quant_method={quant_method!r}, expected {QUANT_METHOD.value!r}")
        SVDQuantOptions.__init__(
            self, rank, group_size, quant_format, weight_only, alpha, alpha_grid, refine_iters, gptq,
            calib_tokens, list(modules_to_not_convert) if modules_to_not_convert is not None else None, joint_qkv,
        )
        if isinstance(components_to_quantize, str):
            components_to_quantize = [components_to_quantize]
        if components_to_quantize is not None and not all(isinstance(c, str) for c in components_to_quantize):
            raise ValueError("SVDQuant option components_to_quantize: expected a list of component names")
        self.components_to_quantize = list(components_to_quantize) if components_to_quantize is not None else None
        self.config_mapping: dict[str, Any] = {}
        self.validate()

    # ---- serialization (config.json "quantization_config") ----
    def to_dict(self) -> dict[str, Any]:
        """Model-level dict: quant_method + every option (components_to_quantize is pipeline-level)."""
        d: dict[str, Any] = {"quant_method": QUANT_METHOD.value}
        d.update(copy.deepcopy(self.options_dict()))
        return d

    def to_diff_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.to_dict().items() if k == "quant_method" or _DEFAULTS.get(k, object()) != v}
        return d

    def to_json_string(self, use_diff: bool = True) -> str:
        return json.dumps(self.to_diff_dict() if use_diff else self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, json_file_path: str) -> None:
        with open(json_file_path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string(use_diff=False))

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], return_unused_kwargs: bool = False, **kwargs: Any):
        config = cls(**config_dict)
        unused = {}
        for key, value in kwargs.items():
            if key in _OPTION_NAMES:
                setattr(config, key, value)
            else:
                unused[key] = value
        config.validate()
        return (config, unused) if return_unused_kwargs else config

    def __iter__(self):
        yield from self.to_dict().items()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SVDQuantConfig) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def update(self, **kwargs: Any) -> dict[str, Any]:
        used = {k: v for k, v in kwargs.items() if k in _OPTION_NAMES}
        for k, v in used.items():
            setattr(self, k, v)
        self.validate()
        return {k: v for k, v in kwargs.items() if k not in used}

    def options(self) -> SVDQuantOptions:
        """The plain-Python options (no host-library base)."""
        return SVDQuantOptions(**self.options_dict())

    def model_config(self) -> "SVDQuantConfig":
        """A copy without pipeline-level fields, for one model."""
        return SVDQuantConfig(**self.options_dict())

    # ---- pipeline level (diffusers calls this per component, see DiffusionPipeline.from_pretrained) ----
    def _resolve_quant_config(self, is_diffusers: bool = True, module_name: str | None = None):
        wanted = self.components_to_quantize
        if wanted is None:
            if not is_diffusers or module_name not in DENOISER_COMPONENTS:
                return None
        elif module_name not in wanted:
            return None
        if is_diffusers:
            cfg = self.model_config()
        else:
            cfg = transformers_config_class()(**self.options_dict())
        self.config_mapping[module_name] = cfg
        return cfg

    def _get_quant_config_list(self):
        from diffusers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING as diffusers_map

        try:
            from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING as transformers_map
        except ImportError:  # pragma: no cover
            transformers_map = None
        return transformers_map, diffusers_map


def transformers_config_class() -> type:
    """The SVDQuant config class registered with transformers (quantizers/transformers/)."""
    try:
        from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING
    except ImportError as e:  # pragma: no cover
        raise ImportError("quantizing a transformers component with SVDQuant needs transformers") from e
    cls = AUTO_QUANTIZATION_CONFIG_MAPPING.get(QUANT_METHOD.value)
    if cls is None:
        raise ValueError(
            "SVDQuant is not registered with transformers (svdquant_hf.quantizers.transformers is missing or "
            "failed to register), so transformers components (text encoders) cannot be quantized"
        )
    return cls


__all__ = ["DENOISER_COMPONENTS", "QUANT_METHOD", "SVDQuantConfig", "SVDQuantMethod", "transformers_config_class"]

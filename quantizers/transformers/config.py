"""SVDQuantConfig for transformers models (text encoders): a transformers QuantizationConfigMixin.

Its ``__init__`` takes the same parameters as the diffusers-side SVDQuantConfig, so
``PipelineQuantizationConfig(quant_backend="svdquant", quant_kwargs=...)`` can build either one.
"""
from __future__ import annotations

from enum import Enum
from typing import Any

from transformers.utils.quantization_config import QuantizationConfigMixin

from ...config import SVDQuantOptions

QUANT_METHOD = "svdquant"


class SVDQuantMethod(str, Enum):
    """``quant_method`` as an Enum member (compares and hashes equal to the string "svdquant")."""

    SVDQUANT = QUANT_METHOD


class SVDQuantTransformersConfig(SVDQuantOptions, QuantizationConfigMixin):
    """SVDQuant options for ``PreTrainedModel.from_pretrained(..., quantization_config=...)``.

    T5 / CLIP encoders: W4A4 SVDQuant by default; ``weight_only=True`` gives 4-bit weights with
    16-bit activations (W4A16), the usual choice for T5. See SVDQuantOptions for each option.
    """

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
        method = kwargs.pop("quant_method", QUANT_METHOD)
        if str(getattr(method, "value", method)) != QUANT_METHOD:
            raise ValueError(f"SVDQuantConfig: quant_method={method!r}, expected {QUANT_METHOD!r}")
        if kwargs:
            known = sorted(self.option_names())
            raise ValueError(f"Unknown SVDQuant option(s): {sorted(kwargs)}; known: {known}")
        self.quant_method = SVDQuantMethod.SVDQUANT
        SVDQuantOptions.__init__(  # assigns every option and validates
            self, rank, group_size, quant_format, weight_only, alpha, alpha_grid, refine_iters, gptq,
            calib_tokens, list(modules_to_not_convert) if modules_to_not_convert is not None else None, joint_qkv,
        )

    @staticmethod
    def option_names() -> list[str]:
        return list(SVDQuantOptions().options_dict())

    def to_options(self) -> SVDQuantOptions:
        return SVDQuantOptions(**self.options_dict())

    def to_dict(self) -> dict[str, Any]:
        return {"quant_method": QUANT_METHOD, **self.options_dict()}

    def to_diff_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def __iter__(self):
        yield from self.to_dict().items()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SVDQuantOptions) and self.options_dict() == other.options_dict()

    __hash__ = None  # mutable

    @classmethod
    def from_options(cls, options: SVDQuantOptions | dict[str, Any] | None) -> "SVDQuantTransformersConfig":
        if options is None:
            return cls()
        if isinstance(options, dict):
            return cls(**options)
        return cls(**options.options_dict())

"""The transformers HfQuantizer for SVDQuant: quantize on load, and load pre-quantized checkpoints.

Quantize on load: before loading, each target nn.Linear becomes an SVDQuantLinear on the meta
device that still exposes a placeholder ``weight``; when that weight streams in, the quantize op
turns it into the SVDQuant tensors (on the GPU when there is one) and drops the placeholder, so
only one 16-bit weight exists at a time. Pre-quantized: the checkpoint header says which linears
are SVDQuant layers (and their dtype); every tensor is validated before anything is loaded.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
from torch import nn
from transformers.core_model_loading import ConversionOps
from transformers.quantizers.base import HfQuantizer

from ...algorithm.svdquant import QuantizationError, quantize_weight
from ...config import SVDQuantOptions
from ...formats.int4_2l import MAX_K_2L, invalid_2l_tensor
from ...modules import SVDQuantLinear
from ..common import hopper_fragment_order, realign_cpu_tensors, warn_kernel_gaps
from ..diffusers.utils import atomic_save, warn_reference_path
from .config import SVDQuantTransformersConfig
from .keys import renamed_checkpoint_infos
from .layers import (
    OPTIONAL_TENSORS,
    QUANT_TENSORS,
    add_weight_probe,
    compute_dtype,
    new_layer,
    prequantized_layers,
    read_checkpoint_tensors,
    target_linears,
)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


class SVDQuantQuantizeOp(ConversionOps):
    """Turns one streamed-in 16-bit ``<linear>.weight`` into the SVDQuantLinear tensors."""

    def __init__(self, hf_quantizer: "SVDQuantHfQuantizer") -> None:
        self.hf_quantizer = hf_quantizer

    def convert(
        self,
        input_dict: dict[str, Any],
        model: nn.Module | None = None,
        full_layer_name: str | None = None,
        missing_keys: set[str] | None = None,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        value = next(iter(input_dict.values()))
        value = value[0] if isinstance(value, list) else value
        layer, _, _ = full_layer_name.rpartition(".")
        mod = model.get_submodule(layer)
        if not isinstance(mod, SVDQuantLinear):
            raise QuantizationError(f"layer {layer!r}: expected an SVDQuantLinear placeholder, got {type(mod).__name__}")
        expected = (mod.out_features, mod.in_features)
        if tuple(value.shape) != expected:
            raise QuantizationError(
                f"checkpoint tensor {full_layer_name}: shape {list(value.shape)}, expected {list(expected)}"
            )
        options = self.hf_quantizer.options
        work = torch.device("cuda") if torch.cuda.is_available() else value.device
        qw = quantize_weight(value.to(work), options, mod.compute_dtype, name=layer)
        home = value.device
        out = {f"{layer}.{t}": getattr(qw, t).to(home) for t in QUANT_TENSORS}
        if qw.wtscale is not None:
            out[f"{layer}.wtscale"] = qw.wtscale.float().reshape(()).to(home)
        if qw.wchannel is not None:
            out[f"{layer}.wchannel"] = qw.wchannel.float().to(home)
        add_weight_probe(mod)
        if missing_keys is not None:
            missing_keys.discard(full_layer_name)
        self.hf_quantizer.converted.add(layer)
        return out


class SVDQuantHfQuantizer(HfQuantizer):
    """transformers quantizer for ``quant_method="svdquant"`` (T5 / CLIP text encoders and others)."""

    requires_calibration = False
    quantization_config: SVDQuantTransformersConfig

    def __init__(self, quantization_config: Any, **kwargs: Any) -> None:
        if not isinstance(quantization_config, SVDQuantTransformersConfig):
            quantization_config = SVDQuantTransformersConfig.from_options(
                quantization_config if isinstance(quantization_config, (SVDQuantOptions, dict)) else dict(quantization_config)
            )
        super().__init__(quantization_config, **kwargs)
        self.options: SVDQuantOptions = quantization_config.to_options()
        self.converted: set[str] = set()
        self.swapped: set[str] = set()

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        if not torch.cuda.is_available():
            warn_reference_path("loading this SVDQuant model" if self.pre_quantized else "quantize-on-load")

    def preprocess_model(self, model: nn.Module, dtype: torch.dtype | None = None, **kwargs: Any) -> Any:
        self.dtype = dtype  # HfQuantizer.preprocess_model does not pass it on
        return super().preprocess_model(model, dtype=dtype, **kwargs)

    def get_new_dtype(self, converter: Any, param: Any, dtype: torch.dtype | None) -> torch.dtype | None:
        """Pre-quantized SVDQuant tensors load in their stored dtype (no torch_dtype / keep-in-fp32 cast)."""
        targets = getattr(converter, "target_patterns", None) or ()
        layer, _, tensor = (targets[0] if targets else "").rpartition(".")
        if layer in self.swapped and tensor in QUANT_TENSORS + OPTIONAL_TENSORS:
            return None
        return super().get_new_dtype(converter, param, dtype)

    def param_needs_quantization(self, model: nn.Module, param_name: str, **kwargs: Any) -> bool:
        if self.pre_quantized:
            return False
        layer, _, tensor = param_name.rpartition(".")
        return tensor == "weight" and layer in self.swapped

    def get_quantize_ops(self) -> SVDQuantQuantizeOp:
        return SVDQuantQuantizeOp(self)

    def _process_model_before_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        dtype = getattr(self, "dtype", None) or kwargs.get("dtype")
        if self.pre_quantized:
            infos = renamed_checkpoint_infos(
                model, read_checkpoint_tensors(kwargs.get("checkpoint_files")), self, QUANT_TENSORS + OPTIONAL_TENSORS
            )
            layers = prequantized_layers(model, infos, self.options)
            if not layers:
                raise QuantizationError(
                    "the model's config says quant_method='svdquant' but its checkpoint holds no SVDQuant "
                    "layer (no '<linear>.qweight' tensor in the safetensors files)"
                )
            self.stored_dtypes = {
                f"{name}.{t}": infos[f"{name}.{t}"].dtype
                for name in layers for t in QUANT_TENSORS + OPTIONAL_TENSORS if f"{name}.{t}" in infos
            }
            for name, (lin, dt, rank) in layers.items():
                mod = new_layer(lin, self.options, dt, rank)
                add_weight_probe(mod)
                mod.layer_name = name
                _set_module(model, name, mod)
                self.swapped.add(name)
            return model
        targets, unfit = target_linears(model, self.options)
        if unfit:
            warnings.warn(
                f"SVDQuant: {len(unfit)} linear layer(s) kept in 16 bits because in_features is not a multiple "
                f"of group_size={self.options.effective_group_size}, rank={self.options.rank} is too large, or "
                f"(int4_2l) in_features exceeds {MAX_K_2L}: "
                f"{unfit[:8]}{' ...' if len(unfit) > 8 else ''}",
                stacklevel=2,
            )
        if not targets:
            warnings.warn("SVDQuant: no nn.Linear layer to quantize in this model", stacklevel=2)
        cdt = compute_dtype(dtype)
        for name, lin in targets.items():
            mod = new_layer(lin, self.options, cdt)
            # the checkpoint's 16-bit weight lands here, then the quantize op replaces it
            mod.weight = nn.Parameter(torch.empty(lin.out_features, lin.in_features, device="meta", dtype=lin.weight.dtype), requires_grad=False)
            mod.layer_name = name
            _set_module(model, name, mod)
            self.swapped.add(name)
        return model

    def _process_model_after_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        if not self.pre_quantized:
            left = sorted(self.swapped - self.converted)
            if left:
                raise QuantizationError(
                    f"SVDQuant: the checkpoint had no weight for {len(left)} layer(s) to quantize, e.g. "
                    f"{left[0]}.weight"
                )
        stored = getattr(self, "stored_dtypes", {})
        for name in self.swapped:
            mod = model.get_submodule(name)
            for t, buf in [*mod.named_buffers(recurse=False), *mod.named_parameters(recurse=False)]:
                if buf is not None and buf.is_meta:
                    raise QuantizationError(f"SVDQuant layer {name!r}: tensor {t!r} was not loaded from the checkpoint")
                why = invalid_2l_tensor(t, buf) if mod.quant_format == "int4_2l" else None
                if why:
                    raise QuantizationError(f"tensor {name + '.' + t!r} of SVDQuant layer {name!r} {why}")
                want = stored.get(f"{name}.{t}")
                if want is not None and buf.dtype != want:
                    # transformers versions without get_new_dtype cast floats (keep-in-fp32 rules): undo it
                    fixed = buf.detach().to(want)
                    if t == "bias":
                        mod.bias = nn.Parameter(fixed, requires_grad=False)
                    else:
                        mod._buffers[t] = fixed
        # pre-quantized from now on: a save_pretrained / from_pretrained round trip loads the tensors as is
        self.pre_quantized = True
        realign_cpu_tensors(model)
        hopper_fragment_order(model)
        warn_kernel_gaps(model)
        make_save_atomic(model)
        return model

    def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False

    @property
    def is_compileable(self) -> bool:
        return True


def make_save_atomic(model: nn.Module) -> None:
    """save_pretrained writes into a temporary folder first: a failed save leaves nothing half-written."""
    if "save_pretrained" not in vars(model):
        model.save_pretrained = functools.partial(atomic_save, type(model).save_pretrained.__get__(model))


def attach_transformers_quantizer(model: nn.Module, options: SVDQuantOptions) -> None:
    """Mark a transformers model quantized outside from_pretrained (e.g. by quantize_pipeline) as
    SVDQuant-quantized, so save_pretrained writes a checkpoint that from_pretrained loads pre-quantized."""
    cfg = SVDQuantTransformersConfig.from_options(options)
    q = SVDQuantHfQuantizer(cfg, pre_quantized=True)
    for name, mod in model.named_modules():
        if isinstance(mod, SVDQuantLinear):
            q.swapped.add(name)
            if not hasattr(mod, "weight"):
                add_weight_probe(mod)
    model.hf_quantizer = q
    model.is_quantized = True
    model.quantization_method = cfg.quant_method
    model.config.quantization_config = cfg
    make_save_atomic(model)

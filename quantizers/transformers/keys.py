"""Checkpoint key names -> the model's parameter names, as transformers renames them when loading.

transformers 5 saves some models under their original checkpoint names (Qwen2.5-VL: ``model.layers.*``
for ``model.language_model.layers.*``; Mistral 3: ``language_model.model.*``) and renames the keys while
loading. A pre-quantized checkpoint's header must be read with the same renaming to find its layers.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ...algorithm.svdquant import QuantizationError


def _renaming_rules(model: nn.Module, hf_quantizer: Any) -> tuple[list, list] | None:
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming
    except ImportError:  # a transformers without load-time renaming
        return None
    transforms = get_model_conversion_mapping(model, hf_quantizer=hf_quantizer)
    return ([t for t in transforms if isinstance(t, WeightRenaming)],
            [t for t in transforms if isinstance(t, WeightConverter)])


def renamed_checkpoint_infos(
    model: nn.Module, infos: dict[str, Any], hf_quantizer: Any, layer_tensors: tuple[str, ...]
) -> dict[str, Any]:
    """``infos`` keyed by the names transformers loads each checkpoint tensor under.

    A tensor of an SVDQuant layer (a name ending in one of ``layer_tensors``, next to a ``qweight``) that a
    weight converter would merge or split cannot be loaded one to one: that is an error naming it.
    """
    rules = _renaming_rules(model, hf_quantizer)
    if rules is None:
        return dict(infos)
    from transformers.core_model_loading import rename_source_key

    renamings, converters = rules
    layers = {k[: -len(".qweight")] for k in infos if k.endswith(".qweight")}
    out: dict[str, Any] = {}
    for key, info in infos.items():
        new, converted_by = rename_source_key(key, renamings, converters)
        layer, _, tensor = key.rpartition(".")
        if converted_by is not None and layer in layers and tensor in layer_tensors:
            raise QuantizationError(
                f"checkpoint tensor {key!r} of an SVDQuant layer: transformers converts it while loading "
                f"(pattern {converted_by!r}, e.g. fused experts), which quantized tensors do not support"
            )
        out[new] = info
    return out

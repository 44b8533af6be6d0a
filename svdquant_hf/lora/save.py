"""Save a quantized model that has LoRAs loaded: with the LoRAs folded in, or without them.

Both are context managers that temporarily put the plain layers back in place of the PEFT wrappers,
so ``save_pretrained`` inside the block writes an ordinary (pre-quantized) checkpoint; on exit the
model is exactly as before (same tensors, same adapters, same strengths).

* ``without_lora(m)``: the base model (4-bit layers with their own branch, 16-bit layers untouched).
* ``lora_folded(m)``: the active adapters at their current strengths become part of the model:
  4-bit layers get the extended low-rank branch (their per-layer rank grows, padded to 16; the
  loader reads the rank from the checkpoint), 16-bit layers get W + sum_i s_i B_i A_i.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn



def _modules_of(obj: Any) -> list[nn.Module]:
    if isinstance(obj, nn.Module):
        return [obj]
    components = getattr(obj, "components", None)
    if isinstance(components, dict):
        return [m for m in components.values() if isinstance(m, nn.Module)]
    raise TypeError(f"expected an nn.Module or a DiffusionPipeline, got {type(obj).__name__}")


def _tuner_layers(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return []
    found = []
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, BaseTunerLayer) and hasattr(child, "base_layer"):
                found.append((parent, child_name, child))
    return found


@contextmanager
def _swap_attrs(obj: nn.Module, **values: Any) -> Iterator[None]:
    saved = {k: getattr(obj, k) for k in values}
    for k, v in values.items():
        setattr(obj, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(obj, k, v)


def _detach(stack: ExitStack, parent: nn.Module, name: str, wrapper: nn.Module) -> nn.Module:
    base = wrapper.get_base_layer()
    stack.enter_context(_swap_attrs(parent, **{name: base}))
    return base


@contextmanager
def _peft_config_hidden(model: nn.Module) -> Iterator[None]:
    had = "peft_config" in model.__dict__
    cfg = model.__dict__.pop("peft_config", None)
    flag = model.__dict__.get("_hf_peft_config_loaded", None)
    if "_hf_peft_config_loaded" in model.__dict__:
        model._hf_peft_config_loaded = False
    try:
        yield
    finally:
        if had:
            model.peft_config = cfg
        if flag is not None:
            model._hf_peft_config_loaded = flag


@contextmanager
def without_lora(model_or_pipeline: Any) -> Iterator[None]:
    """Temporarily remove every LoRA (loaded or fused into a 4-bit layer); restore it on exit."""
    from .layer import SVDQuantLoraLinear

    with ExitStack() as stack:
        for model in _modules_of(model_or_pipeline):
            layers = _tuner_layers(model)
            for parent, name, wrapper in layers:
                if wrapper.merged and not isinstance(wrapper, SVDQuantLoraLinear):
                    raise ValueError(
                        f"without_lora: the 16-bit layer {name!r} has a fused LoRA, which cannot be removed exactly; "
                        "call unfuse_lora() first"
                    )
            for parent, name, wrapper in layers:
                base = _detach(stack, parent, name, wrapper)
                if isinstance(wrapper, SVDQuantLoraLinear) and wrapper._unmerged_branch is not None:
                    down, up, rank = wrapper._unmerged_branch
                    stack.enter_context(_swap_attrs(base, proj_down=down, proj_up=up, rank=rank))
            if layers:
                stack.enter_context(_peft_config_hidden(model))
        yield


@contextmanager
def lora_folded(model_or_pipeline: Any) -> Iterator[None]:
    """Temporarily fold the active adapters (at their current strengths) into plain layers."""
    from .layer import SVDQuantLoraLinear

    with ExitStack() as stack:
        for model in _modules_of(model_or_pipeline):
            layers = _tuner_layers(model)
            for parent, name, wrapper in layers:
                base = _detach(stack, parent, name, wrapper)
                if wrapper.disable_adapters:  # a disabled LoRA folds nothing, even if fused
                    if isinstance(wrapper, SVDQuantLoraLinear) and wrapper._unmerged_branch is not None:
                        down, up, rank = wrapper._unmerged_branch
                        stack.enter_context(_swap_attrs(base, proj_down=down, proj_up=up, rank=rank))
                    elif wrapper.merged:
                        raise ValueError(
                            f"lora_folded: the 16-bit layer {name!r} has a fused but disabled LoRA; "
                            "call unfuse_lora() or enable_lora() first"
                        )
                    continue
                if isinstance(wrapper, SVDQuantLoraLinear):
                    branch = wrapper._branch()
                    if branch is not None:
                        stack.enter_context(
                            _swap_attrs(base, proj_down=branch[0], proj_up=branch[1], rank=branch[0].shape[1])
                        )
                elif isinstance(getattr(base, "weight", None), torch.Tensor):
                    pending = [
                        a for a in wrapper.active_adapters
                        if a in wrapper.lora_A and a not in wrapper.merged_adapters
                    ]
                    if any(wrapper.lora_bias.get(a, False) for a in pending):
                        raise ValueError(f"lora_folded: layer {name!r} has a LoRA bias, which is not supported")
                    if pending:
                        with torch.no_grad():
                            w = base.weight.detach().float()
                            for a in pending:
                                w = w + wrapper.get_delta_weight(a).float()
                        new = nn.Parameter(w.to(base.weight.dtype), requires_grad=base.weight.requires_grad)
                        stack.enter_context(_swap_attrs(base, weight=new))
                else:
                    raise ValueError(f"lora_folded: cannot fold a LoRA into {type(base).__name__} layer {name!r}")
            if layers:
                stack.enter_context(_peft_config_hidden(model))
        yield


__all__ = ["without_lora", "lora_folded"]

"""quantize_model: replace the nn.Linear layers of any module with SVDQuantLinear."""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .algorithm.svdquant import QuantizationError, check_weight, quantize_weight, search_alpha
from .calibration import CalibrationData, LayerStats, collect_statistics
from .config import SVDQuantOptions
from .modules import SVDQuantLinear


def compute_dtype_for(weight: torch.Tensor) -> torch.dtype:
    return weight.dtype if weight.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16


def as_options(config: Any) -> SVDQuantOptions:
    if config is None:
        return SVDQuantOptions()
    if isinstance(config, SVDQuantOptions):
        return config
    if isinstance(config, dict):
        return SVDQuantOptions.from_options_dict(config)
    raise TypeError(f"quantization config: expected SVDQuantConfig, SVDQuantOptions or dict, got {type(config).__name__}")


def find_target_linears(
    model: nn.Module, options: SVDQuantOptions, extra_skip: Iterable[str] = ()
) -> dict[str, nn.Linear]:
    extra = tuple(extra_skip)
    return {
        name: mod
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and name and not options.is_skipped(name, extra)
    }


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def quantize_linear(
    linear: nn.Linear,
    options: SVDQuantOptions,
    name: str,
    stats: LayerStats | None = None,
    work_device: torch.device | None = None,
) -> SVDQuantLinear:
    """SVDQuant one nn.Linear (on ``work_device``), returning the module on the linear's device."""
    home = linear.weight.device
    dev = work_device or home
    w = linear.weight.detach().to(dev)
    b = None if linear.bias is None else linear.bias.detach().to(dev)
    dtype = compute_dtype_for(linear.weight)
    if stats is not None and stats.absmax is not None and not options.weight_only:
        rows = stats.sample().to(dev)
        hessian = None
        if options.gptq:
            xf = rows.float()
            hessian = xf.t() @ xf
        qw = search_alpha(w, b, options, dtype, stats.absmax.to(dev), rows, hessian, name)
    else:
        qw = quantize_weight(w, options, dtype, name=name)
    mod = SVDQuantLinear.from_quantized(qw, b, options, dtype).to(home)
    mod.layer_name = name
    return mod


def quantize_model(
    model: nn.Module,
    config: Any = None,
    calibration_data: CalibrationData | None = None,
    *,
    device: torch.device | str | None = None,
    extra_skip: Iterable[str] = (),
    progress: bool = True,
) -> nn.Module:
    """Quantize every nn.Linear of ``model`` (except skipped names) with SVDQuant, in place.

    calibration_data: an iterable of inputs (tensor, tuple of args, or dict of kwargs) or a
    callable ``f(model)`` that runs forward passes. Without it, the data-free rule is used.
    Layers are processed one at a time on ``device`` (default: CUDA when available).
    """
    options = as_options(config)
    targets = find_target_linears(model, options, extra_skip)
    if not targets:
        warnings.warn("quantize_model: no nn.Linear layer to quantize (all skipped or none present)")
        return model
    for name, lin in targets.items():  # fail before calibration and before any layer is replaced
        check_weight(lin.weight, options, name)
    stats: dict[str, LayerStats] = {}
    if calibration_data is not None:
        stats = collect_statistics(model, targets, calibration_data, options.calib_tokens)
    work = torch.device(device) if device is not None else (torch.device("cuda") if torch.cuda.is_available() else None)
    for name, lin in tqdm(list(targets.items()), desc="SVDQuant layers", disable=not progress):
        st = stats.pop(name, None)
        if calibration_data is not None and (st is None or st.seen_tokens == 0):
            warnings.warn(f"layer {name!r} saw no calibration input; using the data-free rule")
            st = None
        set_submodule(model, name, quantize_linear(lin, options, name, st, work))
    return model


__all__ = ["quantize_model", "quantize_linear", "find_target_linears", "QuantizationError"]

"""quantize_model: replace the nn.Linear layers of any module with SVDQuantLinear."""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .algorithm.groups import concat_group, split_outputs
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


# sibling projections that read one input, by the names models give them
QKV_NAMES = (("to_q", "to_k", "to_v"), ("add_q_proj", "add_k_proj", "add_v_proj"), ("query", "key", "value"),
             ("q_proj", "k_proj", "v_proj"), ("q", "k", "v"))


def qkv_groups(model: nn.Module, names: Iterable[str] | None = None) -> list[tuple[str, ...]]:
    """The (q, k, v) linears of each attention module (every QKV_NAMES triple it has: a joint attention's
    to_q/to_k/to_v and add_q/k/v_proj are two groups), among ``names`` when given."""
    allowed = None if names is None else set(names)
    groups = []
    for parent, mod in model.named_modules():
        for triple in QKV_NAMES:
            if all(isinstance(getattr(mod, c, None), nn.Linear) for c in triple):
                full = tuple(f"{parent}.{c}" if parent else c for c in triple)
                if allowed is None or all(f in allowed for f in full):
                    groups.append(full)
    return groups


def _quantize(
    w: torch.Tensor, b: torch.Tensor | None, options: SVDQuantOptions, dtype: torch.dtype, name: str,
    stats: LayerStats | None,
):
    dev = w.device
    if stats is not None and stats.absmax is not None and not options.weight_only:
        rows = stats.sample().to(dev)
        hessian = None
        if options.gptq:
            xf = rows.float()
            hessian = xf.t() @ xf
        return search_alpha(w, b, options, dtype, stats.absmax.to(dev), rows, hessian, name)
    return quantize_weight(w, options, dtype, name=name)


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
    qw = _quantize(w, b, options, dtype, name, stats)
    mod = SVDQuantLinear.from_quantized(qw, b, options, dtype).to(home)
    mod.layer_name = name
    return mod


def quantize_linear_group(
    linears: Sequence[nn.Linear],
    options: SVDQuantOptions,
    names: Sequence[str],
    stats: LayerStats | None = None,
    work_device: torch.device | None = None,
) -> list[SVDQuantLinear]:
    """SVDQuant linears that read the same input as one layer (their concatenation: one smoothing vector,
    one rank-r branch, alpha searched on the joint output), split back into one module per linear.
    The modules share ``smooth_factor`` and ``proj_down`` (algorithm/groups.py)."""
    home = linears[0].weight.device
    dev = work_device or home
    dtype = compute_dtype_for(linears[0].weight)
    w, b = concat_group([lin.weight.detach().to(dev) for lin in linears],
                        [None if lin.bias is None else lin.bias.detach().to(dev) for lin in linears], names)
    label = "+".join(names)
    check_weight(w, options, label)
    qw = _quantize(w, b, options, dtype, label, stats)
    mods = []
    for lin, name, part in zip(linears, names, split_outputs(qw, [lin.out_features for lin in linears], names)):
        bias = None if lin.bias is None else lin.bias.detach().to(dev)
        mod = SVDQuantLinear.from_quantized(part, bias, options, dtype).to(home)
        mod.layer_name = name
        mods.append(mod)
    return mods


def default_group_rank(options: SVDQuantOptions, groups: Sequence[tuple[str, ...]], widths: dict[str, int]) -> int:
    """3x the options' rank (the branch work of three separate layers, no quality loss on MiniLM:
    docs/quality.md), as far as the groups' in_features allow."""
    return min([3 * options.rank] + [widths[g[0]] for g in groups])


def check_groups(groups: Sequence[Sequence[str]], targets: dict[str, nn.Linear]) -> list[tuple[str, ...]]:
    """The groups as tuples, after checking that each names >= 2 targets of one in_features, none twice."""
    seen: set[str] = set()
    out = []
    for group in groups:
        group = tuple(group)
        if len(group) < 2:
            raise ValueError(f"shared_input_groups: {group!r} has fewer than two layers")
        for name in group:
            if name not in targets:
                raise ValueError(f"shared_input_groups: {name!r} is not a linear layer being quantized")
            if name in seen:
                raise ValueError(f"shared_input_groups: {name!r} is in more than one group")
            seen.add(name)
        if len({targets[n].in_features for n in group}) != 1:
            raise ValueError(f"shared_input_groups: {group!r} have different in_features")
        out.append(group)
    return out


def quantize_model(
    model: nn.Module,
    config: Any = None,
    calibration_data: CalibrationData | None = None,
    *,
    device: torch.device | str | None = None,
    extra_skip: Iterable[str] = (),
    progress: bool = True,
    shared_input_groups: Iterable[Sequence[str]] = (),
    group_rank: int | None = None,
) -> nn.Module:
    """Quantize every nn.Linear of ``model`` (except skipped names) with SVDQuant, in place.

    calibration_data: an iterable of inputs (tensor, tuple of args, or dict of kwargs) or a
    callable ``f(model)`` that runs forward passes. Without it, the data-free rule is used.
    Layers are processed one at a time on ``device`` (default: CUDA when available).
    shared_input_groups: tuples of layer names that read the same input (e.g. ``qkv_groups(model)``),
    each quantized jointly (``quantize_linear_group``); calibration statistics of the first member.
    With ``options.joint_qkv`` and no groups given: ``qkv_groups(model)``.
    group_rank: the groups' branch rank (default: ``default_group_rank``, 3x the options' rank).
    """
    options = as_options(config)
    targets = find_target_linears(model, options, extra_skip)
    if not targets:
        warnings.warn("quantize_model: no nn.Linear layer to quantize (all skipped or none present)")
        return model
    for name, lin in targets.items():  # fail before calibration and before any layer is replaced
        check_weight(lin.weight, options, name)
    requested = list(shared_input_groups) or (qkv_groups(model, targets) if options.joint_qkv else [])
    groups = check_groups(requested, targets)
    if group_rank is not None and group_rank < 0:
        raise ValueError(f"group_rank must be >= 0, got {group_rank}")
    if group_rank is None and groups:
        group_rank = default_group_rank(options, groups, {n: m.in_features for n, m in targets.items()})
    stats: dict[str, LayerStats] = {}
    if calibration_data is not None:
        stats = collect_statistics(model, targets, calibration_data, options.calib_tokens)
    work = torch.device(device) if device is not None else (torch.device("cuda") if torch.cuda.is_available() else None)

    def layer_stats(name: str) -> LayerStats | None:
        st = stats.pop(name, None)
        if calibration_data is not None and (st is None or st.seen_tokens == 0):
            warnings.warn(f"layer {name!r} saw no calibration input; using the data-free rule")
            st = None
        return st

    quantize_targets(model, targets, options, layer_stats, work, groups, group_rank, progress)
    return model


def quantize_targets(
    model: nn.Module,
    targets: dict[str, nn.Linear],
    options: SVDQuantOptions,
    layer_stats: Callable[[str], LayerStats | None],
    work: torch.device | None,
    groups: Sequence[tuple[str, ...]] = (),
    group_rank: int | None = None,
    progress: bool = True,
) -> None:
    """Replace each target (and each checked group, jointly) by its SVDQuantLinear, one unit at a time."""
    group_options = options if group_rank is None else replace(options, rank=group_rank)
    grouped = {n for g in groups for n in g}
    units: list[tuple[str, ...]] = [(n,) for n in targets if n not in grouped] + list(groups)
    for unit in tqdm(units, desc="SVDQuant layers", disable=not progress):
        if len(unit) == 1:
            set_submodule(model, unit[0], quantize_linear(targets[unit[0]], options, unit[0], layer_stats(unit[0]), work))
            continue
        st = next((x for x in [layer_stats(n) for n in unit] if x is not None), None)
        mods = quantize_linear_group([targets[n] for n in unit], group_options, unit, st, work)
        for name, mod in zip(unit, mods):
            set_submodule(model, name, mod)


__all__ = ["quantize_model", "quantize_linear", "quantize_linear_group", "qkv_groups", "find_target_linears",
           "QuantizationError"]

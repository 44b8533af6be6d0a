"""Run jointly quantized q/k/v layers as one SVDQuantLinear (one quantizer call, one GEMM).

Layers that share ``smooth_factor`` quantize their common input identically, so their concatenation is
one layer with the same numerics. The columns of ``proj_down`` they have in common (all of them after
``quantize_model(..., shared_input_groups=...)``) enter the fused branch once; a member's own columns (its
branch when the layers were quantized one by one with no smoothing, as on load; a LoRA merged by
``fuse_lora``) enter as its block: its rows of ``proj_up`` read them, the other members' rows hold zeros.
``fuse_shared_input_projections`` builds it for diffusers attention modules that have a fused path
(``fused_projections``: ``to_qkv`` for to_q/to_k/to_v, ``to_added_qkv`` for the add_*_proj layers) and
removes the members; ``unfuse_shared_input_projections`` splits it back exactly. A fused model's
state_dict keeps the member keys (checkpoints do not change); loading a LoRA needs the members, so it
asks for unfusing first (``fuse_lora`` + ``unload_lora_weights`` make it part of the members, which then fuse).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from .algorithm.groups import split_outputs
from .algorithm.svdquant import QuantizedWeights
from .config import SVDQuantOptions
from .modules import SVDQuantLinear
from .shared_input import quantize_alike

# diffusers' fused layers and their members: self-attention fuses q/k/v, cross-attention k/v only (its q reads
# another input); the added (context) projections fuse q/k/v (FLUX) or, without add_q_proj, k/v (Wan's image input)
FUSIONS = (
    ("to_qkv", ("to_q", "to_k", "to_v")),
    ("to_kv", ("to_k", "to_v")),
    ("to_added_qkv", ("add_q_proj", "add_k_proj", "add_v_proj")),
    ("to_added_kv", ("add_k_proj", "add_v_proj")),
)


def _fusion_groups(module: nn.Module) -> list[tuple[str, tuple[str, ...]]]:
    """The fusions diffusers' fused path of ``module`` reads (see FUSIONS)."""
    present = lambda n: module._modules.get(n) is not None  # noqa: E731
    groups = dict(FUSIONS)
    out = [("to_kv", groups["to_kv"]) if getattr(module, "is_cross_attention", False) else ("to_qkv", groups["to_qkv"])]
    if present("add_q_proj"):
        out.append(("to_added_qkv", groups["to_added_qkv"]))
    elif present("add_k_proj"):
        out.append(("to_added_kv", groups["to_added_kv"]))
    return out


def _shared_rank(mods: Sequence[SVDQuantLinear]) -> int:
    """How many leading columns of proj_down all members have in common (their joint branch)."""
    a = mods[0]
    r = min(m.proj_down.shape[1] for m in mods)
    for m in mods[1:]:
        differ = (m.proj_down[:, :r] != a.proj_down[:, :r]).any(0).nonzero()
        if len(differ):
            r = int(differ[0])
    return r


def _fuse(mods: Sequence[SVDQuantLinear], names: Sequence[str]) -> SVDQuantLinear:
    a = mods[0]
    has_bias = any(m.bias is not None for m in mods)
    shared = _shared_rank(mods)
    own = [m.proj_down.shape[1] - shared for m in mods]  # each member's columns after the shared ones
    rank = shared + sum(own)
    fused = SVDQuantLinear(a.in_features, sum(m.out_features for m in mods), has_bias, rank, a.group_size,
                           a.quant_format, a.weight_only, a.compute_dtype, device="meta")
    fused.qweight = torch.cat([m.qweight.to(m.wscales.device) for m in mods])  # canonical (host with set_fragment_order)
    fused.wscales = torch.cat([m.wscales for m in mods], 1)
    fused.proj_down = torch.cat([a.proj_down[:, :shared], *(m.proj_down[:, shared:] for m in mods)], 1)
    ups, start = [], shared
    for m, n_own in zip(mods, own):
        up = m.proj_up.new_zeros(m.out_features, rank)
        up[:, :shared] = m.proj_up[:, :shared]
        up[:, start : start + n_own] = m.proj_up[:, shared:]
        ups.append(up)
        start += n_own
    fused.proj_up = torch.cat(ups)
    fused.smooth_factor, fused.wtscale = a.smooth_factor, a.wtscale
    if a.wchannel is not None:
        fused.wchannel = torch.cat([m.wchannel for m in mods])
    if has_bias:
        fused.bias = nn.Parameter(
            torch.cat([m.bias if m.bias is not None else a.proj_up.new_zeros(m.out_features) for m in mods]),
            requires_grad=False,
        )
    fused.layer_name = "+".join(m.layer_name or n for m, n in zip(mods, names))
    fused.fused_members = tuple(
        (n, m.out_features, m.bias is not None, m.layer_name, n_own) for n, m, n_own in zip(names, mods, own)
    )
    fused.fused_shared_rank = shared
    fused.set_fragment_order(any(m.holds_fragment_order for m in mods))
    return fused


def _split(fused: SVDQuantLinear) -> list[tuple[str, SVDQuantLinear]]:
    """The members back: rows by split_outputs (the rule the joint quantization split them by), branch columns
    the shared ones and the member's own."""
    qw = QuantizedWeights(fused.qweight.to(fused.wscales.device), fused.wscales, fused.smooth_factor,  # canonical
                          fused.proj_down, fused.proj_up, wtscale=fused.wtscale, wchannel=fused.wchannel)
    members, shared = fused.fused_members, fused.fused_shared_rank
    out, start, col = [], 0, shared
    for (name, n, has_bias, layer_name, n_own), part in zip(members, split_outputs(qw, [m[1] for m in members])):
        cols = torch.cat([torch.arange(shared), torch.arange(col, col + n_own)]).to(fused.proj_down.device)
        part = replace(part, proj_down=fused.proj_down[:, cols].contiguous(), proj_up=part.proj_up[:, cols].contiguous())
        opts = SVDQuantOptions(rank=shared + n_own, group_size=fused.group_size,
                               quant_format=fused.quant_format, weight_only=fused.weight_only)
        bias = fused.bias[start : start + n] if has_bias else None
        m = SVDQuantLinear.from_quantized(part, bias, opts, fused.compute_dtype)
        m.layer_name = layer_name
        m.set_fragment_order(fused.holds_fragment_order)
        out.append((name, m))
        start += n
        col += n_own
    return out


def _fused_layers(module: nn.Module):
    """(name, fused layer) of the fused children of ``module``."""
    for fused_name, _ in FUSIONS:
        fused = module._modules.get(fused_name)
        if isinstance(fused, SVDQuantLinear) and hasattr(fused, "fused_members"):
            yield fused_name, fused


def _reorder_children(module: nn.Module, order: Sequence[str]) -> None:
    mods = module._modules
    new = {k: mods[k] for k in order if k in mods}
    new.update({k: v for k, v in mods.items() if k not in new})
    mods.clear()
    mods.update(new)


def _member_state_dict(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """state_dict hook of a module holding fused layers: their tensors are saved under the member names."""
    for fused_name, fused in _fused_layers(module):
        head = f"{prefix}{fused_name}."
        for k in [k for k in state_dict if k.startswith(head)]:
            del state_dict[k]
        for name, member in _split(fused):
            state_dict.update({f"{prefix}{name}.{k}": v for k, v in member.state_dict().items()})


def fuse_shared_input_projections(model: nn.Module) -> list[str]:
    """Fuse every attention's jointly quantized q/k/v (and add_q/k/v) into one layer; returns the fused names.

    Only diffusers attention classes that support the fused path (``_supports_qkv_fusion``; tested with
    FLUX's FluxAttention) whose members share their input quantization are fused; others are left as
    they are.
    """
    fused_names = []
    for parent_name, module in list(model.named_modules()):
        if getattr(type(module), "_supports_qkv_fusion", False) is not True or getattr(module, "fused_projections", True):
            continue  # only diffusers attention classes whose processors take the fused path
        present = [(f, ms, [module._modules.get(n) for n in ms]) for f, ms in _fusion_groups(module)]
        present = [(f, ms, mods) for f, ms, mods in present if all(m is not None for m in mods)]
        for _, members, mods in present:
            if any(hasattr(m, "base_layer") for m in mods):
                raise ValueError(
                    f"{parent_name}: LoRA adapters are loaded on {', '.join(members)}; fuse_lora() then "
                    f"unload_lora_weights() (the merged adapters fuse along), or unload_lora_weights(), before "
                    f"fuse_shared_input_projections"
                )
        # diffusers' fused path computes every projection of the module from the fused layers: all or none
        if not present or not all(quantize_alike(mods) for _, _, mods in present):
            continue
        module._svdq_child_order = list(module._modules)
        for fused_name, members, mods in present:
            setattr(module, fused_name, _fuse(mods, members))
            for n in members:
                delattr(module, n)
            fused_names.append(f"{parent_name}.{fused_name}" if parent_name else fused_name)
        # each fused layer where its first member was
        order = []
        for k in module._svdq_child_order:
            f = next((f for f, ms, _ in present if ms[0] == k), None)
            if f is not None:
                order.append(f)
            elif not any(k in ms for _, ms, _ in present):
                order.append(k)
        _reorder_children(module, order)
        if not any(h is _member_state_dict for h in module._state_dict_hooks.values()):
            module._register_state_dict_hook(_member_state_dict)
        module.fused_projections = True
    return fused_names


def unfuse_shared_input_projections(model: nn.Module) -> list[str]:
    """Split every fused layer back into its members (exact); returns the unfused names."""
    names = []
    for parent_name, module in model.named_modules():
        found = list(_fused_layers(module))
        for fused_name, fused in found:
            for name, m in _split(fused):
                setattr(module, name, m)
            delattr(module, fused_name)
            names.append(f"{parent_name}.{fused_name}" if parent_name else fused_name)
        if found:
            _reorder_children(module, getattr(module, "_svdq_child_order", []))
            module.fused_projections = False
            for key, hook in list(module._state_dict_hooks.items()):
                if hook is _member_state_dict:
                    del module._state_dict_hooks[key]
    return names


def fused_member_names(model: nn.Module) -> dict[str, str]:
    """{member layer name: fused layer name} for every fused layer of ``model``."""
    out = {}
    for parent_name, module in model.named_modules():
        base = f"{parent_name}." if parent_name else ""
        for fused_name, fused in _fused_layers(module):
            out.update({base + name: base + fused_name for name, *_ in fused.fused_members})
    return out


def _is_svdquant(layer: nn.Module | None) -> bool:
    """An SVDQuant layer, or a LoRA wrapper around one."""
    return isinstance(layer, SVDQuantLinear) or isinstance(getattr(layer, "base_layer", None), SVDQuantLinear)


def _fuse_projections(self: nn.Module, *args, **kwargs) -> None:
    """diffusers' ``fuse_projections`` for an attention module holding SVDQuant layers (bound per instance by
    ``route_diffusers_fusion``): the members fuse as ``fuse_shared_input_projections`` fuses them."""
    if getattr(self, "fused_projections", False):
        return
    if not any(_is_svdquant(self._modules.get(n)) for _, ms in FUSIONS for n in ms):
        return type(self).fuse_projections(self, *args, **kwargs)
    if not fuse_shared_input_projections(self):
        raise ValueError(
            f"{type(self).__name__}: its q/k/v projections cannot be fused: all of them must be SVDQuant layers that "
            f"quantize their input alike (the same smoothing), with no LoRA adapter loaded"
        )


def _unfuse_projections(self: nn.Module, *args, **kwargs) -> None:
    if list(_fused_layers(self)):
        unfuse_shared_input_projections(self)
    else:
        type(self).unfuse_projections(self, *args, **kwargs)


def _refuse_projections(self: nn.Module, *args, **kwargs) -> None:
    raise ValueError(
        f"{type(self).__name__}: fusing the projections of SVDQuant layers is supported for diffusers' attention "
        f"classes with a fused path (AttentionModuleMixin, e.g. FLUX / FLUX.2 / Wan), not this one; run the model "
        f"unfused (each 4-bit layer is one fused quantize + GEMM already)"
    )


def route_diffusers_fusion(model: nn.Module) -> int:
    """Make diffusers' ``fuse_qkv_projections`` / ``unfuse_qkv_projections`` work on a quantized model: each
    attention module with fusable projections that holds SVDQuant layers fuses them as
    ``fuse_shared_input_projections`` does (diffusers' own method concatenates 16-bit weights, which SVDQuant
    layers do not have); attention classes without diffusers' fused path (SD3's) refuse with a clear error
    instead. Returns the number of modules routed."""
    import types

    routed = 0
    for module in model.modules():
        if not hasattr(module, "fuse_projections"):
            continue
        if not any(_is_svdquant(module._modules.get(n)) for _, ms in FUSIONS for n in ms):
            continue
        if getattr(type(module), "_supports_qkv_fusion", False) is True:
            module.fuse_projections = types.MethodType(_fuse_projections, module)
            module.unfuse_projections = types.MethodType(_unfuse_projections, module)
        else:  # e.g. SD3's Attention: its fused processor needs the 16-bit weights concatenated
            module.fuse_projections = types.MethodType(_refuse_projections, module)
        routed += 1
    return routed


__all__ = ["fuse_shared_input_projections", "unfuse_shared_input_projections", "fused_member_names",
           "route_diffusers_fusion"]

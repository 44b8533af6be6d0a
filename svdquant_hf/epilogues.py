"""Work after a 4-bit GEMM moved into its epilogue: GELU, and FLUX single blocks' MLP-attention concatenation.

``fuse_epilogues(model)`` (applied after loading on Hopper, like ``set_fragment_order``) changes two kinds of
modules' forward:

- diffusers' ``GELU`` activation (``approximate="tanh"``: FLUX's feed-forwards ``ff`` / ``ff_context``) whose ``proj``
  is an SVDQuantLinear: the GELU runs on the GEMM's fp32 result before it is rounded, so no separate GELU kernel
  reads and writes the 4x-wide hidden state.
- FLUX's ``FluxSingleTransformerBlock``: ``proj_mlp``'s GELU in its epilogue, and ``proj_out``'s input
  ``cat([attn, gelu(mlp)])`` never written: ``proj_out`` quantizes the two parts where they lie
  (``svdquant::quantize_act_2l_cat``; a LoRA on ``proj_out`` rides on that GEMM's branch; with
  ``cat_in_place=False``, or a ``proj_out`` off the fused path, ``proj_mlp`` writes its output after a copy of the
  attention's columns in one allocation instead).
- FLUX's ``FluxAttention`` with diffusers' default processor: q/k/v (and add_q/k/v) that quantize their common input
  identically share one quantizer call (shared_input.py), and in single blocks ``proj_mlp`` shares it too: one call
  instead of four (layers that cannot share, e.g. with their own smoothing or a LoRA wrapper, are called one by
  one). The attention itself is diffusers' processor's computation (``dispatch_attention_fn``, the same function),
  with q/k's RMSNorm (torch's) and rotary embedding in one op (``svdquant::rms_norm_rope``, the same roundings: its
  reference is torch's rms_norm and diffusers' rotary formula); other processors, masks or extra arguments take the
  usual forward.

The fused path needs the layer's weights in fragment order (the Hopper GEMM; ``SVDQuantLinear.forward_fused``);
otherwise the forward takes the usual ops, so fusing never changes what a model can do. LoRAs loaded later
(svdquant's LoRA layer, lora/layer.py) stay fused: their factors ride on the fused GEMM's branch; any other wrapper
around the layer takes the usual ops. A module whose forward another library has already wrapped (accelerate's or
diffusers' hooks) is left alone. Outputs differ from the unfused forward only by rounding (GELU on the fp32 result
instead of on the rounded one). Parameters, buffers and state dicts are untouched; ``unfuse_epilogues`` restores
the forwards.
"""
from __future__ import annotations

import sys
import types
from typing import Any

import torch
from torch import nn

from . import shared_input
from .modules import SVDQuantLinear
from .ops import library as ops

_MARK = "_svdquant_epilogue"
_SHARED = "_svdquant_shared_inputs"  # the groups of a module's layers that share one quantizer call (names)
_NORM_ROPE = "_svdquant_norm_rope"  # whether the attention runs q/k's RMSNorm + RoPE as one op
_CAT_QUANTIZE = "_svdquant_cat_quantize"  # whether a single block's proj_out quantizes its two inputs in place
_SHARE_LORA = "_svdquant_share_lora"  # whether svdquant's LoRA layers join the shared quantizer call
_QKV = ("to_q", "to_k", "to_v")
_ADDED_QKV = ("add_q_proj", "add_k_proj", "add_v_proj")


def _is_diffusers_gelu_tanh(module: nn.Module) -> bool:
    return (type(module).__name__ == "GELU" and type(module).__module__.startswith("diffusers.")
            and getattr(module, "approximate", None) == "tanh" and isinstance(getattr(module, "proj", None), nn.Module))


def _is_flux_single_block(module: nn.Module) -> bool:
    act = getattr(module, "act_mlp", None)
    return (type(module).__name__ == "FluxSingleTransformerBlock"
            and all(hasattr(module, n) for n in ("norm", "attn", "proj_mlp", "proj_out"))
            and isinstance(act, nn.GELU) and act.approximate == "tanh")


def _is_flux_attention(module: nn.Module) -> bool:
    return type(module).__name__ == "FluxAttention" and all(hasattr(module, n) for n in (*_QKV, "norm_q", "norm_k"))


def _default_flux_processor(attn: nn.Module) -> bool:
    """diffusers' own FluxAttnProcessor (not a subclass or another processor), on unfused projections."""
    proc = getattr(attn, "processor", None)
    home = sys.modules.get(type(attn).__module__)
    return (home is not None and type(proc) is getattr(home, "FluxAttnProcessor", None)
            and not getattr(attn, "fused_projections", False))


def _sharing_groups(module: nn.Module, groups: tuple[tuple[str, ...], ...]) -> tuple[tuple[str, ...], ...]:
    """The groups (dotted names under ``module``) whose layers all exist and share their input quantization."""
    out = []
    for names in groups:
        try:
            layers = [module.get_submodule(n) for n in names]
        except AttributeError:  # a member missing (a text-free attention has no add_*_proj)
            continue
        if shared_input.shares_input(layers, lora=module.__dict__.get(_SHARE_LORA, False)):
            out.append(names)
    return tuple(out)


def _shared_group(module: nn.Module, names: tuple[str, ...], x: torch.Tensor) -> list[nn.Module] | None:
    """The layers of group ``names`` if it was found sharing at set-up and can take the shared path on ``x`` now."""
    if names not in module.__dict__.get(_SHARED, ()):
        return None
    layers = [module.get_submodule(n) for n in names]
    return layers if shared_input.ready(layers, x, lora=module.__dict__.get(_SHARE_LORA, False)) else None


def _projections(layers: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    return [m.forward_fused(x, quantized=q) for m, q in zip(layers, shared_input.quantize_shared(layers, x))]


def _flux_attention_forward(
    self: nn.Module,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    image_rotary_emb: Any = None,
    projections: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    **kwargs: Any,
):
    """FluxAttention with q/k/v from one shared quantizer call (or given: ``projections``, from a single block that
    shared it with its MLP), then what diffusers' FluxAttnProcessor computes, with the functions it calls."""
    usual = attention_mask is not None or bool(kwargs) or not _default_flux_processor(self)
    if projections is not None:
        if usual:
            raise ValueError(f"{type(self).__name__}: given projections need diffusers' FluxAttnProcessor, no mask "
                             f"and no further arguments")
        img = list(projections)
    elif usual:
        return type(self).forward(self, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                                  **kwargs)
    else:  # layers that cannot share (other smoothing, a LoRA wrapper) are called one by one
        layers = _shared_group(self, _QKV, hidden_states)
        img = (_projections(layers, hidden_states) if layers is not None
               else [getattr(self, n)(hidden_states) for n in _QKV])
    txt = None
    if encoder_hidden_states is not None and self.added_kv_proj_dim is not None:
        layers = _shared_group(self, _ADDED_QKV, encoder_hidden_states)
        txt = (_projections(layers, encoder_hidden_states) if layers is not None
               else [getattr(self, n)(encoder_hidden_states) for n in _ADDED_QKV])
    home = sys.modules[type(self).__module__]
    q, k, v = (t.unflatten(-1, (-1, self.head_dim)) for t in img)
    eq = ek = ev = None
    if txt is not None:
        eq, ek, ev = (t.unflatten(-1, (-1, self.head_dim)) for t in txt)
    norms = (self.norm_q, self.norm_k) + (() if txt is None else (self.norm_added_q, self.norm_added_k))
    if self.__dict__.get(_NORM_ROPE) and _norm_rope_fusable(norms, q, image_rotary_emb):  # one op per tensor
        cos, sin = image_rotary_emb
        if txt is None:
            q = ops.rms_norm_rope(q, norms[0].weight, _eps(norms[0], q.dtype), cos, sin)
            k = ops.rms_norm_rope(k, norms[1].weight, _eps(norms[1], k.dtype), cos, sin)
        else:  # the text tokens' q / k first, with their own norms: the concatenation written by the same op
            q = ops.rms_norm_rope(q, norms[0].weight, _eps(norms[0], q.dtype), cos, sin, eq, norms[2].weight)
            k = ops.rms_norm_rope(k, norms[1].weight, _eps(norms[1], k.dtype), cos, sin, ek, norms[3].weight)
            v = torch.cat([ev, v], 1)
    else:
        q, k = self.norm_q(q), self.norm_k(k)
        if txt is not None:
            eq, ek = self.norm_added_q(eq), self.norm_added_k(ek)
            q, k, v = torch.cat([eq, q], 1), torch.cat([ek, k], 1), torch.cat([ev, v], 1)
        if image_rotary_emb is not None:
            q = home.apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
            k = home.apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
    proc = self.processor
    out = home.dispatch_attention_fn(q, k, v, attn_mask=None, backend=proc._attention_backend,
                                     parallel_config=proc._parallel_config)
    out = out.flatten(2, 3).to(q.dtype)
    if encoder_hidden_states is None:
        return out
    n_txt = encoder_hidden_states.shape[1]
    enc, out = out.split_with_sizes([n_txt, out.shape[1] - n_txt], dim=1)
    out = self.to_out[1](self.to_out[0](out.contiguous()))
    return out, self.to_add_out(enc.contiguous())


def _norm_rope_fusable(norms: tuple[nn.Module, ...], q: torch.Tensor, rotary: Any) -> bool:
    """Whether the RMSNorms (torch's, as FLUX's attention has them, with a weight of q's 16-bit dtype, one epsilon) and
    a (cos, sin) rotary embedding of fp32 [tokens, head dim] can run as svdquant::rms_norm_rope."""
    if not (isinstance(rotary, tuple) and len(rotary) == 2 and rotary[0].dtype == torch.float32
            and rotary[0].dim() == 2 and rotary[0].shape[-1] == q.shape[-1] and q.dim() == 4
            and q.dtype in (torch.bfloat16, torch.float16)):
        return False
    if not all(type(n) is nn.RMSNorm and tuple(n.normalized_shape) == (q.shape[-1],) and n.weight is not None
               and n.weight.dtype == q.dtype for n in norms):
        return False
    return len({_eps(n, q.dtype) for n in norms}) == 1


def _eps(norm: nn.Module, dtype: torch.dtype) -> float:
    """The norm's epsilon (torch's RMSNorm without one takes the dtype's)."""
    return norm.eps if norm.eps is not None else torch.finfo(dtype).eps


def _fusable(layer: nn.Module) -> bool:
    """An SVDQuantLinear, or svdquant's LoRA layer around one (lora/layer.py): both have forward_fused."""
    return type(layer) is SVDQuantLinear or type(layer).__name__ == "SVDQuantLoraLinear"


def _gelu_forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    if _fusable(self.proj):
        return self.proj.forward_fused(hidden_states, "gelu_tanh")
    return type(self).forward(self, hidden_states)


def _flux_single_block_forward(
    self: nn.Module,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    temb: torch.Tensor,
    image_rotary_emb: Any = None,
    joint_attention_kwargs: dict[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's computation with ``proj_out``'s input made by ``proj_mlp`` itself: cat([attention, GELU(mlp)])."""
    if not _fusable(self.proj_mlp):
        return type(self).forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb,
                                  joint_attention_kwargs)
    n_txt = encoder_hidden_states.shape[1]
    x = torch.cat([encoder_hidden_states, hidden_states], dim=1)
    normed, gate = self.norm(x, emb=temb)
    group = (*(f"attn.{n}" for n in _QKV), "proj_mlp")
    layers = None
    attn_forward = getattr(self.attn.__dict__.get("forward"), "__func__", None)
    if not joint_attention_kwargs and attn_forward is _flux_attention_forward and _default_flux_processor(self.attn):
        layers = _shared_group(self, group, normed)
    # proj_out quantizes cat([attention, GELU(mlp)]) where it lies (no prefix copy), where it takes the fused path
    cat_in_place = self.__dict__.get(_CAT_QUANTIZE) and _fusable(self.proj_out) and \
        self.proj_out.fused_path_ready(normed)
    if layers is None:
        attn = self.attn(hidden_states=normed, image_rotary_emb=image_rotary_emb, **(joint_attention_kwargs or {}))
        mlp_kwargs = {}
    else:  # one quantizer call for q, k, v and the MLP
        quantized = shared_input.quantize_shared(layers, normed)
        qkv = tuple(m.forward_fused(normed, quantized=q) for m, q in zip(layers[:3], quantized[:3]))
        attn = self.attn(hidden_states=normed, image_rotary_emb=image_rotary_emb, projections=qkv)
        mlp_kwargs = {"quantized": quantized[3]}
    if cat_in_place:
        out = self.proj_out.forward_cat(attn, self.proj_mlp.forward_fused(normed, "gelu_tanh", **mlp_kwargs))
    else:
        out = self.proj_out(self.proj_mlp.forward_fused(normed, "gelu_tanh", prefix=attn, **mlp_kwargs))
    x = x + gate.unsqueeze(1) * out
    if x.dtype == torch.float16:
        x = x.clip(-65504, 65504)
    return x[:, :n_txt], x[:, n_txt:]


def fuse_epilogues(
    model: nn.Module,
    share_inputs: bool = True,
    norm_rope: bool = True,
    cat_in_place: bool = True,
    share_lora: bool = True,
) -> list[str]:
    """Move GELU (and FLUX single blocks' concatenation) into the 4-bit GEMMs' epilogue; returns the module names.

    Modules whose layer is neither an SVDQuantLinear nor svdquant's LoRA layer on one are left alone; at run time
    the fused forward falls back to the usual ops where the layer cannot take the fused path (module docstring).
    ``share_inputs``: FLUX attention's q/k/v (and single blocks' MLP) share one quantizer call where they can;
    ``norm_rope``: and that attention runs q/k's RMSNorm and rotary embedding as one op (svdquant::rms_norm_rope);
    ``cat_in_place``: single blocks' ``proj_out`` quantizes ``cat([attention, GELU(mlp)])`` where its two parts lie
    (svdquant::quantize_act_2l_cat) instead of ``proj_mlp`` writing the concatenation after a copy of the attention;
    ``share_lora``: svdquant's LoRA layers join the shared quantizer call too, their adapters' down projections beside
    the others' (``False``: a LoRA-wrapped q/k/v quantizes its input on its own)."""
    names = []
    for name, module in model.named_modules():
        if _MARK in module.__dict__ or "forward" in module.__dict__:  # fused, or another wrapper (an offload hook)
            continue
        if _is_diffusers_gelu_tanh(module) and _fusable(module.proj):
            module.forward = types.MethodType(_gelu_forward, module)
        elif _is_flux_single_block(module) and _fusable(module.proj_mlp):
            module.forward = types.MethodType(_flux_single_block_forward, module)
            module.__dict__[_CAT_QUANTIZE] = cat_in_place
            module.__dict__[_SHARE_LORA] = share_lora
            _track_sharing(module, ((*(f"attn.{n}" for n in _QKV), "proj_mlp"),) if share_inputs else ())
        elif ((share_inputs or norm_rope) and _is_flux_attention(module)
              and any(_fusable(getattr(module, n, None)) for n in _QKV)):
            module.forward = types.MethodType(_flux_attention_forward, module)
            module.__dict__[_NORM_ROPE] = norm_rope
            module.__dict__[_SHARE_LORA] = share_lora
            _track_sharing(module, (_QKV, _ADDED_QKV) if share_inputs else ())
        else:
            continue
        module.__dict__[_MARK] = True
        names.append(name)
    return names


def _track_sharing(module: nn.Module, groups: tuple[tuple[str, ...], ...]) -> None:
    """Find the sharing groups now, and again whenever a state dict is loaded into the module (new smoothing)."""
    def refresh(mod: nn.Module, incompatible_keys: Any = None) -> None:
        mod.__dict__[_SHARED] = _sharing_groups(mod, groups)

    refresh(module)
    module.__dict__[_SHARED + "_hook"] = module.register_load_state_dict_post_hook(refresh)


def unfuse_epilogues(model: nn.Module) -> list[str]:
    """Restore the forwards ``fuse_epilogues`` changed; returns the module names.

    A fused module whose forward something else has wrapped since (an offload hook) is refused, before anything
    changes: removing the wrapper with the fusion would silently drop the hook."""
    fused = [(n, m) for n, m in model.named_modules() if _MARK in m.__dict__]
    for name, module in fused:
        fwd = module.__dict__.get("forward")
        if getattr(fwd, "__func__", None) not in (_gelu_forward, _flux_single_block_forward, _flux_attention_forward):
            raise ValueError(f"unfuse_epilogues: {name or type(module).__name__}'s forward was wrapped after fusing "
                             f"(an offload or other hook); remove that hook first")
    for _, module in fused:
        del module.__dict__[_MARK], module.__dict__["forward"]
        module.__dict__.pop(_SHARED, None)
        module.__dict__.pop(_NORM_ROPE, None)
        module.__dict__.pop(_CAT_QUANTIZE, None)
        module.__dict__.pop(_SHARE_LORA, None)
        hook = module.__dict__.pop(_SHARED + "_hook", None)
        if hook is not None:
            hook.remove()
    return [n for n, _ in fused]


__all__ = ["fuse_epilogues", "unfuse_epilogues"]

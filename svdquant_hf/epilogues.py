"""Work after a 4-bit GEMM moved into its epilogue: GELU, and FLUX single blocks' MLP-attention concatenation.

``fuse_epilogues(model)`` (applied after loading on Hopper, like ``set_fragment_order``) changes two kinds of
modules' forward:

- diffusers' ``GELU`` activation (``approximate="tanh"``: FLUX's feed-forwards ``ff`` / ``ff_context``) whose ``proj``
  is an SVDQuantLinear: the GELU runs on the GEMM's fp32 result before it is rounded, so no separate GELU kernel
  reads and writes the 4x-wide hidden state.
- FLUX's ``FluxSingleTransformerBlock``: ``proj_mlp``'s GELU in its epilogue, and its output written after the
  attention output's columns in one allocation, i.e. ``proj_out``'s input ``cat([attn, gelu(mlp)])`` without the
  concatenation kernel (which reads and writes the whole 15360-wide input).

The fused path needs the layer's weights in fragment order (the Hopper GEMM; ``SVDQuantLinear.forward_fused``);
otherwise the forward takes the usual ops, so fusing never changes what a model can do. LoRAs loaded later
(svdquant's LoRA layer, lora/layer.py) stay fused: their factors ride on the fused GEMM's branch; any other wrapper
around the layer takes the usual ops. A module whose forward another library has already wrapped (accelerate's or
diffusers' hooks) is left alone. Outputs differ from the unfused forward only by rounding (GELU on the fp32 result
instead of on the rounded one). Parameters, buffers and state dicts are untouched; ``unfuse_epilogues`` restores
the forwards.
"""
from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn

from .modules import SVDQuantLinear

_MARK = "_svdquant_epilogue"


def _is_diffusers_gelu_tanh(module: nn.Module) -> bool:
    return (type(module).__name__ == "GELU" and type(module).__module__.startswith("diffusers.")
            and getattr(module, "approximate", None) == "tanh" and isinstance(getattr(module, "proj", None), nn.Module))


def _is_flux_single_block(module: nn.Module) -> bool:
    act = getattr(module, "act_mlp", None)
    return (type(module).__name__ == "FluxSingleTransformerBlock"
            and all(hasattr(module, n) for n in ("norm", "attn", "proj_mlp", "proj_out"))
            and isinstance(act, nn.GELU) and act.approximate == "tanh")


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
    attn = self.attn(hidden_states=normed, image_rotary_emb=image_rotary_emb, **(joint_attention_kwargs or {}))
    joint = self.proj_mlp.forward_fused(normed, "gelu_tanh", prefix=attn)
    x = x + gate.unsqueeze(1) * self.proj_out(joint)
    if x.dtype == torch.float16:
        x = x.clip(-65504, 65504)
    return x[:, :n_txt], x[:, n_txt:]


def fuse_epilogues(model: nn.Module) -> list[str]:
    """Move GELU (and FLUX single blocks' concatenation) into the 4-bit GEMMs' epilogue; returns the module names.

    Modules whose layer is neither an SVDQuantLinear nor svdquant's LoRA layer on one are left alone; at run time
    the fused forward falls back to the usual ops where the layer cannot take the fused path (module docstring)."""
    names = []
    for name, module in model.named_modules():
        if _MARK in module.__dict__ or "forward" in module.__dict__:  # fused, or another wrapper (an offload hook)
            continue
        if _is_diffusers_gelu_tanh(module) and _fusable(module.proj):
            module.forward = types.MethodType(_gelu_forward, module)
        elif _is_flux_single_block(module) and _fusable(module.proj_mlp):
            module.forward = types.MethodType(_flux_single_block_forward, module)
        else:
            continue
        module.__dict__[_MARK] = True
        names.append(name)
    return names


def unfuse_epilogues(model: nn.Module) -> list[str]:
    """Restore the forwards ``fuse_epilogues`` changed; returns the module names.

    A fused module whose forward something else has wrapped since (an offload hook) is refused, before anything
    changes: removing the wrapper with the fusion would silently drop the hook."""
    fused = [(n, m) for n, m in model.named_modules() if _MARK in m.__dict__]
    for name, module in fused:
        fwd = module.__dict__.get("forward")
        if getattr(fwd, "__func__", None) not in (_gelu_forward, _flux_single_block_forward):
            raise ValueError(f"unfuse_epilogues: {name or type(module).__name__}'s forward was wrapped after fusing "
                             f"(an offload or other hook); remove that hook first")
    for _, module in fused:
        del module.__dict__[_MARK], module.__dict__["forward"]
    return [n for n, _ in fused]


__all__ = ["fuse_epilogues", "unfuse_epilogues"]

"""Random LoRA state dicts in the formats diffusers converts, for tests and docs (tiny models).

Flux formats use the original BFL module names (double_blocks.i.img_attn.qkv, ...), derived from a
diffusers FluxTransformer2DModel's config, so they exercise diffusers' own converters.
"""
from __future__ import annotations

import torch
from torch import nn


def _pair(g: torch.Generator, rank: int, fan_in: int, fan_out: int, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    # |B A x| ~ strength * |x| for unit-variance x: A ~ N(0, 1/fan_in), B ~ N(0, strength^2 / rank)
    a = torch.randn(rank, fan_in, generator=g) / fan_in**0.5
    b = torch.randn(fan_out, rank, generator=g) * (strength / rank**0.5)
    return a, b


def peft_lora(
    model: nn.Module,
    rank: int = 4,
    seed: int = 0,
    strength: float = 0.1,
    prefix: str | None = "transformer",
    include: tuple[str, ...] = ("",),
) -> dict[str, torch.Tensor]:
    """diffusers/PEFT-format LoRA on every nn.Linear-like layer whose name contains one of ``include``."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, mod in model.named_modules():
        k, n = getattr(mod, "in_features", None), getattr(mod, "out_features", None)
        if not name or k is None or n is None or "lora_" in name or name.endswith("base_layer"):
            continue
        if not any(s in name for s in include):
            continue
        a, b = _pair(g, rank, k, n, strength)
        key = f"{prefix}.{name}" if prefix else name
        sd[f"{key}.lora_A.weight"], sd[f"{key}.lora_B.weight"] = a, b
    return sd


def _flux_dims(model: nn.Module) -> tuple[int, int, int, int]:
    cfg = model.config
    d = cfg.num_attention_heads * cfg.attention_head_dim
    return d, 4 * d, cfg.num_layers, cfg.num_single_layers


def flux_bfl_layers(model: nn.Module) -> dict[str, tuple[int, int]]:
    """BFL module name -> (in_features, out_features) for a diffusers Flux transformer."""
    d, mlp, nd, ns = _flux_dims(model)
    layers: dict[str, tuple[int, int]] = {}
    for i in range(nd):
        for s in ("img", "txt"):
            layers[f"double_blocks.{i}.{s}_attn.qkv"] = (d, 3 * d)
            layers[f"double_blocks.{i}.{s}_attn.proj"] = (d, d)
            layers[f"double_blocks.{i}.{s}_mlp.0"] = (d, mlp)
            layers[f"double_blocks.{i}.{s}_mlp.2"] = (mlp, d)
            layers[f"double_blocks.{i}.{s}_mod.lin"] = (d, 6 * d)
    for i in range(ns):
        layers[f"single_blocks.{i}.linear1"] = (d, 3 * d + mlp)
        layers[f"single_blocks.{i}.linear2"] = (d + mlp, d)
        layers[f"single_blocks.{i}.modulation.lin"] = (d, 3 * d)
    return layers


def flux_kohya_lora(
    model: nn.Module, rank: int = 4, seed: int = 0, strength: float = 0.1, alpha: float | None = 2.0,
    comfy_prefix: bool = False,
) -> dict[str, torch.Tensor]:
    """kohya sd-scripts Flux LoRA (lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight, .alpha).

    single_blocks.i.linear1 is left out: diffusers splits it with FLUX.1's hard-coded widths.
    comfy_prefix: name the layers ``diffusion_model.double_blocks.0.img_attn.qkv`` (ComfyUI style).
    """
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, (k, n) in flux_bfl_layers(model).items():
        if name.endswith("linear1"):  # diffusers splits it with FLUX.1's hard-coded widths
            continue
        a, b = _pair(g, rank, k, n, strength * (rank / alpha if alpha else 1.0))
        key = f"diffusion_model.{name}" if comfy_prefix else "lora_unet_" + name.replace(".", "_")
        sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = a, b
        if alpha is not None:
            sd[f"{key}.alpha"] = torch.tensor(float(alpha))
    return sd


def flux_mixture_lora(
    model: nn.Module, rank: int = 4, seed: int = 0, strength: float = 0.1, alpha: float = 2.0
) -> dict[str, torch.Tensor]:
    """kohya-style LoRA with diffusers module names (lora_transformer_transformer_blocks_0_attn_to_q.lora_down.weight).

    Attention layers only: those are the ones diffusers' converter maps for this format.
    """
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, mod in model.named_modules():
        k, n = getattr(mod, "in_features", None), getattr(mod, "out_features", None)
        if k is None or not name.startswith(("transformer_blocks.", "single_transformer_blocks.")) or ".attn." not in name:
            continue  # diffusers converts the attention layers of this format only
        if "lora_" in name or name.endswith("base_layer"):
            continue
        a, b = _pair(g, rank, k, n, strength * rank / alpha)
        key = "lora_transformer_" + name.replace(".", "_")
        sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = a, b
        sd[f"{key}.alpha"] = torch.tensor(float(alpha))
    return sd


def flux_xlabs_lora(model: nn.Module, rank: int = 4, seed: int = 0, strength: float = 0.1) -> dict[str, torch.Tensor]:
    """XLabs-AI Flux LoRA (double_blocks.0.processor.qkv_lora1.down.weight, ...)."""
    g = torch.Generator().manual_seed(seed)
    d, _, nd, _ = _flux_dims(model)
    sd = {}
    for i in range(nd):
        for proc, n in (("qkv_lora1", 3 * d), ("qkv_lora2", 3 * d), ("proj_lora1", d), ("proj_lora2", d)):
            a, b = _pair(g, rank, d, n, strength)
            key = f"double_blocks.{i}.processor.{proc}"
            sd[f"{key}.down.weight"], sd[f"{key}.up.weight"] = a, b
    return sd


__all__ = ["peft_lora", "flux_bfl_layers", "flux_kohya_lora", "flux_mixture_lora", "flux_xlabs_lora"]

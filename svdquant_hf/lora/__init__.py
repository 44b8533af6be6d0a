"""LoRA on SVDQuant models through the standard diffusers/PEFT API (docs/lora.md).

Importing ``svdquant_hf`` installs lazy hooks (svdquant_hf.lora.hooks) so that
``pipe.load_lora_weights(...)`` works on a pipeline whose denoiser has SVDQuantLinear layers: the
LoRA factors are concatenated onto each 4-bit layer's low-rank branch (no extra kernel launch), and
16-bit layers get ordinary PEFT LoRA.
"""
from __future__ import annotations

from .branch import RANK_GRANULARITY, extend_branch, padded_rank
from .hooks import install, is_installed, refresh
from .save import lora_folded, without_lora

__all__ = [
    "RANK_GRANULARITY",
    "extend_branch",
    "padded_rank",
    "install",
    "is_installed",
    "refresh",
    "lora_folded",
    "without_lora",
]

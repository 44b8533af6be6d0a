"""Host-library-neutral helpers for the quantizer adapters: which linears to quantize, module swapping.

Two kinds of skip pattern exist:
- family defaults (``default_skip_patterns``): fnmatch globs matched against the FULL module name
  (anchored), so ``"proj_out"`` means the top-level ``proj_out`` only;
- user patterns (``SVDQuantOptions.modules_to_not_convert``): exact name, dotted component run, or glob
  (``svdquant_hf.config.name_matches``). A user list REPLACES the family defaults (``[]`` quantizes every
  quantizable linear); ``None`` keeps them.
"""
from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Iterable

import torch
from torch import nn

from ..config import SVDQuantOptions, hopper_present, name_matches
from ..epilogues import fuse_epilogues
from ..kernel_coverage import describe_gaps
from ..modules import SVDQuantLinear, set_fragment_order
from ..quantize import set_submodule  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

# Anchored globs over full module names, by model class name. Embedders, time/text conditioning,
# the output norm and the final projection stay 16-bit: they are small, see few tokens, and are
# the most sensitive to quantization (and their widths often are not multiples of the group size).
FAMILY_SKIPS: dict[str, tuple[str, ...]] = {
    "FluxTransformer2DModel": (
        "x_embedder", "context_embedder", "time_text_embed.*", "norm_out.*", "proj_out",
    ),
    "PixArtTransformer2DModel": ("pos_embed.*", "caption_projection.*", "adaln_single.*", "proj_out", "proj_out_*"),
    "UNet2DConditionModel": (
        "time_embedding.*", "add_embedding.*", "class_embedding.*", "encoder_hid_proj*", "*.time_emb_proj",
    ),
    "SD3Transformer2DModel": ("pos_embed.*", "time_text_embed.*", "context_embedder", "norm_out.*", "proj_out"),
    "SanaTransformer2DModel": (
        "patch_embed.*", "time_embed.*", "caption_projection.*", "norm_out.*", "proj_out",
    ),
    # FLUX.2 computes each stream's AdaLN modulation once, outside the blocks, for all of them (FLUX.1 has one per
    # block): an error there would reach every block at once, for one token a step, so it stays 16-bit.
    "Flux2Transformer2DModel": (
        "x_embedder", "context_embedder", "time_guidance_embed.*", "double_stream_modulation_img.*",
        "double_stream_modulation_txt.*", "single_stream_modulation.*", "norm_out.*", "proj_out",
    ),
    # Wan: time / text (/ image) embedders and the one modulation projection all blocks share (time_proj)
    "WanTransformer3DModel": ("condition_embedder.*", "proj_out"),
    "QwenImageTransformer2DModel": ("img_in", "txt_in", "time_text_embed.*", "norm_out.*", "proj_out"),
    # Z-Image: its timestep embedder reads its first linear's weight dtype, so it must stay an nn.Linear anyway
    "ZImageTransformer2DModel": (
        "all_x_embedder.*", "cap_embedder.*", "siglip_embedder.*", "t_embedder.*", "all_final_layer.*",
    ),
    # Chroma: no per-block AdaLN linears; its approximator computes every block's modulation once, from the timestep
    "ChromaTransformer2DModel": ("x_embedder", "context_embedder", "distilled_guidance_layer.*", "proj_out"),
    # HunyuanVideo's context_embedder is a token refiner: its own embedders stay 16-bit, its blocks are quantized
    "HunyuanVideoTransformer3DModel": (
        "context_embedder.time_text_embed.*", "context_embedder.proj_in", "time_text_embed.*", "norm_out.*", "proj_out",
    ),
    # LTX-Video names its patch embedder proj_in
    "LTXVideoTransformer3DModel": ("proj_in", "time_embed.*", "caption_projection.*", "proj_out"),
    # CogView4: the timestep + size/crop embedder every block's modulation reads
    "CogView4Transformer2DModel": ("patch_embed.*", "time_condition_embed.*", "norm_out.*", "proj_out"),
    # Lumina 2: timestep + caption embedders; norm_out holds the final modulation and the output projection
    "Lumina2Transformer2DModel": ("x_embedder", "time_caption_embed.*", "norm_out.*"),
    # CogVideoX 1.5: the frame-offset embedder adds to the timestep embedding every block's modulation reads
    "CogVideoXTransformer3DModel": ("patch_embed.*", "time_embedding.*", "ofs_embedding.*", "norm_out.*", "proj_out"),
    # AuraFlow: its timestep MLP (time_step_proj) feeds every block's modulation
    "AuraFlowTransformer2DModel": ("pos_embed.*", "context_embedder", "time_step_proj.*", "norm_out.*", "proj_out"),
    # HiDream: timestep / pooled-text / patch embedders, the per-block caption projections, the final layer
    "HiDreamImageTransformer2DModel": (
        "t_embedder.*", "p_embedder.*", "x_embedder.*", "caption_projection.*", "final_layer.*",
    ),
}

# For any other model: the same roles under their usual diffusers names.
GENERIC_SKIPS: tuple[str, ...] = (
    "x_embedder", "context_embedder", "pos_embed.*", "patch_embed.*", "time_text_embed.*", "time_embed.*",
    "time_guidance_embed.*", "condition_embedder.*",
    "time_embedding.*", "add_embedding.*", "caption_projection.*", "adaln_single.*", "norm_out.*",
    "proj_out", "lm_head", "*.time_emb_proj",
)


def register_default_skips(class_name: str, patterns: Iterable[str]) -> None:
    """Set the family default skip patterns (anchored globs) for models of class ``class_name``."""
    FAMILY_SKIPS[class_name] = tuple(patterns)


def default_skip_patterns(model: nn.Module | type) -> list[str]:
    """Anchored fnmatch globs of the modules that stay 16-bit by default for this model family."""
    cls = model if isinstance(model, type) else type(model)
    for klass in cls.__mro__:
        if klass.__name__ in FAMILY_SKIPS:
            return list(FAMILY_SKIPS[klass.__name__])
    return list(GENERIC_SKIPS)


def matches_default(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def is_fp32_module(name: str, keep_in_fp32_modules: Iterable[str]) -> bool:
    """diffusers' rule for ``_keep_in_fp32_modules``: a pattern equal to one dotted component."""
    parts = name.split(".")
    return any(m in parts for m in keep_in_fp32_modules)


def skip_reason(
    name: str,
    linear: nn.Linear,
    options: SVDQuantOptions,
    default_skips: Iterable[str] = (),
    keep_in_fp32_modules: Iterable[str] = (),
) -> str | None:
    """Why ``linear`` stays 16-bit (None: it is quantized)."""
    if options.modules_to_not_convert is not None:
        if options.is_skipped(name):
            return "modules_to_not_convert"
    elif matches_default(name, default_skips):
        return "default skip list"
    if is_fp32_module(name, keep_in_fp32_modules):
        return "_keep_in_fp32_modules"
    g = options.effective_group_size
    n, k = linear.out_features, linear.in_features
    if k % g:
        return f"in_features={k} is not a multiple of group_size={g}"
    if options.rank > min(n, k):
        return f"rank={options.rank} exceeds min(out_features, in_features)={min(n, k)}"
    return options.in_features_problem(k)


def quantizable_linears(
    model: nn.Module,
    options: SVDQuantOptions,
    default_skips: Iterable[str] | None = None,
    keep_in_fp32_modules: Iterable[str] = (),
) -> dict[str, nn.Linear]:
    """The nn.Linear modules of ``model`` that SVDQuant replaces, by qualified name.

    default_skips None: ``default_skip_patterns(model)``. Layers whose shape cannot be quantized
    (in_features not a multiple of the group, rank too large) are left 16-bit and logged.
    """
    skips = default_skip_patterns(model) if default_skips is None else list(default_skips)
    fp32 = list(keep_in_fp32_modules or ())
    out: dict[str, nn.Linear] = {}
    for name, mod in model.named_modules():
        if not name or not isinstance(mod, nn.Linear) or isinstance(mod, SVDQuantLinear):
            continue
        why = skip_reason(name, mod, options, skips, fp32)
        if why is None:
            out[name] = mod
        else:
            logger.debug("SVDQuant: %s stays 16-bit (%s)", name, why)
    return out


FRAGMENT_ORDER_ENV = "SVDQUANT_HF_FRAGMENT_ORDER"  # "0": loaded int4_2l layers keep the canonical order on Hopper


def hopper_fragment_order(model: nn.Module) -> int:
    """After loading: on a machine with a Hopper GPU (where the GEMM's register-fragment loop runs) the int4_2l
    layers hold their packed weights in fragment order (SVDQuantLinear.set_fragment_order; the canonical bytes move
    to host memory). Off with SVDQUANT_HF_FRAGMENT_ORDER=0. Returns how many layers hold it."""
    if os.environ.get(FRAGMENT_ORDER_ENV, "1") == "0" or not hopper_present():
        return 0
    return set_fragment_order(model)


EPILOGUES_ENV = "SVDQUANT_HF_EPILOGUES"  # "0": loaded models keep GELU and FLUX's concatenation as separate ops


def hopper_epilogues(model: nn.Module) -> list[str]:
    """After loading on a machine with a Hopper GPU: GELU and FLUX single blocks' concatenation run in the 4-bit
    GEMMs' epilogue (svdquant_hf.fuse_epilogues; the layers in fragment order take it). Off with
    SVDQUANT_HF_EPILOGUES=0. Returns the fused modules' names."""
    if os.environ.get(EPILOGUES_ENV, "1") == "0" or not hopper_present():
        return []
    return fuse_epilogues(model)


def warn_kernel_gaps(model: nn.Module) -> str | None:
    """After loading on a CUDA machine: one warning naming how many 4-bit layers the fused kernels do not take on
    this GPU and why (svdquant_hf.kernel_gaps); returns it (None when every layer is covered or there is no GPU)."""
    if not torch.cuda.is_available():
        return None
    message = describe_gaps(model)
    if message:
        logger.warning(message)
    return message


def realign_cpu_tensors(model: nn.Module, alignment: int = 64) -> int:
    """Copy CPU tensors that sit unaligned inside memory-mapped checkpoint files into fresh memory.

    CPU GEMMs take another (differently rounding) code path on unaligned data, so without this a
    reloaded model is not bit-identical to the one that was saved. Returns how many were copied.
    """
    copied = 0
    with torch.no_grad():
        for mod in model.modules():
            for group in (mod._parameters, mod._buffers):
                for key, t in group.items():
                    if t is None or t.device.type != "cpu" or t.is_meta or t.data_ptr() % alignment == 0:
                        continue
                    if isinstance(t, nn.Parameter):
                        t.data = t.data.clone()
                    else:
                        group[key] = t.clone()
                    copied += 1
    return copied


def empty_svdquant_linear(
    linear: nn.Linear,
    options: SVDQuantOptions,
    name: str,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "meta",
) -> SVDQuantLinear:
    """An uninitialised SVDQuantLinear with the shapes ``linear`` would quantize to."""
    mod = SVDQuantLinear(
        linear.in_features, linear.out_features, linear.bias is not None, options.rank, options.group_size,
        options.quant_format, options.weight_only, dtype, device=device,
    )
    mod.layer_name = name
    return mod


def replace_with_svdquant_linear(
    model: nn.Module,
    options: SVDQuantOptions,
    names: Iterable[str] | None = None,
    default_skips: Iterable[str] | None = None,
    keep_in_fp32_modules: Iterable[str] = (),
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "meta",
) -> list[str]:
    """Swap nn.Linear modules for empty SVDQuantLinear (on ``device``, meta by default), in place.

    names: exactly these modules (e.g. found from a pre-quantized checkpoint's keys); each must be
    an nn.Linear of ``model``. None: every quantizable linear (``quantizable_linears``).
    Returns the replaced names. Compute dtype of the new modules: ``dtype`` (16-bit).
    """
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"SVDQuant compute dtype must be bfloat16 or float16, got {dtype}")
    if names is None:
        targets = quantizable_linears(model, options, default_skips, keep_in_fp32_modules)
    else:
        modules = dict(model.named_modules())
        targets = {}
        for name in names:
            mod = modules.get(name)
            if mod is None:
                raise ValueError(f"SVDQuant: module {name!r} not found in {type(model).__name__}")
            if isinstance(mod, SVDQuantLinear):
                continue
            if not isinstance(mod, nn.Linear):
                raise ValueError(
                    f"SVDQuant: module {name!r} of {type(model).__name__} is a {type(mod).__name__}, not nn.Linear"
                )
            targets[name] = mod
    for name, lin in targets.items():
        set_submodule(model, name, empty_svdquant_linear(lin, options, name, dtype, device))
    return list(targets)


__all__ = [
    "FAMILY_SKIPS",
    "GENERIC_SKIPS",
    "default_skip_patterns",
    "empty_svdquant_linear",
    "is_fp32_module",
    "matches_default",
    "name_matches",
    "quantizable_linears",
    "register_default_skips",
    "replace_with_svdquant_linear",
    "realign_cpu_tensors",
    "hopper_fragment_order",
    "warn_kernel_gaps",
    "hopper_epilogues",
    "hopper_present",
    "FRAGMENT_ORDER_ENV",
    "set_submodule",
    "skip_reason",
]

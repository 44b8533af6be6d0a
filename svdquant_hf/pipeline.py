"""quantize_pipeline: calibrated SVDQuant of a whole diffusers pipeline.

1. Run the 16-bit pipeline on calibration prompts; forward pre-hooks on the denoiser's target
   linears record, at every denoising step, the per-channel input absmax and a row sample
   (an equal row budget per call, so every step and prompt is represented).
2. Quantize layer by layer (search_alpha with the low-rank branch in the loop), each layer moved
   to the GPU on its own when there is one, so the 16-bit denoiser never has to fit there.
3. Mark the quantized components so save_pretrained writes pre-quantized checkpoints.
"""
from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .algorithm.svdquant import QuantizationError
from .calibration import LayerStats, StatsCollector
from .config import SVDQuantOptions
from .quantize import check_groups, default_group_rank, qkv_groups, quantize_targets

# Used when neither prompts nor a prompts file are given (tests, smoke runs): varied subjects,
# styles and lengths. Real calibration should use many more (e.g. PartiPrompts).
BUILTIN_PROMPTS = (
    "a photo of an astronaut riding a horse on the moon",
    "a watercolor painting of a red fox sitting under a tree in autumn",
    "a city street at night with neon lights reflected in the rain",
    "a close-up portrait of an old man with a white beard, studio lighting",
    "a bowl of ramen with chopsticks, top view",
    "an isometric illustration of a tiny castle on a floating island",
    "the text 'SVDQuant' written on a blackboard",
    "a robot playing chess against a cat, oil painting",
)

DENOISER_NAMES = ("transformer", "unet", "prior", "decoder")


def load_prompts(path: str | Path, limit: int | None = None, column: str = "Prompt") -> list[str]:
    """Prompts from a text file: a TSV/CSV with a ``column`` header (PartiPrompts.tsv), else one per line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    header = lines[0] if lines else ""
    delim = "\t" if "\t" in header else ("," if "," in header else None)
    if delim and column in header.split(delim):
        rows = csv.DictReader(lines, delimiter=delim)
        prompts = [r[column].strip() for r in rows if r.get(column) and r[column].strip()]
    else:
        prompts = [ln.strip() for ln in lines if ln.strip()]
    return prompts[:limit] if limit is not None else prompts


def resolve_prompts(
    prompts: Sequence[str] | str | None, prompts_path: str | Path | None = None, num_prompts: int | None = None
) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if prompts is None:
        prompts = load_prompts(prompts_path, num_prompts) if prompts_path is not None else list(BUILTIN_PROMPTS)
    prompts = list(prompts)[:num_prompts] if num_prompts is not None else list(prompts)
    if not prompts:
        raise ValueError("quantize_pipeline: the calibration prompt list is empty; give at least one prompt")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if bad:
        raise ValueError(f"quantize_pipeline: calibration prompt(s) at index {bad[:5]} are empty or not strings")
    return prompts


def find_denoiser(pipe: Any, component: str | None = None) -> tuple[str, nn.Module]:
    comps = getattr(pipe, "components", None)
    if not isinstance(comps, Mapping):
        raise TypeError(f"quantize_pipeline: expected a diffusers pipeline, got {type(pipe).__name__}")
    names = [component] if component else [n for n in DENOISER_NAMES if isinstance(comps.get(n), nn.Module)]
    if not names or not isinstance(comps.get(names[0]), nn.Module):
        raise ValueError(
            f"quantize_pipeline: no denoiser component {component if component else DENOISER_NAMES!r} in "
            f"{type(pipe).__name__} (components: {sorted(comps)})"
        )
    return names[0], comps[names[0]]


def as_options(config: Any) -> SVDQuantOptions:
    """SVDQuantOptions from an SVDQuantConfig (diffusers or transformers side), options or dict."""
    if config is None:
        return SVDQuantOptions()
    if isinstance(config, SVDQuantOptions):
        return SVDQuantOptions(**config.options_dict())
    if isinstance(config, Mapping):
        d = {k: v for k, v in config.items() if k != "quant_method"}
        return SVDQuantOptions.from_options_dict(d)
    if hasattr(config, "to_dict"):
        return as_options(config.to_dict())
    raise TypeError(f"quantize_pipeline: config must be an SVDQuantConfig, SVDQuantOptions or dict, got {type(config).__name__}")


def target_linears(model: nn.Module, options: SVDQuantOptions) -> dict[str, nn.Linear]:
    """The linears quantize-on-load would replace: same default skips, same shape rules."""
    if _is_transformers_model(model):
        from .quantizers.transformers.layers import target_linears as transformers_targets

        return transformers_targets(model, options)[0]
    from .quantizers.common import quantizable_linears

    keep_fp32 = getattr(model, "_keep_in_fp32_modules", None) or ()
    return quantizable_linears(model, options, keep_in_fp32_modules=keep_fp32)


def _is_transformers_model(model: nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PreTrainedModel)


class StepStatsCollector(StatsCollector):
    """StatsCollector with a fixed row budget per forward call.

    With ``rows_per_call = ceil(max_rows / expected_calls)`` the row sample is spread evenly over
    all denoising steps and prompts instead of favouring the last calls; absmax sees every token.
    """

    def __init__(self, targets: Mapping[str, nn.Module], max_rows: int, rows_per_call: int, seed: int = 0) -> None:
        super().__init__(targets, max_rows, seed)
        self.rows_per_call = max(1, int(rows_per_call))

    def _keep_rows(self, st: LayerStats, x2: torch.Tensor) -> None:
        self._append_sample(st, x2, min(x2.shape[0], self.rows_per_call))


def _mark_diffusers(model: nn.Module, options: SVDQuantOptions) -> None:
    from .modules import SVDQuantLinear
    from .quantizers.config import SVDQuantConfig
    from .quantizers.diffusers.quantizer import SVDQuantDiffusersQuantizer

    cfg = SVDQuantConfig(**options.options_dict())
    q = SVDQuantDiffusersQuantizer(cfg, pre_quantized=True)
    q.targets = {n: m.bias is not None for n, m in model.named_modules() if isinstance(m, SVDQuantLinear)}
    model.is_quantized = True
    model.quantization_method = cfg.quant_method
    q.postprocess_model(model)  # checks every layer is complete; makes save_pretrained atomic
    model.hf_quantizer = q
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    model.register_to_config(quantization_config=cfg, _pre_quantization_dtype=dtype)


def _mark_quantized(model: nn.Module, options: SVDQuantOptions) -> None:
    """Make save_pretrained of ``model`` write an SVDQuant pre-quantized checkpoint."""
    if _is_transformers_model(model):
        from .quantizers.transformers import attach_transformers_quantizer

        attach_transformers_quantizer(model, options)
    else:
        _mark_diffusers(model, options)


def _refresh_group_offloading(model: nn.Module) -> None:
    """Group-offloading hooks hold references to the replaced tensors: re-apply them."""
    try:
        from diffusers.hooks.group_offloading import _maybe_remove_and_reapply_group_offloading
    except ImportError:  # pragma: no cover
        return
    _maybe_remove_and_reapply_group_offloading(model)


def quantize_pipeline(
    pipe: Any,
    config: Any = None,
    prompts: Sequence[str] | str | None = None,
    *,
    num_inference_steps: int | None = None,
    prompts_path: str | Path | None = None,
    num_prompts: int | None = None,
    batch_size: int = 1,
    component: str | None = None,
    device: torch.device | str | None = None,
    offload: str | None = None,
    seed: int = 0,
    progress: bool = True,
    joint_qkv: bool | None = None,
    group_rank: int | None = None,
    **pipe_kwargs: Any,
) -> Any:
    """Calibrate and SVDQuant the denoiser of a diffusers pipeline in place; returns the pipeline.

    prompts: calibration prompts (a list or one string); when None, the first ``num_prompts`` of
        ``prompts_path`` (e.g. PartiPrompts.tsv) or, without a path, a small built-in set.
    num_inference_steps: denoising steps per prompt (statistics are gathered at every step).
    component: the component to quantize (default: "transformer" or "unet").
    device: where each layer is quantized (default: CUDA when available, else where it lives).
    offload: None (run the pipeline as placed), "model" (enable_model_cpu_offload) or "block"
        (enable_group_offload, block level: for a 16-bit denoiser that does not fit the GPU).
    joint_qkv: quantize each attention's q/k/v (and add_q/k/v) jointly, so that
        ``fuse_shared_input_projections`` can run them as one layer (None: ``config.joint_qkv``);
        group_rank: their branch rank (default 3x the options' rank: the branch work of three separate
        layers).
    pipe_kwargs: passed to every pipeline call (height, width, guidance_scale, ...).
    """
    options = as_options(config)
    prompt_list = resolve_prompts(prompts, prompts_path, num_prompts)
    if batch_size < 1:
        raise ValueError(f"quantize_pipeline: batch_size={batch_size}, expected >= 1")
    if num_inference_steps is not None and num_inference_steps < 1:
        raise ValueError(f"quantize_pipeline: num_inference_steps={num_inference_steps}, expected >= 1")
    name, denoiser = find_denoiser(pipe, component)
    if getattr(denoiser, "hf_quantizer", None) is not None or any(
        type(m).__name__ == "SVDQuantLinear" for m in denoiser.modules()
    ):
        raise QuantizationError(f"quantize_pipeline: component {name!r} is already quantized; load it in 16 bits")
    targets = target_linears(denoiser, options)
    if not targets:
        raise QuantizationError(f"quantize_pipeline: component {name!r} has no nn.Linear layer to quantize")
    joint = options.joint_qkv if joint_qkv is None else joint_qkv
    groups = check_groups(qkv_groups(denoiser, targets), targets) if joint else []
    if group_rank is None and groups:
        group_rank = default_group_rank(options, groups, {n: m.in_features for n, m in targets.items()})
    elif group_rank is not None and group_rank < 0:
        raise ValueError(f"quantize_pipeline: group_rank={group_rank}, expected >= 0")
    meta = [n for n, m in targets.items() if m.weight.is_meta]
    if meta:
        raise QuantizationError(
            f"quantize_pipeline: layer {meta[0]!r} has its weight on the meta device (sequential CPU offload?); "
            "use offload='block' or 'model' instead of enable_sequential_cpu_offload"
        )

    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "block":
        onload = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        pipe.enable_group_offload(onload_device=onload, offload_type="block_level", num_blocks_per_group=1)
    elif offload is not None:
        raise ValueError(f"quantize_pipeline: offload={offload!r}, expected None, 'model' or 'block'")

    batches = [prompt_list[i : i + batch_size] for i in range(0, len(prompt_list), batch_size)]
    steps = num_inference_steps or 1
    rows_per_call = math.ceil(options.calib_tokens / (len(batches) * steps))
    collector = StepStatsCollector(targets, options.calib_tokens, rows_per_call, seed)
    call_kwargs = dict(pipe_kwargs)
    call_kwargs.setdefault("output_type", "latent")
    if num_inference_steps is not None:
        call_kwargs["num_inference_steps"] = num_inference_steps
    stats: dict[str, LayerStats] = {}
    if options.weight_only:
        warnings.warn("quantize_pipeline: weight_only=True quantizes no activations, so no calibration run is "
                      "needed; quantizing data-free", stacklevel=2)
    else:
        with collector, torch.no_grad():
            for i, batch in enumerate(tqdm(batches, desc="SVDQuant calibration", disable=not progress)):
                gen = torch.Generator("cpu").manual_seed(seed + i)
                pipe(prompt=batch, generator=gen, **call_kwargs)
        stats = collector.finalize()
        if all(st.seen_tokens == 0 for st in stats.values()):
            raise QuantizationError(f"quantize_pipeline: the calibration runs never reached a linear layer of {name!r}")

    work = torch.device(device) if device is not None else (torch.device("cuda") if torch.cuda.is_available() else None)

    def layer_stats(lname: str) -> LayerStats | None:
        st = stats.pop(lname, None)
        if not options.weight_only and (st is None or st.seen_tokens == 0):
            warnings.warn(f"quantize_pipeline: layer {lname!r} saw no calibration input; using the data-free rule")
            st = None
        return st

    quantize_targets(denoiser, targets, options, layer_stats, work, groups, group_rank, progress)
    _refresh_group_offloading(denoiser)
    _mark_quantized(denoiser, options)
    return pipe


__all__ = ["BUILTIN_PROMPTS", "load_prompts", "quantize_pipeline", "resolve_prompts"]

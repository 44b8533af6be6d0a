"""Model cards (README.md with YAML metadata) for SVDQuant checkpoints, built on huggingface_hub.ModelCard."""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .info import CheckpointInfo, human_bytes

LIBRARY = "svdquant-hf"
_PIPELINE_TAGS = (  # (substring of the pipeline class, Hub pipeline_tag), first match wins
    ("Inpaint", "image-to-image"), ("Img2Img", "image-to-image"), ("Kontext", "image-to-image"),
    ("ImageToVideo", "image-to-video"), ("Video", "text-to-video"), ("Wan", "text-to-video"),
    ("Pipeline", "text-to-image"),
)


def pipeline_tag_for(class_name: str | None) -> str | None:
    if not class_name:
        return None
    return next((tag for key, tag in _PIPELINE_TAGS if key in class_name), None)


def is_hub_id(name: str | None) -> bool:
    if not name or name.startswith((".", "/", "~")) or name.count("/") != 1:
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def loading_snippet(repo_id: str, info: CheckpointInfo) -> str:
    """Python that loads the checkpoint with diffusers (tested on a tiny pipeline)."""
    if info.kind == "pipeline":
        cls, var = "DiffusionPipeline", "pipe"
    else:
        cls, var = info.class_name or "AutoModel", "model"
    return (
        "import torch\n"
        "import svdquant_hf  # registers the \"svdquant\" quantization backend with diffusers\n"
        f"from diffusers import {cls}\n\n"
        f"{var} = {cls}.from_pretrained({json.dumps(repo_id)}, dtype=torch.bfloat16, use_safetensors=True)\n"
    )


def _usage_snippet(info: CheckpointInfo) -> str:
    if info.kind == "pipeline":
        return 'pipe.to("cuda")\nimage = pipe("a photo of a cat holding a sign that says hello").images[0]\nimage.save("cat.png")\n'
    return 'model.to("cuda")  # use it in the pipeline it belongs to, e.g. pipe.transformer = model\n'


def _options_table(info: CheckpointInfo) -> list[str]:
    rows = ["| component | class | format | rank | group size | W/A | quantized layers | size |",
            "|---|---|---|---|---|---|---|---|"]
    for c in info.components:
        o = c.options
        if c.quant_method:
            fmt = o.get("quant_format", "int4")
            group = 16 if fmt == "nvfp4" else o.get("group_size", "?")
            wa = "W4A16" if o.get("weight_only") else "W4A4"
            rows.append(f"| {c.name or 'model'} | {c.class_name or '?'} | {c.quant_method} {fmt} | "
                        f"{', '.join(map(str, c.ranks)) or o.get('rank', '?')} | {group} | {wa} | "
                        f"{c.quantized_layers} | {human_bytes(c.bytes)} |")
        else:
            rows.append(f"| {c.name or 'model'} | {c.class_name or '?'} | 16-bit (not quantized) | - | - | - | 0 | "
                        f"{human_bytes(c.bytes)} |")
    return rows


def _calibration_text(info: CheckpointInfo, calibration: Mapping[str, Any] | None) -> str:
    if not calibration:
        return ("Data-free: no calibration data (smoothing disabled; the low-rank branch absorbs weight outliers).")
    parts = [f"dataset: {calibration.get('dataset', 'unspecified')}"]
    for key, label in (("num_prompts", "prompts"), ("num_inference_steps", "denoising steps per prompt")):
        if calibration.get(key) is not None:
            parts.append(f"{calibration[key]} {label}")
    return "Calibrated (smoothing strength searched per layer on recorded activations): " + ", ".join(parts) + "."


def build_model_card(
    info: CheckpointInfo,
    repo_id: str,
    *,
    base_model: str | None = None,
    license: str | None = None,
    quality: Mapping[str, Any] | None = None,
    calibration: Mapping[str, Any] | None = None,
    base_size_bytes: int | None = None,
    extra_tags: list[str] | None = None,
) -> Any:
    """A huggingface_hub.ModelCard describing how the checkpoint was made and how to load it.

    base_model: the Hub id of the original model (also read from the checkpoint's svdquant_hf.json);
    license: normally inherited from the base model by the caller; quality: metric name -> value.
    """
    from huggingface_hub import ModelCard, ModelCardData

    side = info.extra.get("sidecar", {})
    base_model = base_model or info.base_model
    calibration = calibration if calibration is not None else side.get("calibration")
    quantized = info.quantized
    formats = sorted({c.options.get("quant_format", "int4") for c in quantized})
    tags = ["svdquant", LIBRARY, "quantized", "4-bit", *formats,
            *sorted({"w4a16" if c.options.get("weight_only") else "w4a4" for c in quantized}), "diffusers",
            *(extra_tags or [])]
    data = ModelCardData(
        base_model=base_model if is_hub_id(base_model) else None,
        base_model_relation="quantized" if is_hub_id(base_model) else None,
        library_name="diffusers" if (info.kind == "pipeline" or info.class_name) else None,
        license=license,
        pipeline_tag=pipeline_tag_for(info.class_name) if info.kind == "pipeline" else None,
        tags=list(dict.fromkeys(tags)),
    )
    title = repo_id.split("/")[-1]
    origin = f"[{base_model}](https://huggingface.co/{base_model})" if is_hub_id(base_model) else (base_model or "an unspecified base model")
    lines = [
        f"# {title}",
        "",
        f"SVDQuant 4-bit quantization of {origin}, made with {LIBRARY}: "
        "smoothing moves activation outliers into the weights, a 16-bit low-rank branch absorbs the weight "
        "outliers, and only the residual is quantized to 4 bits (activations are quantized per token at run time).",
        "",
        "## How it was quantized",
        "",
        *_options_table(info),
        "",
        _calibration_text(info, calibration),
        "",
        "## How to load it",
        "",
        "```python",
        loading_snippet(repo_id, info).rstrip("\n"),
        "```",
        "",
        "```python",
        _usage_snippet(info).rstrip("\n"),
        "```",
        "",
        "`pip install svdquant-hf` first. On CUDA GPUs svdquant-hf's fused kernels are used when they are available; "
        "otherwise a pure-PyTorch reference path (same numerics, slow) runs.",
        "",
        "## Size",
        "",
        f"Measured from the safetensors files: **{human_bytes(info.total_bytes)}** in total"
        + (f" ({', '.join(f'{c.name}: {human_bytes(c.bytes)}' for c in quantized if c.name)})" if info.kind == "pipeline" else "")
        + (f", vs {human_bytes(base_size_bytes)} for the 16-bit original ({base_size_bytes / max(info.total_bytes, 1):.2f}x smaller)."
           if base_size_bytes else "."),
    ]
    originals = dict(side.get("original_bytes") or {})
    compared = [(c, originals[c.name]) for c in quantized if c.name in originals and c.bytes]
    if compared:
        lines += ["", "| component | 16-bit | SVDQuant | smaller by |", "|---|---|---|---|"]
        lines += [f"| {c.name} | {human_bytes(b)} | {human_bytes(c.bytes)} | {b / c.bytes:.2f}x |" for c, b in compared]
    if quality:
        lines += ["", "## Quality", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in quality.items()]
    if license is None:
        lines += ["", "License: same as the base model (not recorded here: check the base model's card)."]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"
    return ModelCard(content)


__all__ = ["build_model_card", "loading_snippet", "pipeline_tag_for", "is_hub_id"]

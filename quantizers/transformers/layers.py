"""Module swapping and checkpoint inspection for the transformers-side SVDQuant quantizer."""
from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ...algorithm.svdquant import QuantizationError
from ...config import FORMAT_TENSORS, SVDQuantOptions, name_matches
from ...modules import SVDQuantLinear

QUANT_TENSORS = ("qweight", "wscales", "smooth_factor", "proj_down", "proj_up")
# the other tensors an SVDQuant layer may store: bias and the format-specific ones (wtscale, wchannel)
OPTIONAL_TENSORS = ("bias", *FORMAT_TENSORS)

# Kept in 16 bits by default: output projections (small, and they shape the pooled embedding), and the vision
# tower and projector of vision-language text encoders (Qwen2.5-VL for Qwen-Image, Mistral 3 for FLUX.2): a
# text-to-image pipeline never runs them, and image-prompted ones (Qwen-Image-Edit) lose accuracy there.
DEFAULT_TRANSFORMERS_SKIP = (
    "text_projection", "visual_projection", "lm_head", "visual", "vision_tower", "multi_modal_projector",
)

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype | None


def read_safetensors_header(path: str) -> dict[str, TensorInfo]:
    """Names, shapes and dtypes of a .safetensors file, from its header only (no tensor data read)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise QuantizationError(f"checkpoint {path!r}: truncated safetensors header")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise QuantizationError(f"checkpoint {path!r}: implausible safetensors header size {n}")
        blob = f.read(n)
        if len(blob) != n:
            raise QuantizationError(f"checkpoint {path!r}: truncated safetensors header")
    header = json.loads(blob)
    out = {}
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        out[key] = TensorInfo(tuple(meta["shape"]), _SAFETENSORS_DTYPES.get(meta["dtype"]))
    return out


def read_checkpoint_tensors(files: Iterable[str] | None) -> dict[str, TensorInfo]:
    infos: dict[str, TensorInfo] = {}
    for f in files or ():
        if str(f).endswith(".safetensors"):
            infos.update(read_safetensors_header(str(f)))
    return infos


def compute_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """SVDQuantLinear stores and computes in bf16/fp16; fp32 (or unknown) models get bf16 layers."""
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.bfloat16


def add_weight_probe(mod: SVDQuantLinear) -> None:
    """transformers modeling code probes ``<linear>.weight`` (T5: ``wo.weight.dtype != torch.int8``).

    Give it an empty int8 tensor, the convention transformers models already handle for 8-bit layers;
    it is a plain attribute, so it is neither saved nor moved.
    """
    probe = torch.empty(0, dtype=torch.int8)
    probe._is_hf_initialized = True
    if "weight" in mod._parameters:
        del mod._parameters["weight"]
    object.__setattr__(mod, "weight", probe)


def target_linears(
    model: nn.Module, options: SVDQuantOptions, extra_skip: Iterable[str] = DEFAULT_TRANSFORMERS_SKIP
) -> tuple[dict[str, nn.Linear], list[str]]:
    """Linears to quantize, and the names left out because their shape does not fit the options.

    ``modules_to_not_convert`` (when not None) replaces the default skips ``extra_skip``.
    """
    g = options.effective_group_size
    targets, unfit = {}, []
    for name, mod in model.named_modules():
        if not name or not isinstance(mod, nn.Linear) or isinstance(mod, SVDQuantLinear):
            continue
        # a user list replaces the defaults (as on the diffusers side); None keeps them
        if options.modules_to_not_convert is not None:
            if options.is_skipped(name):
                continue
        elif any(name_matches(name, p) for p in extra_skip):
            continue
        if (
            mod.in_features % g
            or options.rank > min(mod.in_features, mod.out_features)
            or options.in_features_problem(mod.in_features)
        ):
            unfit.append(name)
            continue
        targets[name] = mod
    return targets, unfit


def new_layer(
    lin: nn.Linear, options: SVDQuantOptions, dtype: torch.dtype, rank: int | None = None
) -> SVDQuantLinear:
    mod = SVDQuantLinear(
        lin.in_features, lin.out_features, lin.bias is not None,
        options.rank if rank is None else rank, options.group_size, options.quant_format,
        options.weight_only, dtype, device="meta",
    )
    return mod


def prequantized_layers(
    model: nn.Module, infos: dict[str, TensorInfo], options: SVDQuantOptions
) -> dict[str, tuple[nn.Linear, torch.dtype, int]]:
    """Modules stored as SVDQuant layers in a checkpoint: {name: (linear, compute dtype, rank)}.

    Every tensor is checked against the model's linear and the config; errors name the tensor.
    """
    modules = dict(model.named_modules())
    prefix = getattr(model, "base_model_prefix", "") or ""
    found: dict[str, tuple[nn.Linear, torch.dtype, int]] = {}
    for key in infos:
        if not key.endswith(".qweight"):
            continue
        ck_name = key[: -len(".qweight")]
        name = ck_name
        if name not in modules and prefix and name.startswith(prefix + "."):
            name = name[len(prefix) + 1 :]
        lin = modules.get(name)
        if not isinstance(lin, nn.Linear):
            raise QuantizationError(
                f"checkpoint tensor {key!r}: the model has no nn.Linear named {name!r} to hold it"
            )
        own = tuple(t for t, fmt in FORMAT_TENSORS.items() if fmt == options.quant_format)
        for t in QUANT_TENSORS + own:
            if f"{ck_name}.{t}" not in infos:
                raise QuantizationError(f"checkpoint is missing tensor {ck_name}.{t} (layer {name!r})")
        for t, fmt in FORMAT_TENSORS.items():
            if fmt != options.quant_format and f"{ck_name}.{t}" in infos:
                raise QuantizationError(
                    f"checkpoint tensor {ck_name}.{t} exists only in quant_format={fmt!r} checkpoints, but the "
                    f"config says quant_format={options.quant_format!r} (layer {name!r})"
                )
        n, k = lin.out_features, lin.in_features
        g = options.effective_group_size
        rank = infos[f"{ck_name}.proj_down"].shape[-1] if len(infos[f"{ck_name}.proj_down"].shape) == 2 else -1
        expected = {
            "qweight": (n, k // 2),
            "wscales": (k // g, n),
            "smooth_factor": (k,),
            "proj_down": (k, options.rank),
            "proj_up": (n, options.rank),
        }
        if options.quant_format == "int4_2l":
            expected["wchannel"] = (n,)
        for t, shape in expected.items():
            got = infos[f"{ck_name}.{t}"].shape
            if got != shape:
                hint = ""
                if t in ("proj_down", "proj_up") and rank != options.rank:
                    hint = f" (config option rank={options.rank} contradicts the checkpoint's rank {rank})"
                elif t == "wscales":
                    hint = f" (config option group_size={g})"
                raise QuantizationError(
                    f"checkpoint tensor {ck_name}.{t} has shape {list(got)}, expected {list(shape)} for "
                    f"layer {name!r} with in_features={k}, out_features={n}{hint}"
                )
        qdt = infos[f"{ck_name}.qweight"].dtype
        if qdt not in (torch.int8, torch.uint8):
            raise QuantizationError(f"checkpoint tensor {ck_name}.qweight has dtype {qdt}, expected int8")
        if options.quant_format == "int4_2l":
            for t, want in (("wscales", torch.uint8), ("wchannel", torch.float32)):
                got = infos[f"{ck_name}.{t}"].dtype
                if got != want:
                    raise QuantizationError(
                        f"checkpoint tensor {ck_name}.{t} has dtype {got}, expected {want} for "
                        f"quant_format='int4_2l' (layer {name!r})"
                    )
        dt = infos[f"{ck_name}.proj_up"].dtype
        if dt not in (torch.float16, torch.bfloat16, torch.float32):
            raise QuantizationError(f"checkpoint tensor {ck_name}.proj_up has dtype {dt}, expected a float dtype")
        found[name] = (lin, dt, options.rank)
    return found

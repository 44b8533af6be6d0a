"""Exchange SVDQuant checkpoints with Nunchaku.

Import (``import_nunchaku``): Nunchaku's single-file format (one safetensors, diffusers config and
quantization_config in its metadata), its legacy folder (transformer_blocks.safetensors +
unquantized_layers.safetensors + config.json) and diffusers ``nunchaku_lite`` folders become a
svdquant-hf model folder (config.json with our quantization_config + safetensors in our layout).
Export (``export_nunchaku_lite``): our INT4 group-64 checkpoints become folders that diffusers'
``nunchaku_lite`` backend loads. docs/interop.md says which parts map exactly.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..formats.int4 import dequantize_int4, unpack_int4
from . import nunchaku_layout as L
from .checkpoint_io import (
    CONFIG_NAME,
    CheckpointError,
    load_tensors,
    quantized_layers,
    read_json,
    read_metadata,
    safetensors_files,
    write_model_folder,
)

# Nunchaku key suffix -> role. Legacy names first, then the names of its newer modules / nunchaku_lite.
_ROLES = {
    "qweight": "qweight", "wscales": "wscales", "bias": "bias",
    "smooth": "smooth", "smooth_factor": "smooth",
    "smooth_orig": "smooth_orig", "smooth_factor_orig": "smooth_orig",
    "lora_down": "lora_down", "proj_down": "lora_down",
    "lora_up": "lora_up", "proj_up": "lora_up",
    "wcscales": "wcscales", "wtscale": "wtscale", "wzeros": "wzeros",
}
# INT4 mlp_fc2 layers: Nunchaku feeds GELU(x) + 0.171875 as unsigned INT4 and folds the shift into the bias.
GELU_SHIFT = 0.171875
LEGACY_FILES = ("transformer_blocks.safetensors", "unquantized_layers.safetensors")


class NunchakuFormatError(CheckpointError):
    """The input is not a Nunchaku checkpoint we can convert; the message names the key or layer."""


@dataclass
class ConvertedLayer:
    qweight: torch.Tensor  # ours: int8 [N, K/2], logical nibble order
    wscales: torch.Tensor  # [K/64, N]
    smooth_factor: torch.Tensor  # [K]
    proj_down: torch.Tensor  # [K, R]
    proj_up: torch.Tensor  # [N, R]
    bias: torch.Tensor  # [N]
    notes: list[str] = field(default_factory=list)

    @property
    def rank(self) -> int:
        return self.proj_down.shape[1]

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        return {f"{name}.{k}": getattr(self, k) for k in ("qweight", "wscales", "smooth_factor", "proj_down", "proj_up", "bias")}


@dataclass
class NunchakuCheckpoint:
    tensors: dict[str, torch.Tensor]
    config: dict[str, Any] | None  # the diffusers model config, when the checkpoint carries one
    quantization_config: dict[str, Any] | None
    source_format: str  # "single-file" | "legacy-folder" | "nunchaku_lite"


# --- reading ------------------------------------------------------------------------------------


def _json_meta(meta: Mapping[str, str], key: str, path: Path) -> dict[str, Any] | None:
    if key not in meta:
        return None
    try:
        value = json.loads(meta[key])
    except json.JSONDecodeError as e:
        raise NunchakuFormatError(f"{path}: safetensors metadata {key!r} is not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise NunchakuFormatError(f"{path}: safetensors metadata {key!r} must be a JSON object")
    return value


def read_nunchaku(path: str | os.PathLike) -> NunchakuCheckpoint:
    """Read a Nunchaku checkpoint (file or folder) from local disk. Safetensors only; no code runs."""
    p = Path(path)
    if p.is_file():
        if p.suffix not in (".safetensors", ".sft"):
            raise NunchakuFormatError(f"{p}: not a safetensors file (only safetensors checkpoints are read)")
        meta = read_metadata(p)
        return NunchakuCheckpoint(
            load_tensors([p]), _json_meta(meta, "config", p), _json_meta(meta, "quantization_config", p), "single-file"
        )
    if not p.is_dir():
        raise NunchakuFormatError(f"{p}: no such file or folder")
    if all((p / f).is_file() for f in LEGACY_FILES):
        config = read_json(p / CONFIG_NAME) if (p / CONFIG_NAME).is_file() else None
        return NunchakuCheckpoint(load_tensors([p / f for f in LEGACY_FILES]), config, None, "legacy-folder")
    if (p / CONFIG_NAME).is_file():
        config = read_json(p / CONFIG_NAME)
        qc = config.get("quantization_config") or {}
        if qc.get("quant_method") == "nunchaku_lite":
            files = safetensors_files(p)
            if not files:
                raise NunchakuFormatError(f"{p}: nunchaku_lite config.json but no *.safetensors file")
            config = {k: v for k, v in config.items() if k != "quantization_config"}
            return NunchakuCheckpoint(load_tensors(files), config, qc, "nunchaku_lite")
    singles = sorted(p.glob("*.safetensors"))
    if len(singles) == 1 and "config" in read_metadata(singles[0]):
        return read_nunchaku(singles[0])
    raise NunchakuFormatError(
        f"{p}: not a Nunchaku checkpoint (expected a .safetensors file with 'config' metadata, a legacy folder "
        f"with {' + '.join(LEGACY_FILES)}, or a nunchaku_lite folder)"
    )


# --- one layer ----------------------------------------------------------------------------------


def _check_float(t: torch.Tensor, what: str) -> None:
    if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise NunchakuFormatError(f"{what}: expected a float tensor, got {t.dtype}")


def convert_layer(parts: Mapping[str, torch.Tensor], name: str, input_shift: float | None = None) -> ConvertedLayer:
    """Nunchaku tensors of one SVDQ W4A4 INT4 layer (role -> tensor) -> our layout, exactly.

    input_shift: Nunchaku quantizes ``x + input_shift`` (unsigned) for this layer; its effect on the
    residual is moved back into the bias (our kernels quantize the unshifted input, signed).
    """
    if "wzeros" in parts or parts["qweight"].dtype == torch.int32:
        raise NunchakuFormatError(
            f"layer {name!r}: Nunchaku AWQ W4A16 layer (qweight int32 / wzeros); only SVDQ W4A4 layers convert"
        )
    for role in ("qweight", "wscales", "smooth", "lora_down", "lora_up"):
        if role not in parts:
            raise NunchakuFormatError(f"layer {name!r}: missing tensor {role!r}")
    ws = parts["wscales"]
    if ws.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) or "wcscales" in parts or "wtscale" in parts:
        raise NunchakuFormatError(f"layer {name!r}: NVFP4 Nunchaku layers are not supported (INT4 group 64 only)")
    qw = parts["qweight"]
    if qw.dtype not in (torch.int8, torch.uint8) or qw.dim() != 2:
        raise NunchakuFormatError(f"layer {name!r}: qweight must be int8 [out, in/2], got {qw.dtype} {tuple(qw.shape)}")
    n, k = qw.shape[0], qw.shape[1] * 2
    _check_float(ws, f"layer {name!r} wscales")
    if tuple(ws.shape) != (k // L.GROUP, n):
        raise NunchakuFormatError(f"layer {name!r}: wscales has shape {tuple(ws.shape)}, expected {(k // L.GROUP, n)}")
    dtype = ws.dtype
    expect = {"smooth": (k,), "bias": (n,)}
    for role, shape in expect.items():
        if role in parts and tuple(parts[role].shape) != shape:
            raise NunchakuFormatError(f"layer {name!r}: {role} has shape {tuple(parts[role].shape)}, expected {shape}")
    down, up = parts["lora_down"], parts["lora_up"]
    if down.dim() != 2 or up.dim() != 2 or down.shape[0] != k or up.shape[0] != n or down.shape[1] != up.shape[1]:
        raise NunchakuFormatError(
            f"layer {name!r}: low-rank shapes lora_down {tuple(down.shape)} / lora_up {tuple(up.shape)} do not "
            f"match [in={k}, rank] / [out={n}, rank]"
        )
    try:
        qweight = L.untile_qweight(qw, f"{name}.qweight")
        scales = L.unpack_scales(ws, f"{name}.wscales")
        smooth = L.unpack_vector(parts["smooth"], f"{name}.smooth")
        bias = L.unpack_vector(parts["bias"], f"{name}.bias") if "bias" in parts else torch.zeros(n, dtype=dtype)
        proj_down = L.unpack_proj_down(down, f"{name}.lora_down")
        proj_up = L.unpack_proj_up(up, f"{name}.lora_up")
    except L.LayoutError as e:
        raise NunchakuFormatError(f"layer {name!r}: {e}") from e
    notes = []
    if input_shift is not None:
        # residual (smoothed domain) applied to the shift vector: sum_k W[n,k] * shift / smooth[k]
        w = dequantize_int4(unpack_int4(qweight), scales.t(), L.GROUP)
        corr = w @ (torch.full((k,), input_shift) / smooth.float())
        bias = (bias.float() + corr).to(bias.dtype)
        notes.append(f"unsigned input shift {input_shift} folded back into the bias (rounded to {bias.dtype})")
    return ConvertedLayer(qweight, scales.to(dtype), smooth.to(dtype), proj_down.to(dtype),
                          proj_up.to(dtype), bias.to(dtype), notes)


_AWQ_ROLES = {"qweight", "wscales", "wzeros", "bias"}
# Nunchaku's FLUX AdaNorm linears: outputs interleaved by chunk, and +1 folded into the "scale" chunks' bias
_ADANORM_SPLITS = {("transformer_blocks", "norm1.linear"): 6, ("transformer_blocks", "norm1_context.linear"): 6,
                   ("single_transformer_blocks", "norm.linear"): 3}


def adanorm_splits(name: str) -> int:
    parts = name.split(".")
    return _ADANORM_SPLITS.get((parts[0], ".".join(parts[2:])), 1) if len(parts) > 2 else 1


def dequantize_awq_layer(parts: Mapping[str, torch.Tensor], name: str, splits: int = 1) -> dict[str, torch.Tensor]:
    """A Nunchaku AWQ W4A16 layer -> a 16-bit nn.Linear ``weight``/``bias`` (w = q * scale + zero, in fp32).

    splits > 1 (FLUX AdaNorm): undo Nunchaku's output interleaving and the +1 it folds into the bias of the
    "scale" chunks (chunk 1 and chunk splits-2), giving diffusers' AdaLayerNorm semantics.
    """
    extra = set(parts) - _AWQ_ROLES
    if extra or not {"qweight", "wscales", "wzeros"} <= set(parts):
        raise NunchakuFormatError(
            f"layer {name!r}: AWQ W4A16 layer needs qweight/wscales/wzeros(/bias), got {sorted(parts)}"
        )
    try:
        codes = L.unpack_awq_weight(parts["qweight"], f"{name}.qweight")
    except L.LayoutError as e:
        raise NunchakuFormatError(f"layer {name!r}: {e}") from e
    n, k = codes.shape
    g = k // 64
    ws, wz = parts["wscales"], parts["wzeros"]
    for what, t in (("wscales", ws), ("wzeros", wz)):
        _check_float(t, f"layer {name!r} {what}")
        if t.dim() != 2 or t.shape[1] != n or t.shape[0] < g:
            raise NunchakuFormatError(f"layer {name!r}: {what} has shape {tuple(t.shape)}, expected [{g}, {n}]")
    w = codes.float().reshape(n, g, 64) * ws[:g].t().float().unsqueeze(-1) + wz[:g].t().float().unsqueeze(-1)
    w = w.reshape(n, k)
    bias = parts["bias"].float() if "bias" in parts else torch.zeros(n)
    if bias.shape != (n,):
        raise NunchakuFormatError(f"layer {name!r}: bias has shape {tuple(bias.shape)}, expected ({n},)")
    if splits > 1:
        if n % splits:
            raise NunchakuFormatError(f"layer {name!r}: {n} outputs cannot hold {splits} interleaved chunks")
        m = n // splits
        w = w.reshape(m, splits, k).transpose(0, 1).reshape(n, k)
        delta = torch.zeros(splits)
        delta[1] = delta[splits - 2] = 1.0
        bias = (bias.reshape(m, splits) - delta).t().reshape(n)
    dtype = ws.dtype
    return {f"{name}.weight": w.to(dtype), f"{name}.bias": bias.to(dtype)}


def split_output(layer: ConvertedLayer, parts: int) -> list[ConvertedLayer]:
    """Split a fused layer (e.g. QKV) along its outputs: exact (inputs, smoothing and proj_down are shared)."""
    n = layer.proj_up.shape[0]
    if n % parts:
        raise NunchakuFormatError(f"fused layer with {n} outputs cannot be split into {parts}")
    m = n // parts
    return [
        ConvertedLayer(
            layer.qweight[i * m:(i + 1) * m].clone(), layer.wscales[:, i * m:(i + 1) * m].clone(),
            layer.smooth_factor.clone(), layer.proj_down.clone(), layer.proj_up[i * m:(i + 1) * m].clone(),
            layer.bias[i * m:(i + 1) * m].clone(), list(layer.notes),
        )
        for i in range(parts)
    ]


def concat_input(layers: list[ConvertedLayer]) -> ConvertedLayer:
    """Layers that read consecutive input slices and whose outputs add -> one layer over the whole input.

    Exact for the weights, scales and smoothing (groups never straddle slices); the low-rank branch becomes
    block-diagonal (ranks add); biases add (exact when at most one is non-zero).
    """
    dtype = layers[0].wscales.dtype
    downs = [ly.proj_down for ly in layers]
    k_tot, r_tot = sum(d.shape[0] for d in downs), sum(d.shape[1] for d in downs)
    proj_down = torch.zeros(k_tot, r_tot, dtype=dtype)
    k0 = r0 = 0
    for d in downs:
        proj_down[k0:k0 + d.shape[0], r0:r0 + d.shape[1]] = d
        k0, r0 = k0 + d.shape[0], r0 + d.shape[1]
    bias = sum(ly.bias.float() for ly in layers).to(dtype)
    notes = [n for ly in layers for n in ly.notes] + [f"{len(layers)} input slices merged; ranks add"]
    return ConvertedLayer(
        torch.cat([ly.qweight for ly in layers], 1), torch.cat([ly.wscales for ly in layers], 0),
        torch.cat([ly.smooth_factor for ly in layers]), proj_down, torch.cat([ly.proj_up for ly in layers], 1),
        bias, notes,
    )


def pad_rank(layer: ConvertedLayer, rank: int) -> ConvertedLayer:
    """Zero-pad the low-rank branch to ``rank`` (exact: zero columns add nothing)."""
    extra = rank - layer.rank
    if extra <= 0:
        return layer
    z = layer.proj_down.new_zeros
    layer.proj_down = torch.cat([layer.proj_down, z(layer.proj_down.shape[0], extra)], 1)
    layer.proj_up = torch.cat([layer.proj_up, z(layer.proj_up.shape[0], extra)], 1)
    return layer


# --- names --------------------------------------------------------------------------------------

# Nunchaku's FLUX block names -> diffusers FluxTransformer2DModel names. A list splits a fused layer along
# its outputs; ("proj_out", i) is input slice i of the single block's proj_out.
_FLUX_DOUBLE: dict[str, Any] = {
    "qkv_proj": ["attn.to_q", "attn.to_k", "attn.to_v"],
    "attn.to_qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
    "qkv_proj_context": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
    "attn.add_qkv_proj": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
    "out_proj": "attn.to_out.0", "out_proj_context": "attn.to_add_out",
    "mlp_fc1": "ff.net.0.proj", "mlp_fc2": "ff.net.2",
    "mlp_context_fc1": "ff_context.net.0.proj", "mlp_context_fc2": "ff_context.net.2",
    "norm_q": "attn.norm_q", "norm_k": "attn.norm_k",
    "norm_added_q": "attn.norm_added_q", "norm_added_k": "attn.norm_added_k",
}
_FLUX_SINGLE: dict[str, Any] = {
    "qkv_proj": ["attn.to_q", "attn.to_k", "attn.to_v"],
    "attn.to_qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
    "mlp_fc1": "proj_mlp", "out_proj": ("proj_out", 0), "attn.to_out": ("proj_out", 0), "mlp_fc2": ("proj_out", 1),
    "norm_q": "attn.norm_q", "norm_k": "attn.norm_k",
}
_SHIFTED = ("mlp_fc2", "mlp_context_fc2")  # plus every diffusers FeedForward output layer "*.net.2"
_GENERIC_FUSED = {"to_qkv": ["to_q", "to_k", "to_v"], "add_qkv_proj": ["add_q_proj", "add_k_proj", "add_v_proj"]}


def _flux_target(layer: str) -> Any:
    """Diffusers target(s) of a Nunchaku FLUX name ``<blocks>.<i>.<local>``, or None to keep it."""
    parts = layer.split(".")
    if len(parts) < 3 or parts[0] not in ("transformer_blocks", "single_transformer_blocks"):
        return None
    head, local = ".".join(parts[:2]), ".".join(parts[2:])
    table = _FLUX_DOUBLE if parts[0] == "transformer_blocks" else _FLUX_SINGLE
    target = table.get(local)
    if target is None:
        return None
    if isinstance(target, list):
        return [f"{head}.{t}" for t in target]
    if isinstance(target, tuple):
        return (f"{head}.{target[0]}", target[1])
    return f"{head}.{target}"


def _generic_target(layer: str) -> Any:
    prefix, _, last = layer.rpartition(".")
    if last in _GENERIC_FUSED:
        return [f"{prefix}.{t}" if prefix else t for t in _GENERIC_FUSED[last]]
    return None


def _is_shifted(layer: str) -> bool:
    return layer.rpartition(".")[2] in _SHIFTED or layer.endswith(".net.2") or layer == "net.2"


def _is_flux(config: Mapping[str, Any] | None, keys: list[str]) -> bool:
    if config and str(config.get("_class_name", "")).startswith("Flux"):
        return True
    return any(".qkv_proj." in k or ".mlp_fc1." in k for k in keys)


# --- import -------------------------------------------------------------------------------------


def _group_layers(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    layer_names = {k[: -len(".qweight")] for k in tensors if k.endswith(".qweight")}
    layers: dict[str, dict[str, torch.Tensor]] = {n: {} for n in layer_names}
    others: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        prefix, _, suffix = key.rpartition(".")
        if prefix in layers:
            role = _ROLES.get(suffix)
            if role is None:
                raise NunchakuFormatError(
                    f"unexpected key {key!r}: layer {prefix!r} is quantized, and {suffix!r} is not one of "
                    f"Nunchaku's tensor names {sorted(_ROLES)}"
                )
            if role in layers[prefix]:
                raise NunchakuFormatError(f"layer {prefix!r}: two tensors for {role!r} (e.g. {key!r})")
            layers[prefix][role] = t
        else:
            others[key] = t
    return layers, others


def _ours_quantization_config(rank: int) -> dict[str, Any]:
    from .. import SVDQuantConfig

    cfg = SVDQuantConfig(rank=rank, group_size=L.GROUP, quant_format="int4")
    if hasattr(cfg, "to_dict"):
        d = dict(cfg.to_dict())
    else:
        d = {"quant_method": "svdquant", **cfg.options_dict()}
    d["quant_method"] = getattr(d.get("quant_method"), "value", d.get("quant_method"))
    return d


def convert_nunchaku(ckpt: NunchakuCheckpoint, progress: bool = True) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Nunchaku tensors -> our state dict (diffusers names). Returns (tensors, notes)."""
    layers, others = _group_layers(ckpt.tensors)
    if not layers:
        raise NunchakuFormatError("no quantized layer found (no '<layer>.qweight' key)")
    flux = _is_flux(ckpt.config, list(ckpt.tensors))
    rename: Callable[[str], Any] = (lambda n: _flux_target(n) or _generic_target(n)) if flux else _generic_target
    out_layers: dict[str, ConvertedLayer] = {}
    slices: dict[str, dict[int, ConvertedLayer]] = {}
    notes: list[str] = []
    dense: dict[str, torch.Tensor] = {}
    for name in tqdm(sorted(layers), desc="Converting Nunchaku layers", disable=not progress):
        if "wzeros" in layers[name] or layers[name]["qweight"].dtype == torch.int32:
            dense.update(dequantize_awq_layer(layers[name], name, adanorm_splits(name) if flux else 1))
            notes.append(f"{name}: AWQ W4A16 layer dequantized to a 16-bit weight")
            continue
        shift = GELU_SHIFT if ckpt.source_format != "nunchaku_lite" and _is_shifted(name) else None
        layer = convert_layer(layers[name], name, shift)
        notes += [f"{name}: {n}" for n in layer.notes]
        target = rename(name)
        if target is None or isinstance(target, str):
            out_layers[target or name] = layer
        elif isinstance(target, list):
            for t, piece in zip(target, split_output(layer, len(target))):
                out_layers[t] = piece
        else:
            slices.setdefault(target[0], {})[target[1]] = layer
    for t, parts in slices.items():
        if sorted(parts) != list(range(len(parts))):
            raise NunchakuFormatError(f"layer {t!r}: input slices {sorted(parts)} are incomplete")
        out_layers[t] = parts[0] if len(parts) == 1 else concat_input([parts[i] for i in range(len(parts))])
    if not out_layers:
        raise NunchakuFormatError("no SVDQ W4A4 layer found (only AWQ W4A16 layers): nothing to hold in SVDQuant form")
    rank = max(ly.rank for ly in out_layers.values())
    result: dict[str, torch.Tensor] = {}
    for name, ly in out_layers.items():
        result.update(pad_rank(ly, rank).tensors(name))
    for key, t in [*others.items(), *dense.items()]:
        prefix, _, suffix = key.rpartition(".")
        target = _flux_target(prefix) if flux else None
        new = f"{target}.{suffix}" if isinstance(target, str) else key
        if new in result:
            raise NunchakuFormatError(f"tensor {key!r} collides with converted tensor {new!r}")
        result[new] = t
    return result, notes


def validate_against_model(config: Mapping[str, Any], tensors: dict[str, torch.Tensor]) -> list[str]:
    """Check converted tensors against the diffusers model the config describes (built on the meta device).

    Only classes that diffusers itself defines are instantiated (never code from a checkpoint). A zero
    bias of a layer whose diffusers module has none is dropped. Returns notes; raises on a mismatch.
    """
    import diffusers
    from accelerate import init_empty_weights

    cls = getattr(diffusers, str(config.get("_class_name")), None)
    if cls is None or not hasattr(cls, "from_config"):
        return [f"not validated: {config.get('_class_name')!r} is not a diffusers model class"]
    with init_empty_weights():
        model = cls.from_config({k: v for k, v in config.items() if k != "quantization_config"})
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    modules = dict(model.named_modules())
    problems: list[str] = []
    covered: set[str] = set()
    for name in quantized_layers(tensors.keys()):
        mod = modules.get(name)
        n, k = tensors[f"{name}.qweight"].shape[0], tensors[f"{name}.qweight"].shape[1] * 2
        if not isinstance(mod, torch.nn.Linear) or (mod.out_features, mod.in_features) != (n, k):
            problems.append(f"quantized layer {name!r} [{n} out, {k} in] has no matching nn.Linear in {cls.__name__}")
            continue
        covered |= {f"{name}.weight", f"{name}.bias"}
        if mod.bias is None and f"{name}.bias" in tensors:
            if torch.count_nonzero(tensors[f"{name}.bias"]):
                problems.append(f"layer {name!r}: checkpoint has a non-zero bias, the diffusers module has none")
            else:
                del tensors[f"{name}.bias"]
        elif mod.bias is not None and f"{name}.bias" not in tensors:
            problems.append(f"layer {name!r}: bias missing")
    layer_keys = {f"{n}.{s}" for n in quantized_layers(tensors.keys()) for s in
                  ("qweight", "wscales", "smooth_factor", "proj_down", "proj_up", "bias")}
    for key, t in tensors.items():
        if key in layer_keys:
            continue
        if key not in expected:
            problems.append(f"unexpected tensor {key!r} (not in {cls.__name__})")
        elif tuple(t.shape) != expected[key]:
            problems.append(f"tensor {key!r} has shape {tuple(t.shape)}, {cls.__name__} expects {expected[key]}")
    missing = sorted(set(expected) - set(tensors) - covered)
    if missing:
        problems.append(f"{len(missing)} tensor(s) of {cls.__name__} missing, e.g. {missing[:5]}")
    if problems:
        raise NunchakuFormatError("converted checkpoint does not match its config: " + "; ".join(problems[:8]))
    return []


def import_nunchaku(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: Mapping[str, Any] | None = None,
    progress: bool = True,
    validate: bool = True,
) -> Path:
    """Convert a local Nunchaku checkpoint into a svdquant-hf model folder (config.json + safetensors).

    config: the diffusers model config, needed when the checkpoint carries none (legacy folder without
    config.json). NVFP4 layers raise NunchakuFormatError; AWQ W4A16 layers (FLUX AdaNorm) become 16-bit
    weights. validate: check every tensor against the diffusers model of the config (see
    validate_against_model); turn off only for partial checkpoints.
    """
    ckpt = read_nunchaku(src)
    model_config = dict(config or ckpt.config or {})
    if not model_config:
        raise NunchakuFormatError(f"{src}: the checkpoint has no diffusers config; pass config=...")
    tensors, notes = convert_nunchaku(ckpt, progress)
    if validate:
        notes += validate_against_model(model_config, tensors)
    rank = next(t.shape[1] for k, t in tensors.items() if k.endswith(".proj_down"))
    model_config["quantization_config"] = _ours_quantization_config(rank)
    meta = {"svdquant_hf_source": f"nunchaku:{ckpt.source_format}"}
    if notes:
        meta["svdquant_hf_notes"] = json.dumps(notes)
    return write_model_folder(out_dir, model_config, tensors, meta)


# --- export -------------------------------------------------------------------------------------


def nunchaku_lite_layer(tensors: Mapping[str, torch.Tensor], name: str, rank: int) -> dict[str, torch.Tensor]:
    """Our buffers of one INT4 group-64 layer -> the tensors of diffusers' nunchaku_lite SVDQW4A4Linear."""
    qweight = tensors[f"{name}.qweight"]
    ws = tensors[f"{name}.wscales"]
    n, k = qweight.shape[0], qweight.shape[1] * 2
    if ws.dtype not in (torch.float16, torch.bfloat16) or tuple(ws.shape) != (k // L.GROUP, n):
        raise NunchakuFormatError(
            f"layer {name!r}: nunchaku_lite needs INT4 group-64 16-bit scales [in/64, out] = {(k // L.GROUP, n)}, "
            f"got {ws.dtype} {tuple(ws.shape)}"
        )
    if n % L.TILE_N or k % L.TILE_K:
        raise NunchakuFormatError(
            f"layer {name!r}: [{n} out, {k} in] is not a multiple of Nunchaku's {L.TILE_N}x{L.TILE_K} tiles; "
            f"leave it unquantized (modules_to_not_convert) to export"
        )
    dtype = ws.dtype
    bias = tensors.get(f"{name}.bias")
    down, up = tensors[f"{name}.proj_down"], tensors[f"{name}.proj_up"]
    pad = rank - down.shape[1]
    if pad:
        down = torch.cat([down, down.new_zeros(k, pad)], 1)
        up = torch.cat([up, up.new_zeros(n, pad)], 1)
    out = {
        f"{name}.qweight": L.tile_qweight(qweight, f"{name}.qweight"),
        f"{name}.wscales": L.pack_scales(ws, f"{name}.wscales"),
        f"{name}.smooth_factor": L.pack_vector(tensors[f"{name}.smooth_factor"].to(dtype), f"{name}.smooth_factor"),
        f"{name}.proj_down": L.pack_proj_down(down.to(dtype), f"{name}.proj_down"),
        f"{name}.proj_up": L.pack_proj_up(up.to(dtype), f"{name}.proj_up"),
    }
    if bias is not None:
        out[f"{name}.bias"] = L.pack_vector(bias.to(dtype), f"{name}.bias")
    return out


def to_nunchaku_lite(
    config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], progress: bool = True
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Our (config, state dict) -> (config.json dict, tensors) in diffusers' nunchaku_lite layout."""
    qc = dict(config.get("quantization_config") or {})
    method = qc.get("quant_method")
    if method not in (None, "svdquant"):
        raise NunchakuFormatError(f"quantization_config.quant_method={method!r}: not a svdquant-hf checkpoint")
    if qc.get("quant_format") == "int4_2l":
        raise NunchakuFormatError(
            "quant_format='int4_2l' (INT4 with two-level scales: uint8 group multipliers and an fp32 scale per "
            "output channel) has no nunchaku_lite equivalent: Nunchaku's kernels take 16-bit per-group scales. "
            "Quantize with quant_format='int4', group_size=64 to export"
        )
    if qc.get("quant_format", "int4") != "int4" or qc.get("group_size", L.GROUP) != L.GROUP:
        raise NunchakuFormatError(
            f"nunchaku_lite loads INT4 group 64 only; this checkpoint is {qc.get('quant_format')} "
            f"group {qc.get('group_size')}"
        )
    if qc.get("weight_only"):
        raise NunchakuFormatError("weight-only (W4A16) checkpoints have no nunchaku_lite equivalent (it runs W4A4)")
    names = quantized_layers(tensors.keys())
    if not names:
        raise NunchakuFormatError("no SVDQuant layer in the checkpoint (no '<layer>.qweight' + companions)")
    rank = L.padded_rank(max(tensors[f"{n}.proj_down"].shape[1] for n in names))
    owned = {f"{n}.{s}" for n in names for s in ("qweight", "wscales", "smooth_factor", "proj_down", "proj_up", "bias", "wtscale")}
    out = {k: v for k, v in tensors.items() if k not in owned}
    dtypes = set()
    for name in tqdm(names, desc="Packing for nunchaku_lite", disable=not progress):
        out.update(nunchaku_lite_layer(tensors, name, rank))
        dtypes.add(tensors[f"{name}.wscales"].dtype)
    if len(dtypes) != 1:
        raise NunchakuFormatError(f"layers use several scale dtypes {sorted(map(str, dtypes))}; nunchaku_lite needs one")
    new_config = {k: v for k, v in config.items() if k != "quantization_config"}
    new_config["quantization_config"] = {
        "quant_method": "nunchaku_lite",
        "compute_dtype": str(dtypes.pop()).removeprefix("torch."),
        "svdq_w4a4": {"precision": "int4", "group_size": L.GROUP, "rank": rank, "targets": names},
    }
    return new_config, out


def _export_model_folder(p: Path, out_dir: str | os.PathLike, progress: bool) -> Path:
    if not (p / CONFIG_NAME).is_file():
        raise CheckpointError(f"{p}: not a model folder (no {CONFIG_NAME})")
    files = safetensors_files(p)
    if not files:
        raise CheckpointError(f"{p}: no *.safetensors weights")
    config, tensors = to_nunchaku_lite(read_json(p / CONFIG_NAME), load_tensors(files), progress)
    return write_model_folder(out_dir, config, tensors, {"svdquant_hf_export": "nunchaku_lite"})


def export_nunchaku_lite(src: str | os.PathLike, out_dir: str | os.PathLike, progress: bool = True) -> Path:
    """Convert a svdquant-hf model folder, or a pipeline folder, into what diffusers' nunchaku_lite loads.

    For a pipeline (model_index.json), every SVDQuant component is converted and the others are copied.
    """
    import shutil

    p, out = Path(src), Path(out_dir)
    if not (p / "model_index.json").is_file():
        return _export_model_folder(p, out, progress)
    index = read_json(p / "model_index.json")
    converted = 0
    out.mkdir(parents=True, exist_ok=True)
    for entry in sorted(p.iterdir()):
        target = out / entry.name
        qc = read_json(entry / CONFIG_NAME).get("quantization_config") if (entry / CONFIG_NAME).is_file() else None
        if entry.is_dir() and entry.name in index and (qc or {}).get("quant_method") == "svdquant":
            _export_model_folder(entry, target, progress)
            converted += 1
        elif entry.is_dir():
            shutil.copytree(entry, target, dirs_exist_ok=True)
        elif entry.name != "svdquant_hf.json":
            shutil.copy2(entry, target)
    if not converted:
        raise NunchakuFormatError(f"{p}: no component of this pipeline is SVDQuant-quantized")
    return out


__all__ = [
    "NunchakuFormatError", "NunchakuCheckpoint", "ConvertedLayer", "read_nunchaku", "convert_layer",
    "convert_nunchaku", "import_nunchaku", "to_nunchaku_lite", "export_nunchaku_lite", "nunchaku_lite_layer",
    "split_output", "concat_input", "GELU_SHIFT",
]

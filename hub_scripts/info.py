"""Describe a checkpoint (local folder, safetensors file, or Hub repo) from configs and safetensors headers.

No weights are loaded: only the JSON configs and the safetensors headers (8-byte length + JSON) are read.
For a Hub repo, only configs and headers are fetched (huggingface_hub reads headers with range requests).
"""
from __future__ import annotations

import json
import math
import os
import struct
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SIDE_CAR = "svdquant_hf.json"  # written by `svdquant-hf quantize`: base model and calibration facts
QUANT_SUFFIXES = ("qweight", "wscales", "smooth_factor", "proj_down", "proj_up")

class NotACheckpointError(ValueError):
    """The path or repo holds no diffusers/transformers checkpoint (config + safetensors)."""


@dataclass
class ComponentInfo:
    name: str  # "" for a single model
    class_name: str | None
    quant_method: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    quantized_layers: int = 0
    ranks: list[int] = field(default_factory=list)
    tensors: int = 0
    parameters: int = 0
    bytes: int = 0
    quantized_bytes: int = 0
    dtypes: dict[str, int] = field(default_factory=dict)  # dtype -> bytes
    files: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    hopper_gaps: dict[str, int] = field(default_factory=dict)  # reason -> layers the Hopper kernels do not take


@dataclass
class CheckpointInfo:
    source: str
    kind: str  # "pipeline" | "model" | "single-file"
    class_name: str | None
    components: list[ComponentInfo]
    base_model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(c.bytes for c in self.components)

    @property
    def quantized(self) -> list[ComponentInfo]:
        return [c for c in self.components if c.quant_method]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_bytes"] = self.total_bytes
        return d


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor name -> dtype/shape/offsets, plus __metadata__)."""
    p = Path(path)
    with open(p, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise NotACheckpointError(f"{p}: not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000 or n > p.stat().st_size - 8:
            raise NotACheckpointError(f"{p}: not a safetensors file (header length {n} is impossible)")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise NotACheckpointError(f"{p}: not a safetensors file (header is not JSON: {e})") from e
    if not isinstance(header, dict):
        raise NotACheckpointError(f"{p}: not a safetensors file (header is not a JSON object)")
    return header


def _summarize(comp: ComponentInfo, header: dict[str, Any]) -> None:
    comp.metadata.update(header.get("__metadata__") or {})
    layers = {k[: -len(".qweight")] for k in header if k.endswith(".qweight")}
    dtypes: Counter[str] = Counter(comp.dtypes)
    for key, info in header.items():
        if key == "__metadata__":
            continue
        count = math.prod(info["shape"])
        nbytes = info["data_offsets"][1] - info["data_offsets"][0]
        comp.tensors += 1
        comp.bytes += nbytes
        dtypes[info["dtype"]] += nbytes
        prefix, _, suffix = key.rpartition(".")
        if prefix in layers and suffix in (*QUANT_SUFFIXES, "bias", "wtscale", "wchannel", "smooth", "lora_down", "lora_up",
                                           "smooth_orig", "smooth_factor_orig", "wcscales", "wzeros"):
            comp.quantized_bytes += nbytes
            if suffix == "qweight":
                comp.parameters += info["shape"][0] * info["shape"][1] * 2  # two 4-bit weights per byte
            elif suffix in ("proj_down", "lora_down"):
                comp.ranks.append(info["shape"][1])
            elif suffix == "bias":
                comp.parameters += count
        else:
            comp.parameters += count
    comp.quantized_layers += len(layers)
    comp.dtypes = dict(dtypes)


def _component_from_folder(folder: Path, name: str) -> ComponentInfo:
    cfg_path = folder / "config.json"
    config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    qc = config.get("quantization_config") or {}
    comp = ComponentInfo(name, config.get("_class_name") or (config.get("architectures") or [None])[0],
                         qc.get("quant_method"), {k: v for k, v in qc.items() if k != "quant_method"})
    files = sorted(folder.glob("*.safetensors"))
    headers = [read_header(f) for f in files]
    for f, header in zip(files, headers):
        _summarize(comp, header)
        comp.files.append(f.name)
    comp.ranks = sorted(set(comp.ranks))
    _hopper_coverage(comp, headers)
    return comp


_DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}


def _hopper_coverage(comp: ComponentInfo, headers: list[dict[str, Any]]) -> None:
    """comp.hopper_gaps from the layers' shapes: which the fused kernels would not take on an H100 / H200."""
    if comp.quant_method != "svdquant":
        return
    from svdquant_hf.ops.kernel_shapes import HOPPER, shape_gap

    entries = {k: v for h in headers for k, v in h.items() if k != "__metadata__"}
    opts = comp.options
    gaps: Counter[str] = Counter()
    for key, q in entries.items():
        if not key.endswith(".qweight"):
            continue
        up = entries.get(key[: -len("qweight")] + "proj_up")
        if up is None or len(q["shape"]) != 2:
            continue
        reason = shape_gap(q["shape"][1] * 2, q["shape"][0], up["shape"][1], opts.get("group_size", 64),
                           opts.get("quant_format", "int4"), bool(opts.get("weight_only")),
                           _DTYPE_NAMES.get(up["dtype"], up["dtype"]), HOPPER)
        if reason:
            gaps[reason] += 1
    comp.hopper_gaps = dict(gaps)


def _read_sidecar(folder: Path) -> dict[str, Any]:
    p = folder / SIDE_CAR
    return json.loads(p.read_text()) if p.is_file() else {}


def single_file_component(name: str, filename: str, header: dict[str, Any]) -> ComponentInfo:
    """A standalone safetensors file (e.g. Nunchaku's), described from its header and metadata."""
    comp = ComponentInfo(name, None)
    _summarize(comp, header)
    comp.files.append(filename)
    comp.ranks = sorted(set(comp.ranks))
    meta = comp.metadata
    try:
        cfg = json.loads(meta.get("config", "{}"))
        qc = json.loads(meta.get("quantization_config", "{}"))
    except json.JSONDecodeError:
        cfg, qc = {}, {}
    comp.class_name = (cfg.get("_class_name") if isinstance(cfg, dict) else None) or meta.get("model_class")
    if comp.quantized_layers:
        qc = qc if isinstance(qc, dict) else {}
        comp.quant_method = qc.get("method") or qc.get("quant_method") or "unknown"
        comp.options = {k: v for k, v in qc.items() if k not in ("method", "quant_method")}
    comp.metadata = {k: v for k, v in meta.items() if k not in ("config", "comfy_config")}
    return comp


def describe_local(path: str | os.PathLike) -> CheckpointInfo:
    p = Path(path)
    if p.is_file():
        if p.suffix not in (".safetensors", ".sft"):
            raise NotACheckpointError(f"{p}: not a safetensors file")
        comp = single_file_component("", p.name, read_header(p))
        return CheckpointInfo(str(p), "single-file", comp.class_name, [comp])
    if not p.is_dir():
        raise NotACheckpointError(f"{p}: no such file or folder")
    side = _read_sidecar(p)
    index = p / "model_index.json"
    if index.is_file():
        model_index = json.loads(index.read_text())
        comps = [
            _component_from_folder(p / name, name)
            for name, spec in sorted(model_index.items())
            if not name.startswith("_") and isinstance(spec, list) and (p / name / "config.json").is_file()
        ]
        return CheckpointInfo(str(p), "pipeline", model_index.get("_class_name"), comps,
                              side.get("base_model"), {"sidecar": side} if side else {})
    if (p / "config.json").is_file() and any(p.glob("*.safetensors")):
        comp = _component_from_folder(p, "")
        return CheckpointInfo(str(p), "model", comp.class_name, [comp], side.get("base_model"),
                              {"sidecar": side} if side else {})
    raise NotACheckpointError(
        f"{p}: not a checkpoint folder (expected model_index.json for a pipeline, or config.json + *.safetensors "
        f"for a model)"
    )


def describe_hub(repo_id: str, revision: str | None = None, token: str | bool | None = None, api: Any = None) -> CheckpointInfo:
    """Describe a Hub repo from its configs and safetensors headers only (no weights are downloaded)."""
    from huggingface_hub import HfApi

    api = api or HfApi()
    files = api.list_repo_files(repo_id, revision=revision, token=token)

    def load_json(name: str) -> dict[str, Any]:
        path = api.hf_hub_download(repo_id, name, revision=revision, token=token)
        return json.loads(Path(path).read_text())

    side = load_json(SIDE_CAR) if SIDE_CAR in files else {}

    def headers(folder: str) -> list[tuple[str, dict[str, Any]]]:
        """Each safetensors file of ``folder``: its header, read by huggingface_hub with HTTP range requests."""
        out = []
        for fname in sorted(f for f in files if f.endswith(".safetensors") and (os.path.dirname(f) or "") == folder):
            fm = api.parse_safetensors_file_metadata(repo_id, fname, revision=revision, token=token)
            header: dict[str, Any] = {"__metadata__": dict(fm.metadata or {})}
            for tname, ti in fm.tensors.items():
                header[tname] = {"dtype": ti.dtype, "shape": list(ti.shape), "data_offsets": list(ti.data_offsets)}
            out.append((fname, header))
        return out

    def component(folder: str, name: str) -> ComponentInfo:
        cfg_name = f"{folder}/config.json" if folder else "config.json"
        config = load_json(cfg_name) if cfg_name in files else {}
        qc = config.get("quantization_config") or {}
        comp = ComponentInfo(name, config.get("_class_name") or (config.get("architectures") or [None])[0],
                             qc.get("quant_method"), {k: v for k, v in qc.items() if k != "quant_method"})
        found = headers(folder)
        for fname, header in found:
            _summarize(comp, header)
            comp.files.append(fname)
        comp.ranks = sorted(set(comp.ranks))
        _hopper_coverage(comp, [h for _, h in found])
        return comp

    if "model_index.json" in files:
        model_index = load_json("model_index.json")
        comps = [component(n, n) for n, spec in sorted(model_index.items())
                 if not n.startswith("_") and isinstance(spec, list) and f"{n}/config.json" in files]
        return CheckpointInfo(repo_id, "pipeline", model_index.get("_class_name"), comps, side.get("base_model"))
    if "config.json" in files:
        comp = component("", "")
        return CheckpointInfo(repo_id, "model", comp.class_name, [comp], side.get("base_model"))
    singles = headers("")
    if singles:  # e.g. a Nunchaku repo: standalone files with config + quantization_config in their metadata
        comps = [single_file_component(f, f, h) for f, h in singles]
        return CheckpointInfo(repo_id, "single-files", None, comps, side.get("base_model"))
    raise NotACheckpointError(f"Hub repo {repo_id!r} has no model_index.json, config.json or safetensors file")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def _short(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_short(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list) and len(v) > 4:
        return f"[{len(v)} items]"
    return str(v)


def format_info(info: CheckpointInfo) -> str:
    """A human-readable multi-line description."""
    lines = [f"{info.source}: {info.kind}" + (f" {info.class_name}" if info.class_name else "")]
    if info.base_model:
        lines.append(f"  base model: {info.base_model}")
    for c in info.components:
        label = c.name or "model"
        head = f"  [{label}] {c.class_name or '?'}: {human_bytes(c.bytes)} in {len(c.files)} file(s), {c.tensors} tensors"
        lines.append(head)
        if c.quant_method:
            opts = ", ".join(f"{k}={_short(v)}" for k, v in sorted(c.options.items()) if v is not None)
            lines.append(f"      quantization: {c.quant_method}" + (f" ({opts})" if opts else ""))
            lines.append(
                f"      {c.quantized_layers} quantized layers, ranks {c.ranks or '-'}, "
                f"{human_bytes(c.quantized_bytes)} in quantized layers"
            )
            if c.quant_method == "svdquant" and c.quantized_layers:
                gaps = sum(c.hopper_gaps.values())
                lines.append(f"      on Hopper: {c.quantized_layers - gaps} of {c.quantized_layers} layers in the fused "
                             f"kernels" + ("" if not gaps else ", the rest on the reference ops: " + "; ".join(
                                 f"{n} x {r}" for r, n in sorted(c.hopper_gaps.items()))))
        else:
            lines.append("      not quantized")
        lines.append("      dtypes: " + ", ".join(f"{k} {human_bytes(v)}" for k, v in sorted(c.dtypes.items())))
    lines.append(f"  total: {human_bytes(info.total_bytes)}")
    return "\n".join(lines)


__all__ = ["CheckpointInfo", "ComponentInfo", "NotACheckpointError", "SIDE_CAR", "describe_local", "describe_hub",
           "format_info", "human_bytes", "read_header"]

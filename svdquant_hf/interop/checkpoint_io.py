"""Reading and writing checkpoint folders (config.json + safetensors) without any pickle or remote code."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
CONFIG_NAME = "config.json"
LAYER_SUFFIXES = ("qweight", "wscales", "smooth_factor", "proj_down", "proj_up")


class CheckpointError(ValueError):
    """A file or folder is not a readable checkpoint; the message says what is missing or wrong."""


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a model folder: the sharded index's files, or every *.safetensors."""
    index = folder / INDEX_NAME
    if index.is_file():
        data = json.loads(index.read_text())
        return sorted({folder / f for f in data.get("weight_map", {}).values()})
    return sorted(folder.glob("*.safetensors"))


def read_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)


def load_tensors(files: list[Path]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, t in iter_tensors(files):
        if key in out:
            raise CheckpointError(f"tensor {key!r} appears in more than one file")
        out[key] = t
    return out


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable JSON file ({e})") from e


def write_model_folder(
    out_dir: str | os.PathLike, config: dict[str, Any], tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Write config.json and one safetensors file atomically (temp files, then rename)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    with tempfile.NamedTemporaryFile(dir=out, suffix=".safetensors.tmp", delete=False) as tmp:
        tmp_w = Path(tmp.name)
    try:
        save_file(tensors, str(tmp_w), metadata={"format": "pt", **(metadata or {})})
        with tempfile.NamedTemporaryFile("w", dir=out, suffix=".json.tmp", delete=False) as tmp:
            json.dump(config, tmp, indent=2, sort_keys=True)
            tmp_c = Path(tmp.name)
        os.replace(tmp_w, out / WEIGHTS_NAME)
        os.replace(tmp_c, out / CONFIG_NAME)
    finally:
        for p in out.glob("*.tmp"):
            p.unlink(missing_ok=True)
    return out


def quantized_layers(keys: list[str] | set[str]) -> list[str]:
    """Layer names that carry our SVDQuant buffers (``<name>.qweight`` ... ``<name>.proj_up``)."""
    keyset = set(keys)
    names = [k[: -len(".qweight")] for k in keyset if k.endswith(".qweight")]
    return sorted(n for n in names if all(f"{n}.{s}" in keyset for s in LAYER_SUFFIXES))


__all__ = [
    "CheckpointError", "WEIGHTS_NAME", "CONFIG_NAME", "INDEX_NAME", "safetensors_files", "read_metadata",
    "iter_tensors", "load_tensors", "read_json", "write_model_folder", "quantized_layers",
]

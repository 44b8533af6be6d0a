"""Checkpoint helpers for the diffusers quantizer: safetensors header reading, validation, atomic saves."""
from __future__ import annotations

import inspect
import json
import os
import shutil
import struct
import uuid
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from ...algorithm import QuantizationError

SVDQUANT_TENSORS = ("qweight", "wscales", "smooth_factor", "proj_down", "proj_up", "bias", "wtscale", "wchannel")

_ST_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
    "F64": torch.float64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


class ReferencePathWarning(UserWarning):
    """SVDQuant runs on the pure-PyTorch reference path (no CUDA kernels): correct but slow."""


def read_safetensors_header(path: str | os.PathLike) -> dict[str, tuple[torch.dtype | str, tuple[int, ...]]]:
    """{tensor name: (dtype, shape)} from a safetensors file, checking that the file is complete."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise QuantizationError(f"checkpoint shard {str(path)!r} is truncated ({size} bytes): no safetensors header")
        (n,) = struct.unpack("<Q", raw)
        if 8 + n > size:
            raise QuantizationError(
                f"checkpoint shard {str(path)!r} is truncated: header of {n} bytes but file has {size} bytes"
            )
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise QuantizationError(f"checkpoint shard {str(path)!r}: corrupt safetensors header ({e})") from e
    data_size = size - 8 - n
    out: dict[str, tuple[torch.dtype | str, tuple[int, ...]]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        end = int(info["data_offsets"][1])
        if end > data_size:
            raise QuantizationError(
                f"checkpoint shard {str(path)!r} is truncated: tensor {name!r} needs bytes up to {end} of the data "
                f"section but only {data_size} are present"
            )
        out[name] = (_ST_DTYPES.get(info["dtype"], info["dtype"]), tuple(info["shape"]))
    return out


def read_headers(files: Iterable[str | os.PathLike]) -> dict[str, tuple[torch.dtype | str, tuple[int, ...]]]:
    headers: dict[str, tuple[torch.dtype | str, tuple[int, ...]]] = {}
    for f in files:
        if str(f).endswith(".safetensors"):
            headers.update(read_safetensors_header(f))
    return headers


QUANT_ONLY_TENSORS = ("qweight", "wscales", "smooth_factor", "proj_down", "proj_up", "wtscale", "wchannel")


def svdquant_module_names(keys: Iterable[str]) -> list[str]:
    """Modules that a checkpoint stores in SVDQuant form (any tensor only SVDQuant layers have)."""
    out = set()
    for k in keys:
        module, _, tensor = k.rpartition(".")
        if tensor in QUANT_ONLY_TENSORS and module:
            out.add(module)
    return sorted(out)


def atomic_save(save_fn: Callable[..., Any], save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
    """Run ``save_fn(tmp_dir, ...)`` in a sibling temporary directory, then move the files into place.

    On any failure the temporary directory is removed and ``save_directory`` is left as it was
    (not created if it did not exist). Existing files are replaced one by one with ``os.replace``;
    stale weight files of a previous save are removed only after all new files are in place.
    """
    target = Path(save_directory)
    if target.exists() and not target.is_dir():
        raise ValueError(f"save_pretrained: {str(target)!r} exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        result = save_fn(str(tmp), *args, **kwargs)
        if not target.exists():
            os.replace(tmp, target)
            return result
        new_files = {p.relative_to(tmp) for p in tmp.rglob("*") if p.is_file()}
        for rel in sorted(new_files):
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, dest)
        for old in target.glob("*.safetensors*"):
            if old.is_file() and old.relative_to(target) not in new_files:
                old.unlink()
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class AtomicSave:
    """Instance-level ``save_pretrained`` of a quantized model that saves through ``atomic_save``.

    Keeps the original method's signature (diffusers' pipeline inspects it to pass safe_serialization,
    variant and max_shard_size) and stays picklable.
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(type(self.model).save_pretrained.__get__(self.model))

    def __call__(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        original = type(self.model).save_pretrained.__get__(self.model)
        return atomic_save(original, save_directory, *args, **kwargs)


def warn_reference_path(what: str) -> None:
    warnings.warn(
        f"SVDQuant: no CUDA device available; {what} uses the slow pure-PyTorch reference path "
        "(correct results, far slower than the CUDA kernels)",
        ReferencePathWarning,
        stacklevel=3,
    )


__all__ = [
    "AtomicSave",
    "ReferencePathWarning",
    "SVDQUANT_TENSORS",
    "atomic_save",
    "read_headers",
    "read_safetensors_header",
    "svdquant_module_names",
    "warn_reference_path",
]

"""SVDQuantizer: the optimum-style entry point (``optimum.quantization_base.OptimumQuantizer``).

    from svdquant_hf.optimum import SVDQuantizer
    q = SVDQuantizer.from_pretrained("path/or/pipeline", config=SVDQuantConfig(rank=32))
    q.quantize("out_dir", prompts=[...], num_inference_steps=20)   # calibrated (pipelines)
    q.quantize("out_dir")                                           # data-free

optimum is optional (extra "optimum"); it is imported only when this module is.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

try:
    from optimum.quantization_base import OptimumQuantizer
except ImportError as e:  # pragma: no cover - exercised without optimum
    raise ImportError(
        "svdquant_hf.optimum needs optimum: pip install 'svdquant-hf[optimum]'"
    ) from e

from .config import SVDQuantOptions
from .pipeline import as_options, quantize_pipeline, target_linears, _mark_quantized
from .quantize import quantize_linear, set_submodule


def _load(path: Path, torch_dtype: torch.dtype | None, **kwargs: Any) -> Any:
    """A diffusers pipeline (model_index.json), diffusers model or transformers model from ``path``."""
    if (path / "model_index.json").is_file():
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.from_pretrained(path, torch_dtype=torch_dtype, **kwargs)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"SVDQuantizer: {str(path)!r} has neither model_index.json nor config.json")
    cfg = json.loads(cfg_file.read_text())
    if "quantization_config" in cfg:
        raise ValueError(f"SVDQuantizer: {str(path)!r} is already quantized ({cfg['quantization_config'].get('quant_method')})")
    if "_class_name" in cfg:
        import diffusers

        cls = getattr(diffusers, cfg["_class_name"], None)
        if cls is None:
            raise ValueError(f"SVDQuantizer: unknown diffusers class {cfg['_class_name']!r} in {str(cfg_file)!r}")
        return cls.from_pretrained(path, torch_dtype=torch_dtype, **kwargs)
    import transformers

    archs = cfg.get("architectures") or []
    cls = getattr(transformers, archs[0], None) if archs else None
    if cls is None:
        cls = transformers.AutoModel
    return cls.from_pretrained(path, dtype=torch_dtype, **kwargs)


class SVDQuantizer(OptimumQuantizer):
    """Calibrated (pipelines, with prompts) or data-free SVDQuant, written as a pre-quantized checkpoint."""

    def __init__(self, model: Any, config: Any = None) -> None:
        self.model = model
        self.options: SVDQuantOptions = as_options(config)

    @classmethod
    def from_pretrained(
        cls,
        model_or_path: str | os.PathLike | nn.Module | Any,
        file_name: str | None = None,
        *,
        config: Any = None,
        torch_dtype: torch.dtype | None = None,
        **load_kwargs: Any,
    ) -> "SVDQuantizer":
        """From a pipeline / model object, or a local folder holding one (pipeline, diffusers or
        transformers model). ``file_name`` is unused (single-folder checkpoints)."""
        if isinstance(model_or_path, (str, os.PathLike)):
            path = Path(model_or_path)
            if not path.is_dir():
                raise FileNotFoundError(f"SVDQuantizer.from_pretrained: {str(path)!r} is not a local folder")
            model = _load(path, torch_dtype, **load_kwargs)
        else:
            model = model_or_path
        return cls(model, config)

    @property
    def is_pipeline(self) -> bool:
        return isinstance(getattr(self.model, "components", None), dict)

    def quantize(
        self,
        save_dir: str | os.PathLike | None,
        file_prefix: str | None = None,
        *,
        prompts: list[str] | None = None,
        prompts_path: str | os.PathLike | None = None,
        calibration_data: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Quantize, then ``save_pretrained(save_dir)`` (skipped when save_dir is None); returns the model.

        Pipelines: calibrated through ``quantize_pipeline`` when ``prompts`` or ``prompts_path`` is
        given (kwargs go to it: num_inference_steps, height, ...), data-free otherwise.
        Models: calibrated with ``calibration_data`` (as for ``quantize_model``), data-free otherwise.
        """
        if file_prefix is not None:
            raise ValueError("SVDQuantizer.quantize: file_prefix is not supported (checkpoints use save_pretrained names)")
        if self.is_pipeline:
            if calibration_data is not None:
                raise ValueError("SVDQuantizer.quantize: a pipeline is calibrated with prompts, not calibration_data")
            if prompts is not None or prompts_path is not None:
                quantize_pipeline(self.model, self.options, prompts, prompts_path=prompts_path, **kwargs)
            else:
                from .pipeline import find_denoiser

                _, denoiser = find_denoiser(self.model, kwargs.pop("component", None))
                self._quantize_module(denoiser, None, **kwargs)
        else:
            if prompts is not None or prompts_path is not None:
                raise ValueError("SVDQuantizer.quantize: prompts need a pipeline; give a model calibration_data instead")
            self._quantize_module(self.model, calibration_data, **kwargs)
        if save_dir is not None:
            self.save(save_dir)
        return self.model

    def _quantize_module(self, model: nn.Module, calibration_data: Any, progress: bool = True, **kwargs: Any) -> None:
        if kwargs:
            raise TypeError(f"SVDQuantizer.quantize: unexpected argument(s) {sorted(kwargs)}")
        from tqdm.auto import tqdm

        from .calibration import collect_statistics

        targets = target_linears(model, self.options)
        stats = {}
        if calibration_data is not None and not self.options.weight_only:
            stats = collect_statistics(model, targets, calibration_data, self.options.calib_tokens)
        work = torch.device("cuda") if torch.cuda.is_available() else None
        for name, lin in tqdm(list(targets.items()), desc="SVDQuant layers", disable=not progress):
            st = stats.pop(name, None)
            set_submodule(model, name, quantize_linear(lin, self.options, name, st if st and st.seen_tokens else None, work))
        _mark_quantized(model, self.options)

    def save(self, save_dir: str | os.PathLike) -> None:
        self.model.save_pretrained(save_dir)


__all__ = ["SVDQuantizer"]

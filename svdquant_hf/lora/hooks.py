"""Plug SVDQuantLinear into PEFT and diffusers' LoRA loaders, without importing either eagerly.

Small patches, applied when (and only if) the library in question is imported:

* PEFT (``peft.tuners.lora.model``): ``LoraModel._create_new_module`` registers
  ``SVDQuantLinear -> SVDQuantLoraLinear`` through PEFT's custom-module API
  (``LoraConfig._register_custom_module``) whenever a target is an SVDQuantLinear. This covers
  every path that builds a LoraConfig internally (diffusers ``load_lora_weights`` for all
  pipelines, ``add_adapter``, ``get_peft_model``). Other layer types are untouched.
* PEFT (``peft.utils.hotswap``): ``hotswap_adapter_from_state_dict`` writes weights through
  ``.data``; the wrapper drops the cached folded branches afterwards.
* diffusers (``diffusers.loaders.lora_pipeline``): ``FluxLoraLoaderMixin._maybe_expand_lora_state_dict``
  reads ``<module>.weight`` from the transformer's state dict, which a 4-bit layer does not have;
  the patch checks SVDQuant targets itself (clear error on a width mismatch) and passes the rest on.
  Its ``_load_lora_into_text_encoder`` casts the whole encoder to ``encoder.dtype`` afterwards; the
  patch gives the 4-bit layers back their compute dtype (exact round trip).
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import inspect
import sys
import threading
import warnings
from collections.abc import Callable
from types import ModuleType

import torch
from torch import nn

from ..modules import SVDQuantLinear

_PATCHED = "_svdquant_lora_patched"
_lock = threading.Lock()


# ---- PEFT ----------------------------------------------------------------------------------------
def patch_peft(model_module: ModuleType) -> None:
    lora_model = model_module.LoraModel
    original = lora_model.__dict__["_create_new_module"].__func__
    if getattr(original, _PATCHED, False):
        return

    def _create_new_module(lora_config, adapter_name, target, **kwargs):
        from peft.tuners.tuners_utils import BaseTunerLayer

        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if isinstance(base, SVDQuantLinear):
            from .layer import SVDQuantLoraLinear

            custom = lora_config._custom_modules or {}
            if not any(issubclass(SVDQuantLinear, k) for k in custom):
                lora_config._register_custom_module({SVDQuantLinear: SVDQuantLoraLinear})
        return original(lora_config, adapter_name, target, **kwargs)

    setattr(_create_new_module, _PATCHED, True)
    _create_new_module.__wrapped__ = original
    lora_model._create_new_module = staticmethod(_create_new_module)


def refresh(model) -> None:
    """Rebuild the cached folded branches of ``model``'s SVDQuant LoRA layers from their current weights.

    Needed after writing LoRA weights in place outside PEFT's and diffusers' controls (``.data`` writes,
    which PyTorch does not count, or any in-place write when the model is compiled); loading,
    set_adapters, fuse/unfuse, hotswap and device moves are tracked automatically.
    """
    for mod in model.modules():
        if hasattr(mod, "_branch_cache") and hasattr(mod, "sync_branch"):
            mod._branch_cache = None
            mod.sync_branch()


def patch_peft_hotswap(hotswap_module: ModuleType) -> None:
    original = hotswap_module.hotswap_adapter_from_state_dict
    if getattr(original, _PATCHED, False):
        return

    def hotswap_adapter_from_state_dict(model, *args, **kwargs):
        try:
            return original(model, *args, **kwargs)
        finally:  # PEFT writes the new weights through .data, invisible to the cache's version check
            refresh(model)

    setattr(hotswap_adapter_from_state_dict, _PATCHED, True)
    hotswap_adapter_from_state_dict.__wrapped__ = original
    hotswap_adapter_from_state_dict.__doc__ = original.__doc__
    hotswap_module.hotswap_adapter_from_state_dict = hotswap_adapter_from_state_dict


# ---- diffusers -----------------------------------------------------------------------------------
def _svdquant_lora_modules(transformer, lora_state_dict: dict, prefix: str) -> dict[str, SVDQuantLinear]:
    names = {k[len(prefix):-len(".lora_A.weight")] for k in lora_state_dict if k.startswith(prefix) and k.endswith(".lora_A.weight")}
    found = {}
    for name in names:
        try:
            mod = transformer.get_submodule(name)
        except AttributeError:
            continue
        base = mod.get_base_layer() if hasattr(mod, "get_base_layer") else mod
        if isinstance(base, SVDQuantLinear):
            found[name] = base
    return found


def _refuse_fused_targets(transformer, lora_state_dict: dict, prefix: str) -> None:
    """A LoRA for to_q/to_k/to_v of a model whose q/k/v run fused (svdquant_hf.fusion): a clear error."""
    from ..fusion import fused_member_names

    fused = fused_member_names(transformer)
    if not fused:
        return
    hit = sorted({k[len(prefix):].rsplit(".lora_", 1)[0] for k in lora_state_dict if k.startswith(prefix)} & set(fused))
    if hit:
        raise ValueError(
            f"LoRA targets {hit[0]!r}{f' and {len(hit) - 1} more layers' if len(hit) > 1 else ''}, which runs "
            f"fused in {fused[hit[0]]!r}; call svdquant_hf.unfuse_shared_input_projections(pipe.transformer) "
            f"before load_lora_weights (to run them fused with the LoRA: fuse_lora(), unload_lora_weights(), "
            f"then fuse_shared_input_projections again)"
        )


def patch_diffusers_lora_pipeline(lp_module: ModuleType) -> None:
    mixin = lp_module.FluxLoraLoaderMixin
    original = mixin.__dict__["_maybe_expand_lora_state_dict"].__func__
    if getattr(original, _PATCHED, False):
        return

    def _maybe_expand_lora_state_dict(cls, transformer, lora_state_dict):
        prefix = f"{cls.transformer_name}."
        _refuse_fused_targets(transformer, lora_state_dict, prefix)
        quantized = _svdquant_lora_modules(transformer, lora_state_dict, prefix)
        held = {}
        for name, base in quantized.items():
            a_key, b_key = f"{prefix}{name}.lora_A.weight", f"{prefix}{name}.lora_B.weight"
            a, b = lora_state_dict[a_key], lora_state_dict.get(b_key)
            if a.ndim != 2 or a.shape[1] != base.in_features:
                raise ValueError(
                    f"LoRA tensor {a_key} has shape {tuple(a.shape)} but SVDQuant layer {name} has "
                    f"in_features={base.in_features}; this LoRA does not fit this model"
                )
            if b is not None and (b.ndim != 2 or b.shape[0] != base.out_features or b.shape[1] != a.shape[0]):
                raise ValueError(
                    f"LoRA tensor {b_key} has shape {tuple(b.shape)}, expected ({base.out_features}, {a.shape[0]}) "
                    f"for SVDQuant layer {name} (out_features={base.out_features}, rank of lora_A={a.shape[0]})"
                )
            held[a_key] = lora_state_dict.pop(a_key)
        try:
            out = original(cls, transformer, lora_state_dict)
        finally:
            lora_state_dict.update(held)
        out.update(held)
        return out

    setattr(_maybe_expand_lora_state_dict, _PATCHED, True)
    _maybe_expand_lora_state_dict.__wrapped__ = original
    mixin._maybe_expand_lora_state_dict = classmethod(_maybe_expand_lora_state_dict)
    _patch_text_encoder_loader(lp_module)


def _float_dtypes(model) -> dict[int, tuple[SVDQuantLinear, dict[str, torch.dtype]]]:
    out = {}
    for mod in model.modules():
        if isinstance(mod, SVDQuantLinear):
            tensors = {**dict(mod.named_buffers(recurse=False)), **dict(mod.named_parameters(recurse=False))}
            out[id(mod)] = (mod, {n: t.dtype for n, t in tensors.items() if t is not None and t.is_floating_point()})
    return out


def _restore_dtypes(saved: dict[int, tuple[SVDQuantLinear, dict[str, torch.dtype]]]) -> None:
    for mod, dtypes in saved.values():
        for name, dtype in dtypes.items():
            t = getattr(mod, name, None)
            if t is None or t.dtype == dtype:
                continue
            if isinstance(t, nn.Parameter):
                t.data = t.data.to(dtype)
            else:
                mod._buffers[name] = t.to(dtype)


def _patch_text_encoder_loader(lp_module: ModuleType) -> None:
    """diffusers casts a text encoder to ``text_encoder.dtype`` after loading a LoRA into it; for an
    fp32 encoder that would turn 4-bit layers' bf16 tensors into fp32 (another compute dtype, the
    kernels' fallback). Cast them back: the bf16 -> fp32 -> bf16 round trip is exact."""
    original = getattr(lp_module, "_load_lora_into_text_encoder", None)
    if original is None or getattr(original, _PATCHED, False):
        return
    signature = inspect.signature(original)

    def _load_lora_into_text_encoder(*args, **kwargs):
        encoder = signature.bind_partial(*args, **kwargs).arguments.get("text_encoder")
        saved = _float_dtypes(encoder) if isinstance(encoder, nn.Module) else {}
        try:
            return original(*args, **kwargs)
        finally:
            _restore_dtypes(saved)

    setattr(_load_lora_into_text_encoder, _PATCHED, True)
    _load_lora_into_text_encoder.__wrapped__ = original
    lp_module._load_lora_into_text_encoder = _load_lora_into_text_encoder


# ---- post-import hooks ---------------------------------------------------------------------------
_HOOKS: dict[str, Callable[[ModuleType], None]] = {
    "peft.tuners.lora.model": patch_peft,
    "peft.utils.hotswap": patch_peft_hotswap,
    "diffusers.loaders.lora_pipeline": patch_diffusers_lora_pipeline,
}


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, callback: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._callback = callback

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        try:
            self._callback(module)
        except Exception as exc:  # a changed PEFT/diffusers internals must not break their import
            warnings.warn(f"svdquant_hf.lora: could not hook into {module.__name__} ({exc!r}); LoRA on SVDQuant layers is unavailable")

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Runs a patch right after one of the modules in _HOOKS has been executed."""

    def __init__(self) -> None:
        self._busy: set[str] = set()

    def find_spec(self, fullname, path, target=None):
        callback = _HOOKS.get(fullname)
        if callback is None or fullname in self._busy:
            return None
        self._busy.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _PatchingLoader(spec.loader, callback)
        return spec


_finder = _PostImportFinder()


def install() -> None:
    """Enable LoRA on SVDQuant layers: patch PEFT/diffusers now if imported, else when they are."""
    with _lock:
        for name, callback in _HOOKS.items():
            mod = sys.modules.get(name)
            if mod is not None and getattr(mod, "__spec__", None) is not None:
                callback(mod)
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)


def is_installed() -> bool:
    return _finder in sys.meta_path


__all__ = ["install", "is_installed", "refresh", "patch_peft", "patch_peft_hotswap", "patch_diffusers_lora_pipeline"]

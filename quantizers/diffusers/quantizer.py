"""The diffusers quantizer for quant_method "svdquant": quantize on load, or load pre-quantized checkpoints.

Quantize on load: the model is built on meta; each targeted nn.Linear stays a meta skeleton until its
weight streams in, is quantized on the work device (CUDA when available, one layer at a time) and
replaced by an SVDQuantLinear on its final device. The 16-bit model is never materialised.

Pre-quantized: the SVDQuant layers are found from the checkpoint keys (``<layer>.qweight``), swapped in
as empty SVDQuantLinear before loading, and every tensor is validated (shape, dtype) against the
config and assigned in its stored dtype (diffusers' torch_dtype cast is bypassed: nothing is lost).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from diffusers.quantizers.base import DiffusersQuantizer
from torch import nn

from ...algorithm import QuantizationError
from ...algorithm.groups import concat_group, split_outputs
from ...algorithm.svdquant import quantize_weight
from ...config import FORMAT_TENSORS
from ...formats.int4_2l import invalid_2l_tensor
from ...fusion import route_diffusers_fusion
from ...modules import SVDQuantLinear
from ...quantize import default_group_rank, qkv_groups
from ..common import (
    hopper_epilogues,
    hopper_fragment_order,
    quantizable_linears,
    realign_cpu_tensors,
    replace_with_svdquant_linear,
    warn_kernel_gaps,
)
from ..config import SVDQuantConfig
from .utils import SVDQUANT_TENSORS, AtomicSave, read_headers, svdquant_module_names, warn_reference_path

logger = logging.getLogger(__name__)


_SMALL_LAYER = 1 << 22  # elements; below this, one CPU thread quantizes fastest


@contextlib.contextmanager
def _single_cpu_thread(enabled: bool):
    """Small CPU LAPACK calls (the exact SVD) run far faster on one thread, and under CPU contention
    multi-threaded MKL can be 100x slower (measured: 64x256 SVD 1.1 s on 2 threads, 5 ms on 1)."""
    if not enabled:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _compute_dtype(torch_dtype: torch.dtype | None) -> torch.dtype:
    return torch_dtype if torch_dtype in (torch.bfloat16, torch.float16) else torch.bfloat16


class SVDQuantDiffusersQuantizer(DiffusersQuantizer):
    """diffusers ``DiffusersQuantizer`` for SVDQuant W4A4 (registered as "svdquant")."""

    requires_calibration = False
    required_packages = None
    use_keep_in_fp32_modules = True

    def __init__(self, quantization_config: SVDQuantConfig, **kwargs: Any) -> None:
        super().__init__(quantization_config, **kwargs)
        self.torch_dtype: torch.dtype | None = None
        self.targets: dict[str, bool] = {}  # module name -> has bias
        self.headers: dict[str, tuple[Any, tuple[int, ...]]] = {}
        self._raw: dict[str, torch.Tensor] = {}
        self._pending_bias: dict[str, torch.Tensor] = {}
        self._group_of: dict[str, tuple[str, ...]] = {}  # joint_qkv: member -> its group
        self._group_rank = 0
        self._group_weights: dict[tuple[str, ...], dict[str, torch.Tensor]] = {}  # members waiting for the rest
        self._warned = False

    # ---- environment ----
    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        if "torch_dtype" in kwargs:
            self.torch_dtype = kwargs["torch_dtype"]
        device_map = kwargs.get("device_map")
        if isinstance(device_map, dict) and "disk" in {str(v) for v in device_map.values()}:
            raise ValueError(
                "SVDQuant: device_map places modules on 'disk', which is not supported for SVDQuant layers; "
                "use CPU offload (enable_model_cpu_offload) instead"
            )

    def update_torch_dtype(self, torch_dtype: torch.dtype | None) -> torch.dtype | None:
        self.torch_dtype = torch_dtype
        return torch_dtype

    def adjust_target_dtype(self, torch_dtype: torch.dtype) -> Any:
        if self.pre_quantized:
            return torch_dtype
        try:
            from accelerate.utils import CustomDtype

            return CustomDtype.INT4
        except ImportError:  # pragma: no cover
            return torch.int8

    @property
    def supports_parallel_loading(self) -> bool:
        return False  # shards may split a layer's weight and bias; state is kept across tensors

    def get_cuda_warm_up_factor(self) -> int:
        return 4 if self.pre_quantized else 8

    @property
    def options(self) -> SVDQuantConfig:
        return self.quantization_config

    # ---- before loading ----
    def maybe_update_loaded_keys(self, loaded_keys: list[str], checkpoint_files: list[str]) -> list[str]:
        self.headers = read_headers(checkpoint_files)  # also rejects truncated shards
        svd_modules = svdquant_module_names(loaded_keys)
        if not self.pre_quantized:
            if svd_modules:
                raise QuantizationError(
                    f"the checkpoint already stores SVDQuant tensors (e.g. of layer {svd_modules[0]!r}: qweight, "
                    "wscales, ...) but its config.json has no quantization_config; cannot quantize it again"
                )
            return loaded_keys
        if not svd_modules:
            raise QuantizationError(
                "config.json says quant_method 'svdquant' but the checkpoint has no SVDQuant tensor "
                "('<layer>.qweight', '<layer>.wscales', ...)"
            )
        self.targets = {name: f"{name}.bias" in loaded_keys for name in svd_modules}
        self._check_keys_against_config(loaded_keys)
        return loaded_keys

    def _check_keys_against_config(self, loaded_keys: list[str]) -> None:
        opts = self.options
        keyset = set(loaded_keys)
        for name in self.targets:
            for t in ("qweight", "wscales", "smooth_factor", "proj_down", "proj_up"):
                if f"{name}.{t}" not in keyset:
                    raise QuantizationError(f"checkpoint is missing tensor {name + '.' + t!r} of SVDQuant layer {name!r}")
            for t, fmt in FORMAT_TENSORS.items():
                has = f"{name}.{t}" in keyset
                if has and opts.quant_format != fmt:
                    raise QuantizationError(
                        f"tensor {name + '.' + t!r} exists only in quant_format={fmt!r} checkpoints, but the "
                        f"config says quant_format={opts.quant_format!r}"
                    )
                if not has and opts.quant_format == fmt:
                    raise QuantizationError(
                        f"checkpoint is missing tensor {name + '.' + t!r} required by quant_format={fmt!r}"
                    )

    def _stored_dtype(self, name: str) -> torch.dtype:
        info = self.headers.get(f"{name}.proj_up") or self.headers.get(f"{name}.smooth_factor")
        dt = info[0] if info else None
        if isinstance(dt, torch.dtype) and dt in (torch.bfloat16, torch.float16):
            return dt
        if dt is None:
            return _compute_dtype(self.torch_dtype)
        raise QuantizationError(
            f"tensor {name + '.proj_up'!r} has dtype {dt}; SVDQuant checkpoints store it in bfloat16 or float16"
        )

    def _process_model_before_weight_loading(
        self, model: nn.Module, device_map: Any = None, keep_in_fp32_modules: list[str] | None = None, **kwargs: Any
    ) -> nn.Module:
        if not torch.cuda.is_available() and not self._warned:
            self._warned = True
            warn_reference_path("loading this SVDQuant model" if self.pre_quantized else "quantize-on-load")
        opts = self.options
        if self.pre_quantized:
            by_dtype: dict[torch.dtype, list[str]] = {}
            for name in self.targets:
                by_dtype.setdefault(self._stored_dtype(name), []).append(name)
            for dtype, names in by_dtype.items():
                try:
                    replace_with_svdquant_linear(model, opts, names=names, dtype=dtype, device="meta")
                except ValueError as e:
                    raise QuantizationError(f"checkpoint does not match the model: {e}") from e
            self._use_checkpoint_ranks(model)
        else:
            fp32 = list(keep_in_fp32_modules or [])
            targets = quantizable_linears(model, opts, keep_in_fp32_modules=fp32)
            if not targets:
                logger.warning("SVDQuant: no nn.Linear layer of %s is targeted; nothing is quantized", type(model).__name__)
            self.targets = {name: lin.bias is not None for name, lin in targets.items()}
            if opts.joint_qkv:
                groups = qkv_groups(model, targets)
                self._group_of = {n: g for g in groups for n in g}
                if groups:
                    self._group_rank = default_group_rank(opts, groups, {n: m.in_features for n, m in targets.items()})
        self.modules_to_not_convert = [
            n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in self.targets
        ]
        return model

    def _use_checkpoint_ranks(self, model: nn.Module) -> None:
        """Per-layer branch rank from the checkpoint (a folded LoRA makes it differ from config.rank)."""
        for name in self.targets:
            down = self.headers.get(f"{name}.proj_down")
            up = self.headers.get(f"{name}.proj_up")
            mod = model.get_submodule(name)
            if not down or not up or len(down[1]) != 2 or len(up[1]) != 2:
                continue
            rank = down[1][1]
            # a folded LoRA only adds rank; anything else is left to the shape check (names the tensor)
            if rank != up[1][1] or rank <= mod.rank:
                continue
            mod.rank = rank
            mod._buffers["proj_down"] = torch.empty(mod.in_features, rank, dtype=mod.proj_down.dtype, device="meta")
            mod._buffers["proj_up"] = torch.empty(mod.out_features, rank, dtype=mod.proj_up.dtype, device="meta")

    def update_missing_keys(self, model: nn.Module, missing_keys: list[str], prefix: str) -> list[str]:
        ours = sorted(k for k in missing_keys if k.rpartition(".")[0] in self.targets)
        if ours:
            more = f" (and {len(ours) - 5} more)" if len(ours) > 5 else ""
            raise QuantizationError(f"checkpoint is missing tensor(s) of SVDQuant layers: {ours[:5]}{more}")
        return missing_keys

    def maybe_update_state_dict(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        # keep the tensors as stored: diffusers casts floats to torch_dtype before create_quantized_param
        for key, value in state_dict.items():
            module, _, tensor = key.rpartition(".")
            if module in self.targets and isinstance(value, torch.Tensor):
                if self.pre_quantized or tensor == "weight":
                    self._raw[key] = value
        return state_dict

    # ---- per tensor ----
    def check_if_quantized_param(
        self, model: nn.Module, param_value: torch.Tensor, param_name: str, state_dict: dict[str, Any], **kwargs: Any
    ) -> bool:
        module, _, tensor = param_name.rpartition(".")
        if module not in self.targets:
            return False
        return tensor in SVDQUANT_TENSORS if self.pre_quantized else tensor in ("weight", "bias")

    def check_quantized_param_shape(self, param_name: str, current_param: torch.Tensor, loaded_param: torch.Tensor) -> bool:
        self._raise_shape(param_name, tuple(current_param.shape), tuple(loaded_param.shape))
        return True

    def _raise_shape(self, param_name: str, expected: tuple[int, ...], got: tuple[int, ...]) -> None:
        if expected == got:
            return
        o = self.options
        raise QuantizationError(
            f"tensor {param_name!r} has shape {got}, but the model and the quantization config (rank={o.rank}, "
            f"group_size={o.effective_group_size}, quant_format={o.quant_format!r}) imply {expected}"
        )

    def create_quantized_param(
        self,
        model: nn.Module,
        param_value: torch.Tensor,
        param_name: str,
        target_device: Any,
        state_dict: dict[str, Any] | None = None,
        unexpected_keys: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        module_name, _, tensor = param_name.rpartition(".")
        raw = self._raw.pop(param_name, None)
        value = raw if raw is not None else param_value
        device = torch.device(target_device) if not isinstance(target_device, torch.device) else target_device
        if self.pre_quantized:
            self._load_tensor(model.get_submodule(module_name), module_name, tensor, value, device)
        elif tensor == "bias":
            mod = model.get_submodule(module_name)
            if isinstance(mod, SVDQuantLinear):
                mod.bias = nn.Parameter(value.to(device=device, dtype=mod.compute_dtype), requires_grad=False)
            else:
                self._pending_bias[module_name] = value
        elif module_name in self._group_of:
            self._quantize_group_member(model, module_name, value, device)
        else:
            self._quantize_layer(model, module_name, value, device)

    def _load_tensor(self, mod: nn.Module, module_name: str, tensor: str, value: torch.Tensor, device: torch.device) -> None:
        name = f"{module_name}.{tensor}"
        if not isinstance(mod, SVDQuantLinear):  # pragma: no cover - guarded by the key scan
            raise QuantizationError(f"tensor {name!r}: module {module_name!r} is not an SVDQuant layer")
        expected = getattr(mod, tensor, None)
        if expected is None:
            raise QuantizationError(f"unexpected tensor {name!r}: layer {module_name!r} has no {tensor!r}")
        self._raise_shape(name, tuple(expected.shape), tuple(value.shape))
        if value.dtype != expected.dtype:
            raise QuantizationError(
                f"tensor {name!r} has dtype {value.dtype}, expected {expected.dtype} (layer compute dtype "
                f"{mod.compute_dtype}, quant_format={self.options.quant_format!r})"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value.float()).all()):
            raise QuantizationError(f"tensor {name!r} contains NaN or Inf")
        why = invalid_2l_tensor(tensor, value) if mod.quant_format == "int4_2l" else None
        if why:
            raise QuantizationError(f"tensor {name!r} of layer {module_name!r} {why}")
        value = value.to(device).contiguous()
        if tensor == "bias":
            mod.bias = nn.Parameter(value, requires_grad=False)
        else:
            mod._buffers[tensor] = value

    def _quantize_group_member(self, model: nn.Module, name: str, weight: torch.Tensor, device: torch.device) -> None:
        """joint_qkv: hold the member's weight until its group is complete (shards may split a group), then
        quantize the group as one layer at the group rank and install one SVDQuantLinear per member."""
        group = self._group_of[name]
        lins = [model.get_submodule(n) for n in group]
        lin = lins[group.index(name)]
        self._raise_shape(f"{name}.weight", (lin.out_features, lin.in_features), tuple(weight.shape))
        waiting = self._group_weights.setdefault(group, {})
        waiting[name] = weight
        if len(waiting) < len(group):
            return
        del self._group_weights[group]
        work = torch.device("cuda") if torch.cuda.is_available() else device
        dtype = _compute_dtype(self.torch_dtype)
        label = "+".join(group)
        w, _ = concat_group([waiting[n].to(work) for n in group], [None] * len(group), group)
        opts = SVDQuantConfig(**{**self.options.options_dict(), "rank": self._group_rank})
        with _single_cpu_thread(work.type == "cpu" and w.numel() <= _SMALL_LAYER):
            qw = quantize_weight(w, opts, dtype, name=label)
        for n, part in zip(group, split_outputs(qw, [m.out_features for m in lins], group)):
            bias = self._pending_bias.pop(n, None)
            self._install(model, n, part, None if bias is None else bias.to(work), opts, dtype, device)

    def _install(self, model: nn.Module, name: str, qw, bias: torch.Tensor | None, opts: SVDQuantConfig,
                 dtype: torch.dtype, device: torch.device) -> None:
        mod = SVDQuantLinear.from_quantized(qw, bias, opts, dtype)
        mod.layer_name = name
        for key, buf in mod._buffers.items():  # the layout a reload gives (SVD factors can come transposed)
            if buf is not None:
                mod._buffers[key] = buf.contiguous()
        mod = mod.to(device)
        if bias is None and self.targets.get(name):
            # the bias is in a later shard: a placeholder keeps the key in the model's state_dict, or diffusers
            # would skip the bias as unexpected; it is filled when it arrives (a left-over meta tensor is an error)
            mod.bias = nn.Parameter(torch.empty(mod.out_features, dtype=dtype, device="meta"), requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, mod)

    def _quantize_layer(self, model: nn.Module, name: str, weight: torch.Tensor, device: torch.device) -> None:
        lin = model.get_submodule(name)
        if not isinstance(lin, nn.Linear):  # pragma: no cover
            raise QuantizationError(f"layer {name!r}: expected nn.Linear, found {type(lin).__name__}")
        self._raise_shape(f"{name}.weight", (lin.out_features, lin.in_features), tuple(weight.shape))
        work = torch.device("cuda") if torch.cuda.is_available() else device
        dtype = _compute_dtype(self.torch_dtype)
        with _single_cpu_thread(work.type == "cpu" and weight.numel() <= _SMALL_LAYER):
            qw = quantize_weight(weight.to(work), self.options, dtype, name=name)
        bias = self._pending_bias.pop(name, None)
        self._install(model, name, qw, None if bias is None else bias.to(work), self.options, dtype, device)
        del qw, weight

    # ---- after loading ----
    def _process_model_after_weight_loading(self, model: nn.Module, **kwargs: Any) -> nn.Module:
        modules = dict(model.named_modules())
        for group, waiting in self._group_weights.items():
            missing = [n for n in group if n not in waiting]
            raise QuantizationError(
                f"joint_qkv: the checkpoint has no weight for {missing[0]!r}, so its group {'+'.join(group)!r} "
                f"could not be quantized"
            )
        for name, has_bias in self.targets.items():
            mod = modules.get(name)
            if not isinstance(mod, SVDQuantLinear):
                raise QuantizationError(f"layer {name!r}: its weight never arrived from the checkpoint")
            if has_bias and mod.bias is None:
                raise QuantizationError(f"checkpoint is missing tensor {name + '.bias'!r}")
            for t, v in [*mod.named_buffers(recurse=False), *mod.named_parameters(recurse=False)]:
                if v.is_meta:
                    raise QuantizationError(f"checkpoint is missing tensor {name + '.' + t!r}")
        self._pending_bias.clear()
        self._raw.clear()
        self._group_weights.clear()
        realign_cpu_tensors(model)
        hopper_fragment_order(model)
        hopper_epilogues(model)
        warn_kernel_gaps(model)
        route_diffusers_fusion(model)
        if "save_pretrained" not in vars(model):
            model.save_pretrained = AtomicSave(model)
        return model

    def get_state_dict_and_metadata(
        self, state_dict: dict[str, Any], safe_serialization: bool = False
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        if not safe_serialization:
            raise ValueError("SVDQuant models are saved as safetensors only (safe_serialization=True)")
        for k, v in state_dict.items():
            if isinstance(v, torch.Tensor) and v.is_meta:
                raise QuantizationError(f"cannot save: tensor {k!r} was never loaded (meta)")
        return {k: (v.contiguous() if isinstance(v, torch.Tensor) else v) for k, v in state_dict.items()}, {}

    @property
    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False

    @property
    def is_compileable(self) -> bool:
        return True


__all__ = ["SVDQuantDiffusersQuantizer"]

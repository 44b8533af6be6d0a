"""PEFT LoRA layer for SVDQuantLinear: adapters ride on the layer's own low-rank branch.

The LoRA factors stay in PEFT's usual ``lora_A`` / ``lora_B`` modules (so the diffusers/PEFT
controls keep working), but the forward pass never runs them as separate matmuls: the active
adapters are concatenated onto ``proj_down`` / ``proj_up`` (rank padded to 16) and the quantized
layer runs once with the extended branch. The concatenation is cached and rebuilt only when the
adapters, their strengths or their weights change. The base factors are never modified, except by
``merge`` (``fuse_lora``), which makes the concatenation the layer's own branch and keeps the
originals so ``unmerge`` restores them exactly.

Under torch.compile the cache is read, not checked: the concatenation lives in two non-persistent
buffers (graph inputs, so a rebuilt one needs no recompile), and one flag, which dynamo guards on,
says they are current. The controls (loading, ``set_adapter``, ``set_scale``, ``delete_adapter``,
fuse/unfuse, hotswap, ``refresh``) rebuild them eagerly, so a compiled forward finds them current;
where they are not (``lora_scale`` applied inside the forward), the graph builds the concatenation.
"""
from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import nn

from ..modules import SVDQuantLinear, epilogue_after, has_call_hooks
from .branch import RANK_GRANULARITY, extend_branch

_LIVE_DOWN, _LIVE_UP = "_lora_live_down", "_lora_live_up"


def _sync_after_load(module: "SVDQuantLoraLinear", incompatible_keys: Any) -> None:
    """State-dict post hook (a module-level function, so the layer stays picklable)."""
    module.sync_branch()


class SVDQuantLoraLinear(nn.Module, LoraLayer):
    """LoRA adapters on an SVDQuantLinear, folded into its low-rank branch."""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: Any,
        r: int = 0,
        lora_alpha: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        LoraLayer.__init__(self, base_layer, **kwargs)
        self.fan_in_fan_out = False
        self._active_adapter = adapter_name
        self._branch_cache: tuple | None = None
        self._unmerged_branch: tuple[torch.Tensor, torch.Tensor, int] | None = None
        self._live_spec: tuple | None = None  # (adapter names, strengths) of the live buffers
        self._live_ok = False  # the live buffers are current (set by an eager build, cleared by scale_layer)
        self.register_buffer(_LIVE_DOWN, None, persistent=False)
        self.register_buffer(_LIVE_UP, None, persistent=False)
        self.register_load_state_dict_post_hook(_sync_after_load)
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        return module.in_features, module.out_features

    @property
    def _layer_name(self) -> str:
        return getattr(self.get_base_layer(), "layer_name", "") or "?"

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config: Any, **kwargs: Any) -> None:
        unsupported = [opt for opt in ("use_dora", "lora_bias") if getattr(config, opt, False)]
        if unsupported:
            raise ValueError(
                f"LoRA adapter {adapter_name!r} on SVDQuant layer {self._layer_name}: {', '.join(unsupported)} "
                "is not supported on 4-bit layers (only plain LoRA folds into the low-rank branch)"
            )
        super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)
        self.sync_branch()

    # PEFT's controls, followed by an eager rebuild of the live branch (a no-op while compiling)
    def set_adapter(self, adapter_names: str | list[str], *args: Any, **kwargs: Any) -> None:
        super().set_adapter(adapter_names, *args, **kwargs)
        self.sync_branch()

    def set_scale(self, adapter: str, scale: float) -> None:
        super().set_scale(adapter, scale)
        self.sync_branch()

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self.sync_branch()

    # lora_scale (joint_attention_kwargs) scales the strengths for one forward: no eager rebuild, but a
    # compiled forward must not take the live buffers while the strengths differ from theirs
    def scale_layer(self, scale: float) -> None:
        super().scale_layer(scale)
        self._live_ok = False

    def unscale_layer(self, scale: float | None = None) -> None:
        super().unscale_layer(scale)
        self._live_ok = self._live_spec is not None and self._live_spec == self._active_spec()

    def _active_names(self) -> tuple[str, ...]:
        """The active, unmerged adapters with a nonzero strength (submodules read from their dict)."""
        active, merged, scaling = self._active_adapter, self.merged_adapters, self.scaling
        lora_a = self._modules["lora_A"]._modules
        return tuple(
            n for n in ([active] if isinstance(active, str) else active)
            if n in lora_a and n not in merged and scaling.get(n, 0) != 0
        )

    def _active_spec(self) -> tuple[tuple[str, ...], tuple[float, ...]]:
        names = self._active_names()
        return names, tuple(float(self.scaling[n]) for n in names)

    # ---- the folded branch -------------------------------------------------------------------
    def _active_factors(self, adapters: list[str]) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
        out = []
        for name in adapters:
            if name not in self.lora_A or self.scaling.get(name, 0) == 0:
                continue
            out.append((self.lora_A[name].weight, self.lora_B[name].weight, float(self.scaling[name])))
        return out

    def _branch(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The extended (proj_down, proj_up) for the active, unmerged adapters; None if there are none.

        Runs before every forward (a FLUX.1 forward has ~500 such layers), so submodules, buffers and
        parameters are read from their dicts: each of those lookups through nn.Module.__getattr__ costs
        about a microsecond (plain attributes are found directly). Under torch.compile the live buffers
        are used while they are current (``_live_ok``), else the graph builds the branch.
        """
        if self._live_ok and torch.compiler.is_compiling():  # one guard instead of the adapter state's
            own = self._buffers
            return own[_LIVE_DOWN], own[_LIVE_UP]
        mods = self._modules
        lora_a, lora_b = mods["lora_A"]._modules, mods["lora_B"]._modules
        names, scales = self._active_spec()
        if not names:
            return None
        base = mods["base_layer"]
        while "base_layer" in base._modules:  # get_base_layer(): the innermost layer
            base = base._modules["base_layer"]
        bufs = base._buffers
        weights = [(lora_a[n]._parameters["weight"], lora_b[n]._parameters["weight"]) for n in names]
        if torch.compiler.is_compiling():
            # not current (the cache key, tensor ids and in-place versions, would make dynamo break the
            # graph and recompile per layer): built in the graph
            factors = [(a, b, s) for (a, b), s in zip(weights, scales)]
            return extend_branch(bufs["proj_down"], bufs["proj_up"], factors, RANK_GRANULARITY, self._layer_name)
        tensors = (bufs["proj_down"], bufs["proj_up"], *(t for pair in weights for t in pair))
        # ids are stable while the cache holds the tensors; _version counts in-place writes (loading, hotswap)
        key = (tuple(map(id, tensors)), tuple(t._version for t in tensors), scales)
        cache = self._branch_cache
        if cache is None or cache[0] != key:
            factors = [(a, b, s) for (a, b), s in zip(weights, scales)]
            with torch.no_grad():
                down, up = extend_branch(bufs["proj_down"], bufs["proj_up"], factors, RANK_GRANULARITY, self._layer_name)
            cache = self._branch_cache = (key, down, up, tensors)
            self._buffers[_LIVE_DOWN], self._buffers[_LIVE_UP] = down, up
            self._live_spec = (names, scales)
        self._live_ok = True
        return cache[1], cache[2]

    def sync_branch(self) -> None:
        """Rebuild the cached branch now if the adapters, strengths or weights changed (eager only)."""
        if torch.compiler.is_compiling():
            return
        if self.get_base_layer().proj_down.is_meta or any(p.is_meta for p in self.lora_A.parameters()):
            return
        try:
            branch = self._branch()
        except ValueError:  # a factor that does not fit: the forward raises the same error, naming the layer
            branch = None
        if branch is None:  # nothing active: drop the cache rather than keep it alive
            self._branch_cache = self._live_spec = None
            self._live_ok = False
            self._buffers[_LIVE_DOWN] = self._buffers[_LIVE_UP] = None

    def branch_rank(self) -> int:
        """Rank of the low-rank branch the kernels run with now (base + active adapters, padded)."""
        branch = None if self.disable_adapters else self._branch()
        return (branch[0] if branch is not None else self.get_base_layer().proj_down).shape[1]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs:
            self._check_forward_args(x, *args, **kwargs)
            adapter_names = kwargs.pop("adapter_names", None)
            if adapter_names is not None and not self.disable_adapters:
                return self._mixed_batch_forward(x, *args, adapter_names=adapter_names, **kwargs)
        base = self._modules["base_layer"]
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return base(x, *args, **kwargs)
        branch = self._branch()
        if branch is None:
            return base(x, *args, **kwargs)
        if isinstance(base, SVDQuantLinear) and not (has_call_hooks(base) or args or kwargs):
            # the branch as arguments: nothing to swap and restore (under torch.compile, a swap is a side
            # effect that dynamo replays after every call of the graph)
            return base.forward_with_branch(x, *branch)
        buffers = base._buffers
        saved = buffers["proj_down"], buffers["proj_up"]
        buffers["proj_down"], buffers["proj_up"] = branch
        try:
            return base(x, *args, **kwargs)
        finally:
            buffers["proj_down"], buffers["proj_up"] = saved

    def forward_fused(
        self,
        x: torch.Tensor,
        activation: str | None = None,
        prefix: torch.Tensor | None = None,
        quantized: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """SVDQuantLinear.forward_fused with the active adapters folded into the branch (svdquant_hf.epilogues);
        ``quantized``: x already quantized with that branch's down projection (shared_input.py)."""
        base = self._modules["base_layer"]
        if self.disable_adapters or not isinstance(base, SVDQuantLinear) or has_call_hooks(base):
            return epilogue_after(self(x), activation, prefix)
        return base.forward_fused(x, activation, prefix, self._branch(), quantized)

    def forward_cat(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """SVDQuantLinear.forward_cat with the active adapters folded into the branch (svdquant_hf.epilogues)."""
        base = self._modules["base_layer"]
        if self.disable_adapters or not isinstance(base, SVDQuantLinear) or has_call_hooks(base):
            return self(torch.cat([a, b], -1))
        return base.forward_cat(a, b, self._branch())

    def fused_path_ready(self, x: torch.Tensor) -> bool:
        """Whether forward_fused / forward_cat run the fused kernels on ``x`` (the base layer's path, adapters on)."""
        base = self._modules["base_layer"]
        return not self.disable_adapters and isinstance(base, SVDQuantLinear) and base.fused_path_ready(x)

    # ---- fuse / unfuse -----------------------------------------------------------------------
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Make the concatenation permanent: the adapters become part of the layer's own branch."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        if not adapter_names:
            return
        base = self.get_base_layer()
        factors = self._active_factors(adapter_names)
        if safe_merge:
            for a, b, _ in factors:
                if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
                    raise ValueError(
                        f"NaNs detected in the LoRA weights of SVDQuant layer {self._layer_name}; not fusing"
                    )
        if self._unmerged_branch is None:
            self._unmerged_branch = (base.proj_down, base.proj_up, base.rank)
        if factors:
            with torch.no_grad():
                down, up = extend_branch(base.proj_down, base.proj_up, factors, RANK_GRANULARITY, self._layer_name)
            base.proj_down, base.proj_up, base.rank = down, up, down.shape[1]
        self.merged_adapters.extend(a for a in adapter_names if a in self.lora_A)
        self.sync_branch()

    def unmerge(self) -> None:
        """Give the layer back its own branch (bit-exact: the original tensors are restored)."""
        if not self.merged:
            return
        base = self.get_base_layer()
        if self._unmerged_branch is not None:
            down, up, rank = self._unmerged_branch
            dev = base.smooth_factor.device  # not qweight's: set_int8_weights may park the packed weights on the host
            base.proj_down, base.proj_up, base.rank = down.to(dev), up.to(dev), rank
        self._unmerged_branch = None
        self.merged_adapters.clear()
        self.sync_branch()

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        a, b = self.lora_A[adapter].weight, self.lora_B[adapter].weight
        return (b.float() @ a.float()) * self.scaling[adapter]

    def __repr__(self) -> str:
        return "svdquant_lora." + super().__repr__()


__all__ = ["SVDQuantLoraLinear"]

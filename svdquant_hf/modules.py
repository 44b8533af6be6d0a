"""SVDQuantLinear: the drop-in replacement for nn.Linear."""
from __future__ import annotations

import torch
from torch import nn

from .algorithm.svdquant import QuantizedWeights
from .config import SVDQuantOptions
from .ops import library as ops
from .ops.kernel_shapes import padded_to_tile
from .ops.layout_2l import fragment_order, kernel_padded
from .ops.reference import EPILOGUE_ACTIVATIONS, nvfp4_linear_ref, w4a16_2l_linear_ref, w4a16_linear_ref, weight_operand_2l
from .ops.traced import quantize_act_2l_traced, trace_quantizer

_INT8_WEIGHTS = "qweight_i8"  # SVDQuantLinear.set_int8_weights: the widened weights, a non-persistent buffer
_FRAG_WEIGHTS = "qweight_fo"  # SVDQuantLinear.set_fragment_order: the packed weights in the GEMM's order, non-persistent
# set_fragment_order on a layer whose in/out features are not multiples of the GEMM's 128-wide tile: these operands
# padded with zeros to it (non-persistent buffers, "<name>_kp"), so the Hopper kernels take the layer
_PADDED = ("wscales", "wchannel", "bias", "proj_up")


class SVDQuantLinear(nn.Module):
    """W4A4 linear with a 16-bit low-rank branch.

    y = sum_g sx[m,g] sw[n,g] (xq . wq)_g + (x @ proj_down) @ proj_up^T + bias   (fp32 accumulation)

    Buffers (docs/format.md): qweight int8 [N, K/2], wscales [K/G, N], smooth_factor [K],
    proj_down [K, R], proj_up [N, R], bias [N]; NVFP4 adds wtscale (fp32 scalar).
    int4_2l (INT4 with two-level scales): wscales is uint8 (s_int in [1, 16]) and wchannel fp32 [N]
    holds the per-output-channel scale; y = (int_acc * wchannel[n]) * xscale[m] + branch + bias.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        rank: int = 32,
        group_size: int = 64,
        quant_format: str = "int4",
        weight_only: bool = False,
        dtype: torch.dtype = torch.bfloat16,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.quant_format = quant_format
        self.weight_only = weight_only
        self.group_size = 16 if quant_format == "nvfp4" else group_size
        self.layer_name = ""
        if in_features % self.group_size or in_features % 2:
            raise ValueError(
                f"SVDQuantLinear: in_features={in_features} is not a multiple of group_size={self.group_size}"
            )
        ngroups = in_features // self.group_size
        scale_dtype = {"nvfp4": torch.float8_e4m3fn, "int4_2l": torch.uint8}.get(quant_format, dtype)
        kw = {"device": device}
        self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.int8, **kw))
        self.register_buffer("wscales", torch.zeros(ngroups, out_features, dtype=scale_dtype, **kw))
        self.register_buffer("smooth_factor", torch.ones(in_features, dtype=dtype, **kw))
        self.register_buffer("proj_down", torch.zeros(in_features, rank, dtype=dtype, **kw))
        self.register_buffer("proj_up", torch.zeros(out_features, rank, dtype=dtype, **kw))
        if quant_format == "nvfp4":
            self.register_buffer("wtscale", torch.ones((), dtype=torch.float32, **kw))
        else:
            self.wtscale = None
        if quant_format == "int4_2l":
            self.register_buffer("wchannel", torch.zeros(out_features, dtype=torch.float32, **kw))
        else:
            self.wchannel = None
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, **kw), requires_grad=False) if bias else None

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.proj_up.dtype

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        """Device moves apply; dtype casts do not: the stored tensors keep their dtypes.

        A model-wide ``.to(torch.float16)`` or ``.float()`` would otherwise re-round the 16-bit scales
        and low-rank factors (or move the layer to the slow fp32 path); inputs are cast to the
        compute dtype in forward and outputs back to the input's dtype.
        """

        def keep_dtype(t: torch.Tensor) -> torch.Tensor:
            if not t.is_floating_point():
                return fn(t)
            probe = fn(t.new_empty(0))  # what fn does to dtype and device, without touching data
            return fn(t) if probe.dtype == t.dtype else t.to(device=probe.device)

        if _FRAG_WEIGHTS not in self._buffers:
            return super()._apply(keep_dtype, recurse)
        canonical = self._buffers.pop("qweight")  # set_fragment_order: the canonical bytes stay in host memory
        try:
            return super()._apply(keep_dtype, recurse)
        finally:
            self._buffers["qweight"] = canonical

    @classmethod
    def from_quantized(
        cls, qw: QuantizedWeights, bias: torch.Tensor | None, options: SVDQuantOptions, dtype: torch.dtype
    ) -> "SVDQuantLinear":
        n = qw.qweight.shape[0]
        k = qw.smooth_factor.shape[0]
        dev = qw.qweight.device
        mod = cls(
            k, n, bias is not None, options.rank, options.group_size, options.quant_format,
            options.weight_only, dtype, device="meta",
        )
        # contiguous, as a reloaded checkpoint's tensors are (SVD factors may come back transposed)
        mod.qweight = qw.qweight.contiguous()
        mod.wscales = qw.wscales.contiguous()
        mod.smooth_factor = qw.smooth_factor.contiguous()
        mod.proj_down = qw.proj_down.contiguous()
        mod.proj_up = qw.proj_up.contiguous()
        if qw.wtscale is not None:
            mod.wtscale = qw.wtscale.float().reshape(())
        if qw.wchannel is not None:
            mod.wchannel = qw.wchannel.float().contiguous()
        if bias is not None:
            mod.bias = nn.Parameter(bias.detach().to(device=dev, dtype=dtype), requires_grad=False)
        return mod

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_branch(x, self.proj_down, self.proj_up)

    def forward_with_branch(self, x: torch.Tensor, proj_down: torch.Tensor, proj_up: torch.Tensor) -> torch.Tensor:
        """The forward pass with the given low-rank branch instead of the layer's own (LoRA folding)."""
        self._check_features(x)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(proj_up.dtype)  # the compute dtype, without a guard on the buffer
        bias = self.bias
        if self.quant_format == "nvfp4":
            y = nvfp4_linear_ref(
                x2, self.qweight, self.wscales, self.wtscale, self.smooth_factor, proj_down,
                proj_up, bias, act_quant=not self.weight_only,
            )
        elif self.quant_format == "int4_2l":
            if self.weight_only:
                y = w4a16_2l_linear_ref(
                    x2, self.qweight, self.wscales, self.wchannel, proj_down, proj_up, bias, self.group_size
                )
            else:  # on CUDA the dispatcher calls the extension's C++ kernels directly (ops/library.py)
                xq, xscale, lr = self._quantize_2l(x2, proj_down)
                w8 = self._buffers.get(_INT8_WEIGHTS)
                fo = self._buffers.get(_FRAG_WEIGHTS)
                if w8 is not None:  # set_int8_weights: the same sums from the weights widened once
                    y = ops.w8a4_gemm_2l(xq, xscale, w8, self.wchannel, lr, proj_up, bias)
                elif fo is not None and fo.device == x2.device:  # set_fragment_order: the weights in the kernel's
                    # order (an offloading hook that brought only the canonical weights takes the branch below)
                    xq, wscales, wchannel, up, bias = self._kernel_operands(xq, proj_up)
                    y = ops.w4a4_gemm_2l_fo(xq, xscale, fo, wscales, wchannel, lr, up, bias, self.group_size)
                    if y.shape[1] != self.out_features:  # rows padded to the kernel's tile
                        y = y[:, : self.out_features].contiguous()
                else:
                    y = ops.w4a4_gemm_2l(
                        xq, xscale, self.qweight, self.wscales, self.wchannel, lr, proj_up, bias, self.group_size
                    )
        elif self.weight_only:
            y = w4a16_linear_ref(x2, self.qweight, self.wscales, proj_down, proj_up, bias, self.group_size)
        else:
            xq, ascales, lr = ops.quantize_act(x2.contiguous(), self.smooth_factor, proj_down, self.group_size)
            y = ops.w4a4_gemm(xq, ascales, self.qweight, self.wscales, lr, proj_up, bias, self.group_size)
        return y.reshape(*lead, self.out_features).to(x.dtype)

    def forward_fused(
        self,
        x: torch.Tensor,
        activation: str | None = None,
        prefix: torch.Tensor | None = None,
        branch: tuple[torch.Tensor, torch.Tensor] | None = None,
        quantized: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``activation(self(x))``, after ``prefix``'s features when given: ``cat([prefix, act(y)], -1)``.

        With the weights in fragment order (set_fragment_order, no hooks on the layer) the activation runs in the
        GEMM's epilogue on its fp32 result and the GEMM writes straight into the concatenation (one op,
        ``w4a4_gemm_2l_fo_ep``); otherwise the layer runs as usual and torch ops follow. ``activation``: None or
        "gelu_tanh" (GELU, tanh approximation); ``branch``: (proj_down, proj_up) instead of the layer's own (LoRA);
        ``quantized``: x already quantized for this layer, (xq, xscale, low-rank activations) (shared_input.py;
        only where ``fused_path_ready(x)``)."""
        if activation not in EPILOGUE_ACTIVATIONS:
            raise ValueError(f"SVDQuantLinear {self.layer_name}: activation must be one of "
                             f"{list(EPILOGUE_ACTIVATIONS)}, got {activation!r}")
        if prefix is not None and prefix.shape[:-1] != x.shape[:-1]:
            raise ValueError(f"SVDQuantLinear {self.layer_name}: prefix has shape {tuple(prefix.shape)}, its leading "
                             f"dimensions must be the input's {tuple(x.shape[:-1])}")
        proj_down, proj_up = branch if branch is not None else (self.proj_down, self.proj_up)
        if not self.fused_path_ready(x):
            if quantized is not None:
                raise ValueError(f"SVDQuantLinear {self.layer_name}: a pre-quantized input needs the fused path "
                                 f"(weights in fragment order on the input's device, no hooks)")
            y = self(x) if branch is None else self.forward_with_branch(x, proj_down, proj_up)
            return epilogue_after(y, activation, prefix)
        self._check_features(x)
        lead = x.shape[:-1]
        dtype = self.proj_up.dtype
        if quantized is None:
            quantized = self._quantize_2l(x.reshape(-1, self.in_features).to(dtype), proj_down)
        p2 = None if prefix is None else prefix.reshape(-1, prefix.shape[-1]).to(dtype)
        y = self._gemm_fused(quantized, proj_up, activation, p2)
        return y.reshape(*lead, y.shape[-1]).to(x.dtype)

    def _gemm_fused(self, quantized: tuple[torch.Tensor, torch.Tensor, torch.Tensor], proj_up: torch.Tensor,
                    activation: str | None = None, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """The fragment-order GEMM with its epilogue on an input already quantized: [rows, (P +) out_features]."""
        xq, xscale, lr = quantized
        return ops.w4a4_gemm_2l_fo_ep(xq, xscale, self._buffers[_FRAG_WEIGHTS], self.wscales, self.wchannel, lr,
                                      proj_up, self.bias, self.group_size, EPILOGUE_ACTIVATIONS[activation], prefix)

    def kernel_shape(self) -> tuple[int, int]:
        """(in, out) features as the Hopper GEMM takes them: rounded up to its 128-wide K stage and row tile."""
        return padded_to_tile(self.in_features), padded_to_tile(self.out_features)

    def _kernel_operands(self, xq: torch.Tensor, proj_up: torch.Tensor):
        """(xq, wscales, wchannel, proj_up, bias) for the fragment-order GEMM: with the weights padded to the kernel's
        tile (set_fragment_order), xq's columns and a branch other than the layer's own padded with zeros per call."""
        if "wscales_kp" not in self._buffers:
            return xq, self.wscales, self.wchannel, proj_up, self.bias
        k, n = self.kernel_shape()
        if k != self.in_features:
            xq = torch.nn.functional.pad(xq, (0, k - self.in_features))
        up = self.proj_up_kp if proj_up is self.proj_up else torch.nn.functional.pad(proj_up, (0, 0, 0, n - proj_up.shape[0]))
        return xq, self.wscales_kp, self.wchannel_kp, up, self._buffers.get("bias_kp")

    def forward_cat(
        self, a: torch.Tensor, b: torch.Tensor, branch: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """``self(cat([a, b], -1))``. On the fused path (``fused_path_ready``) the concatenation is quantized where it
        lies (``svdquant::quantize_act_2l_cat``), never written; otherwise it is made and the layer runs as usual.
        ``branch``: (proj_down, proj_up) instead of the layer's own (LoRA)."""
        if a.shape[:-1] != b.shape[:-1] or a.shape[-1] + b.shape[-1] != self.in_features:
            raise ValueError(f"SVDQuantLinear {self.layer_name}: inputs of shapes {tuple(a.shape)} and {tuple(b.shape)} "
                             f"do not concatenate to in_features={self.in_features}")
        proj_down, proj_up = branch if branch is not None else (self.proj_down, self.proj_up)
        if not self.fused_path_ready(a) or trace_quantizer():
            return self.forward_with_branch(torch.cat([a, b], -1), proj_down, proj_up)
        dtype = proj_up.dtype
        quantized = ops.quantize_act_2l_cat(a.reshape(-1, a.shape[-1]).to(dtype).contiguous(),
                                            b.reshape(-1, b.shape[-1]).to(dtype).contiguous(), self.smooth_factor,
                                            proj_down, self.group_size)
        y = self._gemm_fused(quantized, proj_up)
        return y.reshape(*a.shape[:-1], y.shape[-1]).to(a.dtype)

    def fused_path_ready(self, x: torch.Tensor) -> bool:
        """Whether forward_fused runs the fused GEMM on ``x``: weights in fragment order on its device, no hooks."""
        fo = self._buffers.get(_FRAG_WEIGHTS)
        return (fo is not None and fo.device == x.device and not has_call_hooks(self)
                and "wscales_kp" not in self._buffers)  # a layer padded to the tiles takes the plain path

    def _check_features(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"SVDQuantLinear {self.layer_name or ''}: input has {x.shape[-1]} features, "
                f"expected in_features={self.in_features}"
            )

    def _quantize_2l(self, x2: torch.Tensor, proj_down: torch.Tensor):
        quantize = quantize_act_2l_traced if trace_quantizer() else ops.quantize_act_2l
        return quantize(x2.contiguous(), self.smooth_factor, proj_down, self.group_size)

    def set_int8_weights(self, enabled: bool = True, packed_on_host: bool = False) -> bool:
        """Keep (or drop) an int8 copy of an int4_2l W4A4 layer's weights, q * s_int [N, K], for the GEMM on
        widened weights (no widening in its main loop: 0.77-0.85x the packed chain's time at 4608 tokens on
        H200). Outputs are unchanged and the copy is not saved. ``packed_on_host``: the packed weights and
        scales move to host memory while the copy is on (GPU weights ~0.5x bf16 instead of 0.28x + 0.5x);
        they still save, and go back to the copy's device when it is dropped or when called again without
        ``packed_on_host``. Returns whether the layer now has the copy."""
        self.set_fragment_order(False)  # the int8 copy replaces the fragment order
        w8 = self._buffers.get(_INT8_WEIGHTS)
        if not enabled or self.quant_format != "int4_2l" or self.weight_only:
            if w8 is not None:
                self.qweight, self.wscales = self.qweight.to(w8.device), self.wscales.to(w8.device)
            self._buffers.pop(_INT8_WEIGHTS, None)
            self._non_persistent_buffers_set.discard(_INT8_WEIGHTS)
            return False
        if w8 is None:
            w8 = weight_operand_2l(self.qweight, self.wscales, self.group_size)
            self.register_buffer(_INT8_WEIGHTS, w8, persistent=False)
        home = torch.device("cpu") if packed_on_host else w8.device
        self.qweight, self.wscales = self.qweight.to(home), self.wscales.to(home)
        return True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        """A state dict holds canonical weights: the fragment-order copy is rebuilt from what was loaded."""
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        fo = self._buffers.get(_FRAG_WEIGHTS)
        if fo is not None and any(prefix + name in state_dict for name in ("qweight", *_PADDED)):
            self._hold_fragment_order(fo.device)

    @property
    def holds_int8_weights(self) -> bool:
        """Whether the layer's GEMM reads the int8 weight copy (set_int8_weights)."""
        return _INT8_WEIGHTS in self._buffers

    @property
    def holds_fragment_order(self) -> bool:
        """Whether the layer's GEMM reads its packed weights in fragment order (set_fragment_order)."""
        return _FRAG_WEIGHTS in self._buffers

    def set_fragment_order(self, enabled: bool = True) -> bool:
        """Hold an int4_2l W4A4 layer's packed weights in fragment order (ops/layout_2l.py): the order in which the
        Hopper GEMM's persistent kernel widens them straight into its wgmma registers (a K stage 0.63 instead of
        0.74 us on H200; docs/perf-notes.md v2.14). Outputs are unchanged. The reordered copy (a non-persistent
        buffer, same bytes as ``qweight``) takes the weights' place on their device; the canonical ``qweight``
        moves to host memory, where ``state_dict()``, saving and the reference path keep reading it, and stays
        there across ``.to()``. Where in_features or out_features is not a multiple of 128, the copy and the
        operands the GEMM reads (scales, branch, bias) are padded with zeros to the kernel's tiles (``kernel_shape``):
        the activations are padded per call and the output's extra columns sliced off, the same result (such a layer
        runs its epilogues, GELU and concatenations, as torch ops after the GEMM: ``fused_path_ready`` is False).
        A layer holding the int8 copy (set_int8_weights) keeps it instead. Returns whether the layer now holds
        the fragment order."""
        fo = self._buffers.get(_FRAG_WEIGHTS)
        usable = self.quant_format == "int4_2l" and not self.weight_only and _INT8_WEIGHTS not in self._buffers
        if not enabled or not usable:
            if fo is not None:
                for name in (_FRAG_WEIGHTS, *(p + "_kp" for p in _PADDED)):
                    self._buffers.pop(name, None)
                    self._non_persistent_buffers_set.discard(name)
                self.qweight = self.qweight.to(fo.device)
            return False
        if fo is None:
            self._hold_fragment_order(self.qweight.device)
        return True

    def _hold_fragment_order(self, device: torch.device) -> None:
        """The fragment-order copy of the canonical ``qweight`` on ``device`` (and the padded operands where the
        features are not multiples of the kernel's tile); the canonical bytes to host memory."""
        k, n = self.kernel_shape()
        pad = (k, n) != (self.in_features, self.out_features)
        qweight = self.qweight.to(device)
        fo = fragment_order(kernel_padded(qweight, n, k // 2) if pad else qweight)
        self.register_buffer(_FRAG_WEIGHTS, fo, persistent=False)
        for name in _PADDED:
            self._buffers.pop(name + "_kp", None)
            self._non_persistent_buffers_set.discard(name + "_kp")
        if pad:
            g = self.group_size
            padded = {"wscales": kernel_padded(self.wscales, k // g, n, value=1), "wchannel": kernel_padded(self.wchannel, n),
                      "proj_up": kernel_padded(self.proj_up, n), "bias": None if self.bias is None else kernel_padded(self.bias.data, n)}
            for name, t in padded.items():
                if t is not None:
                    self.register_buffer(name + "_kp", t, persistent=False)
        if not self.qweight.is_meta:
            self.qweight = self.qweight.cpu()

    def extra_repr(self) -> str:
        mode = "W4A16" if self.weight_only else "W4A4"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"{mode} {self.quant_format} g{self.group_size}, rank={self.rank}"
        )


def has_call_hooks(module: nn.Module) -> bool:
    """Forward hooks or an accelerate hook (offloading): calling the module is the only correct way in.

    accelerate sets ``_hf_hook`` as a plain attribute: looked up in ``__dict__`` (a failed getattr goes
    through nn.Module.__getattr__ and raises, and under torch.compile that runs on every call as a guard).
    """
    return bool(module._forward_hooks or module._forward_pre_hooks or "_hf_hook" in module.__dict__)


def epilogue_after(y: torch.Tensor, activation: str | None, prefix: torch.Tensor | None) -> torch.Tensor:
    """forward_fused's result from a layer's plain output: the activation, then after ``prefix``'s features."""
    if activation == "gelu_tanh":
        y = torch.nn.functional.gelu(y, approximate="tanh")
    return y if prefix is None else torch.cat([prefix.to(y.dtype), y], -1)


def set_fragment_order(model: nn.Module, enabled: bool = True) -> int:
    """``SVDQuantLinear.set_fragment_order`` on every layer of ``model``; returns how many hold the fragment order.
    Fused layers keep their members' order (fuse_shared_input_projections); layers made later (quantize_model)
    start in canonical order."""
    return sum(m.set_fragment_order(enabled) for m in model.modules() if isinstance(m, SVDQuantLinear))


def set_int8_weights(model: nn.Module, enabled: bool = True, packed_on_host: bool = False) -> int:
    """``SVDQuantLinear.set_int8_weights`` on every layer of ``model``; returns how many hold the int8 copy.
    Call it after fusing or loading LoRAs into the layers (a fused layer is a new layer, without the copy)."""
    return sum(
        m.set_int8_weights(enabled, packed_on_host) for m in model.modules() if isinstance(m, SVDQuantLinear)
    )

"""End-to-end FLUX.1-size transformer forward: latency and peak memory, side by side in one run.

Builds a FluxTransformer2DModel with the FLUX.1-dev configuration and random weights (no download),
and for each variant (bf16 eager / compiled, torchao fp8 dynamic eager / compiled, bitsandbytes NF4,
SVDQuant int4 and int4_2l, eager / compiled) times one transformer forward at each resolution and batch size, with
CUDA events (median of --iters after --warmup). Prints a table of ratios to bf16 eager, writes JSON,
and a bar chart when matplotlib is present.

  python benchmarks/flux_e2e.py --out docs/perf/flux_e2e.json   # DEFAULT_VARIANTS at 1024/512 px, batch 1/4
  python benchmarks/flux_e2e.py --variants bf16,svdq --res 1024 --batch 1
  python benchmarks/flux_e2e.py --variants bf16,svdq2l,svdq2l_compile   # int4_2l (the Hopper kernels)
  python benchmarks/flux_e2e.py --variants svdq2l,svdq2l_lora           # a rank-32 LoRA on every 4-bit layer
  python benchmarks/flux_e2e.py --variants svdq2l_compile,svdq2l_lora_compile  # the same, compiled
  python benchmarks/flux_e2e.py --variants svdq2l_compile,svdq2l_lorafused_compile  # fused before compiling
  python benchmarks/flux_e2e.py --memory-cap-gib 12 --variants svdq,nf4,bf16_offload
  python benchmarks/flux_e2e.py --variants bf16,svdq2l --profile  # + kernel time by category, span (host-bound?)
  python benchmarks/flux_e2e.py --variants bf16_regional,svdq2l_regional --loop-too  # + back-to-back ms (loop_ms)
  python benchmarks/flux_e2e.py --variants bf16_graphs,svdq2l_graphs  # torch.compile(mode="reduce-overhead")
  python benchmarks/flux_e2e.py --variants svdq2l_compile,svdq2l_fused_compile  # q/k/v jointly quantized, one GEMM
  python benchmarks/flux_e2e.py --variants bf16_regional,svdq2l_regional  # compile_repeated_blocks: ~2 block graphs
  python benchmarks/flux_e2e.py --variants svdq2l_regional,svdq2l_tq_regional  # quantizer traced, fused by Inductor
  python benchmarks/flux_e2e.py --variants svdq2l_graphs,svdq2l_w8_graphs  # weights widened once to int8
  python benchmarks/flux_e2e.py --variants svdq2l_w8_regional,svdq2l_w8p_regional  # its producer-warp loop
  python benchmarks/flux_e2e.py --variants svdq2l_w8_np_regional,svdq2l_w8ps_regional  # persistent off / always
  python benchmarks/flux_e2e.py --variants svdq2l_np_regional,svdq2l_regional  # packed: not persistent / auto
  python benchmarks/flux_e2e.py --variants svdq2l_fo_regional  # packed weights in fragment order (set_fragment_order;
      the other svdq2l variants are in canonical order); svdq2l_fo_ep_*: and the epilogues fused (fuse_epilogues),
      i.e. what from_pretrained gives on a machine with a Hopper GPU
  python benchmarks/flux_e2e.py --variants svdq2l_regional,svdq2l_ts_regional  # the GEMM epilogue's TMA store
  python benchmarks/flux_e2e.py --variants fp8mm,fp8mm_regional  # fp8 rowwise in plain torch ops (_scaled_mm)
  python benchmarks/flux_e2e.py --variants bf16_regional_cg,svdq2l_fo_regional_cg  # _cg: the whole forward as one
      CUDA graph (captured once per input set, then replayed: no host time per kernel; any variant + "_cg");
      "_g": the same through svdquant_hf.enable_cuda_graphs (inputs copied into the graph's buffers, outputs cloned)
  python benchmarks/flux_e2e.py --variants svdq2l_fo_regional_cg,svdq2l_fo_ep_regional_cg  # _ep: GELU and the single
      blocks' concatenation in the GEMMs' epilogue, q/k/v (and proj_mlp) sharing one quantizer call
      (svdquant_hf.fuse_epilogues); _ep_ns: without that sharing; _nonr: without q/k's RMSNorm + RoPE as one op;
      _nr3: that op's previous kernel (version 3); _nogemv: a few tokens (AdaLN, M = batch) in the tile GEMM too;
      _ncat: single blocks' proj_out input written as a concatenation (proj_mlp after a copy of the attention) instead
      of quantized where its two parts lie; _nlsh: svdquant's LoRA layers quantize their input one by one instead of
      joining the shared quantizer call; _nrc: 1 / smooth by a launch per quantizer call (not cached); _nrbc: the
      register-fragment GEMM only where the plan is unsplit with two tiles per SM (set_gemm_2l_rf_by_cost(False), the
      rule before v2.23); _dcb: the quantizer's down
      projection by cuBLAS at every M (our few-token kernel at M <= 512 otherwise); _pdl: programmatic dependent
      launch (set_pdl: the GEMM, the few-token weight stream and the quantizer start under the previous kernel's tail);
      _r3: rf_cost's three-warpgroup stage refitted to v2.23's sweep (1100 / 1250 cycles); _nql: the per-row quantizer's
      plain form (set_quantize_act_2l_lean(False); the lean form is the default since v2.25); _ipdl (any variant, the peers too): Inductor's Triton kernels with
      programmatic dependent launch (torch._inductor.config.triton.enable_pdl)
  python benchmarks/flux_e2e.py --tiny --device cpu   # smoke test of the script itself
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from svdquant_hf.ops import set_trace_quantizer

FLUX_DEV = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
TINY = dict(FLUX_DEV, num_layers=1, num_single_layers=1, num_attention_heads=2, attention_head_dim=32,
            joint_attention_dim=128, pooled_projection_dim=64, axes_dims_rope=(8, 12, 12))
TXT_TOKENS = 512
# bf16, torchao fp8 and NF4 eager; bf16, fp8 and SVDQuant (int4_2l in fragment order with the epilogues fused: what
# from_pretrained gives on Hopper) compiled the way that
# works under torch 2.11 (regional; torchao's fp8 subclass does not compile, so its plain-torch peer fp8mm)
DEFAULT_VARIANTS = ("bf16", "bf16_regional", "fp8", "fp8mm_regional", "nf4", "svdq2l_fo_ep", "svdq2l_fo_ep_regional")
ALL_VARIANTS = (
    "bf16", "bf16_compile", "fp8", "fp8_compile", "nf4", "svdq", "svdq_compile", "svdq2l", "svdq2l_compile",
    "svdq2l_lora", "svdq2l_lora_compile", "svdq2l_lorafused_compile", "bf16_graphs", "svdq2l_graphs",
    "svdq2l_lora_graphs", "bf16_offload", "svdq2l_fused", "svdq2l_fused_compile", "svdq2l_fused_graphs",
    "bf16_regional", "fp8_regional", "svdq2l_regional", "svdq2l_lora_regional", "svdq2l_fused_regional",
    "svdq2l_tq_compile", "svdq2l_tq_regional", "svdq2l_w8_graphs", "svdq2l_w8_regional",
    "svdq2l_w8p_regional", "svdq2l_w8p_graphs", "svdq2l_ts_regional", "svdq2l_w8p_ts_regional",
    "svdq2l_fused_w8p_ts_regional", "fp8mm", "fp8mm_regional", "fp8mm_graphs",
    "svdq2l_w8ps_regional", "svdq2l_w8ps_graphs", "svdq2l_np_regional", "svdq2l_w8_np_regional",
    "svdq2l_fo_regional", "svdq2l_fo_lora_regional", "svdq2l_fo_q1r_regional",
    "bf16_regional_cg", "fp8mm_regional_cg", "svdq2l_fo_regional_cg", "svdq2l_fo_fused_regional_cg",
    "bf16_regional_g", "fp8mm_regional_g", "svdq2l_fo_regional_g",
    "svdq2l_fo_ep", "svdq2l_fo_ep_regional", "svdq2l_fo_ep_regional_cg", "svdq2l_fo_ep_fused_regional_cg",
    "svdq2l_fo_ep_lora_regional",
    "svdq2l_fo_ep_lora_regional_cg", "svdq2l_fo_lora_regional_cg", "svdq2l_fo_ep_lora_wlr_regional_cg",
    "svdq2l_fo_ep_lora_nowlr_regional_cg", "svdq2l_fo_ep_ns_regional_cg", "svdq2l_fo_ep_nonr_regional_cg",
    "svdq2l_fo_ep_nr3_regional_cg", "svdq2l_fo_ep_nogemv_regional_cg", "svdq2l_fo_ep_ncat_regional_cg",
    "svdq2l_fo_ep_lora_nlsh_regional_cg", "svdq2l_fo_ep_nrc_regional_cg", "svdq2l_fo_ep_nrbc_regional_cg",
    "svdq2l_fo_ep_dcb_regional_cg", "svdq2l_fo_ep_nrbc_dcb_regional_cg", "svdq2l_fo_ep_pdl_regional_cg",
    "svdq2l_fo_ep_r3_regional_cg", "svdq2l_fo_ep_nql_regional_cg", "svdq2l_fo_ep_pdl_nql_regional_cg",
    "svdq2l_fo_ep_ipdl_regional_cg", "svdq2l_fo_ep_m0_regional_cg", "svdq2l_fo_ep_m0_nql_regional_cg", "svdq2l_fo_ep_pdl_ipdl_regional_cg", "fp8mm_ipdl_regional_cg",
    "bf16_ipdl_regional_cg", "svdq2l_fo_ep_lead_regional_cg", "svdq2l_fo_ep_pipe_regional_cg",
    "svdq2l_fo_ep_turns_regional_cg",
    "svdq2l_fo_ep_pp_regional_cg", "svdq2l_fo_ep_1p_regional_cg", "svdq2l_fo_ep_lora_turns_regional_cg",
)


def build_model(config: dict, device: str, seed: int = 0, home: str | None = None) -> nn.Module:
    """Random-weight transformer; weights drawn on ``device`` and stored on ``home`` (default device)."""
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        model = FluxTransformer2DModel(**config)
    home = home or device
    nn.Module.to(model, dtype=torch.bfloat16)  # on meta: free, and skips diffusers' fp32-modules warning
    model = model.to_empty(device=home)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 0.02 if p.dim() > 1 else 0.01
            val = torch.randn(p.shape, generator=gen, device=device, dtype=torch.float32) * std
            if name.endswith("norm.weight") or "norm_q" in name or "norm_k" in name:
                val = val + 1.0
            p.copy_(val.to(torch.bfloat16))
        for _, b in model.named_buffers():
            if b.is_floating_point():
                b.zero_()
    return model.eval()


def make_inputs(config: dict, res: int, batch: int, device: str) -> dict:
    h = w = res // 16  # 8x VAE downsampling, then 2x2 patches packed into 64 channels
    n_img = h * w
    gen = torch.Generator(device=device).manual_seed(1)
    rnd = lambda *s: torch.randn(*s, generator=gen, device=device, dtype=torch.bfloat16)  # noqa: E731
    img_ids = torch.zeros(h, w, 3, device=device)
    img_ids[..., 1] = torch.arange(h, device=device)[:, None]
    img_ids[..., 2] = torch.arange(w, device=device)[None, :]
    return dict(
        hidden_states=rnd(batch, n_img, config["in_channels"]),
        encoder_hidden_states=rnd(batch, TXT_TOKENS if res >= 256 else 16, config["joint_attention_dim"]),
        pooled_projections=rnd(batch, config["pooled_projection_dim"]),
        timestep=torch.full((batch,), 0.5, device=device, dtype=torch.bfloat16),
        guidance=torch.full((batch,), 3.5, device=device, dtype=torch.bfloat16),
        img_ids=img_ids.reshape(n_img, 3),
        txt_ids=torch.zeros(TXT_TOKENS if res >= 256 else 16, 3, device=device),
        return_dict=False,
    )


def to_svdquant(model: nn.Module, work_device: str, quant_format: str = "int4", fused_qkv: bool = False) -> nn.Module:
    """Data-free SVDQuant of the layers the diffusers integration targets (its default skip list).

    fused_qkv: each attention's q/k/v (and add_q/k/v) quantized jointly at 3x the rank and run as one layer
    (svdquant_hf.fusion)."""
    from svdquant_hf import SVDQuantOptions, fuse_shared_input_projections, qkv_groups
    from svdquant_hf.quantize import default_group_rank, quantize_targets
    from svdquant_hf.quantizers.common import quantizable_linears

    options = SVDQuantOptions(quant_format=quant_format)
    targets = quantizable_linears(model, options)
    groups = qkv_groups(model, targets) if fused_qkv else []
    rank = default_group_rank(options, groups, {n: m.in_features for n, m in targets.items()}) if groups else None
    quantize_targets(model, targets, options, lambda _: None, torch.device(work_device), groups, rank, progress=False)
    if fused_qkv:
        fuse_shared_input_projections(model)
    return model


def add_random_lora(model: nn.Module, rank: int = 32, seed: int = 0) -> nn.Module:
    """A rank-``rank`` LoRA on every 4-bit linear, injected by PEFT as diffusers' load_lora_weights does
    (svdquant_hf's hooks fold it into the layers' low-rank branch)."""
    from peft import LoraConfig, inject_adapter_in_model

    from svdquant_hf import SVDQuantLinear
    from svdquant_hf.lora import refresh

    targets = [n for n, m in model.named_modules() if isinstance(m, SVDQuantLinear)]
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets), model, "bench")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "lora_A") and "bench" in m.lora_A:
                a, b = m.lora_A["bench"].weight, m.lora_B["bench"].weight
                a.copy_(torch.randn(a.shape, generator=gen) * a.shape[1] ** -0.5)
                b.copy_(torch.randn(b.shape, generator=gen) * 0.02)
    refresh(model)  # in-place writes outside PEFT's controls: rebuild the cached branches (lora.md)
    return model


def to_fp8(model: nn.Module) -> nn.Module:
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    return model


class Fp8RowwiseLinear(nn.Module):
    """torchao's ``Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())`` in plain torch ops: e4m3
    weights with one fp32 scale per output row (amax / 448), each call's activations cast per token the same
    way, ``torch._scaled_mm`` (fast accumulation, bias in its epilogue). Under torch.compile Inductor fuses
    the activation cast; the fp8 peer for torch versions where torchao's tensor subclass does not compile."""

    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        w = lin.weight.detach()
        q, s = _rowwise_e4m3(w)
        self.register_buffer("qweight", q)  # [N, K]; passed transposed: the column-major operand _scaled_mm wants
        self.register_buffer("wscale", s.t().contiguous())  # [1, N]
        self.bias = None if lin.bias is None else nn.Parameter(lin.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        xq, xs = _rowwise_e4m3(x2)
        y = torch._scaled_mm(xq, self.qweight.t(), scale_a=xs, scale_b=self.wscale, bias=self.bias,
                             out_dtype=x.dtype, use_fast_accum=True)
        return y.reshape(*x.shape[:-1], y.shape[-1])


def _rowwise_e4m3(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = t.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / 448.0
    return (t.float() / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn), scale


def to_fp8_scaled_mm(model: nn.Module) -> nn.Module:
    for mod in list(model.modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, nn.Linear) and child.in_features % 16 == 0 and child.out_features % 16 == 0:
                setattr(mod, cname, Fp8RowwiseLinear(child))
    return model


def to_nf4(model: nn.Module) -> nn.Module:
    import bitsandbytes as bnb

    for name, mod in list(model.named_modules()):
        for cname, child in list(mod.named_children()):
            if isinstance(child, nn.Linear):
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, child.bias is not None,
                                      compute_dtype=torch.bfloat16, quant_type="nf4", device="meta")
                q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4")
                if child.bias is not None:
                    q.bias = nn.Parameter(child.bias.data, requires_grad=False)
                setattr(mod, cname, q.to(child.weight.device))
    return model


def _storage_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors holding ``t``'s data: a wrapper subclass (torchao's Float8Tensor, bitsandbytes'
    Params4bit is plain) owns no storage itself, its inner tensors (``__tensor_flatten__``) do."""
    if type(t) not in (torch.Tensor, nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return [u for n in names for u in _storage_tensors(getattr(t, n))]
    return [t]


def state_bytes(model: nn.Module, device: str | None = None) -> int:
    """Bytes of the model's parameters and buffers (on ``device``'s type only, when given)."""
    seen, total = set(), 0
    for p in list(model.parameters()) + list(model.buffers()):
        for t in _storage_tensors(p):
            if t.device.type == "meta" or (device and t.device.type != device) or (t.device, t.data_ptr()) in seen:
                continue
            seen.add((t.device, t.data_ptr()))
            total += t.numel() * t.element_size()
    return total


def time_forward(
    model: nn.Module, inputs: dict, warmup: int, iters: int, device: str, loop: bool = False
) -> tuple[float, float]:
    """(ms per forward, first-call seconds incl. compile). Default: the median of ``iters`` forwards each
    timed alone (host time before the first kernel included). ``loop``: ``iters`` forwards back to back
    and one sync, as a denoising loop runs them (the host prepares a forward while the GPU runs the last)."""
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(**inputs)
        if device == "cuda":
            torch.cuda.synchronize()
        first = time.perf_counter() - t0
        for _ in range(warmup):
            model(**inputs)
        if loop:
            t = time.perf_counter()
            if device == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
            for _ in range(iters):
                model(**inputs)
            if device == "cuda":
                b.record()
                torch.cuda.synchronize()
                return a.elapsed_time(b) / iters, first
            return (time.perf_counter() - t) * 1e3 / iters, first
        times = []
        for _ in range(iters):
            if device == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                model(**inputs)
                b.record()
                torch.cuda.synchronize()
                times.append(a.elapsed_time(b))
            else:
                t = time.perf_counter()
                model(**inputs)
                times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), first


# kernel-name substrings -> category, first match wins: Inductor's kernels first (it names a fused kernel after
# the ops it feeds, e.g. triton_poi_fused_gelu_quantize_act_2l_3), then ours (their names also contain "gemm")
KERNEL_CATEGORIES = (
    ("triton", "triton (inductor)"), ("w4a4_gemm_2l", "svdq gemm 2l"), ("gemv_2l", "svdq gemm 2l"),
    ("quantize_act_2l", "svdq quantize 2l"), ("w4a4_gemm", "svdq gemm int4"),
    ("quantize_act", "svdq quantize int4"), ("flash", "attention"), ("fmha", "attention"),
    ("attention", "attention"), ("gemm", "cublas/cutlass gemm"),
    ("nvjet", "cublas/cutlass gemm"), ("xmma", "cublas/cutlass gemm"), ("cutlass", "cublas/cutlass gemm"),
)


def kernel_breakdown(kernels: list[tuple[str, float, float, float]], top: int = 12) -> dict:
    """From (name, duration us, start us, end us) per kernel of one forward: busy ms (sum of durations), span ms
    (first start to last end: busy < span means the GPU waited, busy > span means streams overlapped), ms per
    category (KERNEL_CATEGORIES, else "other"), and the ``top`` kernel names by total time."""
    cats: dict[str, float] = {}
    names: dict[str, list[float]] = {}
    for name, dur, _, _ in kernels:
        cat = next((c for key, c in KERNEL_CATEGORIES if key in name), "other")
        cats[cat] = cats.get(cat, 0.0) + dur / 1e3
        names.setdefault(name, []).append(dur)
    span = (max(k[3] for k in kernels) - min(k[2] for k in kernels)) / 1e3 if kernels else 0.0
    ranked = sorted(names.items(), key=lambda kv: -sum(kv[1]))[:top]
    return {"busy_ms": sum(k[1] for k in kernels) / 1e3, "span_ms": span,
            "categories_ms": dict(sorted(cats.items(), key=lambda kv: -kv[1])),
            "top_kernels": [{"name": n[:120], "ms": sum(d) / 1e3, "count": len(d)} for n, d in ranked]}


def gpu_profile(model: nn.Module, inputs: dict) -> dict:
    """kernel_breakdown of one forward (torch.profiler): busy is the latency if the host never kept the GPU waiting."""
    with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        model(**inputs)
        torch.cuda.synchronize()
    kernels = []
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            span = getattr(e, "time_range", None)  # kernel start / end on the profiler's clock (us)
            kernels.append((e.name, e.device_time, span.start if span else 0.0, span.end if span else 0.0))
    return kernel_breakdown(kernels) | {"sequence": sorted(kernels, key=lambda k: k[2])}


def write_kernel_seq(path: Path, kernels: list[tuple[str, float, float, float]]) -> None:
    """One line per kernel in start order: start (us from the first), duration (us), name (200 characters)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = kernels[0][2] if kernels else 0.0
    path.write_text("".join(f"{k[2] - t0:.1f}\t{k[1]:.1f}\t{k[0][:200]}\n" for k in kernels))


def set_kernel_switches(name: str) -> None:
    """The int4_2l GEMMs' global switches from the variant's name: _w8p the int8-weight GEMM's producer-warpgroup
    loop (non-persistent), _w8ps the persistent kernels wherever they apply (set_gemm_2l_persistent(1); it contains
    _w8p: the producer loop where they do not), _np never (0), otherwise auto (-1, the default; see
    problems_2l.gemm_switches),
    _ts the epilogue's TMA store (off otherwise); _q1r the per-row quantizer at one CTA per row (the kernel before
    v2.17; persistent CTAs otherwise); _nr3 rms_norm_rope's version-3 kernel; _nogemv the tile GEMM at every M (the
    few-token kernel where measured faster otherwise); _nrc 1 / smooth computed by a launch per quantizer call (cached
    per smoothing factor otherwise); _nrbc the register-fragment GEMM only where the plan is unsplit with two tiles per SM
    (set_gemm_2l_rf_by_cost(False); wherever its cost models say otherwise, the default since v2.23); _dcb the quantizer's down projection by cuBLAS at every M (our few-token kernel at M <= 512 otherwise);
    _pdl programmatic dependent launch (set_pdl; off otherwise); _r3 rf_cost's three-warpgroup stage refitted (1100 /
    1250 cycles, set_gemm_2l_rf3_stage; the model's otherwise); _m0 the three-warpgroup choice of v2.24
    (set_gemm_2l_rf3_model(0); v2.25's otherwise); _nql the per-row quantizer's plain form
    (set_quantize_act_2l_lean(False); its lean form otherwise, the default since v2.25); _qc24 the quantizer and its
    down projection in row chunks of ~24 MB of x (set_quantize_act_2l_chunk_bytes; whole otherwise); _nowlr branch
    ranks 33-64 (a LoRA) in the non-persistent kernels (the default before v2.20; the register-fragment loop with a
    64-wide low-rank tile otherwise); _lead the register-fragment loop's leading turns at 224-token tiles
    (set_gemm_2l_rf_lead; named-barrier turns otherwise); _turns the register-fragment loop's warpgroups taking turns by
    named barriers (set_gemm_2l_rf_pipelined(False): the default before v2.32; pipelined within each warpgroup
    otherwise; _pipe, the same as the default since, is kept as a name); _pp the GEMM's consumer warpgroups in ping-pong
    over 128 x 128 tiles wherever that kernel takes the layer and it has two tiles per SM (set_gemm_2l_rf_pingpong(2);
    off otherwise); _1p the GEMM's 256- and 192-token tiles on three stages, their output staged in one piece
    (set_gemm_2l_out_pieces(tile, 1): before v2.35's g.50 and v2.36's g.51; in halves, four stages, otherwise)."""
    from svdquant_hf.ops import build

    ext = build.load_extension() if torch.cuda.is_available() else None
    if ext is not None and hasattr(ext, "set_gemm_2l_persistent"):
        ext.set_gemm_2l_w8_producer("_w8p" in name)
        ext.set_gemm_2l_persistent(1 if "_w8ps" in name else 0 if "_np" in name else -1)
        ext.set_gemm_2l_tma_store("_ts" in name)
    if ext is not None and hasattr(ext, "set_gemm_2l_rf_wide_lr"):
        ext.set_gemm_2l_rf_wide_lr("_nowlr" not in name)
    if ext is not None and hasattr(ext, "set_quantize_act_2l_persistent"):
        ext.set_quantize_act_2l_persistent(0 if "_q1r" in name else 1, 0)
    if ext is not None and hasattr(ext, "set_rms_norm_rope_version"):
        ext.set_rms_norm_rope_version(3 if "_nr3" in name else 4)
    if ext is not None and hasattr(ext, "set_gemv_2l_mode"):
        ext.set_gemv_2l_mode(0 if "_nogemv" in name else -1)
    if ext is not None and hasattr(ext, "set_smooth_rcp_cache"):
        ext.set_smooth_rcp_cache("_nrc" not in name)
    if ext is not None and hasattr(ext, "set_gemm_2l_rf_by_cost"):
        ext.set_gemm_2l_rf_by_cost("_nrbc" not in name)
    if ext is not None and hasattr(ext, "set_lowrank_down_max_tokens"):
        ext.set_lowrank_down_max_tokens(0 if "_dcb" in name else -1)
    if ext is not None and hasattr(ext, "set_pdl"):
        ext.set_pdl("_pdl" in name)
    if ext is not None and hasattr(ext, "set_gemm_2l_rf3_stage"):
        ext.set_gemm_2l_rf3_stage(*((1100, 1250) if "_r3" in name else (0, 0)))
    if ext is not None and hasattr(ext, "set_gemm_2l_rf3_model"):
        ext.set_gemm_2l_rf3_model(0 if "_m0" in name else 1)
    if ext is not None and hasattr(ext, "set_quantize_act_2l_lean"):
        ext.set_quantize_act_2l_lean("_nql" not in name)
    if ext is not None and hasattr(ext, "set_quantize_act_2l_chunk_bytes"):
        ext.set_quantize_act_2l_chunk_bytes(24 << 20 if "_qc24" in name else 0)
    if ext is not None and hasattr(ext, "set_gemm_2l_rf_lead"):
        ext.set_gemm_2l_rf_lead("_lead" in name)
    if ext is not None and hasattr(ext, "set_gemm_2l_rf_pipelined"):
        ext.set_gemm_2l_rf_pipelined("_turns" not in name)
    if ext is not None and hasattr(ext, "set_gemm_2l_rf_pingpong"):
        ext.set_gemm_2l_rf_pingpong(2 if "_pp_" in name or name.endswith("_pp") else 0)
    if ext is not None and hasattr(ext, "set_gemm_2l_out_pieces"):
        for tile in (256, 192):
            ext.set_gemm_2l_out_pieces(tile, 1 if "_1p" in name else 2)


class GraphedForward(nn.Module):
    """The wrapped model's whole forward as one CUDA graph: captured at the first call with a set of inputs (after
    two warm-up calls on a side stream: compilation, cuBLAS workspaces), replayed for later calls with the same
    tensors, so no host work per kernel (what a server with fixed shapes can do). Returns the captured outputs,
    which the next replay overwrites."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, object]] = {}

    def forward(self, **inputs):
        key = tuple((k, (v.data_ptr(), tuple(v.shape)) if isinstance(v, torch.Tensor) else v)
                    for k, v in sorted(inputs.items()))
        if key not in self._graphs:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.inner(**inputs)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.inner(**inputs)
            self._graphs[key] = (graph, out)
        graph, out = self._graphs[key]
        graph.replay()
        return out


def set_inductor_pdl(on: bool) -> bool:
    """_ipdl: Inductor's Triton kernels generated and launched with programmatic dependent launch (torch's
    ``_inductor.config.triton.enable_pdl``, read when a graph is compiled; sm_90+). Returns whether torch has it."""
    triton_cfg = getattr(torch._inductor.config, "triton", None)
    if triton_cfg is None or not hasattr(triton_cfg, "enable_pdl"):
        return False
    triton_cfg.enable_pdl = on
    return True


def build_variant(name: str, config: dict, device: str, cap: bool) -> nn.Module:
    if name.endswith("_cg"):
        if device != "cuda":
            raise RuntimeError(f"{name}: CUDA graphs need a CUDA device")
        return GraphedForward(build_variant(name[: -len("_cg")], config, device, cap))
    if name.endswith("_g"):  # the library's helper: inputs copied into the graph's buffers, outputs cloned
        from svdquant_hf import enable_cuda_graphs

        return enable_cuda_graphs(build_variant(name[: -len("_g")], config, device, cap))
    if name == "bf16_offload":
        model = build_model(config, device, home="cpu")
        model.enable_group_offload(torch.device(device), offload_device=torch.device("cpu"),
                                   offload_type="block_level", num_blocks_per_group=1, use_stream=True)
        return model
    if name.startswith("svdq"):
        # stream: 16-bit weights stay on the host when memory is capped; one layer at a time on the GPU
        model = build_model(config, device, home="cpu" if cap else device)
        model = to_svdquant(model, device, "int4_2l" if name.startswith("svdq2l") else "int4", "_fused" in name)
        model = model.to(device)
        if "_w8" in name:  # weights widened once to int8 (the GEMM without widening), packed ones on the host
            from svdquant_hf import set_int8_weights

            set_int8_weights(model, packed_on_host=True)
        if "_fo" in name:  # the packed weights in the GEMM's fragment order on the GPU, the canonical ones on the host
            from svdquant_hf import set_fragment_order

            set_fragment_order(model)
        set_kernel_switches(name)
        if "_lora" in name:
            model = add_random_lora(model)
        if "_lorafused" in name:  # fuse_lora(): the adapters become the layers' own branch
            for m in model.modules():
                if hasattr(m, "merge") and hasattr(m, "lora_A"):
                    m.merge()
        if "_ep" in name:  # GELU (and single blocks' concatenation) in the GEMMs' epilogue (fuse_epilogues)
            from svdquant_hf import fuse_epilogues

            # _ns: q/k/v (and proj_mlp) quantize one by one; _nonr: q/k's RMSNorm and RoPE by the usual modules
            fuse_epilogues(model, share_inputs="_ns" not in name, norm_rope="_nonr" not in name,
                           cat_in_place="_ncat" not in name, share_lora="_nlsh" not in name)
    elif name.startswith("fp8mm"):
        model = to_fp8_scaled_mm(build_model(config, device))
    elif name.startswith("fp8"):
        model = to_fp8(build_model(config, device))
    elif name == "nf4":
        model = to_nf4(build_model(config, device, home="cpu" if cap else device)).to(device)
    else:
        model = build_model(config, device)
    if name.endswith("_compile"):
        model = torch.compile(model)
    elif name.endswith("_graphs"):  # compiled and replayed as CUDA graphs: no host cost per kernel
        model = torch.compile(model, mode="reduce-overhead")
    elif name.endswith("_regional"):  # diffusers' regional compilation: one graph per block class, reused
        model.compile_repeated_blocks(fullgraph=True)
    return model


def plot(results: list[dict], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    keys = sorted({(r["res"], r["batch"]) for r in results if r.get("ms")})
    variants = [v for v in ALL_VARIANTS if any(r["variant"] == v and r.get("ms") for r in results)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    width = 0.8 / max(len(variants), 1)
    for i, v in enumerate(variants):
        ms = [next((r["ms"] for r in results if r["variant"] == v and (r["res"], r["batch"]) == k), 0) for k in keys]
        mem = [next((r.get("peak_gib", 0) for r in results if r["variant"] == v and (r["res"], r["batch"]) == k), 0)
               for k in keys]  # no peak memory on CPU
        xs = [j + i * width for j in range(len(keys))]
        axes[0].bar(xs, ms, width, label=v)
        axes[1].bar(xs, mem, width, label=v)
    for ax, title in zip(axes, ("ms per transformer forward", "peak GiB")):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(keys))])
        ax.set_xticklabels([f"{r}px b{b}" for r, b in keys])
        ax.set_title(title)
    axes[0].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=min(len(variants), 4))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    ap.add_argument("--res", default="1024,512")
    ap.add_argument("--batch", default="1,4")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--memory-cap-gib", type=float, default=None)
    ap.add_argument("--tiny", action="store_true", help="a 2-block model with small widths (smoke test)")
    ap.add_argument("--out", default=None, help="JSON path (a PNG chart is written beside it)")
    ap.add_argument("--loop", action="store_true",
                    help="time the forwards back to back with one sync, as a denoising loop runs them (default: "
                         "each forward timed alone, its host time before the first kernel included)")
    ap.add_argument("--loop-too", action="store_true",
                    help="each forward timed alone (ms) and back to back (loop_ms) from the same model: one build")
    ap.add_argument("--profile", action="store_true",
                    help="also the summed kernel time of one forward (torch.profiler): how far eager is host-bound")
    ap.add_argument("--kernel-seq", default=None, metavar="DIR",
                    help="with --profile: each variant's kernels in launch order (start us, duration us, name) "
                         "as DIR/<variant>_<res>_b<batch>.tsv")
    args = ap.parse_args(argv)
    config = TINY if args.tiny else FLUX_DEV
    dev = args.device
    cap = args.memory_cap_gib is not None
    if cap and dev == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_cap_gib * 2**30 / total))
    results: list[dict] = []
    gpu = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    for variant in args.variants.split(","):
        row_base = dict(variant=variant, device=gpu, cap_gib=args.memory_cap_gib, timing="loop" if args.loop else "each")
        set_trace_quantizer("_tq" in variant)  # read when the compiled graph is traced (first call)
        set_inductor_pdl("_ipdl" in variant)  # read when it is compiled
        # each variant compiles from scratch: dynamo's cache is per code object, so the blocks' forward would
        # otherwise carry the previous variants' graphs (a guard failure per variant and shape) to the limit
        torch._dynamo.reset()
        try:
            model = build_variant(variant, config, dev, cap)
        except Exception as e:  # a missing peer library, or out of memory under the cap
            results.append(dict(row_base, error=f"{type(e).__name__}: {e}"[:300]))
            print(f"{variant}: build failed: {results[-1]['error']}", flush=True)
            continue
        wbytes = state_bytes(model, dev)  # on the GPU: set_int8_weights may park the packed weights on the host
        for res in [int(r) for r in args.res.split(",")]:
            for batch in [int(b) for b in args.batch.split(",")]:
                row = dict(row_base, res=res, batch=batch, weight_gib=wbytes / 2**30)
                try:
                    inputs = make_inputs(config, res, batch, dev)
                    if dev == "cuda":
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                    ms, first = time_forward(model, inputs, args.warmup, args.iters, dev, args.loop)
                    row.update(ms=ms, first_call_s=first)
                    if args.loop_too and not args.loop:
                        row["loop_ms"] = time_forward(model, inputs, 0, args.iters, dev, loop=True)[0]
                    if dev == "cuda":
                        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
                        if args.profile:
                            prof = gpu_profile(model, inputs)
                            seq = prof.pop("sequence")
                            if args.kernel_seq:
                                write_kernel_seq(Path(args.kernel_seq) / f"{variant}_{res}_b{batch}.tsv", seq)
                            row.update(gpu_busy_ms=prof["busy_ms"], gpu_span_ms=prof["span_ms"], kernels=prof)
                except Exception as e:
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                results.append(row)
                print(json.dumps(row), flush=True)
                del inputs
        del model
        set_trace_quantizer(False)
        set_inductor_pdl(False)
        gc.collect()
        if dev == "cuda":
            torch.cuda.empty_cache()
    base = {(r["res"], r["batch"]): r["ms"] for r in results if r["variant"] == "bf16" and r.get("ms")}
    print(f"\n{'variant':14s} {'res':>5s} {'b':>2s} {'ms':>9s} {'x bf16':>7s} {'peak GiB':>9s} {'weights GiB':>11s} "
          f"{'GPU busy ms':>11s} {'loop ms':>8s}")
    for r in results:
        if not r.get("ms"):
            print(f"{r['variant']:14s} error: {r.get('error', '')[:80]}")
            continue
        ratio = r["ms"] / base[(r["res"], r["batch"])] if (r["res"], r["batch"]) in base else float("nan")
        print(f"{r['variant']:14s} {r['res']:5d} {r['batch']:2d} {r['ms']:9.2f} {ratio:7.3f} "
              f"{r.get('peak_gib', float('nan')):9.2f} {r['weight_gib']:11.2f} "
              f"{r.get('gpu_busy_ms', float('nan')):11.1f} {r.get('loop_ms', float('nan')):8.2f}")
    for r in results:  # --profile: where each forward's GPU time went
        if "kernels" in r:
            cats = ", ".join(f"{c} {ms:.1f}" for c, ms in r["kernels"]["categories_ms"].items())
            print(f"{r['variant']} {r['res']} b{r['batch']}: span {r['kernels']['span_ms']:.1f} ms, busy "
                  f"{r['kernels']['busy_ms']:.1f} | {cats}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
        plot(results, args.out.rsplit(".", 1)[0] + ".png")
    return results


if __name__ == "__main__":
    main()

"""BFL-layout Flux LoRAs (fal Kontext, BFL Control LoRA) on an SVDQuant-quantized Flux transformer.

diffusers converts these two formats with FLUX.1's block counts hard-coded (19 double, 38 single
blocks), so the model here has the real depth but a tiny width (2 heads x 32). The converters also
split ``single_blocks.i.linear1``'s lora_B with FLUX.1's widths (3072 x 3 + 12288); ``tiny_width_split``
maps that one split to this model's widths, everything else is diffusers' own code.

Each test loads the same LoRA through ``pipe.load_lora_weights`` into the 16-bit and the quantized
transformer and checks that it rides on the 4-bit layers' low-rank branch, that the quantized+LoRA
output is as close to the 16-bit+LoRA output as the quantized model is to the 16-bit one, and that
unloading gives back the quantized model's outputs bit for bit.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from svdquant_hf import SVDQuantLinear
from svdquant_hf import testing as T
from svdquant_hf.lora import testing as LT

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")
from diffusers.loaders import lora_conversion_utils  # noqa: E402

from svdquant_hf.lora.layer import SVDQuantLoraLinear  # noqa: E402
from test_lora import bare_pipeline, quantize, rel  # noqa: E402  (shared LoRA test helpers)

HEADS, HEAD_DIM = 2, 32
D = HEADS * HEAD_DIM
IN_CHANNELS = 16
BASE_RANK = 32  # SVDQuantConfig() default
FLUX1_LINEAR1_SPLIT = (3072, 3072, 3072, 12288)


def tiny_wide_flux(seed: int = 0) -> nn.Module:
    """FLUX.1's depth (19 double + 38 single blocks) at width 64: what the BFL converters expect."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=IN_CHANNELS, num_layers=19, num_single_layers=38, attention_head_dim=HEAD_DIM,
        num_attention_heads=HEADS, joint_attention_dim=64, pooled_projection_dim=64, guidance_embeds=False,
        axes_dims_rope=(8, 12, 12),
    ).eval()


def run(pipe, inputs, **kw) -> torch.Tensor:
    with torch.no_grad():
        return pipe.transformer(**inputs, **kw)[0]


class _TorchWithTinySplit:
    """``torch`` as seen by diffusers' converters, with FLUX.1's linear1 split mapped to width D."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def split(tensor, split_size_or_sections, dim=0):
        if isinstance(split_size_or_sections, (tuple, list)) and tuple(split_size_or_sections) == FLUX1_LINEAR1_SPLIT:
            split_size_or_sections = (D, D, D, 4 * D)
        return torch.split(tensor, split_size_or_sections, dim=dim)


@pytest.fixture
def tiny_width_split(monkeypatch):
    monkeypatch.setattr(lora_conversion_utils, "torch", _TorchWithTinySplit())


# ---- the two formats -----------------------------------------------------------------------------
def _pair(g, rank, fan_in, fan_out, strength):
    a = torch.randn(rank, fan_in, generator=g) / fan_in**0.5
    b = torch.randn(fan_out, rank, generator=g) * (strength / rank**0.5)
    return a, b


def fal_kontext_lora(model, rank=4, seed=0, strength=0.05) -> dict[str, torch.Tensor]:
    """fal's Kontext trainer layout: PEFT keys on BFL module names under ``base_model.model.``."""
    g = torch.Generator().manual_seed(seed)
    layers = dict(LT.flux_bfl_layers(model))
    layers["final_layer.linear"] = (D, IN_CHANNELS)
    sd = {}
    for name, (k, n) in layers.items():
        a, b = _pair(g, rank, k, n, strength)
        sd[f"base_model.model.{name}.lora_A.weight"], sd[f"base_model.model.{name}.lora_B.weight"] = a, b
    return sd


def bfl_control_lora(model, rank=4, seed=0, strength=0.05, norm_jitter=0.05) -> dict[str, torch.Tensor]:
    """BFL's FLUX.1 Canny/Depth LoRA layout: LoRA on every linear (img_in with doubled input channels
    for the control latents) plus full qk-norm scales (``...query_norm.scale``)."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    layers = dict(LT.flux_bfl_layers(model))
    layers.update({
        "time_in.in_layer": (256, D),
        "time_in.out_layer": (D, D),
        "vector_in.in_layer": (cfg.pooled_projection_dim, D),
        "vector_in.out_layer": (D, D),
        "txt_in": (cfg.joint_attention_dim, D),
        "img_in": (2 * IN_CHANNELS, D),  # control: the condition latents are concatenated on channels
        "final_layer.linear": (D, IN_CHANNELS),
        "final_layer.adaLN_modulation.1": (D, 2 * D),
    })
    sd = {}
    for name, (k, n) in layers.items():
        a, b = _pair(g, rank, k, n, strength)
        sd[f"{name}.lora_A.weight"], sd[f"{name}.lora_B.weight"] = a, b

    def scale():
        return 1.0 + norm_jitter * torch.randn(HEAD_DIM, generator=g)

    for i in range(cfg.num_layers):
        for s in ("img", "txt"):
            for norm in ("query_norm", "key_norm"):
                sd[f"double_blocks.{i}.{s}_attn.norm.{norm}.scale"] = scale()
    for i in range(cfg.num_single_layers):
        for norm in ("query_norm", "key_norm"):
            sd[f"single_blocks.{i}.norm.{norm}.scale"] = scale()
    return sd


# ---- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    ref = tiny_wide_flux(0)
    q = quantize(copy.deepcopy(ref))
    inputs = T.model_inputs(ref, seed=5, batch=1)
    g = torch.Generator().manual_seed(6)
    control_inputs = dict(inputs)
    control_inputs["hidden_states"] = torch.cat(
        [inputs["hidden_states"], torch.randn(inputs["hidden_states"].shape, generator=g)], dim=-1
    )
    return ref, q, inputs, control_inputs


@pytest.fixture
def pair(models):
    ref, q, inputs, control_inputs = models
    return bare_pipeline(copy.deepcopy(ref)), bare_pipeline(copy.deepcopy(q)), inputs, control_inputs


def separate_branch_forward(self, x, *args, **kwargs):
    """The unfused LoRA (an extra fp32 matmul per layer): what folding must reproduce."""
    y = self.base_layer(x)
    for name in self.active_adapters:
        a, b = self.lora_A[name].weight.float(), self.lora_B[name].weight.float()
        y = y + ((x.float() @ a.t()) @ b.t() * self.scaling[name]).to(y.dtype)
    return y


def count_branch_launches(monkeypatch):
    from svdquant_hf.ops import library

    calls: list[int] = []
    real = library.quantize_act

    def counting(x, smooth, proj_down, group_size):
        calls.append(proj_down.shape[1])
        return real(x, smooth, proj_down, group_size)

    monkeypatch.setattr(library, "quantize_act", counting)
    return calls


def n_quantized(pipe) -> int:
    return sum(isinstance(m, SVDQuantLinear) for m in pipe.transformer.modules())


def check_folded(q, inputs, n_launches, calls, monkeypatch) -> float:
    """Every 4-bit layer carries the LoRA on its branch (rank 32 -> 48), with no extra matmul."""
    wrapped = [m for m in q.transformer.modules() if isinstance(m, SVDQuantLoraLinear)]
    assert wrapped, "no quantized layer received the LoRA"
    for m in wrapped:
        assert m.get_base_layer().proj_down.shape[1] == BASE_RANK  # the base branch is untouched
        assert m.branch_rank() == BASE_RANK + 16  # rank-4 LoRA padded to one granule
    lora_calls: list[int] = []
    for m in wrapped:
        for lin in m.lora_A.values():
            lin.register_forward_hook(lambda *a: lora_calls.append(1))
    calls.clear()
    y = run(q, inputs)
    assert len(calls) == n_launches and set(calls) == {BASE_RANK + 16}  # same launches, extended rank
    assert lora_calls == []  # the LoRA matrices never run as separate matmuls
    with monkeypatch.context() as mp:
        mp.setattr(SVDQuantLoraLinear, "forward", separate_branch_forward)
        return rel(y, run(q, inputs))


# ---- tests ---------------------------------------------------------------------------------------
def test_fal_kontext_lora(pair, tiny_width_split, monkeypatch):
    ref, q, inputs, _ = pair
    calls = count_branch_launches(monkeypatch)
    y_ref, y0 = run(ref, inputs), run(q, inputs)
    n_launches = len(calls)
    assert n_launches > 0 and set(calls) == {BASE_RANK}
    err_base = rel(y0, y_ref)

    lora = fal_kontext_lora(ref.transformer, rank=4, seed=11, strength=0.1)
    ref.load_lora_weights(dict(lora), adapter_name="kontext")
    q.load_lora_weights(dict(lora), adapter_name="kontext")
    n_wrapped = sum(isinstance(m, SVDQuantLoraLinear) for m in q.transformer.modules())
    assert n_wrapped == n_quantized(q) == 19 * 14 + 38 * 6  # every 4-bit layer, both block kinds

    y_ref_l = run(ref, inputs)
    fold_err = check_folded(q, inputs, n_launches, calls, monkeypatch)
    y_q_l = run(q, inputs)
    effect, err_lora = rel(y_ref_l, y_ref), rel(y_q_l, y_ref_l)
    print(f"fal-kontext: lora effect {effect:.4f}, quant err alone {err_base:.4f}, quant+lora err {err_lora:.4f}, "
          f"folded vs separate LoRA matmul {fold_err:.5f}")
    assert effect > 3 * err_base  # the LoRA visibly changes the output
    assert err_lora < 2 * err_base  # the LoRA'd model quantizes about as well as the base
    # folding costs only the bf16 rounding of the branch (the separate fp32 LoRA matmul adds in fp32);
    # through 57 blocks that stays well below the 4-bit error (about 0.45x here, 0.1-0.3x in test_lora.py)
    assert fold_err < 0.75 * err_base

    q.unload_lora_weights()
    assert not any(isinstance(m, SVDQuantLoraLinear) for m in q.transformer.modules())
    assert torch.equal(run(q, inputs), y0)


def test_bfl_control_lora(pair, tiny_width_split, monkeypatch):
    ref, q, inputs, control_inputs = pair
    calls = count_branch_launches(monkeypatch)
    y_ref, y0 = run(ref, inputs), run(q, inputs)
    n_launches = len(calls)
    err_base = rel(y0, y_ref)

    lora = bfl_control_lora(ref.transformer, rank=4, seed=21, strength=0.05)
    ref.load_lora_weights(dict(lora), adapter_name="control")
    q.load_lora_weights(dict(lora), adapter_name="control")
    for p in (ref, q):  # x_embedder (16-bit in both) now takes the condition latents too
        assert p.transformer.config.in_channels == 2 * IN_CHANNELS
        assert p.transformer.x_embedder.get_base_layer().in_features == 2 * IN_CHANNELS
    assert not isinstance(q.transformer.x_embedder, SVDQuantLoraLinear)
    norm_q = q.transformer.transformer_blocks[0].attn.norm_q.weight
    assert torch.equal(norm_q, lora["double_blocks.0.img_attn.norm.query_norm.scale"].to(norm_q.dtype))
    n_wrapped = sum(isinstance(m, SVDQuantLoraLinear) for m in q.transformer.modules())
    assert n_wrapped == n_quantized(q) == 19 * 14 + 38 * 6

    # the quantization error of the model alone, with the control LoRA's non-LoRA changes (norms,
    # expanded x_embedder) in place: LoRA strength 0 on both
    for p in (ref, q):
        p.set_adapters(["control"], [0.0])
    err_base_ctrl = rel(run(q, control_inputs), run(ref, control_inputs))
    for p in (ref, q):
        p.set_adapters(["control"], [1.0])

    y_ref_l = run(ref, control_inputs)
    fold_err = check_folded(q, control_inputs, n_launches, calls, monkeypatch)
    y_q_l = run(q, control_inputs)
    effect, err_lora = rel(y_ref_l, run(ref, control_inputs, joint_attention_kwargs={"scale": 0.0})), rel(y_q_l, y_ref_l)
    print(f"bfl-control: lora effect {effect:.4f}, quant err alone {err_base:.4f} "
          f"(with control norms/x_embedder {err_base_ctrl:.4f}), quant+lora err {err_lora:.4f}, "
          f"folded vs separate LoRA matmul {fold_err:.5f}")
    assert effect > 3 * err_base
    assert err_lora < 2 * max(err_base, err_base_ctrl)
    assert fold_err < 0.75 * err_base  # bf16 rounding of the folded branch only (see above)

    q.unload_lora_weights(reset_to_overwritten_params=True)
    assert not any(isinstance(m, SVDQuantLoraLinear) for m in q.transformer.modules())
    assert q.transformer.config.in_channels == IN_CHANNELS
    assert type(q.transformer.x_embedder) is nn.Linear and q.transformer.x_embedder.in_features == IN_CHANNELS
    assert torch.equal(run(q, inputs), y0)

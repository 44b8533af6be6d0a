"""LoRA on SVDQuant models of other families (SD3, SDXL UNet, SANA, FLUX.2, Wan, Qwen-Image, Z-Image, Chroma,
HunyuanVideo, LTX-Video, CogView4, Lumina 2, HiDream, CogVideoX, Mochi, AuraFlow, SANA-Video; PixArt through PEFT
directly)."""
from __future__ import annotations

import copy

import pytest
import torch

from svdquant_hf import SVDQuantConfig
from svdquant_hf import testing as T
from svdquant_hf.lora import testing as LT
from svdquant_hf.quantize import quantize_linear, set_submodule
from svdquant_hf.quantizers.common import quantizable_linears

pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")
from svdquant_hf.lora.layer import SVDQuantLoraLinear  # noqa: E402


def quantize(model, only: str = ""):
    """Quantize the quantizable linears whose name contains ``only`` (keeps the CPU tests short)."""
    opts = SVDQuantConfig()
    for name, lin in quantizable_linears(model, opts).items():
        if only in name:
            set_submodule(model, name, quantize_linear(lin, opts, name))
    return model


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


# family: (the layers quantized, by a name part: keeps the CPU tests short; the LoRA's targets, by name parts)
LORA_CASES = {
    "sd3": ("", ("attn", "ff", "proj")),
    "sdxl": ("attn", ("attn", "ff", "proj")),
    "sana": ("attn", ("attn", "ff", "proj")),
    "flux2": ("", ("attn", "ff", "proj")),
    "wan": ("attn", ("attn", "ff", "proj")),
    "qwenimage": ("", ("attn", "mlp", "mod")),
    "zimage": ("", ("attention", "feed_forward", "adaLN")),
    "chroma": ("", ("attn", "ff")),
    "hunyuanvideo": ("", ("attn", "ff", "proj", "norm")),
    "ltxvideo": ("", ("attn", "ff")),
    "cogview4": ("", ("attn", "ff", "norm1")),
    "lumina2": ("", ("attn", "feed_forward")),
    "hidream": ("", ("attn1", "ff_i", "ff_t")),
    "cogvideox": ("", ("attn1", "ff")),
    "mochi": ("", ("attn1", "ff")),
    "auraflow": ("", ("attn", "ff")),
    "sanavideo": ("", ("attn1", "attn2")),
}


def fwd(model, inputs):
    with torch.no_grad():
        out = model(**inputs)[0]
    return torch.stack(out) if isinstance(out, list) else out  # Z-Image returns one tensor per sample


@pytest.mark.parametrize("family", sorted(LORA_CASES))
def test_family_lora_matches_16bit(family):
    only, include = LORA_CASES[family]
    ref = T.TINY_BUILDERS[family](seed=4)
    q = quantize(copy.deepcopy(ref), only=only)
    inputs = T.model_inputs(ref, seed=6)
    y_ref0, y_q0 = fwd(ref, inputs), fwd(q, inputs)
    err_base = rel(y_q0, y_ref0)
    lora = LT.peft_lora(ref, rank=8, seed=8, strength=0.3, prefix=None, include=include)
    for m in (ref, q):
        m.load_lora_adapter(dict(lora), prefix=None, adapter_name="a")  # what the pipelines' loaders call
    y_ref, y_q = fwd(ref, inputs), fwd(q, inputs)
    effect, err = rel(y_ref, y_ref0), rel(y_q, y_ref)
    print(f"{family}: effect {effect:.4f}, quant err alone {err_base:.4f}, with LoRA {err:.4f}")
    wrapped = [m for m in q.modules() if isinstance(m, SVDQuantLoraLinear)]
    assert wrapped and all(m.branch_rank() == 48 for m in wrapped)
    assert effect > 3 * err_base
    assert err < 2 * err_base
    q.set_adapters(["a"], [0.0])
    assert torch.equal(fwd(q, inputs), y_q0)
    q.set_adapters(["a"], [1.0])
    assert torch.equal(fwd(q, inputs), y_q)
    q.unload_lora()
    assert torch.equal(fwd(q, inputs), y_q0)


def test_pixart_lora_through_peft():
    """diffusers has no LoRA loader for PixArt; PEFT's own API works on the quantized model."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    ref = T.tiny_pixart_transformer(seed=4)
    q = quantize(copy.deepcopy(ref), only="attn")
    inputs = T.model_inputs(ref, seed=6)
    y_ref0, y_q0 = fwd(ref, inputs), fwd(q, inputs)
    lora = LT.peft_lora(ref, rank=8, seed=9, strength=0.3, prefix=None, include=("attn", "ff"))
    targets = sorted({k.rsplit(".lora_", 1)[0] for k in lora})
    for m in (ref, q):
        cfg = LoraConfig(r=8, lora_alpha=8, target_modules=targets)
        inject_adapter_in_model(cfg, m, adapter_name="default")
        set_peft_model_state_dict(m, dict(lora), adapter_name="default")
    assert any(isinstance(m, SVDQuantLoraLinear) for m in q.modules())
    y_ref, y_q = fwd(ref, inputs), fwd(q, inputs)
    assert rel(y_ref, y_ref0) > 3 * rel(y_q0, y_ref0)
    assert rel(y_q, y_ref) < 2 * rel(y_q0, y_ref0)


def test_text_encoder_lora_on_quantized_clip(tmp_path):
    """A LoRA for the (4-bit) CLIP text encoder of a Flux pipeline, loaded by load_lora_weights."""
    from diffusers import DiffusionPipeline, PipelineQuantizationConfig

    T.save_tiny_flux_pipeline(tmp_path / "tiny-flux")  # fp32: diffusers casts the encoder to fp32 after loading
    ref = DiffusionPipeline.from_pretrained(tmp_path / "tiny-flux")
    q = DiffusionPipeline.from_pretrained(
        tmp_path / "tiny-flux", quantization_config=PipelineQuantizationConfig(quant_mapping={"text_encoder": SVDQuantConfig()})
    )
    ids = ref.tokenizer(["a photo of a cat"], padding="max_length", max_length=16, return_tensors="pt").input_ids

    def emb(p):
        with torch.no_grad():
            return p.text_encoder(ids).last_hidden_state

    e_ref0, e_q0 = emb(ref), emb(q)
    lora = LT.peft_lora(ref.text_encoder, rank=4, seed=3, strength=0.3, prefix="text_encoder", include=("self_attn", "mlp"))
    for p in (ref, q):
        p.load_lora_weights(dict(lora), adapter_name="te")
    wrapped = [m for m in q.text_encoder.modules() if isinstance(m, SVDQuantLoraLinear)]
    assert wrapped and all(m.get_base_layer().proj_up.dtype == torch.bfloat16 for m in wrapped)
    e_ref, e_q = emb(ref), emb(q)
    assert rel(e_ref, e_ref0) > 3 * rel(e_q0, e_ref0)
    assert rel(e_q, e_ref) < 2 * rel(e_q0, e_ref0)
    q.set_adapters(["te"], [0.0])
    assert torch.equal(emb(q), e_q0)
    q.unload_lora_weights()
    assert torch.equal(emb(q), e_q0)

"""Saving a quantized model that has a LoRA loaded: folded in (a new pre-quantized checkpoint) or without it."""
from __future__ import annotations

import copy

import pytest
import torch

from svdquant_hf import SVDQuantConfig, SVDQuantLinear
from svdquant_hf import testing as T
from svdquant_hf.lora import lora_folded, testing as LT, without_lora

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")
from svdquant_hf.lora.layer import SVDQuantLoraLinear  # noqa: E402


def run(model, inputs):
    with torch.no_grad():
        return model(**inputs)[0]


@pytest.fixture(scope="module")
def quantized_pipe(tmp_path_factory):
    """A pipeline whose transformer was quantized on load by the diffusers integration (saveable)."""
    path = T.save_tiny_model(T.tiny_flux_transformer(3, in_channels=16), tmp_path_factory.mktemp("tiny_flux"))
    tr = diffusers.FluxTransformer2DModel.from_pretrained(path, quantization_config=SVDQuantConfig())
    return diffusers.FluxPipeline(
        scheduler=None, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        transformer=tr,
    )


def test_save_with_lora_folded_and_without(quantized_pipe, tmp_path):
    pipe = copy.deepcopy(quantized_pipe)
    inputs = T.model_inputs(pipe.transformer, seed=2)
    pipe.transformer.save_pretrained(tmp_path / "before_lora")
    lora = LT.peft_lora(pipe.transformer, rank=4, seed=3, strength=0.2)  # quantized and 16-bit layers
    lora_b = LT.peft_lora(pipe.transformer, rank=8, seed=4, strength=0.2, include=("transformer_blocks",))
    pipe.load_lora_weights(lora, adapter_name="a")
    pipe.load_lora_weights(lora_b, adapter_name="b")
    pipe.set_adapters(["a", "b"], [0.8, 0.5])
    y_lora = run(pipe.transformer, inputs)

    with lora_folded(pipe):
        pipe.transformer.save_pretrained(tmp_path / "folded")
    with without_lora(pipe):
        pipe.transformer.save_pretrained(tmp_path / "base")
    assert torch.equal(run(pipe.transformer, inputs), y_lora)  # the live model is unchanged

    folded = diffusers.FluxTransformer2DModel.from_pretrained(tmp_path / "folded")
    base = diffusers.FluxTransformer2DModel.from_pretrained(tmp_path / "base")
    to_q = folded.transformer_blocks[0].attn.to_q
    assert type(to_q) is SVDQuantLinear and to_q.proj_down.shape[1] == 32 + 16  # 4 + 8 padded to 16
    assert not any(isinstance(m, SVDQuantLoraLinear) for m in folded.modules())
    y_folded = run(folded, inputs)
    # 4-bit layers: same concatenation -> same numbers; 16-bit layers: W + sum s B A rounds like PEFT's merge
    assert float((y_folded - y_lora).norm() / y_lora.norm()) < 2e-3
    before = diffusers.FluxTransformer2DModel.from_pretrained(tmp_path / "before_lora")
    sd_base, sd_before = base.state_dict(), before.state_dict()
    assert sd_base.keys() == sd_before.keys()
    assert all(torch.equal(sd_base[k], sd_before[k]) for k in sd_before)  # exactly the pre-LoRA checkpoint
    assert torch.equal(run(base, inputs), run(before, inputs))
    assert base.transformer_blocks[0].attn.to_q.proj_down.shape[1] == 32


def test_fused_then_unloaded_lora_saves_as_plain_checkpoint(quantized_pipe, tmp_path):
    pipe = copy.deepcopy(quantized_pipe)
    inputs = T.model_inputs(pipe.transformer, seed=7)
    pipe.load_lora_weights(LT.peft_lora(pipe.transformer, rank=20, seed=8, include=("transformer_blocks",)), adapter_name="x")
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    y = run(pipe.transformer, inputs)
    pipe.transformer.save_pretrained(tmp_path / "fused")
    loaded = diffusers.FluxTransformer2DModel.from_pretrained(tmp_path / "fused")
    live = pipe.transformer.transformer_blocks[0].ff.net[2]
    layer = loaded.transformer_blocks[0].ff.net[2]
    assert layer.rank == 64 and layer.proj_down.shape[1] == 64  # 32 + 20 -> 64
    assert torch.equal(layer.proj_down, live.proj_down) and torch.equal(layer.proj_up, live.proj_up)
    # same tensors; a reloaded model already differs from the in-memory one in the last bit in 16-bit
    # layers (seen in time_text_embed.timestep_embedder.linear_1 with equal weights and inputs)
    torch.testing.assert_close(run(loaded, inputs), y, rtol=1e-5, atol=1e-5)

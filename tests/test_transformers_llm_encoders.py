"""The LLM text encoders of newer pipelines, quantized on load and reloaded pre-quantized: Qwen3 (Z-Image),
Qwen2.5-VL (Qwen-Image), Mistral 3 (FLUX.2), UMT5 (Wan), Llama (HunyuanVideo, HiDream), Gemma 2 (Lumina 2), GLM-4
(CogView4).

transformers 5 saves the two vision-language models under their original checkpoint names
(``model.layers.*``, ``language_model.model.*``) and renames the keys while loading; a pre-quantized
checkpoint is found through the same renaming.
"""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from torch import nn

import svdquant_hf  # noqa: F401  (registers the quantizer)
from svdquant_hf import SVDQuantLinear, testing
from svdquant_hf.quantizers.transformers import SVDQuantTransformersConfig

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")
BF16 = torch.bfloat16

# (builder, 16-bit linears that must stay so by default, relative error bound of the last hidden state
# against bf16: W4A4, W4A16; measured ~0.04-0.06 and ~0.12 for UMT5's W4A4, whose gated MLP is 128 wide; GLM has 6
# linears a layer, its gate and up projections fused)
ENCODERS = {
    "qwen3": (testing.tiny_qwen3_text_encoder, (), (0.1, 0.08)),
    "qwen2_5_vl": (testing.tiny_qwen2_5_vl_text_encoder,
                   ("lm_head", "model.visual.blocks.0.attn.qkv", "model.visual.merger.mlp.0"), (0.1, 0.08)),
    "mistral3": (testing.tiny_mistral3_text_encoder,
                 ("lm_head", "model.vision_tower.transformer.layers.0.attention.q_proj",
                  "model.multi_modal_projector.linear_1"), (0.1, 0.08)),
    "umt5": (testing.tiny_umt5_encoder, (), (0.25, 0.16)),
    "llama": (testing.tiny_llama_text_encoder, (), (0.1, 0.08)),
    "gemma2": (testing.tiny_gemma2_text_encoder, (), (0.25, 0.16)),  # measured 0.145 / 0.098 (GeGLU, 4 norms a layer)
    "glm": (testing.tiny_glm_text_encoder, (), (0.1, 0.08)),
}


def ids_and_mask(batch: int = 2, length: int = 12, pad: int = 4):
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(12, 240, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    ids[1, -pad:], mask[1, -pad:] = 0, 0
    return ids, mask


def last_hidden(model: nn.Module) -> torch.Tensor:
    ids, mask = ids_and_mask()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return out.hidden_states[-1][mask.bool()]  # the tokens a pipeline keeps


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def linears(model: nn.Module) -> tuple[set[str], set[str]]:
    q = {n for n, m in model.named_modules() if isinstance(m, SVDQuantLinear)}
    plain = {n for n, m in model.named_modules() if type(m) is nn.Linear}
    return q, plain


@pytest.mark.parametrize("weight_only", [False, True], ids=["w4a4", "w4a16"])
@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_llm_text_encoder_quantize_save_reload(name, weight_only, tmp_path):
    build, must_skip, bounds = ENCODERS[name]
    model = build(seed=3)
    cls = type(model)
    model.save_pretrained(tmp_path / "src")
    ref = cls.from_pretrained(tmp_path / "src", dtype=BF16).eval()
    q = cls.from_pretrained(
        tmp_path / "src", quantization_config=SVDQuantTransformersConfig(weight_only=weight_only), dtype=BF16
    ).eval()

    quantized, plain = linears(q)
    assert set(must_skip) <= plain, set(must_skip) - plain
    decoder = {n for n in quantized if ".layers." in f".{n}" or ".block." in f".{n}"}
    assert len(decoder) >= 12 and not any("visual" in n or "vision" in n or "projector" in n for n in quantized)
    err = rel_err(last_hidden(q), last_hidden(ref))
    assert 1e-3 < err < bounds[weight_only], err

    q.save_pretrained(tmp_path / "q")
    with safe_open(str(tmp_path / "q" / "model.safetensors"), "pt") as f:
        stored = set(f.keys())
    back = cls.from_pretrained(tmp_path / "q", dtype=BF16).eval()
    assert linears(back) == (quantized, plain)
    a, b = q.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert torch.equal(last_hidden(back), last_hidden(q))
    if name in ("qwen2_5_vl", "mistral3"):  # the case the key renaming is for: stored names differ from the model's
        assert not any(k.startswith("model.language_model.") for k in stored)


def test_a_converted_quantized_tensor_is_refused_by_name(tmp_path, monkeypatch):
    """A checkpoint tensor of an SVDQuant layer that transformers would merge or split while loading (a weight
    converter, e.g. fused experts) cannot load one to one: the error names it, before anything is loaded."""
    from svdquant_hf import QuantizationError
    from svdquant_hf.quantizers.transformers import keys

    model = testing.tiny_qwen3_text_encoder(seed=3)
    model.save_pretrained(tmp_path / "src")
    cls = type(model)
    q = cls.from_pretrained(tmp_path / "src", quantization_config=SVDQuantTransformersConfig(), dtype=BF16)
    q.save_pretrained(tmp_path / "q")

    class FuseDownProj:  # what a converter's rename_source_key returns: (new name, matched pattern or None)
        def rename_source_key(self, key: str):
            hit = ".mlp.down_proj." in key
            return (key.replace("down_proj", "fused_proj") if hit else key), ("*.mlp.down_proj.*" if hit else None)

    monkeypatch.setattr(keys, "_renaming_rules", lambda model, hf_quantizer: ([], [FuseDownProj()]))
    with pytest.raises(QuantizationError, match=r"'layers\.0\.mlp\.down_proj\.\w+' of an SVDQuant layer: transformers converts it"):
        cls.from_pretrained(tmp_path / "q", dtype=BF16)

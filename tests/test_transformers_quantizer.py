"""transformers integration: T5 / CLIP text encoders quantized on load and loaded pre-quantized."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from contextlib import nullcontext

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import svdquant_hf
from svdquant_hf import QuantizationError, SVDQuantLinear, testing
from svdquant_hf.algorithm.svdquant import quantize_weight
from svdquant_hf.quantizers.transformers import (
    SVDQuantHfQuantizer,
    SVDQuantTransformersConfig,
    register,
)

transformers = pytest.importorskip("transformers")
from transformers import CLIPTextModel, T5EncoderModel  # noqa: E402

from _hf_helpers import tensors_off_the_gpu  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    model = testing.tiny_t5_encoder(seed=3)
    path = tmp_path_factory.mktemp("t5")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def t5_ref(t5_dir):
    return T5EncoderModel.from_pretrained(t5_dir).eval()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(2, 150, (2, 13), generator=torch.Generator().manual_seed(7))


def linear_names(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, SVDQuantLinear)}


def test_registered_with_transformers():
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

    assert AUTO_QUANTIZATION_CONFIG_MAPPING["svdquant"] is SVDQuantTransformersConfig
    assert AUTO_QUANTIZER_MAPPING["svdquant"] is SVDQuantHfQuantizer
    assert register() is True  # idempotent


def test_config_roundtrip_and_bad_options():
    cfg = SVDQuantTransformersConfig(rank=16, weight_only=True, modules_to_not_convert=["wo"])
    d = cfg.to_dict()
    assert d["quant_method"] == "svdquant" and d["rank"] == 16 and d["weight_only"] is True
    again = SVDQuantTransformersConfig.from_dict(json.loads(json.dumps(d)))
    assert again == cfg and again.modules_to_not_convert == ["wo"]
    with pytest.raises(ValueError, match="rnak"):
        SVDQuantTransformersConfig(rnak=8)
    with pytest.raises(ValueError, match="group_size=48"):
        SVDQuantTransformersConfig(group_size=48)
    with pytest.raises(ValueError, match="quant_method"):
        SVDQuantTransformersConfig(quant_method="bitsandbytes")


def test_same_init_parameters_as_diffusers_config():
    import inspect

    from svdquant_hf.quantizers.config import SVDQuantConfig

    def params(cls):
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    assert params(SVDQuantTransformersConfig) == params(SVDQuantConfig)


def test_t5_w4a4_quantize_on_load_matches_library(t5_dir, t5_ref, ids):
    cfg = SVDQuantTransformersConfig(rank=16)
    with pytest.warns(UserWarning, match="reference path") if not torch.cuda.is_available() else nullcontext():
        model = T5EncoderModel.from_pretrained(t5_dir, quantization_config=cfg)
    expected = linear_names(t5_ref)
    got = {n for n, m in model.named_modules() if isinstance(m, SVDQuantLinear)}
    assert got == expected and len(got) == 2 * 7  # q k v o wi_0 wi_1 wo per block, wo included
    assert not linear_names(model)
    # each layer holds exactly what the library's data-free SVDQuant gives for the stored weight
    ref_mods = dict(t5_ref.named_modules())
    for name in ["encoder.block.0.layer.0.SelfAttention.q", "encoder.block.1.layer.1.DenseReluDense.wo"]:
        mod = model.get_submodule(name)
        work = "cuda" if torch.cuda.is_available() else "cpu"  # where the loader quantizes
        qw = quantize_weight(ref_mods[name].weight.detach().to(work), cfg.to_options(), torch.bfloat16, name=name)
        for t in ("qweight", "wscales", "smooth_factor", "proj_down", "proj_up"):
            assert torch.equal(getattr(mod, t), getattr(qw, t).cpu()), (name, t)
        assert not mod.weight_only and mod.weight.dtype == torch.int8 and mod.weight.numel() == 0
    with torch.no_grad():
        out = model(ids).last_hidden_state
        ref = t5_ref(ids).last_hidden_state
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert 0 < rel_err(out, ref) < 0.35  # random tiny T5: W4A4 noise compounds over 14 layers
    assert model.config.quantization_config.to_dict()["rank"] == 16


def test_t5_weight_only_is_more_accurate_than_w4a4(t5_dir, t5_ref, ids):
    errs = {}
    for wo in (False, True):
        model = T5EncoderModel.from_pretrained(
            t5_dir, quantization_config=SVDQuantTransformersConfig(rank=16, weight_only=wo), dtype=torch.bfloat16
        )
        mods = [m for m in model.modules() if isinstance(m, SVDQuantLinear)]
        assert len(mods) == 14 and all(m.weight_only == wo and m.compute_dtype == torch.bfloat16 for m in mods)
        if wo:
            assert all(torch.all(m.smooth_factor == 1) for m in mods)
        with torch.no_grad():
            out = model(ids).last_hidden_state
        assert out.dtype == torch.bfloat16
        errs[wo] = rel_err(out, t5_ref(ids).last_hidden_state)
    assert errs[True] < errs[False] < 0.35, errs


def test_t5_prequantized_roundtrip_fresh_process(t5_dir, ids, tmp_path):
    cfg = SVDQuantTransformersConfig(rank=16, weight_only=True, modules_to_not_convert=["wo"])
    model = T5EncoderModel.from_pretrained(t5_dir, quantization_config=cfg)
    assert isinstance(model.encoder.block[0].layer[1].DenseReluDense.wo, nn.Linear)
    assert not isinstance(model.encoder.block[0].layer[1].DenseReluDense.wo, SVDQuantLinear)
    with torch.no_grad():
        out = model(ids).last_hidden_state
    save = tmp_path / "q"
    model.save_pretrained(save)
    saved = json.loads((save / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "svdquant" and saved["weight_only"] is True and saved["modules_to_not_convert"] == ["wo"]
    tensors = load_file(save / "model.safetensors")
    state = model.state_dict()
    assert set(tensors) <= set(state) and all(torch.equal(tensors[k], state[k]) for k in tensors)
    assert {k for k in state if ".qweight" in k or ".smooth_factor" in k} <= set(tensors)
    assert not any(k.endswith("q.weight") for k in tensors)
    save_file({"ids": ids}, tmp_path / "ids.safetensors")
    script = textwrap.dedent(
        f"""
        import torch, svdquant_hf
        from safetensors.torch import load_file, save_file
        from transformers import T5EncoderModel
        m = T5EncoderModel.from_pretrained({str(save)!r})
        assert type(m.encoder.block[0].layer[0].SelfAttention.q).__name__ == "SVDQuantLinear"
        ids = load_file({str(tmp_path / 'ids.safetensors')!r})["ids"]
        with torch.no_grad():
            save_file({{"out": m(ids).last_hidden_state.contiguous()}}, {str(tmp_path / 'out.safetensors')!r})
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300, env=env)
    assert torch.equal(load_file(tmp_path / "out.safetensors")["out"], out)


def test_clip_w4a4_on_load_and_reload(tmp_path):
    ref = testing.tiny_clip_text_model(seed=5)
    ref.save_pretrained(tmp_path / "clip")
    ids = torch.randint(0, 590, (2, 9), generator=torch.Generator().manual_seed(1))
    model = CLIPTextModel.from_pretrained(tmp_path / "clip", quantization_config=SVDQuantTransformersConfig(rank=16))
    got = {n for n, m in model.named_modules() if isinstance(m, SVDQuantLinear)}
    assert got == linear_names(ref) and len(got) == 2 * 6  # q k v out fc1 fc2 per layer
    assert all(m.bias is not None and m.bias.dtype == torch.bfloat16 for m in model.modules() if isinstance(m, SVDQuantLinear))
    with torch.no_grad():
        out = model(ids)
        r = ref(ids)
    assert 0 < rel_err(out.last_hidden_state, r.last_hidden_state) < 0.35
    model.save_pretrained(tmp_path / "q")
    again = CLIPTextModel.from_pretrained(tmp_path / "q")
    with torch.no_grad():
        out2 = again(ids)
    assert torch.equal(out2.last_hidden_state, out.last_hidden_state)
    assert torch.equal(out2.pooler_output, out.pooler_output)


@pytest.fixture()
def quantized_t5_dir(t5_dir, tmp_path):
    model = T5EncoderModel.from_pretrained(t5_dir, quantization_config=SVDQuantTransformersConfig(rank=16))
    model.save_pretrained(tmp_path / "q")
    return tmp_path / "q"


def _edit_checkpoint(path, fn):
    f = path / "model.safetensors"
    tensors = load_file(f)
    fn(tensors)
    save_file(tensors, f, metadata={"format": "pt"})


def test_misshaped_tensor_is_named(quantized_t5_dir):
    key = "encoder.block.1.layer.0.SelfAttention.k.proj_down"
    _edit_checkpoint(quantized_t5_dir, lambda t: t.__setitem__(key, t[key][:, :8].contiguous()))
    with pytest.raises(QuantizationError, match=key.replace(".", r"\.")):
        T5EncoderModel.from_pretrained(quantized_t5_dir)


def test_missing_tensor_is_named(quantized_t5_dir):
    key = "encoder.block.0.layer.1.DenseReluDense.wi_1.wscales"
    _edit_checkpoint(quantized_t5_dir, lambda t: t.pop(key))
    with pytest.raises(QuantizationError, match=key.replace(".", r"\.")):
        T5EncoderModel.from_pretrained(quantized_t5_dir)


def test_config_contradicting_tensors_names_option(quantized_t5_dir):
    cfg_file = quantized_t5_dir / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["quantization_config"]["rank"] = 8
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(QuantizationError, match="rank=8"):
        T5EncoderModel.from_pretrained(quantized_t5_dir)


def test_unknown_option_in_checkpoint_config(quantized_t5_dir):
    cfg_file = quantized_t5_dir / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["quantization_config"]["bits"] = 3
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="bits"):
        T5EncoderModel.from_pretrained(quantized_t5_dir)


def test_prequantized_config_without_svdquant_tensors(t5_dir, tmp_path):
    plain = T5EncoderModel.from_pretrained(t5_dir)
    plain.save_pretrained(tmp_path / "p")
    cfg = json.loads((tmp_path / "p" / "config.json").read_text())
    cfg["quantization_config"] = SVDQuantTransformersConfig().to_dict()
    (tmp_path / "p" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(QuantizationError, match="qweight"):
        T5EncoderModel.from_pretrained(tmp_path / "p")


def test_failed_save_leaves_nothing(t5_dir, tmp_path, monkeypatch):
    import transformers.modeling_utils as mu

    model = T5EncoderModel.from_pretrained(t5_dir, quantization_config=SVDQuantTransformersConfig(rank=16))

    def boom(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(mu, "safe_save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_fp16_roundtrip_keeps_stored_dtypes(t5_dir, ids, tmp_path):
    """fp16 T5: transformers keeps `wo` in fp32 when loading in fp16; SVDQuant tensors keep their dtype."""
    model = T5EncoderModel.from_pretrained(t5_dir, quantization_config=SVDQuantTransformersConfig(rank=16), dtype=torch.float16)
    mods = {n: m for n, m in model.named_modules() if isinstance(m, SVDQuantLinear)}
    assert len(mods) == 14 and all(m.compute_dtype == torch.float16 for m in mods.values())
    with torch.no_grad():
        out = model(ids).last_hidden_state
    model.save_pretrained(tmp_path / "q")
    again = T5EncoderModel.from_pretrained(tmp_path / "q", dtype=torch.float16)
    wo = again.encoder.block[1].layer[1].DenseReluDense.wo
    assert isinstance(wo, SVDQuantLinear)
    assert {n: b.dtype for n, b in wo.named_buffers()} == {
        "qweight": torch.int8, "wscales": torch.float16, "smooth_factor": torch.float16,
        "proj_down": torch.float16, "proj_up": torch.float16,
    }
    with torch.no_grad():
        assert torch.equal(again(ids).last_hidden_state, out)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_t5_on_load_and_prequantized_on_cuda(t5_dir, t5_ref, ids, tmp_path):
    cfg = SVDQuantTransformersConfig(rank=16)
    gpu = T5EncoderModel.from_pretrained(t5_dir, quantization_config=cfg, dtype=torch.bfloat16, device_map="cuda")
    assert not tensors_off_the_gpu(gpu), tensors_off_the_gpu(gpu)[:5]  # (on Hopper the canonical qweight is on the host)
    cpu = T5EncoderModel.from_pretrained(t5_dir, quantization_config=cfg, dtype=torch.bfloat16)
    for (n, a), (_, b) in zip(gpu.state_dict().items(), cpu.state_dict().items()):
        assert a.shape == b.shape and a.dtype == b.dtype, n
    with torch.no_grad():
        out = gpu(ids.cuda()).last_hidden_state
        ref = t5_ref(ids).last_hidden_state
    assert out.dtype == torch.bfloat16 and rel_err(out.cpu(), ref) < 0.35
    gpu.save_pretrained(tmp_path / "q")
    again = T5EncoderModel.from_pretrained(tmp_path / "q", device_map="cuda")
    with torch.no_grad():
        assert torch.equal(again(ids.cuda()).last_hidden_state, out)


def test_diffusers_side_config_accepted_by_transformers(t5_dir):
    """svdquant_hf.SVDQuantConfig (the diffusers config) also works for a transformers model."""
    model = T5EncoderModel.from_pretrained(t5_dir, quantization_config=svdquant_hf.SVDQuantConfig(rank=16, weight_only=True))
    assert isinstance(model.config.quantization_config, SVDQuantTransformersConfig)
    mods = [m for m in model.modules() if isinstance(m, SVDQuantLinear)]
    assert len(mods) == 14 and all(m.weight_only and m.rank == 16 for m in mods)

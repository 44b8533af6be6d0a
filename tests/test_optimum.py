"""svdquant_hf.optimum.SVDQuantizer: the optimum OptimumQuantizer entry point."""
from __future__ import annotations

import json

import pytest
import torch

from svdquant_hf import SVDQuantConfig, SVDQuantLinear, testing

pytest.importorskip("optimum")
from optimum.quantization_base import OptimumQuantizer  # noqa: E402

from svdquant_hf.optimum import SVDQuantizer  # noqa: E402

CALL = dict(height=64, width=64, guidance_scale=3.5, max_sequence_length=16)


pytestmark = pytest.mark.usefixtures("one_thread")


def n_svd(model) -> int:
    return sum(isinstance(m, SVDQuantLinear) for m in model.modules())


def test_pipeline_path_calibrated_then_reloaded(tmp_path):
    from diffusers import FluxPipeline

    src = testing.save_tiny_flux_pipeline(tmp_path / "src", seed=21)
    q = SVDQuantizer.from_pretrained(src, config=SVDQuantConfig(rank=16, alpha_grid=3))
    assert isinstance(q, OptimumQuantizer) and q.is_pipeline
    pipe = q.quantize(tmp_path / "out", prompts=["a cat", "a dog"], num_inference_steps=1, progress=False, **CALL)
    mods = [m for m in pipe.transformer.modules() if isinstance(m, SVDQuantLinear)]
    assert mods and any(float(m.smooth_factor.float().std()) > 0 for m in mods)  # calibrated smoothing
    cfg = json.loads((tmp_path / "out" / "transformer" / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "svdquant" and cfg["quantization_config"]["alpha_grid"] == 3
    again = FluxPipeline.from_pretrained(tmp_path / "out")
    assert n_svd(again.transformer) == len(mods)
    a, b = pipe.transformer.state_dict(), again.transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pipeline_object_data_free(tmp_path):
    pipe = testing.tiny_flux_pipeline(seed=22)
    out = SVDQuantizer.from_pretrained(pipe, config={"rank": 16}).quantize(None, progress=False)
    assert out is pipe and n_svd(pipe.transformer) > 0
    assert all(torch.all(m.smooth_factor == 1) for m in pipe.transformer.modules() if isinstance(m, SVDQuantLinear))
    assert n_svd(pipe.text_encoder_2) == 0


def test_model_with_calibration_data_and_t5_data_free(tmp_path):
    from diffusers import FluxTransformer2DModel
    from transformers import T5EncoderModel

    tr = testing.tiny_flux_transformer(seed=23)
    path = testing.save_tiny_model(tr, tmp_path / "tr")
    q = SVDQuantizer.from_pretrained(path, config=SVDQuantConfig(rank=16, alpha_grid=3))
    data = [testing.model_inputs(tr, seed=s) for s in range(2)]
    model = q.quantize(tmp_path / "tr_q", calibration_data=data, progress=False)
    assert any(float(m.smooth_factor.float().std()) > 0 for m in model.modules() if isinstance(m, SVDQuantLinear))
    again = FluxTransformer2DModel.from_pretrained(tmp_path / "tr_q")
    a, b = model.state_dict(), again.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)

    t5 = testing.tiny_t5_encoder(seed=24)
    t5_q = SVDQuantizer.from_pretrained(t5, config={"rank": 16, "weight_only": True}).quantize(tmp_path / "t5_q", progress=False)
    assert n_svd(t5_q) == 14
    ids = torch.randint(2, 150, (1, 7), generator=torch.Generator().manual_seed(0))
    reloaded = T5EncoderModel.from_pretrained(tmp_path / "t5_q")
    assert n_svd(reloaded) == 14
    with torch.no_grad():
        assert torch.equal(reloaded(ids).last_hidden_state, t5_q(ids).last_hidden_state)


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a local folder"):
        SVDQuantizer.from_pretrained(tmp_path / "missing")
    tr = testing.tiny_flux_transformer(seed=25)
    q = SVDQuantizer.from_pretrained(tr, config={"rank": 16})
    with pytest.raises(ValueError, match="prompts need a pipeline"):
        q.quantize(None, prompts=["a cat"])
    with pytest.raises(ValueError, match="file_prefix"):
        q.quantize(tmp_path / "x", file_prefix="model")
    pipe_q = SVDQuantizer.from_pretrained(testing.tiny_flux_pipeline(seed=26), config={"rank": 16})
    with pytest.raises(ValueError, match="prompt list is empty"):
        pipe_q.quantize(None, prompts=[], num_inference_steps=1)
    quantized = SVDQuantizer.from_pretrained(tr, config={"rank": 16}).quantize(tmp_path / "done", progress=False)
    assert n_svd(quantized) > 0
    with pytest.raises(ValueError, match="already quantized"):
        SVDQuantizer.from_pretrained(tmp_path / "done")

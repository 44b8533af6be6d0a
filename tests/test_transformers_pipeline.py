"""Pipeline-level quantization reaching the transformers components (the T5 text encoder of Flux)."""
from __future__ import annotations

import json

import pytest
import torch

from svdquant_hf import SVDQuantConfig, SVDQuantLinear, testing
from svdquant_hf.quantizers.transformers import SVDQuantTransformersConfig

diffusers = pytest.importorskip("diffusers")
from diffusers import FluxPipeline  # noqa: E402
from diffusers.quantizers import PipelineQuantizationConfig  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return testing.save_tiny_flux_pipeline(tmp_path_factory.mktemp("flux"), seed=11)


def n_svd(model) -> int:
    return sum(isinstance(m, SVDQuantLinear) for m in model.modules())


def t5_out(pipe) -> torch.Tensor:
    ids = pipe.tokenizer_2(["a red tree at night"], return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder_2(ids).last_hidden_state


def test_quant_backend_quantizes_transformer_and_t5(flux_dir, tmp_path):
    cfg = PipelineQuantizationConfig(
        quant_backend="svdquant", quant_kwargs={"rank": 16, "weight_only": True},
        components_to_quantize=["transformer", "text_encoder_2"],
    )
    pipe = FluxPipeline.from_pretrained(flux_dir, quantization_config=cfg)
    pipe.set_progress_bar_config(disable=True)
    assert n_svd(pipe.transformer) > 0 and n_svd(pipe.text_encoder_2) == 14 and n_svd(pipe.text_encoder) == 0
    assert isinstance(pipe.text_encoder_2.config.quantization_config, SVDQuantTransformersConfig)
    assert all(m.weight_only for m in pipe.text_encoder_2.modules() if isinstance(m, SVDQuantLinear))
    out = pipe(**testing.flux_inputs(steps=1)).images
    assert out.shape == (1, 64, 64, 3) and bool(torch.isfinite(torch.as_tensor(out)).all())
    enc = t5_out(pipe)

    pipe.save_pretrained(tmp_path / "q")
    qc = json.loads((tmp_path / "q" / "text_encoder_2" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "svdquant" and qc["weight_only"] is True and qc["rank"] == 16
    again = FluxPipeline.from_pretrained(tmp_path / "q")
    assert n_svd(again.text_encoder_2) == 14 and n_svd(again.transformer) == n_svd(pipe.transformer)
    assert torch.equal(t5_out(again), enc)


def test_quant_mapping_with_transformers_config(flux_dir):
    cfg = PipelineQuantizationConfig(
        quant_mapping={"transformer": SVDQuantConfig(rank=16), "text_encoder": SVDQuantTransformersConfig(rank=16)}
    )
    pipe = FluxPipeline.from_pretrained(flux_dir, quantization_config=cfg)
    assert n_svd(pipe.transformer) > 0 and n_svd(pipe.text_encoder) == 12 and n_svd(pipe.text_encoder_2) == 0
    assert pipe.text_encoder.config.quantization_config.rank == 16

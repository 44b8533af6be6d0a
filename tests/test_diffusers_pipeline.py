"""diffusers integration, pipeline level: the three call forms, save/reload, offload, device_map."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, PipelineQuantizationConfig
from safetensors.numpy import load_file as load_np, save_file as save_np

from svdquant_hf import SVDQuantConfig
from svdquant_hf.testing import flux_inputs, save_tiny_flux_pipeline

from _hf_helpers import materialize, run_fresh, svd_layers, tensors_off_the_gpu

COMPONENTS = ("transformer", "text_encoder", "text_encoder_2", "vae")


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory) -> Path:
    return save_tiny_flux_pipeline(tmp_path_factory.mktemp("pipe") / "flux", seed=4)


@pytest.fixture(scope="module")
def ref_images(pipe_dir):
    pipe = FluxPipeline.from_pretrained(pipe_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe(**flux_inputs(seed=1)).images


@pytest.fixture(scope="module")
def q_pipe(pipe_dir):
    pipe = FluxPipeline.from_pretrained(pipe_dir, quantization_config=SVDQuantConfig())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def counts(pipe) -> dict[str, int]:
    return {c: len(svd_layers(getattr(pipe, c))) for c in COMPONENTS}


def test_form1_svdquant_config_quantizes_the_denoiser_only(q_pipe, ref_images):
    n = counts(q_pipe)
    assert n["transformer"] == 20 and n["text_encoder"] == n["text_encoder_2"] == n["vae"] == 0
    img = q_pipe(**flux_inputs(seed=1)).images
    assert img.shape == ref_images.shape == (1, 64, 64, 3)
    diff = np.abs(img - ref_images)
    assert diff.max() > 0  # the quantized transformer is really used
    assert diff.mean() < 0.01 and diff.max() < 0.1, (diff.mean(), diff.max())


def test_form2_quant_backend(pipe_dir, q_pipe):
    cfg = PipelineQuantizationConfig(
        quant_backend="svdquant", quant_kwargs={"rank": 32}, components_to_quantize=["transformer"]
    )
    pipe = FluxPipeline.from_pretrained(pipe_dir, quantization_config=cfg)
    assert counts(pipe) == counts(q_pipe)
    a, b = pipe.transformer.state_dict(), q_pipe.transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_form3_quant_mapping(pipe_dir, q_pipe):
    cfg = PipelineQuantizationConfig(quant_mapping={"transformer": SVDQuantConfig(rank=16)})
    pipe = FluxPipeline.from_pretrained(pipe_dir, quantization_config=cfg)
    assert counts(pipe)["transformer"] == 20 and counts(pipe)["text_encoder_2"] == 0
    assert all(m.rank == 16 for m in svd_layers(pipe.transformer).values())


def _transformers_registered() -> bool:
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING

    return "svdquant" in AUTO_QUANTIZATION_CONFIG_MAPPING


@pytest.mark.skipif(not _transformers_registered(), reason="transformers-side SVDQuant not registered")
def test_form1_with_named_text_encoder(pipe_dir):
    cfg = SVDQuantConfig(components_to_quantize=["transformer", "text_encoder_2"])
    pipe = FluxPipeline.from_pretrained(pipe_dir, quantization_config=cfg)
    n = counts(pipe)
    assert n["transformer"] == 20 and n["text_encoder_2"] > 0 and n["text_encoder"] == 0


def test_svdquant_config_resolves_per_component():
    cfg = SVDQuantConfig(rank=16)
    t = cfg._resolve_quant_config(is_diffusers=True, module_name="transformer")
    assert isinstance(t, SVDQuantConfig) and t.rank == 16 and t.components_to_quantize is None
    assert cfg._resolve_quant_config(is_diffusers=True, module_name="vae") is None
    assert cfg._resolve_quant_config(is_diffusers=False, module_name="text_encoder") is None
    assert SVDQuantConfig(components_to_quantize="vae")._resolve_quant_config(True, "transformer") is None


def test_saved_quantized_pipeline_reloads_with_plain_from_pretrained(q_pipe, tmp_path):
    out = tmp_path / "saved"
    q_pipe.save_pretrained(out)
    assert (out / "transformer" / "config.json").read_text().count('"svdquant"') == 1
    materialize(q_pipe.transformer)
    img = q_pipe(**flux_inputs(seed=2)).images
    run_fresh(f"""
        import numpy as np, torch, svdquant_hf, sys
        from diffusers import FluxPipeline
        from safetensors.numpy import save_file
        from svdquant_hf.testing import flux_inputs
        sys.path.insert(0, "tests")
        from _hf_helpers import materialize, svd_layers
        pipe = FluxPipeline.from_pretrained({str(out)!r})
        assert len(svd_layers(pipe.transformer)) == 20
        materialize(pipe.transformer)
        pipe.set_progress_bar_config(disable=True)
        save_file({{"img": np.ascontiguousarray(pipe(**flux_inputs(seed=2)).images)}}, {str(tmp_path / 'img.safetensors')!r})
    """)
    got = load_np(tmp_path / "img.safetensors")["img"]
    assert np.array_equal(got, img)


def test_device_map_cpu(pipe_dir):
    from diffusers import FluxTransformer2DModel

    maps = ["cpu", {"": "cpu"}] + ([] if torch.cuda.is_available() else ["auto"])  # CPU-only: "auto" -> CPU
    for dm in maps:
        m = FluxTransformer2DModel.from_pretrained(
            pipe_dir, subfolder="transformer", quantization_config=SVDQuantConfig(), torch_dtype=torch.bfloat16,
            device_map=dm,
        )
        assert len(svd_layers(m)) == 20 and all(p.device.type == "cpu" for p in m.parameters())


def test_device_map_with_disk_is_rejected(pipe_dir, tmp_path):
    from diffusers import FluxTransformer2DModel

    dm = {"": "disk"}
    with pytest.raises(ValueError, match="disk"):
        FluxTransformer2DModel.from_pretrained(
            pipe_dir, subfolder="transformer", quantization_config=SVDQuantConfig(), device_map=dm,
            offload_folder=str(tmp_path),
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_model_cpu_offload_gpu(q_pipe, ref_images):
    q_pipe.enable_model_cpu_offload()
    img = q_pipe(**flux_inputs(seed=1)).images
    assert np.abs(img - ref_images).mean() < 0.01
    q_pipe.remove_all_hooks()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_map_cuda_quantize_on_load_gpu(pipe_dir):
    """device_map="cuda": every tensor the forward reads is on the GPU. On Hopper the layers hold their weights in the
    GEMM's fragment order (a GPU copy), and the canonical ``qweight`` moves to host memory by design (saving and
    the reference path read it there)."""
    from diffusers import FluxTransformer2DModel

    m = FluxTransformer2DModel.from_pretrained(
        pipe_dir, subfolder="transformer", quantization_config=SVDQuantConfig(), torch_dtype=torch.bfloat16,
        device_map="cuda",
    )
    assert svd_layers(m) and not tensors_off_the_gpu(m), tensors_off_the_gpu(m)[:5]

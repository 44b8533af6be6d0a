"""`svdquant-hf demo` main job on the small random pipeline (offline, CPU)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

from svdquant_hf.demo import main, run_demo


def test_run_demo_small_random_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    res = run_demo(out_dir=str(tmp_path), alpha_grid=3, num_calib_prompts=2, device="cpu")
    out = capsys.readouterr().out
    assert "small random model" in out and "SMALL RANDOM" in out
    assert res["small_random_model"] is True and res["denoiser"] == "transformer"
    assert res["layers_quantized"] == 20 and f"quantized {res['layers_quantized']} linear layers" in out
    assert res["denoiser_bytes_svdquant"] < res["denoiser_bytes_16bit"]
    assert res["quantized_layers_bytes_svdquant"] < res["quantized_layers_bytes_16bit"]
    # the quantized pipeline, saved and reloaded, still produces the 16-bit image closely
    assert 0 < res["image_relative_error"] < 0.05, res
    assert res["image_psnr_db"] > 30, res
    assert 0 < res["denoiser_output_relative_error"] < 0.1, res
    for key in ("image_16bit", "image_svdquant"):
        png = Path(res[key])
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = Path(res["saved_to"])
    cfg = json.loads((saved / "transformer" / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "svdquant"
    assert list((saved / "transformer").glob("*.safetensors")) and not list(saved.rglob("*.bin"))


def test_demo_main_local_folder_data_free(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from svdquant_hf.testing import save_tiny_flux_pipeline

    src = save_tiny_flux_pipeline(tmp_path / "local-flux", seed=3)
    out = tmp_path / "out"
    argv = ["--model", str(src), "--out-dir", str(out), "--data-free", "--steps", "2", "--size", "64", "--json"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    res = json.loads(text[text.index("{"):])
    assert res["small_random_model"] is False and str(src) in res["model"] and "SMALL RANDOM" not in text
    assert res["calibrated"] is False and res["layers_quantized"] == 20
    assert res["image_psnr_db"] > 25 and Path(res["image_svdquant"]).is_file()

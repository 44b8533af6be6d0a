"""The svdquant-hf CLI end to end on a tiny offline FluxPipeline: quantize -> reload -> info -> push (mocked Hub)."""
from __future__ import annotations

import json
import types
from pathlib import Path
from unittest import mock

import pytest
import torch

from svdquant_hf.cli import main

SECRET = "hf_cli_test_secret_token_987"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from svdquant_hf.testing import save_tiny_flux_pipeline

    return save_tiny_flux_pipeline(tmp_path_factory.mktemp("cli") / "tiny", seed=2)


@pytest.fixture(scope="module")
def quantized(tiny_dir) -> Path:
    out = tiny_dir.parent / "tiny-svdq"
    assert main(["quantize", str(tiny_dir), "--out", str(out), "--rank", "16", "--base-model", "acme/tiny-flux"]) == 0
    return out


def _count_svdq(model: torch.nn.Module) -> int:
    from svdquant_hf.modules import SVDQuantLinear

    return sum(isinstance(m, SVDQuantLinear) for m in model.modules())


def _mock_hub(monkeypatch, existing=None):
    from huggingface_hub import HfApi

    api = mock.MagicMock(spec=HfApi)
    api.token = SECRET
    api.whoami.return_value = {"name": "me"}
    api.repo_exists.return_value = existing is not None
    api.list_repo_files.return_value = existing or []
    api.model_info.return_value = types.SimpleNamespace(card_data=types.SimpleNamespace(license="apache-2.0"))
    api.upload_folder.return_value = types.SimpleNamespace(commit_url="https://hub.example/me/tiny/commit/abc", pr_url=None)
    factory = mock.MagicMock(return_value=api)
    monkeypatch.setattr("huggingface_hub.HfApi", factory)
    return api, factory


def test_help_teaches_with_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("quantize", "info", "push", "import-nunchaku", "export-nunchaku", "demo", "bench"):
        assert cmd in out
    assert "examples:" in out and "svdquant-hf push flux-dev-svdq my-user/flux-dev-svdquant --private --dry-run" in out
    with pytest.raises(SystemExit):
        main(["quantize", "--help"])
    sub = capsys.readouterr().out
    assert "--calibrate PROMPTS_FILE" in sub and "examples:" in sub and "--components" in sub


def test_quantize_writes_a_folder_that_reloads_identically(tiny_dir, quantized):
    from diffusers import DiffusionPipeline

    from svdquant_hf import SVDQuantConfig
    from svdquant_hf.testing import model_inputs

    side = json.loads((quantized / "svdquant_hf.json").read_text())
    assert side["base_model"] == "acme/tiny-flux" and side["calibration"] is None
    cfg = json.loads((quantized / "transformer" / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "svdquant" and cfg["quantization_config"]["rank"] == 16
    loaded = DiffusionPipeline.from_pretrained(quantized, dtype=torch.bfloat16, use_safetensors=True)
    assert _count_svdq(loaded.transformer) > 5 and _count_svdq(loaded.text_encoder) == 0
    # the same data-free quantization done in memory gives bit-identical transformer outputs
    plain = DiffusionPipeline.from_pretrained(tiny_dir, dtype=torch.bfloat16)
    size16 = sum(t.numel() * t.element_size() for t in plain.transformer.state_dict().values())
    assert side["original_bytes"] == {"transformer": size16}
    ref = DiffusionPipeline.from_pretrained(tiny_dir, dtype=torch.bfloat16, quantization_config=SVDQuantConfig(rank=16))
    inputs = model_inputs(ref.transformer, seed=3)
    with torch.no_grad():
        a = loaded.transformer(**inputs)[0]
        b = ref.transformer(**model_inputs(ref.transformer, seed=3))[0]
    assert torch.isfinite(a).all() and torch.equal(a, b)


def test_quantize_joint_qkv_writes_fusable_layers(tiny_dir, tmp_path):
    from diffusers import DiffusionPipeline

    from svdquant_hf import fuse_shared_input_projections

    out = tmp_path / "joint"
    assert main(["quantize", str(tiny_dir), "--out", str(out), "--rank", "8", "--joint-qkv"]) == 0
    cfg = json.loads((out / "transformer" / "config.json").read_text())
    assert cfg["quantization_config"]["joint_qkv"] is True
    pipe = DiffusionPipeline.from_pretrained(out, dtype=torch.bfloat16, use_safetensors=True)
    attn = pipe.transformer.transformer_blocks[0].attn
    assert torch.equal(attn.to_q.proj_down, attn.to_k.proj_down) and attn.to_q.rank > 8
    assert fuse_shared_input_projections(pipe.transformer)


def test_info_describes_the_quantized_folder(quantized, capsys):
    assert main(["info", str(quantized), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "pipeline" and info["class_name"] == "FluxPipeline" and info["base_model"] == "acme/tiny-flux"
    tr = next(c for c in info["components"] if c["name"] == "transformer")
    st = quantized / "transformer" / "diffusion_pytorch_model.safetensors"
    from safetensors import safe_open

    with safe_open(str(st), "pt") as f:
        n_layers = sum(k.endswith(".qweight") for k in f.keys())
    assert tr["quant_method"] == "svdquant" and tr["quantized_layers"] == n_layers and tr["ranks"] == [16]
    assert tr["bytes"] < st.stat().st_size  # data bytes, without the header
    assert main(["info", str(quantized)]) == 0
    text = capsys.readouterr().out
    assert f"{n_layers} quantized layers" in text and "not quantized" in text


def test_push_through_the_cli_calls_the_hub_as_expected(quantized, monkeypatch, capsys):
    from huggingface_hub import ModelCard

    api, factory = _mock_hub(monkeypatch)
    cards = []
    api.upload_folder.side_effect = lambda **kw: (cards.append(ModelCard.load(Path(kw["folder_path"]) / "README.md")),
                                                  types.SimpleNamespace(commit_url="https://hub.example/c/1", pr_url=None))[1]
    quality = quantized.parent / "quality.json"
    quality.write_text(json.dumps({"PSNR (dB)": 21.25}))
    rc = main(["push", str(quantized), "me/tiny-svdq", "--private", "--message", "first upload", "--quality", str(quality)])
    assert rc == 0
    factory.assert_called_once_with(token=None)  # token resolved by huggingface_hub itself
    api.create_repo.assert_called_once_with("me/tiny-svdq", private=True, exist_ok=True, repo_type="model")
    kw = api.upload_folder.call_args.kwargs
    assert (kw["repo_id"], kw["commit_message"], kw["revision"], kw["create_pr"]) == ("me/tiny-svdq", "first upload", None, False)
    (card,) = cards
    assert card.data.base_model == "acme/tiny-flux" and card.data.base_model_relation == "quantized"
    assert card.data.license == "apache-2.0" and "| PSNR (dB) | 21.25 |" in card.text
    side = json.loads((quantized / "svdquant_hf.json").read_text())
    from svdquant_hf.hub_scripts.info import human_bytes

    assert f"| transformer | {human_bytes(side['original_bytes']['transformer'])} |" in card.text
    out = capsys.readouterr()
    assert "Uploaded: https://hub.example/c/1" in out.out and SECRET not in out.out + out.err


def test_push_dry_run_and_overwrite_refusal(quantized, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    api, _ = _mock_hub(monkeypatch, existing=["model_index.json"])
    assert main(["push", str(quantized), "me/tiny-svdq", "--dry-run"]) == 0
    out = capsys.readouterr()
    assert "Dry run: nothing was uploaded." in out.out and "needs --overwrite" in out.out
    assert "transformer/diffusion_pytorch_model.safetensors" in out.out and SECRET not in out.out + out.err
    api.upload_folder.assert_not_called()
    assert main(["push", str(quantized), "me/tiny-svdq"]) == 2
    err = capsys.readouterr().err
    assert "already has 1 of these files (model_index.json)" in err and "--overwrite" in err and SECRET not in err
    api.upload_folder.assert_not_called()


def test_calibrated_quantize_records_the_calibration(tiny_dir, tmp_path):
    from diffusers import DiffusionPipeline

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat\na blue dog on a hill\na third prompt that is not used\n")
    out = tmp_path / "calib"
    rc = main(["quantize", str(tiny_dir), "--out", str(out), "--calibrate", str(prompts), "--num-prompts", "2",
               "--steps", "1", "--size", "32", "--rank", "16", "--alpha-grid", "3", "--calib-tokens", "64"])
    assert rc == 0
    side = json.loads((out / "svdquant_hf.json").read_text())
    assert side["calibration"] == {"dataset": "prompts.txt", "num_prompts": 2, "num_inference_steps": 1,
                                   "component": "transformer"}
    pipe = DiffusionPipeline.from_pretrained(out, dtype=torch.bfloat16)
    smooth = [m.smooth_factor for m in pipe.transformer.modules() if hasattr(m, "smooth_factor")]
    assert smooth and any(not torch.all(s == 1) for s in smooth)  # calibrated smoothing, not the data-free ones


def test_bad_input_gives_clear_errors(tmp_path, quantized, monkeypatch, capsys):
    (tmp_path / "x.txt").write_text("x")
    assert main(["info", str(tmp_path)]) == 2
    assert "not a checkpoint folder" in capsys.readouterr().err
    assert main(["info", "not a repo id!"]) == 2
    assert "not a Hub repo id" in capsys.readouterr().err
    assert main(["push", str(quantized), "bad/repo/id"]) == 2
    assert "invalid repo id 'bad/repo/id'" in capsys.readouterr().err
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    assert main(["push", str(quantized), "me/ok-name"]) == 2
    assert "no Hugging Face token found" in capsys.readouterr().err
    assert main(["quantize", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "not a Hub repo id" in capsys.readouterr().err
    assert main(["quantize", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a diffusers folder" in capsys.readouterr().err
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline", "transformer": ["my_code", "Evil"]}))
    assert main(["quantize", str(custom), "--out", str(tmp_path / "o")]) == 2
    assert "never runs code shipped with a checkpoint" in capsys.readouterr().err
    (custom / "model_index.json").write_text(json.dumps({"_class_name": "EvilPipeline"}))
    assert main(["quantize", str(custom), "--out", str(tmp_path / "o")]) == 2
    assert "'EvilPipeline' is not a diffusers class" in capsys.readouterr().err
    # the tiny transformer's 64-wide layers do not fit Nunchaku's 128x128 tiles
    assert main(["export-nunchaku", str(quantized / "transformer"), "--out", str(tmp_path / "lite")]) == 2
    assert "not a multiple of Nunchaku's 128x128 tiles" in capsys.readouterr().err
    assert main(["import-nunchaku", str(tmp_path / "x.txt"), "--out", str(tmp_path / "imp")]) == 2
    assert "not a safetensors file" in capsys.readouterr().err


def test_bench_lists_scripts(capsys):
    assert main(["bench"]) == 0
    assert "flux_e2e" in capsys.readouterr().out
    assert main(["bench", "nope"]) == 2


def test_quantize_a_single_model_folder(tmp_path):
    from diffusers import FluxTransformer2DModel

    from svdquant_hf.testing import model_inputs, tiny_flux_transformer

    tiny_flux_transformer(seed=5).save_pretrained(tmp_path / "tr")
    assert main(["quantize", str(tmp_path / "tr"), "--out", str(tmp_path / "q"), "--rank", "8",
                 "--skip", "proj_out"]) == 0
    model = FluxTransformer2DModel.from_pretrained(tmp_path / "q", dtype=torch.bfloat16)
    assert _count_svdq(model) > 5 and not hasattr(model.proj_out, "qweight")
    assert json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]["rank"] == 8
    with torch.no_grad():
        assert torch.isfinite(model(**model_inputs(model))[0]).all()


def test_card_command_writes_a_valid_card_once(quantized, tmp_path, capsys):
    import shutil

    from huggingface_hub import ModelCard

    folder = tmp_path / "copy"
    shutil.copytree(quantized, folder)
    assert main(["card", str(folder), "--repo-id", "me/tiny-svdq", "--license", "mit"]) == 0
    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "mit" and card.data.base_model == "acme/tiny-flux" and "me/tiny-svdq" in card.text
    assert main(["card", str(folder), "--repo-id", "me/tiny-svdq"]) == 2
    assert "README.md exists; pass --force" in capsys.readouterr().err


def test_hub_model_kind_reads_only_the_index_files(monkeypatch, tmp_path):
    from huggingface_hub.errors import EntryNotFoundError

    from svdquant_hf import cli

    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel"}))
    asked = []

    def fake_download(repo_id, filename, **kw):
        asked.append(filename)
        if filename == "model_index.json":
            raise EntryNotFoundError("missing")
        return str(tmp_path / filename)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    kind, cfg = cli._resolve_kind("acme/tiny-transformer", None, None)
    assert (kind, cfg["_class_name"], asked) == ("model", "FluxTransformer2DModel", ["model_index.json", "config.json"])


def test_demo_passes_its_arguments_through(monkeypatch, capsys):
    import svdquant_hf.demo as demo

    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda *a, **kw: seen.update(args=a, kw=kw) or {"ok": 1})
    assert main(["demo", "--data-free", "--steps", "1", "--size", "32"]) == 0
    assert seen["args"] == (None, None) and seen["kw"]["calibrate"] is False and seen["kw"]["steps"] == 1
    with pytest.raises(SystemExit) as e:
        main(["demo", "--help"])
    assert e.value.code == 0 and "--data-free" in capsys.readouterr().out


def test_quantize_extra_components_data_free(tiny_dir, tmp_path):
    from diffusers import DiffusionPipeline

    out = tmp_path / "q"
    assert main(["quantize", str(tiny_dir), "--out", str(out), "--components", "transformer", "text_encoder_2",
                 "--rank", "8"]) == 0
    pipe = DiffusionPipeline.from_pretrained(out, dtype=torch.bfloat16)
    assert _count_svdq(pipe.transformer) > 5 and _count_svdq(pipe.text_encoder_2) > 5 and _count_svdq(pipe.text_encoder) == 0
    side = json.loads((out / "svdquant_hf.json").read_text())
    assert set(side["original_bytes"]) == {"transformer", "text_encoder_2"}

"""hub_scripts: checkpoint info, model card (validated by huggingface_hub's parser), push against a mocked HfApi."""
from __future__ import annotations

import json
import re
import types
from pathlib import Path
from unittest import mock

import pytest
import torch

from svdquant_hf.hub_scripts.info import NotACheckpointError, describe_hub, describe_local, format_info, read_header
from svdquant_hf.hub_scripts.model_card import build_model_card, is_hub_id
from svdquant_hf.hub_scripts.push import PushError, plan_upload, publish


@pytest.fixture(scope="module")
def quantized_dir(tmp_path_factory) -> Path:
    """A tiny FluxPipeline with its transformer SVDQuant-quantized (data-free), saved pre-quantized."""
    from diffusers import DiffusionPipeline

    from svdquant_hf import SVDQuantConfig
    from svdquant_hf.testing import save_tiny_flux_pipeline

    root = tmp_path_factory.mktemp("hub")
    save_tiny_flux_pipeline(root / "tiny", seed=1)
    pipe = DiffusionPipeline.from_pretrained(root / "tiny", dtype=torch.bfloat16, quantization_config=SVDQuantConfig(rank=16))
    out = root / "tiny-svdq"
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "svdquant_hf.json").write_text(json.dumps({
        "base_model": "acme/tiny-flux", "calibration": {"dataset": "PartiPrompts.tsv", "num_prompts": 8,
                                                        "num_inference_steps": 2}}))
    return out


def _api(existing: list[str] | None = None, license: str | None = "apache-2.0") -> mock.MagicMock:
    from huggingface_hub import HfApi

    api = mock.MagicMock(spec=HfApi)
    api.token = "hf_test_secret_token_123"
    api.whoami.return_value = {"name": "me"}
    api.repo_exists.return_value = existing is not None
    api.list_repo_files.return_value = existing or []
    api.model_info.return_value = types.SimpleNamespace(card_data=types.SimpleNamespace(license=license))
    api.upload_folder.return_value = types.SimpleNamespace(commit_url="https://hub/commit/1", pr_url=None)
    return api


# --- info ---------------------------------------------------------------------------------------


def test_info_reads_headers_only_and_counts_layers(quantized_dir):
    from safetensors import safe_open

    info = describe_local(quantized_dir)
    assert info.kind == "pipeline" and info.class_name == "FluxPipeline" and info.base_model == "acme/tiny-flux"
    (tr,) = [c for c in info.components if c.name == "transformer"]
    path = quantized_dir / "transformer" / "diffusion_pytorch_model.safetensors"
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        expected_bytes = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in keys)
    assert tr.quant_method == "svdquant" and tr.options["rank"] == 16 and tr.ranks == [16]
    assert tr.quantized_layers == sum(k.endswith(".qweight") for k in keys) > 5
    assert tr.bytes == expected_bytes and 0 < tr.quantized_bytes < tr.bytes
    assert tr.tensors == len(keys)
    assert all(c.quant_method is None for c in info.components if c.name != "transformer")
    text = format_info(info)
    assert "transformer" in text and f"{tr.quantized_layers} quantized layers" in text
    fmt = tr.options["quant_format"]
    assert fmt in ("int4", "int4_2l")
    if fmt == "int4":  # the int4 kernels (sm_80+) take every layer of 8-row multiples
        assert tr.hopper_gaps == {}
        assert f"on Hopper: {tr.quantized_layers} of {tr.quantized_layers} layers in the fused kernels" in text


@pytest.mark.parametrize("weight_only", [False, True])
def test_info_names_the_layers_the_hopper_kernels_would_not_take(tmp_path, weight_only):
    """int4_2l on the tiny SD3 model, counted by reason from the headers as kernel_gaps counts them on the model loaded
    on Hopper (set_fragment_order): its 64-wide W4A4 layers are padded to the GEMM's tiles, so all are covered; W4A16
    layers are all named."""
    from diffusers import SD3Transformer2DModel

    from svdquant_hf import SVDQuantConfig, kernel_gaps, set_fragment_order
    from svdquant_hf.testing import TINY_BUILDERS, save_tiny_model

    src = save_tiny_model(TINY_BUILDERS["sd3"](seed=1), tmp_path / "fp")
    cfg = SVDQuantConfig(quant_format="int4_2l", weight_only=weight_only)
    q = SD3Transformer2DModel.from_pretrained(src, quantization_config=cfg, torch_dtype=torch.bfloat16)
    q.save_pretrained(tmp_path / "q")
    (c,) = describe_local(tmp_path / "q").components
    set_fragment_order(q)  # what loading on Hopper does
    want: dict[str, int] = {}
    for reason in kernel_gaps(q, capability=(9, 0)).values():
        want[reason] = want.get(reason, 0) + 1
    assert c.hopper_gaps == want and sum(want.values()) == (c.quantized_layers if weight_only else 0)
    text = format_info(describe_local(tmp_path / "q"))
    covered = 0 if weight_only else c.quantized_layers
    assert f"on Hopper: {covered} of {c.quantized_layers} layers in the fused kernels" in text
    assert ("W4A16 (weight-only) layers run the reference ops" in text) == weight_only


def test_info_on_hub_uses_configs_and_headers_only(quantized_dir):
    files = [p.relative_to(quantized_dir).as_posix() for p in quantized_dir.rglob("*") if p.is_file()]
    api = mock.MagicMock()
    api.list_repo_files.return_value = files
    api.hf_hub_download.side_effect = lambda repo, name, **kw: str(quantized_dir / name)

    def parse(repo, filename, **kw):  # what huggingface_hub returns from its range-request header read
        header = read_header(quantized_dir / filename)
        tensors = {k: types.SimpleNamespace(dtype=v["dtype"], shape=v["shape"], data_offsets=v["data_offsets"])
                   for k, v in header.items() if k != "__metadata__"}
        return types.SimpleNamespace(metadata=header.get("__metadata__", {}), tensors=tensors)

    api.parse_safetensors_file_metadata.side_effect = parse
    info = describe_hub("acme/tiny-svdq", api=api)
    downloaded = {c.args[1] for c in api.hf_hub_download.call_args_list}
    assert all(name.endswith(".json") for name in downloaded)  # configs only, never weights
    local = describe_local(quantized_dir)
    assert [(c.name, c.quantized_layers, c.ranks, c.bytes, c.dtypes, c.hopper_gaps) for c in info.components] == [
        (c.name, c.quantized_layers, c.ranks, c.bytes, c.dtypes, c.hopper_gaps) for c in local.components]
    assert info.kind == "pipeline" and info.base_model == "acme/tiny-flux"


def test_info_rejects_non_checkpoints(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(NotACheckpointError, match="not a checkpoint folder"):
        describe_local(tmp_path)
    (tmp_path / "fake.safetensors").write_bytes(b"\x01")
    with pytest.raises(NotACheckpointError, match="not a safetensors file"):
        describe_local(tmp_path / "fake.safetensors")


# --- model card ----------------------------------------------------------------------------------


def test_model_card_metadata_parses_with_huggingface_hub(quantized_dir, tmp_path):
    from huggingface_hub import ModelCard

    info = describe_local(quantized_dir)
    card = build_model_card(info, "me/tiny-flux-svdq", license="apache-2.0",
                            quality={"PSNR vs 16-bit (dB)": 23.5, "LPIPS": 0.123})
    card.save(tmp_path / "README.md")
    parsed = ModelCard.load(tmp_path / "README.md")
    d = parsed.data
    assert d.base_model == "acme/tiny-flux" and d.base_model_relation == "quantized"
    assert d.library_name == "diffusers" and d.license == "apache-2.0" and d.pipeline_tag == "text-to-image"
    assert {"svdquant", "int4", "w4a4", "4-bit"} <= set(d.tags)
    text = parsed.text
    assert "| transformer | FluxTransformer2DModel | svdquant int4 | 16 | 64 | W4A4 |" in text
    assert "PartiPrompts.tsv, 8 prompts, 2 denoising steps per prompt" in text
    assert "| PSNR vs 16-bit (dB) | 23.5 |" in text and "| LPIPS | 0.123 |" in text
    size = f"{info.total_bytes / 1024 ** 2:.2f} MiB" if info.total_bytes >= 1024 ** 2 else f"{info.total_bytes / 1024:.2f} KiB"
    assert f"**{size}**" in text


def test_model_card_without_hub_base_model_omits_relation(quantized_dir):
    from huggingface_hub import ModelCard

    info = describe_local(quantized_dir)
    card = ModelCard(str(build_model_card(info, "me/x", base_model="./local/flux")))
    assert card.data.base_model is None and getattr(card.data, "base_model_relation", None) is None
    assert "./local/flux" in card.text and "License: same as the base model" in card.text


def test_model_card_loading_snippet_runs_on_the_tiny_pipeline(quantized_dir):
    from svdquant_hf.modules import SVDQuantLinear

    card = build_model_card(describe_local(quantized_dir), str(quantized_dir))
    blocks = re.findall(r"```python\n(.*?)```", card.text, re.S)
    assert len(blocks) == 2 and "from_pretrained" in blocks[0]
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)  # the snippet exactly as published
    pipe = scope["pipe"]
    assert isinstance(pipe.transformer.transformer_blocks[0].attn.to_q, SVDQuantLinear)
    from svdquant_hf.testing import flux_inputs

    image = pipe(**flux_inputs(steps=1, size=32)).images
    assert image.shape == (1, 32, 32, 3) and float(abs(image).sum()) > 0


# --- push ---------------------------------------------------------------------------------------


def test_push_creates_repo_and_uploads_with_card(quantized_dir):
    from huggingface_hub import ModelCard

    api = _api()
    seen = {}

    def upload(**kw):
        root = Path(kw["folder_path"])
        seen["files"] = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        seen["card"] = ModelCard.load(root / "README.md")
        seen["weights_same"] = (root / "transformer/diffusion_pytorch_model.safetensors").read_bytes() == (
            quantized_dir / "transformer/diffusion_pytorch_model.safetensors").read_bytes()
        return types.SimpleNamespace(commit_url="https://hub/c/1", pr_url=None)

    api.upload_folder.side_effect = upload
    plan, result = publish(quantized_dir, "me/tiny-svdq", private=True, api=api)
    api.create_repo.assert_called_once_with("me/tiny-svdq", private=True, exist_ok=True, repo_type="model")
    api.create_branch.assert_not_called()
    api.model_info.assert_called_once_with("acme/tiny-flux")  # license lookup of the base model
    (call,) = api.upload_folder.call_args_list
    kw = call.kwargs
    assert kw["repo_id"] == "me/tiny-svdq" and kw["revision"] is None and kw["create_pr"] is False
    assert kw["repo_type"] == "model" and kw["commit_message"].startswith("Upload SVDQuant checkpoint (transformer)")
    local = sorted(p.relative_to(quantized_dir).as_posix() for p in quantized_dir.rglob("*") if p.is_file())
    assert seen["files"] == sorted(local + ["README.md"]) and seen["weights_same"]
    assert seen["card"].data.license == "apache-2.0" and seen["card"].data.base_model == "acme/tiny-flux"
    assert not (quantized_dir / "README.md").exists()  # the user's folder is left untouched
    assert result.commit_url == "https://hub/c/1" and plan.card_generated


def test_push_refuses_to_overwrite_unless_asked(quantized_dir):
    api = _api(existing=[".gitattributes", "model_index.json", "transformer/config.json"])
    with pytest.raises(PushError, match=r"already has 2 of these files \(model_index.json, transformer/config.json\).*--overwrite"):
        publish(quantized_dir, "me/tiny-svdq", api=api)
    api.upload_folder.assert_not_called()
    api.create_repo.assert_not_called()
    publish(quantized_dir, "me/tiny-svdq", api=api, overwrite=True)
    api.upload_folder.assert_called_once()


def test_push_revision_and_pull_request(quantized_dir):
    api = _api(existing=[])
    publish(quantized_dir, "me/tiny-svdq", api=api, revision="rank16", commit_message="rank 16 variant")
    api.create_branch.assert_called_once_with("me/tiny-svdq", branch="rank16", exist_ok=True)
    assert api.upload_folder.call_args.kwargs["revision"] == "rank16"
    assert api.upload_folder.call_args.kwargs["commit_message"] == "rank 16 variant"
    api2 = _api(existing=[])
    publish(quantized_dir, "me/tiny-svdq", api=api2, create_pr=True)
    api2.create_branch.assert_not_called()
    assert api2.upload_folder.call_args.kwargs["create_pr"] is True


def test_dry_run_uploads_nothing_and_lists_conflicts(quantized_dir):
    api = _api(existing=["model_index.json"])
    plan, result = publish(quantized_dir, "me/tiny-svdq", api=api, dry_run=True)
    assert result is None and plan.conflicts == ["model_index.json"] and plan.repo_exists
    api.create_repo.assert_not_called()
    api.upload_folder.assert_not_called()
    text = plan.describe()
    assert "model_index.json" in text and "(replaces the file in the repo)" in text and "generated model card" in text


@pytest.mark.parametrize("repo_id", ["no-namespace", "a/b/c", "me/bad name", "me/x--y", "", "me/" + "x" * 100])
def test_malformed_repo_id(quantized_dir, repo_id):
    assert not is_hub_id(repo_id)
    with pytest.raises(PushError, match="invalid repo id"):
        publish(quantized_dir, repo_id, api=_api())


def test_missing_token(quantized_dir, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    api = _api()
    api.token = None
    with pytest.raises(PushError, match="no Hugging Face token found: run `hf auth login` or set the HF_TOKEN"):
        publish(quantized_dir, "me/tiny-svdq", api=api)
    api.upload_folder.assert_not_called()


def test_not_a_checkpoint_and_unsafe_files(tmp_path, quantized_dir):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(NotACheckpointError):
        publish(tmp_path, "me/x", api=_api())
    bad = tmp_path / "ckpt"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    (bad / "diffusion_pytorch_model.safetensors").write_bytes(
        (quantized_dir / "vae/diffusion_pytorch_model.safetensors").read_bytes())
    (bad / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(PushError, match="pytorch_model.bin: refusing to upload"):
        plan_upload(bad, "me/x")


def test_publish_script_dry_run_without_token(quantized_dir, monkeypatch, capsys):
    from svdquant_hf.hub_scripts.publish import run

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    assert run([str(quantized_dir), "me/tiny-svdq", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Upload to me/tiny-svdq (repo unknown)" in out and "Dry run: nothing was uploaded." in out
    assert "transformer/diffusion_pytorch_model.safetensors" in out


def test_push_to_a_new_branch_of_an_existing_repo(quantized_dir):
    class RevisionNotFoundError(Exception):  # huggingface_hub's error for a missing branch, matched by name
        pass

    api = _api(existing=["model_index.json"])
    api.list_repo_files.side_effect = RevisionNotFoundError("no branch")
    plan, _ = publish(quantized_dir, "me/tiny-svdq", api=api, revision="int4-r16")
    assert plan.conflicts == [] and plan.repo_exists
    api.create_branch.assert_called_once_with("me/tiny-svdq", branch="int4-r16", exist_ok=True)
    assert api.upload_folder.call_args.kwargs["revision"] == "int4-r16"

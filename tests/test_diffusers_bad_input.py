"""Bad checkpoints and configs fail with errors naming the tensor, shard or option."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import FluxTransformer2DModel
from safetensors.torch import load_file, save_file

from svdquant_hf import QuantizationError, SVDQuantConfig
from svdquant_hf.testing import save_tiny_model, tiny_flux_transformer

BF16 = torch.bfloat16
WEIGHTS = "diffusion_pytorch_model.safetensors"
LAYER = "transformer_blocks.0.attn.to_k"


@pytest.fixture(scope="module")
def fp_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tiny_flux_transformer(seed=8), tmp_path_factory.mktemp("bad") / "fp")


@pytest.fixture(scope="module")
def q_dir(fp_dir, tmp_path_factory) -> Path:
    model = FluxTransformer2DModel.from_pretrained(fp_dir, quantization_config=SVDQuantConfig(), torch_dtype=BF16)
    out = tmp_path_factory.mktemp("bad") / "q"
    model.save_pretrained(out)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_tensors(path: Path, fn) -> None:
    sd = load_file(path / WEIGHTS)
    fn(sd)
    save_file(sd, path / WEIGHTS)


def _edit_config(path: Path, fn) -> None:
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg["quantization_config"])
    (path / "config.json").write_text(json.dumps(cfg))


def _load(path: Path, **kw):
    return FluxTransformer2DModel.from_pretrained(path, torch_dtype=BF16, **kw)


@pytest.mark.parametrize("tensor", ["qweight", "proj_up", "smooth_factor", "wscales", "bias"])
def test_missing_tensor_is_named(q_dir, tmp_path, tensor):
    bad = _copy(q_dir, tmp_path / "m")
    _edit_tensors(bad, lambda sd: sd.pop(f"{LAYER}.{tensor}"))
    with pytest.raises(QuantizationError, match=rf"{LAYER}\.{tensor}"):
        _load(bad)


@pytest.mark.parametrize(
    "tensor, shape",
    [("proj_down", (64, 16)), ("qweight", (64, 64)), ("wscales", (2, 64)), ("proj_up", (128, 32))],
)
def test_misshaped_tensor_is_named(q_dir, tmp_path, tensor, shape):
    bad = _copy(q_dir, tmp_path / "s")

    def edit(sd):
        old = sd[f"{LAYER}.{tensor}"]
        sd[f"{LAYER}.{tensor}"] = torch.zeros(shape, dtype=old.dtype)

    _edit_tensors(bad, edit)
    with pytest.raises(QuantizationError, match=rf"{LAYER}\.{tensor}.*shape"):
        _load(bad)


def test_wrong_dtype_tensor_is_named(q_dir, tmp_path):
    bad = _copy(q_dir, tmp_path / "d")
    _edit_tensors(bad, lambda sd: sd.__setitem__(f"{LAYER}.proj_down", sd[f"{LAYER}.proj_down"].float()))
    with pytest.raises(QuantizationError, match=rf"{LAYER}\.proj_down.*dtype"):
        _load(bad)


def test_nan_tensor_is_named(q_dir, tmp_path):
    bad = _copy(q_dir, tmp_path / "n")

    def edit(sd):
        sd[f"{LAYER}.proj_up"][3, 1] = float("nan")

    _edit_tensors(bad, edit)
    with pytest.raises(QuantizationError, match=rf"{LAYER}\.proj_up.*NaN"):
        _load(bad)


def test_truncated_shard_is_named(q_dir, tmp_path):
    model = _load(q_dir)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="100KB")
    shard = sorted(sharded.glob("*-of-*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) - 1000])
    with pytest.raises(QuantizationError, match=rf"{shard.name}.*truncated"):
        _load(sharded)


def test_truncated_single_file_fails_naming_the_file(q_dir, tmp_path):
    bad = _copy(q_dir, tmp_path / "t")
    f = bad / WEIGHTS
    f.write_bytes(f.read_bytes()[:-500])
    with pytest.raises(Exception, match=WEIGHTS):
        _load(bad)


def test_config_rank_contradicting_tensors(q_dir, tmp_path):
    """Tensors of lower rank than the config says. (A higher per-layer rank is legal: a folded LoRA.)"""
    bad = _copy(q_dir, tmp_path / "r")
    _edit_config(bad, lambda q: q.__setitem__("rank", 48))
    with pytest.raises(QuantizationError, match=r"proj_(down|up).*rank=48"):
        _load(bad)


def test_config_group_size_contradicting_tensors(q_dir, tmp_path):
    bad = _copy(q_dir, tmp_path / "g")
    _edit_config(bad, lambda q: q.__setitem__("group_size", 32))
    with pytest.raises(QuantizationError, match=r"wscales.*group_size=32"):
        _load(bad)


def test_config_format_contradicting_tensors(q_dir, tmp_path):
    bad = _copy(q_dir, tmp_path / "f")
    _edit_config(bad, lambda q: q.__setitem__("quant_format", "nvfp4"))
    with pytest.raises(QuantizationError, match=r"wtscale.*nvfp4"):
        _load(bad)


def test_unknown_option_in_config_json_is_named(q_dir, tmp_path):
    bad = _copy(q_dir, tmp_path / "u")
    _edit_config(bad, lambda q: q.__setitem__("rotate_hadamard", True))
    with pytest.raises(ValueError, match="rotate_hadamard"):
        _load(bad)


def test_unknown_format_in_config_json_is_named(q_dir, tmp_path):
    bad = _copy(q_dir, tmp_path / "uf")
    _edit_config(bad, lambda q: q.__setitem__("quant_format", "int3"))
    with pytest.raises(ValueError, match="quant_format='int3'"):
        _load(bad)


def test_quantized_tensors_without_quantization_config(q_dir, tmp_path):
    bad = _copy(q_dir, tmp_path / "nc")
    cfg = json.loads((bad / "config.json").read_text())
    del cfg["quantization_config"]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(QuantizationError, match=r"qweight.*no quantization_config"):
        _load(bad, quantization_config=SVDQuantConfig())


def test_pre_quantized_config_without_svdquant_tensors(fp_dir, tmp_path):
    bad = _copy(fp_dir, tmp_path / "nt")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["quantization_config"] = SVDQuantConfig().to_dict()
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(QuantizationError, match="qweight"):
        _load(bad)


def test_svdquant_tensors_for_a_layer_the_model_lacks(q_dir, tmp_path):
    bad = _copy(q_dir, tmp_path / "x")

    def edit(sd):
        for t in ("qweight", "wscales", "smooth_factor", "proj_down", "proj_up"):
            sd[f"transformer_blocks.0.attn.to_zz.{t}"] = sd[f"{LAYER}.{t}"].clone()

    _edit_tensors(bad, edit)
    with pytest.raises(QuantizationError, match="to_zz"):
        _load(bad)


def test_quantize_on_load_unquantizable_group_raises_nothing_but_skips(fp_dir):
    """A layer whose width is not a multiple of the group stays 16-bit rather than failing the load."""
    m = FluxTransformer2DModel.from_pretrained(
        fp_dir, quantization_config=SVDQuantConfig(modules_to_not_convert=[]), torch_dtype=BF16
    )
    assert type(m.x_embedder) is torch.nn.Linear  # in_features=16

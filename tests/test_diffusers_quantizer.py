"""diffusers integration, model level: config, registration, quantize on load, pre-quantized save/load."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from diffusers import FluxTransformer2DModel
from diffusers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
from diffusers.quantizers.quantization_config import QuantizationConfigMixin
from safetensors.torch import load_file, save_file
from torch import nn

import svdquant_hf
from svdquant_hf import SVDQuantConfig, SVDQuantLinear, SVDQuantOptions
from svdquant_hf.quantizers.common import default_skip_patterns, quantizable_linears
from svdquant_hf.quantizers.diffusers.quantizer import SVDQuantDiffusersQuantizer, _single_cpu_thread
from svdquant_hf.quantizers.diffusers.utils import ReferencePathWarning
from svdquant_hf.testing import model_inputs, save_tiny_model, tiny_flux_transformer

from _hf_helpers import materialize, plain_linears, rel_err, run_fresh, svd_layers

BF16 = torch.bfloat16
FLUX_SKIPPED = {
    "x_embedder", "context_embedder", "proj_out", "norm_out.linear",
    "time_text_embed.timestep_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2",
    "time_text_embed.text_embedder.linear_1", "time_text_embed.text_embedder.linear_2",
}


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tiny_flux_transformer(seed=3), tmp_path_factory.mktemp("flux") / "fp32")


@pytest.fixture(scope="module")
def flux_ref(flux_dir):
    return FluxTransformer2DModel.from_pretrained(flux_dir, torch_dtype=BF16)


@pytest.fixture(scope="module")
def flux_q(flux_dir):
    return FluxTransformer2DModel.from_pretrained(flux_dir, quantization_config=SVDQuantConfig(), torch_dtype=BF16)


@pytest.fixture(scope="module")
def flux_saved(flux_q, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("flux_q") / "q"
    flux_q.save_pretrained(out)
    return out


# ---- config and registration ----


def test_config_is_diffusers_config_and_registered():
    cfg = SVDQuantConfig()
    assert isinstance(cfg, QuantizationConfigMixin) and isinstance(cfg, SVDQuantOptions)
    assert svdquant_hf.SVDQuantConfig is SVDQuantConfig
    assert cfg.quant_method.value == "svdquant"
    assert AUTO_QUANTIZATION_CONFIG_MAPPING["svdquant"] is SVDQuantConfig
    assert AUTO_QUANTIZER_MAPPING["svdquant"] is SVDQuantDiffusersQuantizer


def test_config_round_trips_through_json():
    cfg = SVDQuantConfig(rank=16, group_size=128, alpha=0.5, modules_to_not_convert=["single_transformer_blocks"])
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["quant_method"] == "svdquant" and d["rank"] == 16 and d["alpha"] == 0.5
    back = SVDQuantConfig.from_dict(d)
    assert back == cfg and back.to_dict() == cfg.to_dict()
    assert cfg.to_diff_dict() == {
        "quant_method": "svdquant", "rank": 16, "group_size": 128, "alpha": 0.5,
        "modules_to_not_convert": ["single_transformer_blocks"],
    }
    assert "rank" in repr(cfg)
    assert SVDQuantConfig(quant_method="svdquant").to_dict() == SVDQuantConfig().to_dict()


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"rnak": 16}, "rnak"),
        ({"quant_format": "int3"}, "quant_format"),
        ({"group_size": 48}, "group_size"),
        ({"rank": -1}, "rank"),
        ({"quant_method": "bitsandbytes"}, "quant_method"),
        ({"alpha": 1.5}, "alpha"),
    ],
)
def test_config_rejects_bad_options(kwargs, word):
    with pytest.raises(ValueError, match=word):
        SVDQuantConfig(**kwargs)


# ---- quantize on load ----


def test_quantize_on_load_replaces_every_targeted_linear(flux_dir, flux_q, flux_ref):
    expected = set(quantizable_linears(flux_ref, SVDQuantConfig()))
    all_linears = set(plain_linears(flux_ref))
    assert expected == all_linears - FLUX_SKIPPED  # default skip list, nothing else
    assert set(svd_layers(flux_q)) == expected
    assert set(plain_linears(flux_q)) == FLUX_SKIPPED
    for name, mod in svd_layers(flux_q).items():
        assert mod.layer_name == name and mod.qweight.dtype == torch.int8
        assert mod.proj_up.dtype == BF16 and mod.qweight.device.type == "cpu"
    inp = model_inputs(flux_ref, seed=11)
    with torch.no_grad():
        ref = flux_ref(**inp)[0]
        out = flux_q(**inp)[0]
    assert out.dtype == BF16 and torch.isfinite(out).all()
    err = rel_err(out, ref)
    assert 1e-4 < err < 0.05, err  # quantized (not a no-op), and close to the 16-bit model


def test_quantize_on_load_matches_offline_quantization(flux_dir, flux_q, flux_ref):
    """The streamed path quantizes exactly like the offline path, from the weights as stored (fp32 here,
    not their bf16 cast: diffusers casts to torch_dtype first, the quantizer keeps the stored tensor)."""
    from svdquant_hf.quantize import quantize_linear

    model = FluxTransformer2DModel.from_pretrained(flux_dir)  # fp32, as stored
    work = torch.device("cuda") if torch.cuda.is_available() else None  # where the streamed path works

    for name in svd_layers(flux_q):
        lin = model.get_submodule(name)
        with _single_cpu_thread(True):  # as the streamed path does for small CPU layers (LAPACK results
            offline = quantize_linear(lin, SVDQuantConfig(), name, work_device=work)  # depend on threads)
        online = flux_q.get_submodule(name)
        for t in ("qweight", "wscales", "smooth_factor", "proj_down", "proj_up", "bias"):
            assert torch.equal(getattr(offline, t), getattr(online, t)), (name, t)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is for CPU-only machines")
def test_cpu_only_quantize_on_load_warns_once(flux_dir):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        model = FluxTransformer2DModel.from_pretrained(flux_dir, quantization_config=SVDQuantConfig(), torch_dtype=BF16)
    ours = [w for w in rec if issubclass(w.category, ReferencePathWarning)]
    assert len(ours) == 1, [str(w.message) for w in rec]
    assert "reference path" in str(ours[0].message)
    assert svd_layers(model)


def test_modules_to_not_convert_overrides_defaults(flux_dir):
    cfg = SVDQuantConfig(modules_to_not_convert=["single_transformer_blocks", "ff_context"])
    model = FluxTransformer2DModel.from_pretrained(flux_dir, quantization_config=cfg, torch_dtype=BF16)
    names = set(svd_layers(model))
    assert names and not any(n.startswith("single_transformer_blocks") or ".ff_context." in n for n in names)
    # the user list replaces the defaults: the embedders are quantizable and now quantized
    assert {"context_embedder", "time_text_embed.timestep_embedder.linear_1"} <= names
    assert "x_embedder" not in names  # in_features=16: not a multiple of the group, stays 16-bit
    assert isinstance(model.get_submodule("single_transformer_blocks.0.proj_mlp"), nn.Linear)


def test_default_skip_patterns_are_anchored():
    pats = default_skip_patterns(FluxTransformer2DModel)
    model = tiny_flux_transformer()
    targets = quantizable_linears(model, SVDQuantConfig(), pats)
    assert "single_transformer_blocks.0.proj_out" in targets  # nested proj_out is quantized
    assert "proj_out" not in targets


def test_quantize_on_load_fp16_and_fp32_torch_dtype(flux_dir):
    m16 = FluxTransformer2DModel.from_pretrained(flux_dir, quantization_config=SVDQuantConfig(), torch_dtype=torch.float16)
    assert all(m.proj_up.dtype == torch.float16 for m in svd_layers(m16).values())
    m32 = FluxTransformer2DModel.from_pretrained(flux_dir, quantization_config=SVDQuantConfig())
    assert all(m.proj_up.dtype == BF16 for m in svd_layers(m32).values())  # 16-bit compute for fp32 models
    assert m32.x_embedder.weight.dtype == torch.float32
    inp = model_inputs(m32, seed=5)
    with torch.no_grad():
        y = m32(**inp)[0]
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


def test_cannot_cast_quantized_model(flux_q):
    with pytest.raises(ValueError, match="dtype"):
        flux_q.to(torch.float16)


# ---- pre-quantized save / load ----


def test_saved_checkpoint_layout(flux_q, flux_saved):
    cfg = json.loads((flux_saved / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "svdquant"
    assert SVDQuantConfig.from_dict(cfg["quantization_config"]) == SVDQuantConfig()
    files = list(flux_saved.glob("*.safetensors"))
    sd = {}
    for f in files:
        sd.update(load_file(f))
    name = "transformer_blocks.0.attn.to_q"
    assert sd[f"{name}.qweight"].dtype == torch.int8 and sd[f"{name}.qweight"].shape == (64, 32)
    for t in ("wscales", "smooth_factor", "proj_down", "proj_up", "bias"):
        assert sd[f"{name}.{t}"].dtype == BF16
    assert f"{name}.weight" not in sd
    assert not list(flux_saved.parent.glob(".*tmp*"))  # no temporary directory left behind


def test_reload_is_bit_identical_in_fresh_process(flux_q, flux_saved, tmp_path):
    inp = model_inputs(flux_q, seed=21)
    save_file({k: v for k, v in inp.items() if isinstance(v, torch.Tensor)}, tmp_path / "inp.safetensors")
    run_fresh(f"""
        import torch, svdquant_hf
        from diffusers import FluxTransformer2DModel
        from safetensors.torch import load_file, save_file
        import sys; sys.path.insert(0, "tests")
        from _hf_helpers import materialize
        m = FluxTransformer2DModel.from_pretrained({str(flux_saved)!r}, torch_dtype=torch.bfloat16)
        assert type(m.transformer_blocks[0].attn.to_q).__name__ == "SVDQuantLinear"
        materialize(m)
        inp = load_file({str(tmp_path / 'inp.safetensors')!r})
        with torch.no_grad():
            y = m(**inp, return_dict=False)[0]
        save_file({{"y": y.contiguous(), **{{k: v.contiguous() for k, v in m.state_dict().items()}}}},
                  {str(tmp_path / 'out.safetensors')!r})
    """)
    got = load_file(tmp_path / "out.safetensors")
    for k, v in flux_q.state_dict().items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    materialize(flux_q)
    with torch.no_grad():
        y = flux_q(**inp)[0]
    assert torch.equal(got["y"], y)


def test_reload_keeps_stored_dtype_whatever_torch_dtype(flux_q, flux_saved):
    m = FluxTransformer2DModel.from_pretrained(flux_saved, torch_dtype=torch.float16)
    for name, mod in svd_layers(m).items():
        ref = flux_q.get_submodule(name)
        for t in ("wscales", "smooth_factor", "proj_down", "proj_up", "bias"):
            assert getattr(mod, t).dtype == BF16 and torch.equal(getattr(mod, t), getattr(ref, t)), (name, t)
    assert m.x_embedder.weight.dtype == torch.float16  # 16-bit layers follow torch_dtype


def test_reload_does_not_requantize(flux_saved, monkeypatch):
    import svdquant_hf.quantizers.diffusers.quantizer as qmod

    def boom(*a, **k):
        raise AssertionError("re-quantized a pre-quantized checkpoint")

    monkeypatch.setattr(qmod, "quantize_weight", boom)
    m = FluxTransformer2DModel.from_pretrained(flux_saved, torch_dtype=BF16)
    assert svd_layers(m)


def test_sharded_save_and_reload(flux_q, tmp_path):
    out = tmp_path / "sharded"
    flux_q.save_pretrained(out, max_shard_size="100KB")
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) > 2 and (out / "diffusion_pytorch_model.safetensors.index.json").exists()
    m = FluxTransformer2DModel.from_pretrained(out, torch_dtype=BF16)
    a, b = flux_q.state_dict(), m.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_quantize_on_load_from_small_shards_equals_one_file(flux_dir, flux_q, tmp_path):
    """A 16-bit checkpoint in small shards puts some layers' bias in a later shard than their weight (here
    transformer_blocks.0.norm1.linear); before the fix the bias was skipped as unexpected and loading failed."""
    sharded = save_tiny_model(FluxTransformer2DModel.from_pretrained(flux_dir), tmp_path / "s", max_shard_size="60KB")
    index = json.loads((sharded / "diffusion_pytorch_model.safetensors.index.json").read_text())["weight_map"]
    split = [n for n in svd_layers(flux_q) if n + ".bias" in index and index[n + ".bias"] > index[n + ".weight"]]
    assert split, "no layer has its bias in a later shard than its weight: the test lost its point"
    m = FluxTransformer2DModel.from_pretrained(sharded, quantization_config=SVDQuantConfig(), torch_dtype=BF16)
    a, b = flux_q.state_dict(), m.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_save_overwrites_previous_save_cleanly(flux_q, tmp_path):
    out = tmp_path / "twice"
    flux_q.save_pretrained(out, max_shard_size="100KB")
    flux_q.save_pretrained(out)
    assert [p.name for p in out.glob("*.safetensors*")] == ["diffusion_pytorch_model.safetensors"]
    FluxTransformer2DModel.from_pretrained(out, torch_dtype=BF16)


def test_failed_save_leaves_nothing_half_written(flux_q, tmp_path, monkeypatch):
    import safetensors.torch

    real = safetensors.torch.save_file
    calls = {"n": 0}

    def flaky(tensors, filename, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            Path(filename).write_bytes(b"partial")
            raise OSError("disk full")
        return real(tensors, filename, *a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", flaky)
    new = tmp_path / "new"
    with pytest.raises(OSError, match="disk full"):
        flux_q.save_pretrained(new, max_shard_size="100KB")
    assert not new.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary directory either

    monkeypatch.setattr(safetensors.torch, "save_file", real)
    old = tmp_path / "old"
    flux_q.save_pretrained(old)
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    calls["n"] = 0
    monkeypatch.setattr(safetensors.torch, "save_file", flaky)
    with pytest.raises(OSError):
        flux_q.save_pretrained(old, max_shard_size="100KB")
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before

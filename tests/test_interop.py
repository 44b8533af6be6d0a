"""Nunchaku / nunchaku_lite interop: layouts, import, export, bad input.

The Nunchaku-layout checkpoints here are built by an independent packer written from the published
layout description (index formulas + uint32 words), not by the library's reshape/permute code.
"""
from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from svdquant_hf.formats.int4 import dequantize_int4, pack_int4
from svdquant_hf.interop import nunchaku_layout as L
from svdquant_hf.interop.nunchaku import (
    GELU_SHIFT,
    NunchakuFormatError,
    export_nunchaku_lite,
    import_nunchaku,
    read_nunchaku,
    to_nunchaku_lite,
)
from svdquant_hf.modules import SVDQuantLinear
from svdquant_hf.ops.reference import quantize_act_ref, w4a4_gemm_ref

DT = torch.bfloat16

def ref_pack_weight(codes: torch.Tensor) -> torch.Tensor:
    n_, k_ = codes.shape
    n = np.arange(n_)[:, None]
    k = np.arange(k_)[None, :]
    nt, p, s, l = n // 128, (n % 128) // 16, (n % 16) // 8, n % 8
    kt, t, m, r = k // 64, (k % 64) // 32, (k % 32) // 8, k % 8
    word = (((((nt * (k_ // 64) + kt) * 8 + p) * 8 + l) * 4 + m) * 2 + s) * 2 + t
    words = np.zeros(n_ * k_ // 8, dtype=np.uint32)
    nib = (codes.numpy().astype(np.int64) & 0xF).astype(np.uint32)
    np.bitwise_or.at(words, word.ravel(), (nib << (4 * r).astype(np.uint32)).ravel())
    return torch.from_numpy(words.astype("<u4").view(np.int8).reshape(n_, k_ // 2).copy())


def ref_pack_scales(scales_gn: torch.Tensor) -> torch.Tensor:
    g_, n_ = scales_gn.shape
    out = torch.empty(g_ * n_, dtype=scales_gn.dtype)
    for n in range(n_):
        nt, a, b, c, d = n // 128, (n % 128) // 16, (n % 16) // 8, (n % 8) // 2, n % 2
        for g in range(g_):
            out[((((nt * g_ + g) * 8 + a) * 4 + c) * 2 + b) * 2 + d] = scales_gn[g, n]
    return out.reshape(g_, n_)


def ref_pack_lowrank(x: torch.Tensor, down: bool) -> torch.Tensor:
    """x: Nunchaku's logical lora_down [R, K] (down) or lora_up [N, R]; returns the stored tensor."""
    rows, cols = x.shape
    out = torch.empty(rows * cols, dtype=x.dtype)
    for i in range(rows):
        for j in range(cols):
            nf, s, l = i // 16, (i % 16) // 8, i % 8
            kf, t, m, e = j // 16, (j % 16) // 8, (j % 8) // 2, j % 2
            outer, inner = (kf, nf) if down else (nf, kf)
            n_inner = rows // 16 if down else cols // 16
            out[(((((outer * n_inner + inner) * 8 + l) * 4 + m) * 2 + s) * 2 + t) * 2 + e] = x[i, j]
    return out.reshape(cols, rows) if down else out.reshape(rows, cols)


def logical_layer(n: int, k: int, rank: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "codes": torch.randint(-8, 8, (n, k), generator=g, dtype=torch.int8),
        "scales": (torch.rand(k // 64, n, generator=g) * 0.02 + 1e-3).to(DT),
        "smooth": (torch.rand(k, generator=g) * 3 + 0.25).to(DT),
        "down": (torch.randn(k, rank, generator=g) * 0.05).to(DT),  # applies to the unsmoothed input
        "up": (torch.randn(n, rank, generator=g) * 0.05).to(DT),
        "bias": (torch.randn(n, generator=g) * 0.1).to(DT),
    }


def nunchaku_tensors(ly: dict[str, torch.Tensor], prefix: str, legacy: bool = True) -> dict[str, torch.Tensor]:
    names = ("lora_down", "lora_up", "smooth", "smooth_orig") if legacy else (
        "proj_down", "proj_up", "smooth_factor", "smooth_factor_orig")
    return {
        f"{prefix}.qweight": ref_pack_weight(ly["codes"]),
        f"{prefix}.wscales": ref_pack_scales(ly["scales"]),
        f"{prefix}.bias": ref_pack_scales(ly["bias"].reshape(1, -1)).reshape(-1),
        f"{prefix}.{names[2]}": ref_pack_scales(ly["smooth"].reshape(1, -1)).reshape(-1),
        f"{prefix}.{names[3]}": ref_pack_scales(ly["smooth"].reshape(1, -1)).reshape(-1),
        f"{prefix}.{names[0]}": ref_pack_lowrank(ly["down"].t().contiguous(), down=True),
        f"{prefix}.{names[1]}": ref_pack_lowrank(ly["up"], down=False),
    }


def reference_forward(ly: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Our reference numerics on the logical (unpacked) values."""
    xq, asc, lr = quantize_act_ref(x, ly["smooth"], ly["down"], 64)
    return w4a4_gemm_ref(xq, asc, pack_int4(ly["codes"]), ly["scales"], lr, ly["up"], ly["bias"], 64)


def module_from(tensors: dict[str, torch.Tensor], name: str) -> SVDQuantLinear:
    n, k2 = tensors[f"{name}.qweight"].shape
    rank = tensors[f"{name}.proj_down"].shape[1]
    mod = SVDQuantLinear(k2 * 2, n, True, rank, 64, "int4", dtype=DT)
    mod.load_state_dict({k.split(".")[-1]: v for k, v in tensors.items() if k.rpartition(".")[0] == name})
    return mod


# --- layouts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,k,rank", [(128, 128, 16), (256, 384, 32), (384, 256, 20)])
def test_layouts_match_independent_packer_and_invert(n, k, rank):
    ly = logical_layer(n, k, rank, seed=n + k + rank)
    assert torch.equal(L.pack_weight(ly["codes"]), ref_pack_weight(ly["codes"]))
    assert torch.equal(L.unpack_weight(ref_pack_weight(ly["codes"])), ly["codes"])
    assert torch.equal(L.pack_scales(ly["scales"]), ref_pack_scales(ly["scales"]))
    assert torch.equal(L.unpack_scales(ref_pack_scales(ly["scales"])), ly["scales"])
    assert torch.equal(L.pack_vector(ly["smooth"]), ref_pack_scales(ly["smooth"].reshape(1, -1)).reshape(-1))
    r16 = L.padded_rank(rank)
    down16 = torch.cat([ly["down"], torch.zeros(k, r16 - rank, dtype=DT)], 1)
    up16 = torch.cat([ly["up"], torch.zeros(n, r16 - rank, dtype=DT)], 1)
    assert torch.equal(L.pack_proj_down(ly["down"]), ref_pack_lowrank(down16.t().contiguous(), down=True))
    assert torch.equal(L.pack_proj_up(ly["up"]), ref_pack_lowrank(up16, down=False))
    assert torch.equal(L.unpack_proj_down(L.pack_proj_down(ly["down"])), down16)
    assert torch.equal(L.unpack_proj_up(L.pack_proj_up(ly["up"])), up16)


def test_packed_weight_is_not_the_plain_nibble_order():
    codes = logical_layer(128, 128, 16, seed=3)["codes"]
    assert not torch.equal(L.pack_weight(codes), pack_int4(codes))


def test_layout_rejects_untiled_shapes():
    with pytest.raises(L.LayoutError, match="qweight: shape \\[64, 128\\]"):
        L.pack_weight(torch.zeros(64, 128, dtype=torch.int8))
    with pytest.raises(L.LayoutError, match="out_features=96"):
        L.pack_scales(torch.zeros(2, 96, dtype=DT))


# --- import -------------------------------------------------------------------------------------


def test_single_file_import_reproduces_reference_outputs(tmp_path, capsys):
    plain = logical_layer(256, 384, 32, seed=1)
    qkv = logical_layer(384, 128, 32, seed=2)
    tensors = {**nunchaku_tensors(plain, "blocks.0.proj"), **nunchaku_tensors(qkv, "blocks.0.attn.to_qkv", legacy=False)}
    tensors["blocks.0.norm.weight"] = torch.randn(128).to(DT)
    config = {"_class_name": "ToyTransformer", "hidden": 128}
    qc = {"method": "svdquant", "weight": {"dtype": "int4", "group_size": 64}, "rank": 32}
    src = tmp_path / "svdq-int4_r32-toy.safetensors"
    save_file(tensors, str(src), metadata={"config": json.dumps(config), "quantization_config": json.dumps(qc)})

    out = import_nunchaku(src, tmp_path / "ours", progress=False)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["hidden"] == 128 and cfg["quantization_config"]["quant_method"] == "svdquant"
    assert cfg["quantization_config"]["rank"] == 32 and cfg["quantization_config"]["group_size"] == 64
    ours = load_file(str(out / "diffusion_pytorch_model.safetensors"))
    assert torch.equal(ours["blocks.0.norm.weight"], tensors["blocks.0.norm.weight"])
    assert not any(k.endswith(("smooth_orig", "smooth_factor_orig", "to_qkv.qweight")) for k in ours)

    x = torch.randn(5, 7, 384).to(DT)
    y = module_from(ours, "blocks.0.proj")(x)
    assert torch.equal(y.reshape(-1, 256), reference_forward(plain, x.reshape(-1, 384)))
    # the fused QKV layer is split exactly: concatenated outputs equal the fused reference
    x2 = torch.randn(9, 128).to(DT)
    parts = [module_from(ours, f"blocks.0.attn.{p}")(x2) for p in ("to_q", "to_k", "to_v")]
    assert torch.equal(torch.cat(parts, -1), reference_forward(qkv, x2))

    # the same through the CLI, and `info` on the Nunchaku file (headers only)
    from svdquant_hf.cli import main

    assert main(["import-nunchaku", str(src), "--out", str(tmp_path / "cli")]) == 0
    cli = load_file(str(tmp_path / "cli" / "diffusion_pytorch_model.safetensors"))
    assert cli.keys() == ours.keys() and all(torch.equal(cli[k], ours[k]) for k in ours)
    capsys.readouterr()
    assert main(["info", str(src), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    (comp,) = info["components"]
    assert info["kind"] == "single-file" and info["class_name"] == "ToyTransformer"
    assert comp["quantized_layers"] == 2 and comp["ranks"] == [32] and comp["quant_method"] == "svdquant"


def test_legacy_flux_folder_maps_names_merges_and_unshifts(tmp_path):
    qkv, fc2 = logical_layer(384, 128, 32, 4), logical_layer(128, 512, 32, 5)
    s_out, s_fc2 = logical_layer(128, 128, 32, 6), logical_layer(128, 512, 32, 7)
    s_out["bias"].zero_()
    blocks = {
        **nunchaku_tensors(qkv, "transformer_blocks.0.qkv_proj"),
        **nunchaku_tensors(fc2, "transformer_blocks.0.mlp_fc2"),
        **nunchaku_tensors(s_out, "single_transformer_blocks.0.out_proj"),
        **nunchaku_tensors(s_fc2, "single_transformer_blocks.0.mlp_fc2"),
        "transformer_blocks.0.norm_added_q.weight": torch.ones(64, dtype=DT),
    }
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    save_file(blocks, str(legacy / "transformer_blocks.safetensors"))
    save_file({"x_embedder.weight": torch.randn(128, 64).to(DT)}, str(legacy / "unquantized_layers.safetensors"))
    (legacy / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel"}))

    # a partial FLUX checkpoint: skip the check against the full FluxTransformer2DModel
    ours = load_file(str(import_nunchaku(legacy, tmp_path / "ours", progress=False, validate=False)
                         / "diffusion_pytorch_model.safetensors"))
    assert "transformer_blocks.0.attn.norm_added_q.weight" in ours and "x_embedder.weight" in ours
    for name in ("attn.to_q", "attn.to_k", "attn.to_v", "ff.net.2"):
        assert f"transformer_blocks.0.{name}.qweight" in ours
    # ranks are padded to the largest (the merged proj_out has 32 + 32)
    assert {ours[k].shape[1] for k in ours if k.endswith(".proj_down")} == {64}

    def dequant(ly):  # residual in the input domain [N, K]
        return dequantize_int4(ly["codes"], ly["scales"].t(), 64) / ly["smooth"].float()

    # ff.net.2: Nunchaku computes R (x + shift) + L x + b; ours R x + L x + b' with b' = b + R shift
    want = fc2["bias"].float() + dequant(fc2) @ torch.full((512,), GELU_SHIFT)
    got = ours["transformer_blocks.0.ff.net.2.bias"].float()
    assert torch.allclose(got, want, rtol=2 ** -8, atol=1e-6)
    assert not torch.allclose(got, fc2["bias"].float(), atol=1e-3)
    # proj_out = out_proj (input 0:128) + mlp_fc2 (input 128:640): weights concatenate exactly
    name = "single_transformer_blocks.0.proj_out"
    merged_codes = torch.cat([s_out["codes"], s_fc2["codes"]], 1)
    assert torch.equal(ours[f"{name}.qweight"], pack_int4(merged_codes))
    assert torch.equal(ours[f"{name}.wscales"], torch.cat([s_out["scales"], s_fc2["scales"]], 0))
    assert torch.equal(ours[f"{name}.smooth_factor"], torch.cat([s_out["smooth"], s_fc2["smooth"]]))
    x = torch.randn(3, 640).to(DT)
    lr = x.float() @ ours[f"{name}.proj_down"].float() @ ours[f"{name}.proj_up"].float().t()
    lr_ref = x[:, :128].float() @ s_out["down"].float() @ s_out["up"].float().t() + \
        x[:, 128:].float() @ s_fc2["down"].float() @ s_fc2["up"].float().t()
    assert torch.allclose(lr, lr_ref, atol=1e-5)


# --- export -------------------------------------------------------------------------------------


def _tiny_flux():
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=64,
        num_attention_heads=2, joint_attention_dim=128, pooled_projection_dim=128, axes_dims_rope=(16, 24, 24),
    ).eval()


@pytest.fixture(scope="module")
def quantized_flux():
    from svdquant_hf import SVDQuantOptions, quantize_model

    model = _tiny_flux()
    unaligned = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                 and (m.in_features % 128 or m.out_features % 128)]
    quantize_model(model.to(DT), SVDQuantOptions(rank=32), extra_skip=unaligned, progress=False)
    config = {**dict(model.config), "_class_name": "FluxTransformer2DModel",
              "quantization_config": {"quant_method": "svdquant", "rank": 32, "group_size": 64, "quant_format": "int4"}}
    config = json.loads(json.dumps(config, default=list))
    return config, {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, model


def _diffusers_nunchaku_utils(monkeypatch):
    """diffusers' own nunchaku_lite module replacement, with its remote-kernel download stubbed out."""
    import diffusers.utils as dutils
    import diffusers.utils.constants as dconst

    fake = types.ModuleType("kernels")
    fake.get_kernel = lambda *a, **k: types.SimpleNamespace(ops=None)
    monkeypatch.setitem(sys.modules, "kernels", fake)
    monkeypatch.setattr(dutils, "is_kernels_available", lambda: True)
    monkeypatch.setattr(dutils, "is_kernels_version", lambda *a: True)
    monkeypatch.setattr(dconst, "DIFFUSERS_TRUST_REMOTE_KERNELS", True)
    monkeypatch.delitem(sys.modules, "diffusers.quantizers.nunchaku.utils", raising=False)
    import diffusers.quantizers.nunchaku.utils as nutils

    return nutils


def test_export_matches_diffusers_nunchaku_lite_layout(quantized_flux, monkeypatch):
    from accelerate import init_empty_weights
    from diffusers.quantizers.quantization_config import NunchakuLiteQuantizationConfig

    config, state, qmodel = quantized_flux
    new_config, tensors = to_nunchaku_lite(config, state, progress=False)
    qc = NunchakuLiteQuantizationConfig(**{k: v for k, v in new_config["quantization_config"].items() if k != "quant_method"})
    assert qc.svdq_w4a4["rank"] == 32 and len(qc.svdq_w4a4["targets"]) > 10
    nutils = _diffusers_nunchaku_utils(monkeypatch)
    with init_empty_weights():
        model = _tiny_flux()
    nutils.replace_with_nunchaku_linear(model.to(DT), qc.to_dict(), DT)
    nutils.check_strict_state_dict_match(model, tensors)  # raises on any missing / unexpected key
    expected = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    for key, t in tensors.items():
        assert tuple(t.shape) == tuple(expected[key].shape), key
        assert t.dtype == expected[key].dtype, key


def test_export_then_import_round_trips_exactly(quantized_flux, tmp_path):
    config, state, qmodel = quantized_flux
    src = tmp_path / "ours"
    src.mkdir()
    save_file(state, str(src / "diffusion_pytorch_model.safetensors"))
    (src / "config.json").write_text(json.dumps(config))
    lite = export_nunchaku_lite(src, tmp_path / "lite", progress=False)
    assert read_nunchaku(lite).source_format == "nunchaku_lite"
    lite_sd = load_file(str(lite / "diffusion_pytorch_model.safetensors"))
    name = "transformer_blocks.0.attn.to_q"
    assert not torch.equal(lite_sd[f"{name}.qweight"], state[f"{name}.qweight"])  # really re-tiled
    back = load_file(str(import_nunchaku(lite, tmp_path / "back", progress=False) / "diffusion_pytorch_model.safetensors"))
    assert back.keys() == state.keys()
    for key, t in state.items():
        assert back[key].dtype == t.dtype and torch.equal(back[key], t), key
    # import checks every tensor against the model the config describes
    bad = load_file(str(lite / "diffusion_pytorch_model.safetensors"))
    bad["transformer_blocks.0.attn.norm_q.wrong"] = bad.pop("transformer_blocks.0.attn.norm_q.weight")
    save_file(bad, str(lite / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(NunchakuFormatError, match="unexpected tensor 'transformer_blocks.0.attn.norm_q.wrong'.*"
                       "1 tensor\\(s\\) of FluxTransformer2DModel missing, e.g. \\['transformer_blocks.0.attn.norm_q.weight'\\]"):
        import_nunchaku(lite, tmp_path / "bad", progress=False)
    # the imported folder loads through the diffusers integration and computes what the original did
    from diffusers import FluxTransformer2DModel

    from svdquant_hf.testing import model_inputs

    loaded = FluxTransformer2DModel.from_pretrained(tmp_path / "back", dtype=DT)
    with torch.no_grad():
        a = loaded(**model_inputs(loaded, seed=4))[0]
        b = qmodel(**model_inputs(qmodel, seed=4))[0]
    assert torch.isfinite(a).all() and torch.equal(a, b)


# --- bad input ----------------------------------------------------------------------------------


def test_unexpected_key_is_named(tmp_path):
    tensors = nunchaku_tensors(logical_layer(128, 128, 16, 8), "blocks.0.proj")
    tensors["blocks.0.proj.lora_mid"] = torch.zeros(4)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata={"config": "{}"})
    with pytest.raises(NunchakuFormatError, match="unexpected key 'blocks.0.proj.lora_mid'"):
        import_nunchaku(path, tmp_path / "out", config={"_class_name": "X"}, progress=False)


def ref_pack_awq(codes: torch.Tensor) -> torch.Tensor:
    """TinyChat layout from its description: uint16 word b of each 32-input chunk holds inputs a*8+b at bits
    4a; rows 4 at a time, per 64 inputs the 4 rows' 16 words row after row; viewed as int32 [N/4, K/2]."""
    n_, k_ = codes.shape
    out = np.zeros((n_ // 4, k_), dtype=np.uint16)
    c = codes.numpy().astype(np.uint16)
    for n in range(n_):
        r4, j = divmod(n, 4)
        for chunk in range(k_ // 32):
            blk, h = divmod(chunk, 2)
            for b in range(8):
                word = sum(int(c[n, chunk * 32 + a * 8 + b]) << (4 * a) for a in range(4))
                out[r4, (blk * 4 + j) * 16 + h * 8 + b] = word
    return torch.from_numpy(out.view(np.int16).copy()).view(torch.int32)


def test_awq_adanorm_layers_become_16bit_linears(tmp_path):
    g = torch.Generator().manual_seed(11)
    n, k, splits = 6 * 64, 128, 6
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.int16)
    scales = (torch.rand(k // 64, n, generator=g) * 0.01 + 1e-3).to(DT)
    zeros = (-torch.rand(k // 64, n, generator=g) * 0.05).to(DT)
    bias = (torch.randn(n, generator=g) * 0.1).to(DT)
    inter = torch.arange(n).reshape(splits, n // splits).t().reshape(-1)  # stored row r <- logical row inter[r]
    delta = torch.zeros(splits)
    delta[1] = delta[splits - 2] = 1
    stored_bias = (bias.float()[inter].reshape(-1, splits) + delta).reshape(-1).to(DT)
    sq = nunchaku_tensors(logical_layer(128, 128, 16, 12), "transformer_blocks.0.out_proj")
    tensors = {
        "transformer_blocks.0.norm1.linear.qweight": ref_pack_awq(codes[inter]),
        "transformer_blocks.0.norm1.linear.wscales": scales[:, inter].contiguous(),
        "transformer_blocks.0.norm1.linear.wzeros": zeros[:, inter].contiguous(),
        "transformer_blocks.0.norm1.linear.bias": stored_bias, **sq,
    }
    assert torch.equal(L.unpack_awq_weight(tensors["transformer_blocks.0.norm1.linear.qweight"]), codes[inter])
    save_file(tensors, str(tmp_path / "flux.safetensors"),
              metadata={"config": json.dumps({"_class_name": "FluxTransformer2DModel"})})
    ours = load_file(str(import_nunchaku(tmp_path / "flux.safetensors", tmp_path / "o", progress=False, validate=False)
                         / "diffusion_pytorch_model.safetensors"))
    want = (codes.float().reshape(n, 2, 64) * scales.t().float()[..., None] + zeros.t().float()[..., None]).reshape(n, k)
    assert torch.equal(ours["transformer_blocks.0.norm1.linear.weight"], want.to(DT))
    assert torch.allclose(ours["transformer_blocks.0.norm1.linear.bias"].float(), bias.float(), atol=2 ** -7)
    assert "transformer_blocks.0.attn.to_out.0.qweight" in ours


def test_nvfp4_layers_are_refused(tmp_path):
    fp4 = nunchaku_tensors(logical_layer(128, 128, 16, 9), "p")
    fp4["p.wscales"] = torch.zeros(8, 128).to(torch.float8_e4m3fn)
    save_file(fp4, str(tmp_path / "fp4.safetensors"), metadata={"config": json.dumps({"_class_name": "X"})})
    with pytest.raises(NunchakuFormatError, match="layer 'p': NVFP4 Nunchaku layers are not supported"):
        import_nunchaku(tmp_path / "fp4.safetensors", tmp_path / "o2", progress=False)
    awq_bad = {"q.qweight": torch.zeros(32, 64, dtype=torch.int32), "q.wscales": torch.zeros(2, 128, dtype=DT)}
    save_file(awq_bad, str(tmp_path / "awq.safetensors"), metadata={"config": json.dumps({"_class_name": "X"})})
    with pytest.raises(NunchakuFormatError, match="layer 'q': AWQ W4A16 layer needs qweight/wscales/wzeros"):
        import_nunchaku(tmp_path / "awq.safetensors", tmp_path / "o3", progress=False)


def test_not_a_checkpoint_and_wrong_shapes(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(NunchakuFormatError, match="not a Nunchaku checkpoint"):
        read_nunchaku(tmp_path)
    with pytest.raises(NunchakuFormatError, match="not a safetensors file"):
        read_nunchaku(tmp_path / "notes.txt")
    bad = nunchaku_tensors(logical_layer(128, 128, 16, 10), "p")
    bad["p.wscales"] = bad["p.wscales"][:1]
    save_file(bad, str(tmp_path / "b.safetensors"), metadata={"config": json.dumps({"_class_name": "X"})})
    with pytest.raises(NunchakuFormatError, match="layer 'p': wscales has shape \\(1, 128\\)"):
        import_nunchaku(tmp_path / "b.safetensors", tmp_path / "o", progress=False)


def test_export_refuses_untiled_layers_and_other_formats(quantized_flux):
    config, state, qmodel = quantized_flux
    name = "transformer_blocks.0.attn.to_q"
    cut = dict(state)
    for s in ("qweight", "proj_up", "bias"):
        cut[f"{name}.{s}"] = state[f"{name}.{s}"][:96]
    cut[f"{name}.wscales"] = state[f"{name}.wscales"][:, :96]
    with pytest.raises(NunchakuFormatError, match=f"layer '{name}': \\[96 out, 128 in\\]"):
        to_nunchaku_lite(config, cut, progress=False)
    nv = {**config, "quantization_config": {**config["quantization_config"], "quant_format": "nvfp4"}}
    with pytest.raises(NunchakuFormatError, match="INT4 group 64 only"):
        to_nunchaku_lite(nv, state, progress=False)


def test_cli_imports_a_single_file_from_the_hub_downloading_only_it(tmp_path, monkeypatch):
    from svdquant_hf.cli import main

    ly = logical_layer(128, 256, 32, seed=13)
    src = tmp_path / "hub" / "svdq-int4_r32-toy.safetensors"
    src.parent.mkdir()
    save_file(nunchaku_tensors(ly, "blocks.0.ff"), str(src), metadata={"config": json.dumps({"_class_name": "Toy"})})
    asked = []
    monkeypatch.setattr("huggingface_hub.hf_hub_download",
                        lambda repo, name, **kw: asked.append((repo, name)) or str(tmp_path / "hub" / name))
    assert main(["import-nunchaku", "some-org/svdq-toy", "--filename", src.name, "--out", str(tmp_path / "o")]) == 0
    assert asked == [("some-org/svdq-toy", src.name)]
    ours = load_file(str(tmp_path / "o" / "diffusion_pytorch_model.safetensors"))
    assert torch.equal(ours["blocks.0.ff.qweight"], pack_int4(ly["codes"]))
    assert main(["import-nunchaku", "some-org/svdq-toy", "--filename", "model.bin", "--out", str(tmp_path / "o2")]) == 2


def test_info_describes_a_nunchaku_hub_repo_from_headers(tmp_path):
    import types
    from unittest import mock

    from svdquant_hf.hub_scripts.info import describe_hub, read_header

    ly = logical_layer(128, 256, 32, seed=14)
    name = "svdq-int4_r32-toy.safetensors"
    save_file({**nunchaku_tensors(ly, "blocks.0.ff"), **nunchaku_tensors(ly, "blocks.1.ff")}, str(tmp_path / name),
              metadata={"config": json.dumps({"_class_name": "ToyTransformer"}),
                        "quantization_config": json.dumps({"method": "svdquant", "rank": 32})})

    def parse(repo, filename, **kw):
        h = read_header(tmp_path / filename)
        return types.SimpleNamespace(metadata=h["__metadata__"], tensors={
            k: types.SimpleNamespace(dtype=v["dtype"], shape=v["shape"], data_offsets=v["data_offsets"])
            for k, v in h.items() if k != "__metadata__"})

    api = mock.MagicMock()
    api.list_repo_files.return_value = [name, "README.md"]
    api.parse_safetensors_file_metadata.side_effect = parse
    info = describe_hub("some-org/svdq-toy", api=api)
    api.hf_hub_download.assert_not_called()  # nothing downloaded: headers only
    (comp,) = info.components
    assert info.kind == "single-files" and comp.name == name and comp.class_name == "ToyTransformer"
    assert comp.quantized_layers == 2 and comp.ranks == [32] and comp.quant_method == "svdquant"
    stored = load_file(str(tmp_path / name))
    assert comp.bytes == sum(t.numel() * t.element_size() for t in stored.values())


def test_export_a_pipeline_folder_converts_quantized_components_only(quantized_flux, tmp_path):
    from svdquant_hf.cli import main

    config, state, _ = quantized_flux
    pipe = tmp_path / "pipe"
    (pipe / "transformer").mkdir(parents=True)
    save_file(state, str(pipe / "transformer" / "diffusion_pytorch_model.safetensors"))
    (pipe / "transformer" / "config.json").write_text(json.dumps(config))
    (pipe / "vae").mkdir()
    (pipe / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    save_file({"w": torch.ones(3)}, str(pipe / "vae" / "diffusion_pytorch_model.safetensors"))
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline", "transformer": [
        "diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]}))
    assert main(["export-nunchaku", str(pipe), "--out", str(tmp_path / "lite")]) == 0
    lite = tmp_path / "lite"
    assert json.loads((lite / "transformer" / "config.json").read_text())["quantization_config"]["quant_method"] == "nunchaku_lite"
    assert (lite / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == (
        pipe / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert (lite / "model_index.json").read_text() == (pipe / "model_index.json").read_text()


def test_complete_legacy_flux_checkpoint_imports_validates_and_loads(tmp_path):
    """A whole tiny FLUX in Nunchaku's legacy layout and names (per DeepCompressor's converter): every diffusers
    tensor must be produced, the folder must load with from_pretrained, and a split layer must match its reference."""
    from diffusers import FluxTransformer2DModel

    from svdquant_hf.modules import SVDQuantLinear
    from svdquant_hf.testing import model_inputs

    cfg = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=64,
               num_attention_heads=2, joint_attention_dim=128, pooled_projection_dim=128, axes_dims_rope=(16, 24, 24))
    dense = {k: v.to(DT) for k, v in FluxTransformer2DModel(**cfg).state_dict().items()}
    d, s = "transformer_blocks.0", "single_transformer_blocks.0"
    svdq = {f"{d}.qkv_proj": (384, 128), f"{d}.qkv_proj_context": (384, 128), f"{d}.out_proj": (128, 128),
            f"{d}.out_proj_context": (128, 128), f"{d}.mlp_fc1": (512, 128), f"{d}.mlp_fc2": (128, 512),
            f"{d}.mlp_context_fc1": (512, 128), f"{d}.mlp_context_fc2": (128, 512),
            f"{s}.qkv_proj": (384, 128), f"{s}.out_proj": (128, 128), f"{s}.mlp_fc1": (512, 128), f"{s}.mlp_fc2": (128, 512)}
    blocks: dict[str, torch.Tensor] = {}
    logical = {}
    for i, (name, (n, k)) in enumerate(svdq.items()):
        logical[name] = logical_layer(n, k, 32, seed=100 + i)
        blocks.update(nunchaku_tensors(logical[name], name))
    g = torch.Generator().manual_seed(7)
    for name, n, splits in ((f"{d}.norm1.linear", 768, 6), (f"{d}.norm1_context.linear", 768, 6), (f"{s}.norm.linear", 384, 3)):
        blocks[f"{name}.qweight"] = ref_pack_awq(torch.randint(0, 16, (n, 128), generator=g, dtype=torch.int16))
        blocks[f"{name}.wscales"] = (torch.rand(2, n, generator=g) * 0.01).to(DT)
        blocks[f"{name}.wzeros"] = (-torch.rand(2, n, generator=g) * 0.05).to(DT)
        blocks[f"{name}.bias"] = torch.randn(n, generator=g).to(DT)
    for legacy_name, diffusers_name in ((f"{d}.norm_q", f"{d}.attn.norm_q"), (f"{d}.norm_k", f"{d}.attn.norm_k"),
                                        (f"{d}.norm_added_q", f"{d}.attn.norm_added_q"),
                                        (f"{d}.norm_added_k", f"{d}.attn.norm_added_k"),
                                        (f"{s}.norm_q", f"{s}.attn.norm_q"), (f"{s}.norm_k", f"{s}.attn.norm_k")):
        blocks[f"{legacy_name}.weight"] = dense[f"{diffusers_name}.weight"]
    unquantized = {k: v for k, v in dense.items() if not k.startswith(("transformer_blocks.", "single_transformer_blocks."))}
    folder = tmp_path / "nunchaku-flux"
    folder.mkdir()
    save_file(blocks, str(folder / "transformer_blocks.safetensors"))
    save_file(unquantized, str(folder / "unquantized_layers.safetensors"))
    (folder / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel", **cfg}))

    out = import_nunchaku(folder, tmp_path / "ours", progress=False)  # validate=True: complete key set
    model = FluxTransformer2DModel.from_pretrained(out, dtype=DT)
    quantized = {n for n, m in model.named_modules() if isinstance(m, SVDQuantLinear)}
    assert quantized == {f"{d}.attn.{p}" for p in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj",
                                                      "to_out.0", "to_add_out")} | {
        f"{d}.ff.net.0.proj", f"{d}.ff.net.2", f"{d}.ff_context.net.0.proj", f"{d}.ff_context.net.2",
        f"{s}.attn.to_q", f"{s}.attn.to_k", f"{s}.attn.to_v", f"{s}.proj_mlp", f"{s}.proj_out"}
    assert isinstance(model.transformer_blocks[0].norm1.linear, torch.nn.Linear)
    x = torch.randn(6, 128).to(DT)
    with torch.no_grad():
        got = model.transformer_blocks[0].attn.add_k_proj(x)
        assert torch.isfinite(model(**model_inputs(model))[0]).all()
    assert torch.equal(got, reference_forward(logical[f"{d}.qkv_proj_context"], x)[:, 128:256])
    # Nunchaku's fused QKV, split on import, runs fused again (svdquant_hf.fusion): same outputs
    from svdquant_hf import fuse_shared_input_projections

    inputs = model_inputs(model)
    with torch.no_grad():
        unfused = model(**inputs)[0]
    assert set(fuse_shared_input_projections(model)) == {f"{d}.attn.to_qkv", f"{d}.attn.to_added_qkv", f"{s}.attn.to_qkv"}
    with torch.no_grad():
        assert (model(**inputs)[0] - unfused).float().norm() <= 1e-3 * unfused.float().norm()

"""quant_format "int4_2l" through every integration: diffusers and transformers (quantize on load,
save, reload, validation), torch.compile, LoRA, the CLI and the Nunchaku export refusal."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch._dynamo as dynamo
from diffusers import FluxTransformer2DModel
from safetensors.torch import load_file, save_file

from svdquant_hf import QuantizationError, SVDQuantConfig, SVDQuantLinear
from svdquant_hf import testing as T
from svdquant_hf.cli import main
from svdquant_hf.interop.nunchaku import NunchakuFormatError, to_nunchaku_lite
from svdquant_hf.lora import testing as LT

from _hf_helpers import fullgraph_targets, rel_err, svd_layers

BF16 = torch.bfloat16
WEIGHTS = "diffusion_pytorch_model.safetensors"
LAYER = "transformer_blocks.0.attn.to_k"
CFG_2L = SVDQuantConfig(quant_format="int4_2l")


@pytest.fixture(scope="module")
def fp_dir(tmp_path_factory) -> Path:
    return T.save_tiny_model(T.tiny_flux_transformer(seed=8), tmp_path_factory.mktemp("i2l") / "fp")


@pytest.fixture(scope="module")
def q_model(fp_dir):
    return FluxTransformer2DModel.from_pretrained(fp_dir, quantization_config=CFG_2L, torch_dtype=BF16)


@pytest.fixture(scope="module")
def q_dir(q_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("i2l") / "q"
    q_model.save_pretrained(out)
    return out


# ----------------------------------------------------------------------------- diffusers


def test_quantize_on_load_builds_int4_2l_layers_as_accurate_as_int4(fp_dir, q_model):
    layers = svd_layers(q_model)
    assert len(layers) > 10
    for mod in layers.values():
        assert mod.quant_format == "int4_2l" and "W4A4 int4_2l g64" in repr(mod)
        k, n = mod.in_features, mod.out_features
        assert mod.qweight.dtype == torch.int8 and mod.qweight.shape == (n, k // 2)
        assert mod.wscales.dtype == torch.uint8 and mod.wscales.shape == (k // 64, n)
        assert 1 <= int(mod.wscales.min()) and int(mod.wscales.max()) <= 16
        assert mod.wchannel.dtype == torch.float32 and mod.wchannel.shape == (n,)
        assert mod.proj_up.dtype == BF16
    fp = FluxTransformer2DModel.from_pretrained(fp_dir, torch_dtype=BF16)
    int4 = FluxTransformer2DModel.from_pretrained(fp_dir, quantization_config=SVDQuantConfig(), torch_dtype=BF16)
    inp = T.model_inputs(fp, seed=3)
    with torch.no_grad():
        ref = fp(**inp)[0]
        e2l, e4 = rel_err(q_model(**inp)[0], ref), rel_err(int4(**inp)[0], ref)
    print(f"tiny Flux, data-free rank 32: rel. error int4 g64 {e4:.4f}, int4_2l g64 {e2l:.4f}")
    assert 0 < e2l < 1.5 * e4


def test_save_and_reload_is_bit_identical(q_model, q_dir):
    cfg = json.loads((q_dir / "config.json").read_text())["quantization_config"]
    assert cfg["quant_format"] == "int4_2l" and cfg["quant_method"] == "svdquant"
    stored = load_file(q_dir / WEIGHTS)
    assert stored[f"{LAYER}.wscales"].dtype == torch.uint8 and stored[f"{LAYER}.wchannel"].dtype == torch.float32
    again = FluxTransformer2DModel.from_pretrained(q_dir, torch_dtype=BF16)
    a, b = q_model.state_dict(), again.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    inp = T.model_inputs(q_model, seed=4)
    with torch.no_grad():
        assert torch.equal(q_model(**inp)[0], again(**inp)[0])
    # float16 requested at load: the stored uint8 / fp32 / bf16 tensors are kept as they are
    half = FluxTransformer2DModel.from_pretrained(q_dir, torch_dtype=torch.float16)
    mod = half.get_submodule(LAYER)
    assert mod.wscales.dtype == torch.uint8 and mod.wchannel.dtype == torch.float32 and mod.proj_up.dtype == BF16


def _bad_copy(q_dir: Path, dst: Path, edit_tensors=None, edit_config=None) -> Path:
    shutil.copytree(q_dir, dst)
    if edit_tensors:
        sd = load_file(dst / WEIGHTS)
        edit_tensors(sd)
        save_file(sd, dst / WEIGHTS)
    if edit_config:
        cfg = json.loads((dst / "config.json").read_text())
        edit_config(cfg["quantization_config"])
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _set(key: str, fn):
    return lambda sd: sd.__setitem__(key, fn(sd[key]))


BAD_CHECKPOINTS = {
    "wscales stored as bf16": (
        _set(f"{LAYER}.wscales", lambda t: t.to(BF16)), None, rf"{LAYER}\.wscales.*dtype torch\.bfloat16.*uint8"),
    "wchannel stored as bf16": (
        _set(f"{LAYER}.wchannel", lambda t: t.to(BF16)), None, rf"{LAYER}\.wchannel.*dtype torch\.bfloat16.*float32"),
    "wscales of 0": (
        _set(f"{LAYER}.wscales", lambda t: torch.zeros_like(t)), None, rf"{LAYER}\.wscales.*\[0, 0\].*\[1, 16\]"),
    "wscales of 17": (
        _set(f"{LAYER}.wscales", lambda t: t.clone().fill_(17)), None, rf"{LAYER}\.wscales.*\[17, 17\]"),
    "wchannel misshaped": (
        _set(f"{LAYER}.wchannel", lambda t: t[:-1].clone()), None, rf"{LAYER}\.wchannel.*shape"),
    "wchannel missing": (lambda sd: sd.pop(f"{LAYER}.wchannel"), None, rf"{LAYER}\.wchannel"),
    "config says int4": (None, lambda q: q.__setitem__("quant_format", "int4"), r"wchannel.*int4_2l.*quant_format='int4'"),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_bad_int4_2l_checkpoints_fail_naming_the_tensor(q_dir, tmp_path, case):
    edit_tensors, edit_config, match = BAD_CHECKPOINTS[case]
    bad = _bad_copy(q_dir, tmp_path / "bad", edit_tensors, edit_config)
    with pytest.raises(QuantizationError, match=match):
        FluxTransformer2DModel.from_pretrained(bad, torch_dtype=BF16)


def test_int4_checkpoint_read_as_int4_2l_is_refused(fp_dir, tmp_path):
    m = FluxTransformer2DModel.from_pretrained(fp_dir, quantization_config=SVDQuantConfig(), torch_dtype=BF16)
    m.save_pretrained(tmp_path / "int4")
    bad = _bad_copy(tmp_path / "int4", tmp_path / "bad", None, lambda q: q.__setitem__("quant_format", "int4_2l"))
    with pytest.raises(QuantizationError, match=r"wchannel.*required by quant_format='int4_2l'"):
        FluxTransformer2DModel.from_pretrained(bad, torch_dtype=BF16)


# ----------------------------------------------------------------------------- torch.compile


def test_fullgraph_compile_keeps_the_2l_ops(q_model):
    inp = T.model_inputs(q_model, seed=5)
    with torch.no_grad():
        eager = q_model(**inp)[0]
    out, targets = fullgraph_targets(q_model, inp)
    n_layers = len(svd_layers(q_model))
    assert targets.count("svdquant.quantize_act_2l.default") == n_layers
    assert targets.count("svdquant.w4a4_gemm_2l.default") == n_layers
    assert not any(t in ("svdquant.quantize_act.default", "svdquant.w4a4_gemm.default") for t in targets)
    assert torch.equal(out, eager)
    dynamo.reset()
    with torch.no_grad():  # AOTAutograd traces through the fake implementations
        assert torch.equal(torch.compile(q_model, fullgraph=True, backend="aot_eager")(**inp)[0], eager)


# ----------------------------------------------------------------------------- transformers


def test_t5_int4_2l_on_load_save_reload(tmp_path):
    from transformers import T5EncoderModel

    from svdquant_hf.quantizers.transformers import SVDQuantTransformersConfig

    T.tiny_t5_encoder(seed=3).save_pretrained(tmp_path / "fp")
    ids = torch.randint(2, 150, (2, 11), generator=torch.Generator().manual_seed(1))
    ref = T5EncoderModel.from_pretrained(tmp_path / "fp").eval()
    errs = {}
    for fmt in ("int4", "int4_2l"):
        cfg = SVDQuantTransformersConfig(rank=16, quant_format=fmt)
        model = T5EncoderModel.from_pretrained(tmp_path / "fp", quantization_config=cfg)
        mods = [m for m in model.modules() if isinstance(m, SVDQuantLinear)]
        assert len(mods) == 14 and all(m.quant_format == fmt for m in mods)
        with torch.no_grad():
            out = model(ids).last_hidden_state
            errs[fmt] = rel_err(out, ref(ids).last_hidden_state)
    print(f"tiny T5 W4A4 rank 16: rel. error int4 {errs['int4']:.4f}, int4_2l {errs['int4_2l']:.4f}")
    assert errs["int4_2l"] < 1.5 * errs["int4"]
    assert all(m.wscales.dtype == torch.uint8 and m.wchannel.dtype == torch.float32 for m in mods)
    model.save_pretrained(tmp_path / "q")
    again = T5EncoderModel.from_pretrained(tmp_path / "q")
    a, b = model.state_dict(), again.state_dict()
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        assert torch.equal(again(ids).last_hidden_state, out)
    # a checkpoint whose wscales are not uint8 is refused before anything is loaded, naming the tensor
    key = "encoder.block.0.layer.0.SelfAttention.q.wscales"
    sd = load_file(tmp_path / "q" / "model.safetensors")
    sd[key] = sd[key].to(BF16)
    save_file(sd, tmp_path / "q" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(QuantizationError, match=rf"{key.replace('.', '[.]')} has dtype torch.bfloat16, expected torch.uint8"):
        T5EncoderModel.from_pretrained(tmp_path / "q")
    sd[key] = torch.full_like(sd[key], 20, dtype=torch.uint8)
    save_file(sd, tmp_path / "q" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(QuantizationError, match=r"SelfAttention\.q\.wscales.*\[20, 20\]"):
        T5EncoderModel.from_pretrained(tmp_path / "q")


# ----------------------------------------------------------------------------- LoRA


def test_lora_on_an_int4_2l_pipeline():
    from svdquant_hf.lora.layer import SVDQuantLoraLinear

    from test_lora import bare_pipeline, quantize, rel, run  # the LoRA tests' own helpers

    ref_model = T.tiny_flux_transformer(3, in_channels=16)
    q_model = quantize(copy.deepcopy(ref_model), CFG_2L)
    assert all(m.quant_format == "int4_2l" for m in svd_layers(q_model).values())
    ref, q = bare_pipeline(ref_model), bare_pipeline(q_model)
    inputs = T.model_inputs(ref_model, seed=5, batch=1)
    y_ref, y_q = run(ref, inputs), run(q, inputs)
    err_base = rel(y_q, y_ref)
    # quantized layers only: fusing into a 16-bit nn.Linear weight would round differently
    lora = LT.peft_lora(ref.transformer, rank=4, seed=11, strength=0.3, include=("transformer_blocks",))
    ref.load_lora_weights(dict(lora), adapter_name="style")
    q.load_lora_weights(dict(lora), adapter_name="style")
    y_ref_l, y_q_l = run(ref, inputs), run(q, inputs)
    wrapped = [m for m in q.transformer.modules() if isinstance(m, SVDQuantLoraLinear)]
    assert wrapped and all(m.get_base_layer().quant_format == "int4_2l" for m in wrapped)
    assert all(m.branch_rank() == 32 + 16 for m in wrapped)  # rank 4 folded into the branch, padded to 16
    print(f"int4_2l + LoRA: effect {rel(y_ref_l, y_ref):.4f}, quant err {err_base:.4f}, "
          f"quant+lora err {rel(y_q_l, y_ref_l):.4f}")
    assert rel(y_ref_l, y_ref) > 3 * err_base
    assert rel(y_q_l, y_ref_l) < 2 * err_base
    q.fuse_lora()  # the concatenation becomes the int4_2l layers' own branch: the same outputs
    to_q = q.transformer.transformer_blocks[0].attn.to_q.get_base_layer()
    assert to_q.proj_down.shape[1] == 48 and to_q.quant_format == "int4_2l"
    assert torch.equal(run(q, inputs), y_q_l)
    q.unfuse_lora()
    assert to_q.proj_down.shape[1] == 32 and torch.equal(run(q, inputs), y_q_l)
    q.unload_lora_weights()
    assert torch.equal(run(q, inputs), y_q)


# ----------------------------------------------------------------------------- Nunchaku export, CLI


def test_nunchaku_export_refuses_int4_2l(q_model, q_dir, tmp_path, capsys):
    config = json.loads((q_dir / "config.json").read_text())
    with pytest.raises(NunchakuFormatError, match="quant_format='int4_2l'.*quant_format='int4', group_size=64"):
        to_nunchaku_lite(config, load_file(q_dir / WEIGHTS), progress=False)
    assert main(["export-nunchaku", str(q_dir), "--out", str(tmp_path / "lite")]) == 2
    assert "quant_format='int4_2l'" in capsys.readouterr().err
    assert not (tmp_path / "lite").exists()


def test_cli_quantize_int4_2l_and_info(fp_dir, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", str(fp_dir), "--out", str(out), "--format", "int4_2l", "--group-size", "128",
                 "--rank", "8"]) == 0
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_format"] == "int4_2l" and qc["group_size"] == 128 and qc["rank"] == 8
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "quant_format=int4_2l" in text and "group_size=128" in text
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    comp = info["components"][0]
    assert comp["options"]["quant_format"] == "int4_2l" and comp["dtypes"]["U8"] > 0
    model = FluxTransformer2DModel.from_pretrained(out, torch_dtype=BF16)
    mods = svd_layers(model).values()
    assert mods and all(m.quant_format == "int4_2l" and m.group_size == 128 for m in mods)
    with torch.no_grad():
        assert torch.isfinite(model(**T.model_inputs(model))[0]).all()
    with pytest.raises(SystemExit):
        main(["quantize", str(fp_dir), "--out", str(tmp_path / "x"), "--format", "int3"])


def test_int8_weights_give_the_same_outputs_and_are_not_saved(tmp_path):
    """set_int8_weights: each int4_2l layer keeps its weights widened once (a non-persistent int8 buffer) and runs
    the GEMM on them: outputs bit-identical, state_dict unchanged, one graph under torch.compile with that op,
    and turning it off drops the copy."""
    from svdquant_hf import set_int8_weights
    from svdquant_hf.ops.reference import weight_operand_2l

    src = T.save_tiny_model(T.tiny_flux_transformer(seed=15), tmp_path / "fp")
    model = FluxTransformer2DModel.from_pretrained(
        src, quantization_config=SVDQuantConfig(quant_format="int4_2l"), torch_dtype=torch.bfloat16
    )
    inp = T.model_inputs(model, seed=9)
    layers = [m for m in model.modules() if isinstance(m, SVDQuantLinear)]
    keys = set(model.state_dict())
    with torch.no_grad():
        before = model(**inp)[0]
    assert set_int8_weights(model) == len(layers)
    layer = layers[0]
    assert torch.equal(layer.qweight_i8, weight_operand_2l(layer.qweight, layer.wscales, layer.group_size))
    assert set(model.state_dict()) == keys
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    with torch.no_grad():
        assert torch.equal(model(**inp)[0], before)
        dynamo.reset()
        out = torch.compile(model, fullgraph=True, backend=backend)(**inp)[0]
    targets = [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert torch.equal(out, before) and len(graphs) == 1
    assert sum("svdquant.w8a4_gemm_2l" in t for t in targets) == len(layers)
    assert not any("svdquant.w4a4_gemm_2l" in t for t in targets)
    dynamo.reset()
    assert set_int8_weights(model, False) == 0 and not hasattr(layer, "qweight_i8")
    with torch.no_grad():
        assert torch.equal(model(**inp)[0], before)
    # packed_on_host (on the CPU the host is the device: the layer keeps working and saving the same state)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert set_int8_weights(model, packed_on_host=True) == len(layers)
    with torch.no_grad():
        assert torch.equal(model(**inp)[0], before)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())

"""LoRA on SVDQuant-quantized Flux through the standard diffusers API (issue 5).

Every test compares a quantized tiny Flux transformer with LoRA against the 16-bit one with the same
LoRA (loaded through the same diffusers call), or against itself before loading (bitwise).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import svdquant_hf
from svdquant_hf import SVDQuantConfig, SVDQuantLinear
from svdquant_hf import testing as T
from svdquant_hf.lora import testing as LT
from svdquant_hf.quantize import quantize_linear, set_submodule
from svdquant_hf.quantizers.common import quantizable_linears

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")
from svdquant_hf.lora.layer import SVDQuantLoraLinear  # noqa: E402


def quantize(model: nn.Module, options: SVDQuantConfig | None = None) -> nn.Module:
    opts = options or SVDQuantConfig()
    for name, lin in quantizable_linears(model, opts).items():
        set_submodule(model, name, quantize_linear(lin, opts, name))
    return model


def bare_pipeline(transformer: nn.Module):
    return diffusers.FluxPipeline(
        scheduler=None, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
        transformer=transformer,
    )


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(scope="module")
def models():
    ref = T.tiny_flux_transformer(3, in_channels=16)
    q = quantize(copy.deepcopy(ref))
    inputs = T.model_inputs(ref, seed=5, batch=1)
    with torch.no_grad():
        err_base = rel(q(**inputs)[0], ref(**inputs)[0])
    return ref, q, inputs, err_base


@pytest.fixture
def pair(models):
    """Fresh (16-bit pipeline, quantized pipeline, inputs) for one test."""
    ref, q, inputs, _ = models
    return bare_pipeline(copy.deepcopy(ref)), bare_pipeline(copy.deepcopy(q)), inputs


def run(pipe, inputs, **kw) -> torch.Tensor:
    with torch.no_grad():
        return pipe.transformer(**inputs, **kw)[0]


FORMATS = {
    "peft": lambda m: LT.peft_lora(m, rank=4, seed=11, strength=0.15),
    "kohya": lambda m: LT.flux_kohya_lora(m, rank=4, seed=12, strength=0.35),
    "comfyui": lambda m: LT.flux_kohya_lora(m, rank=8, seed=13, strength=0.35, alpha=4.0, comfy_prefix=True),
    "xlabs": lambda m: LT.flux_xlabs_lora(m, rank=4, seed=14, strength=0.8),
    "kohya-diffusers-names": lambda m: LT.flux_mixture_lora(m, rank=4, seed=15, strength=0.8),
}


def separate_branch_forward(self, x, *args, **kwargs):
    """The unfused LoRA (an extra fp32 matmul per layer): what folding must reproduce."""
    y = self.base_layer(x)
    for name in self.active_adapters:
        a, b = self.lora_A[name].weight.float(), self.lora_B[name].weight.float()
        y = y + ((x.float() @ a.t()) @ b.t() * self.scaling[name]).to(y.dtype)
    return y


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_lora_formats_match_16bit_within_quantization_error(pair, fmt, monkeypatch):
    ref, q, inputs = pair
    y_ref, y_q = run(ref, inputs), run(q, inputs)
    err_base = rel(y_q, y_ref)
    lora = FORMATS[fmt](ref.transformer)
    ref.load_lora_weights(dict(lora), adapter_name="style")
    q.load_lora_weights(dict(lora), adapter_name="style")
    y_ref_l, y_q_l = run(ref, inputs), run(q, inputs)
    effect = rel(y_ref_l, y_ref)
    err_lora = rel(y_q_l, y_ref_l)
    with monkeypatch.context() as mp:
        mp.setattr(SVDQuantLoraLinear, "forward", separate_branch_forward)
        fold_err = rel(y_q_l, run(q, inputs))
    print(f"{fmt}: lora effect {effect:.4f}, quant err alone {err_base:.4f}, quant+lora err {err_lora:.4f}, "
          f"folded vs separate LoRA matmul {fold_err:.4f}")
    assert effect > 3 * err_base  # the LoRA visibly changes the output
    assert err_lora < 2 * err_base  # the LoRA'd model quantizes about as well as the base
    assert fold_err < 0.5 * err_base  # folding into the branch costs nothing beyond bf16 rounding
    wrapped = [m for m in q.transformer.modules() if isinstance(m, SVDQuantLoraLinear)]
    assert wrapped, "no quantized layer received the LoRA"
    for m in wrapped:
        base = m.get_base_layer()
        assert base.proj_down.shape[1] == 32  # the base branch is untouched
        assert m.branch_rank() == 32 + 16  # rank 4 or 8 LoRA padded to 16


def test_strength_zero_disable_and_unload_are_bitwise(pair):
    _, q, inputs = pair
    y0 = run(q, inputs)
    q.load_lora_weights(LT.peft_lora(q.transformer, rank=4, seed=1, strength=0.2), adapter_name="a")
    y1 = run(q, inputs)
    assert rel(y1, y0) > 0.05
    q.set_adapters(["a"], [0.0])
    assert torch.equal(run(q, inputs), y0)
    q.set_adapters(["a"], [1.0])
    assert torch.equal(run(q, inputs), y1)
    q.disable_lora()
    assert torch.equal(run(q, inputs), y0)
    q.enable_lora()
    assert torch.equal(run(q, inputs), y1)
    q.unload_lora_weights()
    assert not any(isinstance(m, SVDQuantLoraLinear) for m in q.transformer.modules())
    assert torch.equal(run(q, inputs), y0)


def test_two_adapters_with_weights_match_16bit(pair):
    ref, q, inputs = pair
    err_base = rel(run(q, inputs), run(ref, inputs))
    la = LT.peft_lora(ref.transformer, rank=4, seed=21, strength=0.12)
    lb = LT.peft_lora(ref.transformer, rank=12, seed=22, strength=0.12, include=("transformer_blocks",))
    for p in (ref, q):
        p.load_lora_weights(dict(la), adapter_name="a")
        p.load_lora_weights(dict(lb), adapter_name="b")
        p.set_adapters(["a", "b"], [0.7, -1.3])
    y_ref, y_q = run(ref, inputs), run(q, inputs)
    err = rel(y_q, y_ref)
    print(f"two adapters: quant err alone {err_base:.4f}, with (0.7 a, -1.3 b) {err:.4f}")
    assert err < 2 * err_base
    to_q = q.transformer.transformer_blocks[0].attn.to_q
    assert to_q.branch_rank() == 32 + 16  # 4 + 12 = 16: one granule
    # only b, at another strength
    for p in (ref, q):
        p.set_adapters(["b"], [0.5])
    assert rel(run(q, inputs), run(ref, inputs)) < 2 * err_base
    assert to_q.branch_rank() == 32 + 16


def test_lora_scale_in_joint_attention_kwargs(pair):
    ref, q, inputs = pair
    lora = LT.peft_lora(ref.transformer, rank=4, seed=31, strength=0.2)
    for p in (ref, q):
        p.load_lora_weights(dict(lora), adapter_name="a")
    y_full = run(q, inputs)
    y_half = run(q, inputs, joint_attention_kwargs={"scale": 0.5})
    assert torch.equal(run(q, inputs), y_full)  # the scale is undone after the call
    q.set_adapters(["a"], [0.5])
    assert torch.equal(run(q, inputs), y_half)
    err_base = rel(run(q, inputs, joint_attention_kwargs={"scale": 0.0}), run(ref, inputs, joint_attention_kwargs={"scale": 0.0}))
    y_ref_half = run(ref, inputs, joint_attention_kwargs={"scale": 0.5})
    assert rel(y_half, y_ref_half) < 2 * err_base


def test_delete_adapters_keeps_the_others(pair):
    _, q, inputs = pair
    q.load_lora_weights(LT.peft_lora(q.transformer, rank=4, seed=41), adapter_name="a")
    q.load_lora_weights(LT.peft_lora(q.transformer, rank=4, seed=42), adapter_name="b")
    q.set_adapters(["b"], [1.0])
    y_b = run(q, inputs)
    q.set_adapters(["a", "b"], [1.0, 1.0])
    q.delete_adapters("a")
    assert torch.equal(run(q, inputs), y_b)
    assert "a" not in q.transformer.peft_config


def test_fuse_unfuse_and_permanent_fold(pair):
    _, q, inputs = pair
    y0 = run(q, inputs)
    # only quantized layers: fusing into a 16-bit nn.Linear weight would round differently
    q.load_lora_weights(LT.peft_lora(q.transformer, rank=4, seed=51, include=("transformer_blocks",)), adapter_name="a")
    y1 = run(q, inputs)
    to_q = q.transformer.transformer_blocks[0].attn.to_q
    q.fuse_lora(lora_scale=1.0)
    assert to_q.get_base_layer().proj_down.shape[1] == 48
    assert torch.equal(run(q, inputs), y1)  # same concatenation, now the layer's own
    q.unfuse_lora()
    assert to_q.get_base_layer().proj_down.shape[1] == 32
    assert torch.equal(run(q, inputs), y1)
    q.fuse_lora()
    q.unload_lora_weights()  # the fused LoRA stays: a plain SVDQuantLinear of rank 48
    layer = q.transformer.transformer_blocks[0].attn.to_q
    assert type(layer) is SVDQuantLinear and layer.rank == 48 and layer.proj_up.shape[1] == 48
    assert torch.equal(run(q, inputs), y1)
    assert not torch.equal(y1, y0)


def test_no_extra_kernel_launches(pair, monkeypatch):
    from svdquant_hf.ops import library

    _, q, inputs = pair
    calls: list[int] = []
    real = library.quantize_act

    def counting(x, smooth, proj_down, group_size):
        calls.append(proj_down.shape[1])
        return real(x, smooth, proj_down, group_size)

    monkeypatch.setattr(library, "quantize_act", counting)
    run(q, inputs)
    n_before = len(calls)
    assert n_before > 0 and set(calls) == {32}
    q.load_lora_weights(LT.peft_lora(q.transformer, rank=4, seed=61), adapter_name="a")
    lora_calls = []
    for m in q.transformer.modules():
        if isinstance(m, SVDQuantLoraLinear):
            m.lora_A["a"].register_forward_hook(lambda *a: lora_calls.append(1))
    calls.clear()
    run(q, inputs)
    assert len(calls) == n_before and set(calls) == {48}  # same launches, extended rank
    assert lora_calls == []  # the LoRA matrices never run as separate matmuls


# ---- bad LoRAs: clear error, model unchanged -----------------------------------------------------
def assert_untouched(q, inputs, y0):
    assert not any(isinstance(m, SVDQuantLoraLinear) and m.lora_A for m in q.transformer.modules())
    assert not getattr(q.transformer, "peft_config", None)
    assert torch.equal(run(q, inputs), y0)


def test_lora_for_missing_modules_is_refused(pair):
    _, q, inputs = pair
    y0 = run(q, inputs)
    bad = {
        "transformer.transformer_blocks.7.attn.to_q.lora_A.weight": torch.randn(4, 64),
        "transformer.transformer_blocks.7.attn.to_q.lora_B.weight": torch.randn(64, 4),
    }
    with pytest.raises(ValueError, match="transformer_blocks.7.attn.to_q"):
        q.load_lora_weights(bad, adapter_name="bad")
    assert_untouched(q, inputs, y0)


def test_rank_mismatched_tensor_is_refused(pair):
    _, q, inputs = pair
    y0 = run(q, inputs)
    lora = LT.peft_lora(q.transformer, rank=4, seed=71, include=("transformer_blocks",))
    key = "transformer.transformer_blocks.0.attn.to_k.lora_B.weight"
    lora[key] = torch.randn(64, 6)  # lora_A has rank 4
    with pytest.raises((ValueError, RuntimeError), match="transformer_blocks.0.attn.to_k"):
        q.load_lora_weights(lora, adapter_name="bad")
    assert_untouched(q, inputs, y0)


def test_width_mismatched_tensor_names_the_layer(pair):
    _, q, inputs = pair
    y0 = run(q, inputs)
    lora = LT.peft_lora(q.transformer, rank=4, seed=72, include=("transformer_blocks",))
    key = "transformer.transformer_blocks.0.ff.net.2.lora_A.weight"
    lora[key] = torch.randn(4, 512)  # ff.net.2 has in_features=256
    with pytest.raises(ValueError, match=r"transformer_blocks.0.ff.net.2.*in_features=256"):
        q.load_lora_weights(lora, adapter_name="bad")
    assert_untouched(q, inputs, y0)


def test_corrupted_lora_file_is_refused(pair, tmp_path):
    from safetensors.torch import save_file

    _, q, inputs = pair
    y0 = run(q, inputs)
    path = tmp_path / "pytorch_lora_weights.safetensors"
    save_file(LT.peft_lora(q.transformer, rank=4, seed=73), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated download
    with pytest.raises(Exception, match="(?i)safetensor|deserializ|incomplete|header|invalid"):
        q.load_lora_weights(str(tmp_path), weight_name=path.name, adapter_name="bad")
    assert_untouched(q, inputs, y0)
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage" + data[16:64])
    with pytest.raises(Exception, match="(?i)safetensor|deserializ|header|invalid|json"):
        q.load_lora_weights(str(path), adapter_name="bad")
    assert_untouched(q, inputs, y0)


def test_hotswap_replaces_the_adapter_in_place(pair):
    ref, q, inputs = pair
    first = LT.peft_lora(q.transformer, rank=4, seed=81, include=("transformer_blocks",))
    second = LT.peft_lora(q.transformer, rank=4, seed=82, include=("transformer_blocks",))
    q.load_lora_weights(dict(second), adapter_name="s")
    y_second = run(q, inputs)
    q.delete_adapters("s")
    q.load_lora_weights(dict(first), adapter_name="a")
    y_first = run(q, inputs)
    q.load_lora_weights(dict(second), adapter_name="a", hotswap=True)  # new weights, same modules
    y_swapped = run(q, inputs)
    assert not torch.equal(y_swapped, y_first)
    assert torch.equal(y_swapped, y_second)  # the cached concatenation was rebuilt from the new weights


def test_save_lora_weights_round_trip(models, tmp_path):
    """The LoRA itself is saved as usual (not tied to the quantized model) and reloads bit-exactly."""
    from peft.utils import get_peft_model_state_dict

    _, q_model, inputs, _ = models
    q, fresh = bare_pipeline(copy.deepcopy(q_model)), bare_pipeline(copy.deepcopy(q_model))
    q.load_lora_weights(LT.flux_kohya_lora(q.transformer, rank=4, seed=91, strength=0.4), adapter_name="a")
    y = run(q, inputs)
    diffusers.FluxPipeline.save_lora_weights(
        tmp_path,
        transformer_lora_layers=get_peft_model_state_dict(q.transformer, adapter_name="a"),
        transformer_lora_adapter_metadata=q.transformer.peft_config["a"].to_dict(),
    )
    fresh.load_lora_weights(str(tmp_path), adapter_name="a")
    assert torch.equal(run(fresh, inputs), y)


def test_torch_compile_with_lora_is_one_graph_and_follows_strength(pair):
    """torch.compile(fullgraph=True) of a quantized transformer with a LoRA loaded: one graph (no break or
    per-layer recompile from the branch cache), the eager outputs, and a strength change honoured."""
    import torch._dynamo as dynamo

    _, q, inputs = pair
    q.load_lora_weights(LT.peft_lora(q.transformer, rank=4, seed=3, strength=0.2), adapter_name="a")
    y1 = run(q, inputs)
    q.set_adapters(["a"], [0.5])
    y_half = run(q, inputs)
    q.set_adapters(["a"], [1.0])
    dynamo.reset()
    with torch.no_grad():
        explained = dynamo.explain(q.transformer)(**inputs)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(q.transformer, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert torch.equal(compiled(**inputs)[0], y1)
        q.set_adapters(["a"], [0.5])  # dynamo guards on the strength: recompiles, no stale branch
        assert torch.equal(compiled(**inputs)[0], y_half)
    dynamo.reset()


def recording_backend(graphs: list):
    """A dynamo backend that runs the graph as traced and records which functions each graph calls."""

    def backend(gm, example_inputs):
        graphs.append([n.target for n in gm.graph.nodes if n.op == "call_function"])
        return gm.forward

    return backend


def test_compiled_lora_reads_the_live_branch_and_follows_the_controls(pair):
    """Compiled with live adapters, the graph reads the cached concatenation (no torch.cat in it), a
    hotswap reaches the compiled model without a recompile, a strength change recompiles once and still
    reads the cache, and lora_scale inside the forward (cache not current) builds it in the graph (two
    concatenations per LoRA layer on top of the model's own)."""
    import torch._dynamo as dynamo

    _, q, inputs = pair
    first = LT.peft_lora(q.transformer, rank=4, seed=41, strength=0.3)
    second = LT.peft_lora(q.transformer, rank=4, seed=42, strength=0.3)
    q.load_lora_weights(dict(first), adapter_name="a")
    dynamo.reset()
    graphs: list = []
    compiled = torch.compile(q.transformer, fullgraph=True, backend=recording_backend(graphs))
    with torch.no_grad():
        y_compiled = compiled(**inputs)[0]  # compiled before any eager forward: the load built the cache
        assert torch.equal(y_compiled, run(q, inputs))
        assert len(graphs) == 1

        q.load_lora_weights(dict(second), adapter_name="a", hotswap=True)
        y_swapped = compiled(**inputs)[0]
        assert len(graphs) == 1, "hotswap recompiled"
        assert not torch.equal(y_swapped, y_compiled)
        assert torch.equal(y_swapped, run(q, inputs))

        q.set_adapters(["a"], [0.5])
        y_half = compiled(**inputs)[0]
        assert len(graphs) == 2 and graphs[1].count(torch.cat) == graphs[0].count(torch.cat)
        assert torch.equal(y_half, run(q, inputs))

        q.set_adapters(["a"], [1.0])
        y_scaled = compiled(**inputs, joint_attention_kwargs={"scale": 0.5})[0]
        assert torch.equal(y_scaled, y_half)  # strength 1.0 x lora_scale 0.5 == strength 0.5
    lora_layers = sum(isinstance(m, SVDQuantLoraLinear) for m in q.transformer.modules())
    assert lora_layers > 0 and graphs[-1].count(torch.cat) == graphs[0].count(torch.cat) + 2 * lora_layers
    dynamo.reset()


def test_hooked_base_layer_is_called_as_a_module(pair):
    """A 4-bit layer with a forward hook (accelerate offloading installs such hooks) is entered through its
    __call__ with the branch swapped in, so the hook runs; the outputs are those of the hook-free model."""
    _, q, inputs = pair
    q.load_lora_weights(LT.peft_lora(q.transformer, rank=4, seed=51, strength=0.3), adapter_name="a")
    y = run(q, inputs)
    layer = next(m for m in q.transformer.modules() if isinstance(m, SVDQuantLoraLinear))
    seen = []
    handle = layer.get_base_layer().register_forward_pre_hook(lambda mod, args: seen.append(mod.proj_down.shape[1]))
    try:
        assert torch.equal(run(q, inputs), y)
    finally:
        handle.remove()
    assert seen == [layer.branch_rank()] and layer.branch_rank() > layer.get_base_layer().rank


def test_compiled_lora_forward_adds_no_per_call_python_work(pair):
    """Per call, a compiled LoRA model runs the same Python as the compiled model without LoRA (same function
    calls under cProfile, no nn.Module.__getattr__): its guards are dict lookups, not failing getattrs."""
    import cProfile
    import pstats

    import torch._dynamo as dynamo

    _, q, inputs = pair

    def frozen(gm, example_inputs):  # the graph's cost out of the picture: only dynamo's per-call work remains
        out = gm(*example_inputs)
        return lambda *args: out

    def python_calls(model) -> tuple[int, int]:
        dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, backend=frozen)
        with torch.no_grad():
            compiled(**inputs)
            prof = cProfile.Profile()
            prof.enable()
            compiled(**inputs)
            prof.disable()
        stats = pstats.Stats(prof).stats
        getattrs = sum(v[0] for k, v in stats.items() if k[2] == "__getattr__" and k[0].endswith("module.py"))
        return sum(v[0] for v in stats.values()), getattrs

    plain = python_calls(q.transformer)
    q.load_lora_weights(LT.peft_lora(q.transformer, rank=4, seed=61, strength=0.3,
                                     include=("transformer_blocks",)), adapter_name="a")
    assert any(isinstance(m, SVDQuantLoraLinear) for m in q.transformer.modules())
    assert python_calls(q.transformer) == plain
    dynamo.reset()

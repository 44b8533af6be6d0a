"""GELU and FLUX single blocks' concatenation in the GEMM's epilogue (svdquant_hf.epilogues, w4a4_gemm_2l_fo_ep):
the op's reference semantics, a fused tiny FLUX transformer against the unfused one (eager and compiled), exact
unfusing, and the fallback when a LoRA wraps a layer."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from svdquant_hf import (
    SVDQuantConfig,
    SVDQuantLinear,
    fuse_epilogues,
    quantize_model,
    set_fragment_order,
    unfuse_epilogues,
)
from svdquant_hf import testing as T
from svdquant_hf.ops import library as ops
from svdquant_hf.ops.layout_2l import fragment_order
from svdquant_hf.ops.reference import gelu_tanh_ep, w4a4_gemm_2l_ref
from svdquant_hf.quantizers.common import quantizable_linears

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_thread")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _gemm_inputs(M: int, K: int, N: int, R: int = 16, G: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xq = (torch.randint(-8, 8, (M, K), generator=g) * torch.randint(1, 17, (M, K // G), generator=g)
          .repeat_interleave(G, 1)).to(torch.int8)
    xscale = torch.rand(M, generator=g) * 0.01 + 1e-3
    qweight = torch.randint(-128, 128, (N, K // 2), generator=g).to(torch.int8)
    wscales = torch.randint(1, 17, (K // G, N), generator=g).to(torch.uint8)
    wchannel = torch.rand(N, generator=g) * 0.01 + 1e-3
    lr = torch.randn(M, R, generator=g).to(torch.bfloat16)
    up = (torch.randn(N, R, generator=g) * 0.1).to(torch.bfloat16)
    bias = torch.randn(N, generator=g).to(torch.bfloat16)
    return xq, xscale, qweight, wscales, wchannel, lr, up, bias, G


def test_ep_op_reference_semantics():
    xq, xs, qw, ws, wc, lr, up, bias, G = _gemm_inputs(37, 256, 128)
    fo = fragment_order(qw)
    plain = ops.w4a4_gemm_2l_fo(xq, xs, fo, ws, wc, lr, up, bias, G)
    # no activation, no prefix: the fragment-order GEMM, bit for bit
    assert torch.equal(ops.w4a4_gemm_2l_fo_ep(xq, xs, fo, ws, wc, lr, up, bias, G, 0, None), plain)
    # GELU on the fp32 result, then one rounding
    y32 = w4a4_gemm_2l_ref(xq, xs, qw, ws, wc, lr, up, bias, G, fp32_out=True)
    assert torch.equal(y32.to(torch.bfloat16), plain)
    ep = ops.w4a4_gemm_2l_fo_ep(xq, xs, fo, ws, wc, lr, up, bias, G, 1, None)
    assert ep.dtype == torch.bfloat16 and ep.shape == (37, 128)
    assert torch.equal(ep, gelu_tanh_ep(y32).to(torch.bfloat16))
    # the kernel's formula is torch's tanh GELU
    assert torch.allclose(gelu_tanh_ep(y32), F.gelu(y32, approximate="tanh"), rtol=1e-5, atol=1e-6)
    # and closer to it than GELU of the rounded output is
    unfused = F.gelu(plain.float(), approximate="tanh")
    assert _rel(ep, F.gelu(y32, approximate="tanh")) <= _rel(unfused, F.gelu(y32, approximate="tanh"))
    # prefix: its columns first, exactly
    prefix = torch.randn(37, 24).to(torch.bfloat16)
    cat = ops.w4a4_gemm_2l_fo_ep(xq, xs, fo, ws, wc, lr, up, bias, G, 1, prefix)
    assert cat.shape == (37, 24 + 128) and torch.equal(cat[:, :24], prefix) and torch.equal(cat[:, 24:], ep)


def test_ep_op_rejects_bad_activation_and_prefix():
    xq, xs, qw, ws, wc, lr, up, bias, G = _gemm_inputs(8, 128, 128)
    fo = fragment_order(qw)
    with pytest.raises(ValueError, match="activation"):
        ops.w4a4_gemm_2l_fo_ep(xq, xs, fo, ws, wc, lr, up, bias, G, 7, None)
    with pytest.raises(ValueError, match="prefix"):
        ops.w4a4_gemm_2l_fo_ep(xq, xs, fo, ws, wc, lr, up, bias, G, 1, torch.zeros(9, 8, dtype=torch.bfloat16))


def _wide_flux(dtype=torch.bfloat16, heads: int = 2):
    """A tiny FLUX transformer wide enough for the fragment order (128 features: 2 heads x 64), 16-bit."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=64,
        num_attention_heads=heads, joint_attention_dim=64, pooled_projection_dim=64, guidance_embeds=False,
        axes_dims_rope=(16, 24, 24),
    ).to(dtype).eval()


def _tiny_flux(dtype=torch.bfloat16, blocks_proj_out: bool = False, heads: int = 2):
    """_wide_flux quantized to int4_2l, its layers in fragment order; and its test inputs. The top-level proj_out
    stays 16-bit, by a name that also keeps the single blocks' proj_out 16-bit unless ``blocks_proj_out`` (then a
    glob naming the top-level one alone)."""
    model = _wide_flux(dtype, heads)
    opts = SVDQuantConfig(quant_format="int4_2l", rank=16)
    targets = quantizable_linears(model, opts)
    skip = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in targets]
    if blocks_proj_out:
        skip = ["[p]roj_out" if n == "proj_out" else n for n in skip]
    quantize_model(model, opts, progress=False, extra_skip=skip)
    assert set_fragment_order(model) > 0
    return model, T.model_inputs(model, seed=3)


@pytest.fixture(scope="module")
def tiny():
    return _tiny_flux()


def test_cat_quantize_op_is_the_quantizer_on_the_concatenation():
    g = torch.Generator().manual_seed(9)
    a, b = torch.randn(7, 128, generator=g).to(torch.bfloat16), torch.randn(7, 384, generator=g).to(torch.bfloat16)
    smooth = (torch.rand(512, generator=g) + 0.5).to(torch.bfloat16)
    pd = (torch.randn(512, 16, generator=g) / 20).to(torch.bfloat16)
    got, ref = ops.quantize_act_2l_cat(a, b, smooth, pd, 64), ops.quantize_act_2l(torch.cat([a, b], 1), smooth, pd, 64)
    assert all(torch.equal(x, y) for x, y in zip(got, ref))
    with pytest.raises(ValueError, match="quantize_act_2l_cat: a and b must be 2-D with the same rows"):
        ops.quantize_act_2l_cat(a, b[:5], smooth, pd, 64)
    with pytest.raises(ValueError, match="share dtype"):
        ops.quantize_act_2l_cat(a, b.half(), smooth, pd, 64)
    compiled = torch.compile(lambda *t: ops.quantize_act_2l_cat(*t, 64), backend="aot_eager", fullgraph=True)
    assert all(torch.equal(x, y) for x, y in zip(compiled(a, b, smooth, pd), ref))


@pytest.mark.parametrize("lora", [False, True])
def test_single_blocks_proj_out_quantizes_its_two_inputs_in_place(monkeypatch, lora):
    """With the single blocks' proj_out quantized (FLUX.1's is), its input cat([attention, GELU(mlp)]) is quantized
    where the two parts lie (svdquant::quantize_act_2l_cat, no prefix copy), with a LoRA on every layer too (its
    factors on the branch): the bits of the prefix route (cat_in_place=False), eager and compiled; unfusing restores
    the usual forward."""
    model, inputs = _tiny_flux(blocks_proj_out=True)
    assert type(model.single_transformer_blocks[0].proj_out) is SVDQuantLinear
    if lora:
        model = _with_random_lora(model)
        assert type(model.single_transformer_blocks[0].proj_out).__name__ == "SVDQuantLoraLinear"
    in_place, prefix = copy.deepcopy(model), copy.deepcopy(model)
    fuse_epilogues(in_place)
    fuse_epilogues(prefix, cat_in_place=False)
    calls, real = [], ops.quantize_act_2l_cat
    monkeypatch.setattr(ops, "quantize_act_2l_cat", lambda a, b, *r: calls.append((a.shape[1], b.shape[1])) or real(a, b, *r))
    with torch.no_grad():
        y_prefix = prefix(**inputs)[0]
        assert calls == []
        y = in_place(**inputs)[0]
    assert calls == [(128, 512)] * 2  # each single block: attention (2 heads x 64) and the MLP (4 x 128)
    assert torch.equal(y, y_prefix)
    if lora:  # the adapters reach the output: without them it differs
        wrappers = [m for m in in_place.modules() if type(m).__name__ == "SVDQuantLoraLinear"]
        for m in wrappers:
            m.enable_adapters(False)
        with torch.no_grad():
            assert not torch.equal(in_place(**inputs)[0], y)
        for m in wrappers:
            m.enable_adapters(True)
    monkeypatch.undo()
    with torch.no_grad():
        assert torch.equal(torch.compile(in_place, backend="aot_eager", fullgraph=True)(**inputs)[0], y)
        unfuse_epilogues(in_place)
        assert torch.equal(in_place(**inputs)[0], model(**inputs)[0])


def test_fused_flux_matches_unfused_and_keeps_its_state_dict(tiny, monkeypatch):
    model, inputs = tiny
    fused = copy.deepcopy(model)
    names = fuse_epilogues(fused)
    assert {"transformer_blocks.0.ff.net.0", "transformer_blocks.0.ff_context.net.0",
            "single_transformer_blocks.0", "single_transformer_blocks.1"} <= set(names)
    assert fuse_epilogues(fused) == []  # idempotent
    sd0, sd1 = model.state_dict(), fused.state_dict()
    assert sd0.keys() == sd1.keys() and all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    calls = []
    real = ops.w4a4_gemm_2l_fo_ep

    def counting(*args):
        calls.append((args[-2], None if args[-1] is None else tuple(args[-1].shape)))
        return real(*args)

    monkeypatch.setattr(ops, "w4a4_gemm_2l_fo_ep", counting)
    with torch.no_grad():
        y0, y1 = model(**inputs)[0], fused(**inputs)[0]
    assert 0 < _rel(y1, y0) < 2e-2  # GELU before the rounding instead of after it: close, not identical
    n_tok = inputs["hidden_states"].shape[1] + inputs["encoder_hidden_states"].shape[1]
    # ff and ff_context: GELU alone; each single block: GELU with the attention output (128 wide) as prefix
    assert calls.count((1, None)) == 2 and calls.count((1, (n_tok, 128))) == 2
    assert unfuse_epilogues(fused) == names
    with torch.no_grad():
        assert torch.equal(fused(**inputs)[0], y0)


def test_fused_flux_compiles_to_the_same_outputs(tiny):
    model, inputs = tiny
    fused = copy.deepcopy(model)
    fuse_epilogues(fused)
    with torch.no_grad():
        eager = fused(**inputs)[0]
        compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)(**inputs)[0]
    assert torch.equal(compiled, eager)


def test_fused_forward_falls_back_where_the_fused_path_does_not_apply(tiny):
    base, inputs = tiny
    fused = copy.deepcopy(base)
    fuse_epilogues(fused)
    # a wrapped proj_mlp (as a PEFT LoRA wraps it): the block's own forward
    block = fused.single_transformer_blocks[0]
    block.proj_mlp = torch.nn.Sequential(block.proj_mlp)
    # canonical weights (no fragment order) in a feed-forward: its usual ops
    set_fragment_order(fused.transformer_blocks[0].ff, False)
    unfused = copy.deepcopy(fused)
    unfuse_epilogues(unfused)
    with torch.no_grad():
        y_unfused = unfused(**inputs)[0]
        # the second single block and ff_context still take the fused path: close, not identical
        assert 0 < _rel(fused(**inputs)[0], y_unfused) < 2e-2
        for name in ("single_transformer_blocks.1", "transformer_blocks.0.ff_context.net.0"):
            unfuse_epilogues(dict(fused.named_modules())[name])
        # what is left fused falls back: bit for bit the unfused model
        assert torch.equal(fused(**inputs)[0], y_unfused)


def _with_random_lora(model: torch.nn.Module) -> torch.nn.Module:
    """A rank-4 PEFT LoRA on every 4-bit layer (svdquant's LoRA layers, as load_lora_weights makes them)."""
    peft = pytest.importorskip("peft")
    from svdquant_hf.lora import refresh

    targets = [n for n, m in model.named_modules() if isinstance(m, SVDQuantLinear)]
    peft.inject_adapter_in_model(peft.LoraConfig(r=4, lora_alpha=4, target_modules=targets), model, "t")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "lora_B") and "t" in m.lora_B:
                w = m.lora_B["t"].weight
                w.copy_(torch.randn(w.shape, generator=gen) * 0.05)
    refresh(model)
    return model


@pytest.mark.parametrize("lora_first", [False, True])
def test_a_lora_rides_on_the_fused_gemm(tiny, monkeypatch, lora_first):
    """A LoRA loaded after fusing, or fused after loading it: the adapters ride on the fused GEMM's branch."""
    base, inputs = tiny
    fused = copy.deepcopy(base)
    if lora_first:
        fused = _with_random_lora(fused)
        assert "single_transformer_blocks.0" in fuse_epilogues(fused)
    else:
        fuse_epilogues(fused)
        fused = _with_random_lora(fused)
    plain = _with_random_lora(copy.deepcopy(base))
    assert type(fused.single_transformer_blocks[0].proj_mlp).__name__ == "SVDQuantLoraLinear"
    calls = []
    real = ops.w4a4_gemm_2l_fo_ep

    def counting(*args):
        calls.append(args[6].shape[1])  # the branch's rank: the layer's 16 + the adapter's 4, padded to 16
        return real(*args)

    monkeypatch.setattr(ops, "w4a4_gemm_2l_fo_ep", counting)
    with torch.no_grad():
        y_base, y_plain, y_fused = base(**inputs)[0], plain(**inputs)[0], fused(**inputs)[0]
    assert _rel(y_plain, y_base) > 1e-2  # the adapters act
    assert 0 < _rel(y_fused, y_plain) < 2e-2
    # the GELU epilogues (ff, ff_context, two proj_mlp) and, LoRA layers sharing the quantizer call, q/k/v and
    # add_q/k/v of the double block and q/k/v of both single blocks: 4 + 12 fused GEMMs, each with the adapter
    assert len(calls) == 4 + 12 and all(r > 16 for r in calls)


def test_from_pretrained_fuses_them_on_hopper_unless_told_not_to(monkeypatch, tmp_path):
    """The diffusers adapter fuses the epilogues of a model loaded on a Hopper machine (faked: the layers stay on the
    CPU, where the op is the reference), not with SVDQUANT_HF_EPILOGUES=0 nor without Hopper; the state dict and the
    saved checkpoint are the same either way."""
    from diffusers import FluxTransformer2DModel

    from svdquant_hf.quantizers import common

    src = T.save_tiny_model(_wide_flux(), tmp_path / "fp")

    def load():
        cfg = SVDQuantConfig(quant_format="int4_2l", rank=16)
        return FluxTransformer2DModel.from_pretrained(src, quantization_config=cfg, torch_dtype=torch.bfloat16)

    def fused(model):
        return [n for n, m in model.named_modules() if "forward" in vars(m)]

    monkeypatch.setattr(common, "hopper_present", lambda: False)
    plain = load()
    assert fused(plain) == []
    monkeypatch.setattr(common, "hopper_present", lambda: True)
    monkeypatch.setenv("SVDQUANT_HF_EPILOGUES", "0")
    assert fused(load()) == []
    monkeypatch.delenv("SVDQUANT_HF_EPILOGUES")
    model = load()
    assert "single_transformer_blocks.0" in fused(model) and "transformer_blocks.0.ff.net.0" in fused(model)
    inp = T.model_inputs(model, seed=2)
    with torch.no_grad():
        assert 0 < _rel(model(**inp)[0], plain(**inp)[0]) < 2e-2
    sd, sd0 = model.state_dict(), plain.state_dict()
    assert sd.keys() == sd0.keys() and all(torch.equal(sd[k], sd0[k]) for k in sd0)


def _counting_quantizer(monkeypatch) -> list[int]:
    """The rank of each quantizer call's down projection, recorded."""
    calls, real = [], ops.quantize_act_2l

    def counting(*args):
        calls.append(args[2].shape[1])
        return real(*args)

    monkeypatch.setattr(ops, "quantize_act_2l", counting)
    return calls


def test_q_k_v_and_the_mlp_share_one_quantizer_call(tiny, monkeypatch):
    """Layers quantized alike share one quantizer call: q/k/v (and add_q/k/v) in the double block, q/k/v with
    proj_mlp in each single block; q/k's RMSNorm and RoPE run as one op; all with the bits of the unshared model
    (diffusers' modules), eager and compiled."""
    base, inputs = tiny
    base = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # q/k norms with weights other than ones (their rounding then shows)
        for m in base.modules():
            if isinstance(m, torch.nn.RMSNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
    shared, alone = copy.deepcopy(base), copy.deepcopy(base)
    names = fuse_epilogues(shared)
    assert {"transformer_blocks.0.attn", "single_transformer_blocks.0.attn"} <= set(names)
    assert "transformer_blocks.0.attn" not in fuse_epilogues(alone, share_inputs=False, norm_rope=False)
    calls = _counting_quantizer(monkeypatch)
    norm_rope, real = [], ops.rms_norm_rope
    monkeypatch.setattr(ops, "rms_norm_rope", lambda x, *a: norm_rope.append(x.shape[1]) or real(x, *a))
    with torch.no_grad():
        y_alone = alone(**inputs)[0]
        n_alone = len(calls)
        assert norm_rope == []
        calls.clear()
        y_shared = shared(**inputs)[0]
    # q/k's RMSNorm + RoPE in one op: the double block's q and k (image tokens, the text ones as the front part), each
    # single block's q and k
    n_img, n_txt = inputs["hidden_states"].shape[1], inputs["encoder_hidden_states"].shape[1]
    assert sorted(norm_rope) == sorted([n_img, n_img] + [n_img + n_txt] * 4)
    # rank 16 a layer: q/k/v and add_q/k/v of the double block (48 each), q/k/v/proj_mlp of each single block (64)
    assert calls.count(48) == 2 and calls.count(64) == 2 and calls.count(16) == len(calls) - 4
    assert n_alone == len(calls) + 2 * 2 + 2 * 3
    assert torch.equal(y_shared, y_alone)
    with torch.no_grad():
        compiled = torch.compile(shared, backend="aot_eager", fullgraph=True)(**inputs)[0]
        batch = T.model_inputs(base, seed=4, batch=3)  # three images: the norm/RoPE op's front part per image
        assert torch.equal(shared(**batch)[0], alone(**batch)[0])
    assert torch.equal(compiled, y_shared)
    assert set(unfuse_epilogues(shared)) == set(names)
    assert all("_svdquant_shared_inputs" not in vars(m) for m in shared.modules())


@pytest.mark.parametrize("lora_first", [False, True])
def test_lora_layers_share_the_quantizer_call_when_asked(tiny, monkeypatch, lora_first):
    """fuse_epilogues(share_lora=True): svdquant's LoRA layers around q/k/v (and proj_mlp) join the shared quantizer
    call, their adapters' down projections beside the others' (LoRA loaded before or after fusing): the unshared
    model's bits, eager and compiled; with the adapters off the group falls back to calls one by one."""
    base, inputs = tiny
    shared, alone = copy.deepcopy(base), copy.deepcopy(base)

    def same_lora(model):  # the same adapter weights in both models (peft draws lora_A from the global generator)
        torch.manual_seed(11)
        return _with_random_lora(model)

    if lora_first:
        shared, alone = same_lora(shared), same_lora(alone)
    fuse_epilogues(shared, share_lora=True)
    fuse_epilogues(alone, share_inputs=False)
    if not lora_first:
        shared, alone = same_lora(shared), same_lora(alone)
    calls = _counting_quantizer(monkeypatch)
    with torch.no_grad():
        y_alone = alone(**inputs)[0]
        n_alone = len(calls)
        calls.clear()
        y = shared(**inputs)[0]
    # the double block's q/k/v and add_q/k/v, each single block's q/k/v + proj_mlp: one call each, ranks 16 + 4 -> 32
    assert calls.count(3 * 32) == 2 and calls.count(4 * 32) == 2 and n_alone == len(calls) + 2 * 2 + 2 * 3
    assert torch.equal(y, y_alone)
    monkeypatch.undo()
    with torch.no_grad():
        assert torch.equal(torch.compile(shared, backend="aot_eager", fullgraph=True)(**inputs)[0], y)
    wrappers = [m for m in shared.modules() if type(m).__name__ == "SVDQuantLoraLinear"]
    for m in wrappers:
        m.enable_adapters(False)
    calls = _counting_quantizer(monkeypatch)
    with torch.no_grad():
        shared(**inputs)
    assert 3 * 32 not in calls and 4 * 32 not in calls and 3 * 16 not in calls


def test_sharing_follows_the_smoothing_and_the_layers(tiny, monkeypatch):
    """A state dict with another smoothing for to_k ends its sharing (found again on load); a LoRA-wrapped layer, a
    custom attention processor or a mask take the usual forward; all with the unshared model's bits."""
    base, inputs = tiny
    shared, alone = copy.deepcopy(base), copy.deepcopy(base)
    fuse_epilogues(shared)
    fuse_epilogues(alone, share_inputs=False, norm_rope=False)
    sd = base.state_dict()
    key = "single_transformer_blocks.0.attn.to_k.smooth_factor"
    sd[key] = sd[key] * 1.5
    shared.load_state_dict(sd)
    alone.load_state_dict(sd)
    assert vars(shared.single_transformer_blocks[0])["_svdquant_shared_inputs"] == ()
    assert vars(shared.single_transformer_blocks[0].attn)["_svdquant_shared_inputs"] == ()
    assert len(vars(shared.single_transformer_blocks[1])["_svdquant_shared_inputs"]) == 1
    calls = _counting_quantizer(monkeypatch)
    norm_rope, real = [], ops.rms_norm_rope
    monkeypatch.setattr(ops, "rms_norm_rope", lambda x, *a: norm_rope.append(x.shape[1]) or real(x, *a))
    with torch.no_grad():
        y = shared(**inputs)[0]
        assert calls.count(64) == 1 and calls.count(48) == 2  # the first single block's four layers alone
        assert len(norm_rope) == 6  # ... its q/k norm and RoPE still one op each
        assert torch.equal(y, alone(**inputs)[0])
    only_norm_rope = copy.deepcopy(base)
    fuse_epilogues(only_norm_rope, share_inputs=False)
    only_norm_rope.load_state_dict(sd)
    calls.clear()
    with torch.no_grad():
        assert torch.equal(only_norm_rope(**inputs)[0], alone(**inputs)[0])
    assert 48 not in calls and 64 not in calls
    blk = shared.transformer_blocks[0]
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    class Custom(FluxAttnProcessor):
        pass

    blk.attn.set_processor(Custom())
    alone.transformer_blocks[0].attn.set_processor(Custom())
    with torch.no_grad():
        assert torch.equal(shared(**inputs)[0], alone(**inputs)[0])
    x = torch.randn(1, 5, blk.attn.to_q.in_features, dtype=torch.bfloat16)
    qkv = tuple(torch.zeros(1, 5, 128, dtype=torch.bfloat16) for _ in range(3))
    with pytest.raises(ValueError, match="given projections need"):
        blk.attn(x, projections=qkv)


def test_other_forward_wrappers_are_respected(tiny):
    """A module whose forward another library wrapped (as accelerate's and diffusers' hooks do) is not fused; one
    wrapped after fusing makes unfuse refuse, naming it, before anything changes."""
    import functools

    base, inputs = tiny
    model = copy.deepcopy(base)
    gelu = model.transformer_blocks[0].ff.net[0]
    gelu.forward = functools.partial(type(gelu).forward, gelu)  # someone else's wrapper, before fusing
    names = fuse_epilogues(model)
    assert "transformer_blocks.0.ff.net.0" not in names and "single_transformer_blocks.0" in names
    block = model.single_transformer_blocks[0]
    fused_forward = block.forward
    block.forward = lambda *a, **k: fused_forward(*a, **k)  # wrapped after fusing
    with pytest.raises(ValueError, match="single_transformer_blocks.0's forward was wrapped"):
        unfuse_epilogues(model)
    assert "_svdquant_epilogue" in vars(model.single_transformer_blocks[1])  # nothing undone
    with torch.no_grad():
        model(**inputs)


def test_forward_fused_errors_name_the_layer(tiny):
    model, _ = tiny
    layer = model.single_transformer_blocks[0].proj_mlp
    assert isinstance(layer, SVDQuantLinear)
    x = torch.randn(2, 5, layer.in_features, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="activation must be one of"):
        layer.forward_fused(x, "relu")
    with pytest.raises(ValueError, match=r"prefix has shape \(2, 4, 8\)"):
        layer.forward_fused(x, "gelu_tanh", prefix=torch.zeros(2, 4, 8, dtype=torch.bfloat16))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_flux_on_the_gpu_matches_unfused_eager_and_compiled():
    """The kernels' epilogue in a model: fused vs unfused within rounding, and Inductor-compiled fused vs eager fused."""
    model, inputs = _tiny_flux()
    model.cuda()
    inputs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    fused = copy.deepcopy(model)
    fuse_epilogues(fused)
    with torch.no_grad():
        y0, y1 = model(**inputs)[0], fused(**inputs)[0]
        assert torch.isfinite(y1).all() and _rel(y1, y0) < 2e-2
        torch._dynamo.reset()
        fused.compile_repeated_blocks(fullgraph=True)
        assert _rel(fused(**inputs)[0], y1) < 1e-2
        torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("lora", [False, True])
def test_shared_quantizer_and_norm_rope_on_the_gpu(lora):
    """On the GPU: the shared quantizer and the norm/RoPE kernel against the usual ops (diffusers' attention), within
    rounding (the kernel's sum of squares, cuBLAS's down projection of another width); with a LoRA on every layer
    (q/k/v called one by one, the norm/RoPE kernel still used) as well."""
    model, inputs = _tiny_flux()
    if lora:
        model = _with_random_lora(model)
    model.cuda()
    inputs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    plain, fused = copy.deepcopy(model), copy.deepcopy(model)
    fuse_epilogues(plain, share_inputs=False, norm_rope=False)
    names = fuse_epilogues(fused)
    assert "single_transformer_blocks.0.attn" in names and "transformer_blocks.0.attn" in names
    with torch.no_grad():
        y0, y1 = plain(**inputs)[0], fused(**inputs)[0]
    assert torch.isfinite(y1).all() and _rel(y1, y0) < 2e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("lora", [False, True])
def test_proj_out_input_quantized_in_place_on_the_gpu(lora):
    """On the GPU (4 heads: proj_out's 1280 inputs are a width the quantizer kernel takes): single blocks' proj_out
    through svdquant::quantize_act_2l_cat against the prefix route, within rounding (the down projection in two cuBLAS
    calls), with a LoRA on every layer as well."""
    model, inputs = _tiny_flux(blocks_proj_out=True, heads=4)
    if lora:
        model = _with_random_lora(model)
    model.cuda()
    inputs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    in_place, prefix = copy.deepcopy(model), copy.deepcopy(model)
    fuse_epilogues(in_place)
    fuse_epilogues(prefix, cat_in_place=False)
    with torch.no_grad():
        y0, y1 = prefix(**inputs)[0], in_place(**inputs)[0]
    assert torch.isfinite(y1).all() and _rel(y1, y0) < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_lora_layers_in_the_shared_quantizer_on_the_gpu():
    """On the GPU: share_lora=True (the LoRA layers' branches side by side in one quantizer call, each GEMM reading its
    rank-32 column block in place) against LoRA layers quantizing one by one, within rounding."""
    model, inputs = _tiny_flux()
    torch.manual_seed(11)
    model = _with_random_lora(model).cuda()
    inputs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    shared, alone = copy.deepcopy(model), copy.deepcopy(model)
    fuse_epilogues(shared, share_lora=True)
    fuse_epilogues(alone, share_inputs=False)
    assert vars(shared.transformer_blocks[0].attn)["_svdquant_shared_inputs"]
    with torch.no_grad():
        y0, y1 = alone(**inputs)[0], shared(**inputs)[0]
    assert torch.isfinite(y1).all() and _rel(y1, y0) < 1e-2

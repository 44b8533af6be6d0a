"""set_fragment_order: int4_2l layers hold their packed weights in the Hopper GEMM's fragment order (ops/layout_2l.py)
on their device and the canonical bytes in host memory: same outputs, same state dict and checkpoint, one compiled
graph calling the fragment-order op, and the int8 copy, fusion and loading keep it consistent."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import _dynamo as dynamo

from svdquant_hf import (
    SVDQuantConfig,
    SVDQuantLinear,
    fuse_shared_input_projections,
    set_fragment_order,
    set_int8_weights,
    unfuse_shared_input_projections,
)
from svdquant_hf import testing as T
from svdquant_hf.ops.layout_2l import fragment_order

from _hf_helpers import fullgraph_targets, inject_random_lora, quantize_joint_qkv

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_thread")


def _quantized_flux(fmt: str = "int4_2l"):
    """A Flux transformer 128 wide (every 4-bit layer's K a multiple of 128), q/k/v jointly quantized (fusable)."""
    T._seeded(4)
    model = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=64, num_attention_heads=2,
        joint_attention_dim=64, pooled_projection_dim=64, guidance_embeds=False, axes_dims_rope=(16, 24, 24),
    )
    return model, quantize_joint_qkv(model, fmt)


@pytest.fixture(scope="module")
def quantized():
    return _quantized_flux()


def _layers(model):
    return [m for m in model.modules() if isinstance(m, SVDQuantLinear)]


def test_same_outputs_state_dict_and_one_graph(quantized, tmp_path):
    model, inp = copy.deepcopy(quantized[0]), quantized[1]
    layers = _layers(model)
    with torch.no_grad():
        before = model(**inp)[0]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert set_fragment_order(model) == len(layers) > 0
    layer = layers[0]
    assert layer.holds_fragment_order and layer.qweight.device.type == "cpu"
    assert torch.equal(layer.qweight_fo, fragment_order(layer.qweight))
    sd = model.state_dict()
    assert sd.keys() == state.keys() and all(torch.equal(sd[k], state[k]) for k in state)  # canonical, no copy saved
    probe = copy.deepcopy(layer).to("meta")  # a device move takes the reordered copy; the canonical bytes stay
    assert probe.qweight_fo.is_meta and probe.qweight.device.type == "cpu"
    with torch.no_grad():
        assert torch.equal(model(**inp)[0], before)
    out, targets = fullgraph_targets(model, inp)  # one graph
    dynamo.reset()
    assert torch.equal(out, before)
    assert sum("svdquant.w4a4_gemm_2l_fo" in t for t in targets) == len(layers)
    assert not any(t.startswith("svdquant.w4a4_gemm_2l.") for t in targets)
    # a canonical state dict loads into layers holding the fragment order (their copy is rebuilt from it)
    other, _ = _quantized_flux()
    set_fragment_order(other)
    other.load_state_dict(state)
    assert all(torch.equal(m.qweight_fo, fragment_order(m.qweight)) for m in _layers(other))
    with torch.no_grad():
        assert torch.equal(other(**inp)[0], before)
    assert set_fragment_order(model, False) == 0
    assert not hasattr(layer, "qweight_fo") and "qweight_fo" not in layer._non_persistent_buffers_set
    with torch.no_grad():
        assert torch.equal(model(**inp)[0], before)


def test_int8_copy_replaces_it(quantized):
    model, inp = copy.deepcopy(quantized[0]), quantized[1]
    with torch.no_grad():
        before = model(**inp)[0]
    n = set_fragment_order(model)
    assert set_int8_weights(model) == n
    assert not any(m.holds_fragment_order for m in _layers(model))
    assert set_fragment_order(model) == 0  # the int8 copy stays
    with torch.no_grad():
        assert torch.equal(model(**inp)[0], before)


def test_fused_layers_keep_it_and_unfuse_back(quantized):
    model, inp = copy.deepcopy(quantized[0]), quantized[1]
    plain = copy.deepcopy(model)
    fuse_shared_input_projections(plain)
    with torch.no_grad():
        fused_ref = plain(**inp)[0]
        unfused_ref = model(**inp)[0]
    set_fragment_order(model)
    names = fuse_shared_input_projections(model)
    assert names
    fused = [m for m in _layers(model) if hasattr(m, "fused_members")]
    assert fused and all(m.holds_fragment_order for m in fused)
    with torch.no_grad():
        assert torch.equal(model(**inp)[0], fused_ref)
    assert unfuse_shared_input_projections(model)
    assert all(m.holds_fragment_order for m in _layers(model))
    with torch.no_grad():
        assert torch.equal(model(**inp)[0], unfused_ref)


def test_layers_that_cannot_hold_it_say_so():
    int4 = SVDQuantLinear(128, 32, quant_format="int4")
    w4a16 = SVDQuantLinear(128, 32, quant_format="int4_2l", weight_only=True)
    ok = SVDQuantLinear(128, 128, quant_format="int4_2l")
    K64 = SVDQuantLinear(64, 32, quant_format="int4_2l")  # K and N not on the 128-wide tiles: padded
    assert [m.set_fragment_order() for m in (int4, w4a16, ok, K64)] == [False, False, True, True]
    assert not any(m.holds_fragment_order for m in (int4, w4a16)) and ok.holds_fragment_order
    assert "wscales_kp" not in ok._buffers and K64.qweight_fo.shape == (128, 64) and K64.wscales_kp.shape == (2, 128)
    assert K64.set_fragment_order(False) is False and not any(k.endswith("_kp") for k in K64._buffers)


def _random_2l_layer(k: int, n: int, gs: int = 64, rank: int = 16, seed: int = 0) -> SVDQuantLinear:
    from svdquant_hf.formats.int4 import pack_int4

    g = torch.Generator().manual_seed(seed)
    layer = SVDQuantLinear(k, n, rank=rank, group_size=gs, quant_format="int4_2l")
    layer.qweight = pack_int4(torch.randint(-8, 8, (n, k), dtype=torch.int8, generator=g))
    layer.wscales = torch.randint(1, 17, (k // gs, n), dtype=torch.uint8, generator=g)
    layer.wchannel = torch.rand(n, generator=g) * 1e-2
    layer.smooth_factor = (torch.rand(k, generator=g) + 0.5).bfloat16()
    layer.proj_down = (torch.randn(k, rank, generator=g) / k**0.5).bfloat16()
    layer.proj_up = (torch.randn(n, rank, generator=g) / rank**0.5).bfloat16()
    layer.bias.data = torch.randn(n, generator=g).bfloat16()
    return layer


@pytest.mark.parametrize("k, n, gs", [(192, 200, 64), (2240, 2240, 64), (160, 136, 32), (320, 128, 64), (256, 72, 128)])
def test_padded_layers_give_the_unpadded_bits(k, n, gs, tmp_path):
    """K / N off the GEMM's 128-wide tiles (SANA's 2240, PixArt-like widths): the padded fragment-order layer gives
    the canonical layer's bits, through forward, a LoRA-style branch of its own, the fused entry points, a state dict
    round trip and a device move; the padded operands are not saved."""
    layer = _random_2l_layer(k, n, gs, seed=k + n)
    x = torch.randn(2, 9, k, generator=torch.Generator().manual_seed(1)).bfloat16()
    pd2, pu2 = layer.proj_down * 0.5, torch.randn(n, 16, generator=torch.Generator().manual_seed(2)).bfloat16()
    with torch.no_grad():
        ref, ref_branch = layer(x), layer.forward_with_branch(x, pd2, pu2)
        ref_gelu = torch.nn.functional.gelu(ref, approximate="tanh")
        state = {key: v.clone() for key, v in layer.state_dict().items()}
        assert layer.set_fragment_order()
        assert layer.kernel_shape() == (-(-k // 128) * 128, -(-n // 128) * 128)
        assert torch.equal(layer(x), ref) and torch.equal(layer.forward_with_branch(x, pd2, pu2), ref_branch)
        assert torch.equal(layer.forward_fused(x, "gelu_tanh"), ref_gelu)
        half = k // 2
        assert torch.equal(layer.forward_cat(x[..., :half], x[..., half:]), ref)
        sd = layer.state_dict()
        assert sd.keys() == state.keys() and all(torch.equal(sd[key], state[key]) for key in state)
        other = _random_2l_layer(k, n, gs, seed=99)
        other.set_fragment_order()
        other.load_state_dict(state)  # the padded operands rebuilt from what was loaded
        assert torch.equal(other(x), ref)
        moved = copy.deepcopy(layer).to("meta")
        assert all(moved._buffers[key].is_meta for key in moved._buffers if key.endswith(("_fo", "_kp")))


def _fake_hopper(monkeypatch):
    from svdquant_hf.quantizers import common

    monkeypatch.setattr(common, "hopper_present", lambda: True)


def test_from_pretrained_holds_it_on_hopper_unless_told_not_to(monkeypatch, tmp_path):
    """The diffusers adapter gives loaded int4_2l layers the fragment order on a Hopper machine (faked here: the
    layers stay on the CPU), not with SVDQUANT_HF_FRAGMENT_ORDER=0 nor without one; outputs and saved bytes are
    the same either way."""
    from diffusers import FluxTransformer2DModel

    src = T.save_tiny_model(T.tiny_flux_transformer(seed=21), tmp_path / "fp")
    cfg = SVDQuantConfig(quant_format="int4_2l")

    def load():
        return FluxTransformer2DModel.from_pretrained(src, quantization_config=cfg, torch_dtype=torch.bfloat16)

    plain = load()  # no GPU: canonical
    assert not any(m.holds_fragment_order for m in _layers(plain))
    _fake_hopper(monkeypatch)
    monkeypatch.setenv("SVDQUANT_HF_FRAGMENT_ORDER", "0")
    assert not any(m.holds_fragment_order for m in _layers(load()))
    monkeypatch.delenv("SVDQUANT_HF_FRAGMENT_ORDER")
    model = load()
    assert all(m.holds_fragment_order for m in _layers(model))  # those not on the GEMM's tiles padded to them
    assert any(m.kernel_shape() != (m.in_features, m.out_features) for m in _layers(model))
    inp = T.model_inputs(model, seed=2)
    with torch.no_grad():
        assert torch.equal(model(**inp)[0], plain(**inp)[0])
    sd, sd0 = model.state_dict(), plain.state_dict()
    assert sd.keys() == sd0.keys() and all(torch.equal(sd[k], sd0[k]) for k in sd0)
    model.save_pretrained(tmp_path / "q")
    again = FluxTransformer2DModel.from_pretrained(tmp_path / "q", torch_dtype=torch.bfloat16)
    assert any(m.holds_fragment_order for m in _layers(again))
    with torch.no_grad():
        assert torch.equal(again(**inp)[0], plain(**inp)[0])


def test_a_hook_that_brings_only_the_canonical_weights_still_computes_right(quantized):
    """An offloading hook (accelerate's sequential offload works from state_dict(), where the reordered copy is
    not) may leave the copy elsewhere: the layer then runs the canonical weights it was given."""
    model, inp = copy.deepcopy(quantized[0]), quantized[1]
    with torch.no_grad():
        before = model(**inp)[0]
    set_fragment_order(model)
    for m in _layers(model):
        m.qweight_fo = m.qweight_fo.to("meta")  # "elsewhere": the forward must not read it
    with torch.no_grad():
        assert torch.equal(model(**inp)[0], before)


def test_a_lora_on_layers_holding_it_matches_the_canonical_model(quantized):
    """A PEFT LoRA folded into the branch (rank 16 + 8) runs on the fragment-order weights exactly as on the
    canonical ones (the GEMM with the wider branch is the same op)."""
    base, inp = quantized
    outs = []
    for fo in (False, True):
        model = copy.deepcopy(base)
        if fo:
            assert set_fragment_order(model) > 0
        torch.manual_seed(0)  # the same adapters both times
        inject_random_lora(model)
        with torch.no_grad():
            outs.append(model(**inp)[0])
    with torch.no_grad():
        plain = base(**inp)[0]
    assert torch.equal(outs[1], outs[0]) and not torch.equal(outs[0], plain)

"""Jointly quantized q/k/v run fused (svdquant_hf.fusion) on a tiny Flux transformer: same outputs, same
checkpoint keys, exact unfuse, and LoRA asks for unfusing."""
from __future__ import annotations

import copy

import pytest
import torch

from svdquant_hf import (
    SVDQuantConfig,
    SVDQuantLinear,
    fuse_shared_input_projections,
    qkv_groups,
    quantize_model,
    unfuse_shared_input_projections,
)
from svdquant_hf import testing as T
from svdquant_hf.lora import testing as LT

from _hf_helpers import quantize_joint_qkv

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.usefixtures("one_thread")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(scope="module")
def quantized():
    model = T.tiny_flux_transformer(3, in_channels=16)
    return model, quantize_joint_qkv(model)


def test_fused_model_computes_the_same_and_keeps_its_checkpoint_keys(quantized):
    model, inputs = quantized
    fused = copy.deepcopy(model)
    sd_before = model.state_dict()
    names = fuse_shared_input_projections(fused)
    attn = fused.transformer_blocks[0].attn
    assert "transformer_blocks.0.attn.to_qkv" in names and "transformer_blocks.0.attn.to_added_qkv" in names
    assert "single_transformer_blocks.0.attn.to_qkv" in names
    assert attn.fused_projections and not hasattr(attn, "to_q") and isinstance(attn.to_qkv, SVDQuantLinear)
    assert attn.to_qkv.out_features == 3 * attn.inner_dim
    with torch.no_grad():
        y0, y1 = model(**inputs)[0], fused(**inputs)[0]
    assert _rel(y1, y0) < 1e-3
    sd_after = fused.state_dict()
    assert sd_after.keys() == sd_before.keys()
    assert all(torch.equal(sd_after[k], sd_before[k]) for k in sd_before)
    # and the fused layer is one quantizer call instead of three
    calls = []
    orig = SVDQuantLinear.forward_with_branch

    def count(self, x, pd, pu):
        calls.append(self.layer_name)
        return orig(self, x, pd, pu)

    SVDQuantLinear.forward_with_branch = count
    try:
        with torch.no_grad():
            fused(**inputs)
        n_fused = len(calls)
        calls.clear()
        with torch.no_grad():
            model(**inputs)
    finally:
        SVDQuantLinear.forward_with_branch = orig
    n_blocks = len(model.transformer_blocks) * 2 + len(model.single_transformer_blocks)
    assert len(calls) - n_fused == 2 * n_blocks


def test_unfuse_restores_the_layers_exactly(quantized):
    model, inputs = quantized
    fused = copy.deepcopy(model)
    fuse_shared_input_projections(fused)
    assert unfuse_shared_input_projections(fused)
    attn = fused.transformer_blocks[0].attn
    assert not attn.fused_projections and not hasattr(attn, "to_qkv")
    for (n0, m0), (n1, m1) in zip(model.named_modules(), fused.named_modules()):
        assert n0 == n1
        if isinstance(m0, SVDQuantLinear):
            assert all(torch.equal(a, b) for a, b in zip(m0.state_dict().values(), m1.state_dict().values())), n0
    assert fused.state_dict().keys() == model.state_dict().keys()


def test_layers_quantized_one_by_one_fuse_with_their_branches_side_by_side():
    """Data-free quantization smooths nothing (every smooth_factor is 1), so q/k/v quantized one by one quantize
    their input alike: they fuse, each member's branch a block of the fused one (rank 3 x 16, nothing shared),
    with the same outputs, and split back exactly. Different smoothing is never fused."""
    model = T.tiny_flux_transformer(3, in_channels=16)
    quantize_model(model, SVDQuantConfig(quant_format="int4_2l", rank=16), progress=False,
                   extra_skip=[n for n in dict(model.named_modules()) if "norm" in n or "embed" in n])
    inputs = T.model_inputs(model, seed=6, batch=1)
    fused = copy.deepcopy(model)
    assert "transformer_blocks.0.attn.to_qkv" in fuse_shared_input_projections(fused)
    qkv = fused.transformer_blocks[0].attn.to_qkv
    assert qkv.fused_shared_rank == 0 and qkv.rank == qkv.proj_down.shape[1] == 48
    with torch.no_grad():
        assert _rel(fused(**inputs)[0], model(**inputs)[0]) < 1e-3
    unfuse_shared_input_projections(fused)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fused.state_dict().values()))

    other = copy.deepcopy(model)
    for block in [*other.transformer_blocks, *other.single_transformer_blocks]:
        block.attn.to_k.smooth_factor = block.attn.to_k.smooth_factor * 2
    for block in other.transformer_blocks:
        block.attn.add_k_proj.smooth_factor = block.attn.add_k_proj.smooth_factor * 2
    assert fuse_shared_input_projections(other) == []


def test_merged_lora_members_fuse_and_split_back(quantized):
    """fuse_lora() + unload_lora_weights() leave LoRA columns after the members' shared branch (a LoRA on to_q and
    to_k, none on to_v): the members still fuse (shared columns once, each member's LoRA columns its own
    block), compute what they computed, and split back to exactly those tensors."""
    model, inputs = quantized
    base = copy.deepcopy(model)
    pipe = diffusers.FluxPipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None,
                                  text_encoder_2=None, tokenizer_2=None, transformer=base)
    pipe.load_lora_weights(LT.peft_lora(model, rank=4, seed=2, strength=0.3, include=("attn.to_q", "attn.to_k")))
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    attn = base.transformer_blocks[0].attn
    assert attn.to_q.rank == attn.to_v.rank + 16  # the merged LoRA, padded to 16 columns
    with torch.no_grad():
        merged_out = base(**inputs)[0]
        assert _rel(merged_out, model(**inputs)[0]) > 1e-3  # the LoRA changed the outputs
    fused = copy.deepcopy(base)
    assert "transformer_blocks.0.attn.to_qkv" in fuse_shared_input_projections(fused)
    qkv = fused.transformer_blocks[0].attn.to_qkv
    assert qkv.fused_shared_rank == attn.to_v.rank and qkv.rank == attn.to_v.rank + 32
    with torch.no_grad():
        assert _rel(fused(**inputs)[0], merged_out) < 1e-3
    unfuse_shared_input_projections(fused)
    assert fused.state_dict().keys() == base.state_dict().keys()
    assert all(torch.equal(fused.state_dict()[k], v) for k, v in base.state_dict().items())


def test_lora_on_a_fused_model_asks_for_unfusing(quantized):
    model, _ = quantized
    fused = copy.deepcopy(model)
    fuse_shared_input_projections(fused)
    pipe = diffusers.FluxPipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None,
                                  text_encoder_2=None, tokenizer_2=None, transformer=fused)
    lora = LT.peft_lora(model, rank=4, seed=1, include=("attn.to_q",))
    with pytest.raises(ValueError, match=r"runs fused in .*to_qkv.*unfuse_shared_input_projections"):
        pipe.load_lora_weights(lora)
    unfuse_shared_input_projections(fused)
    pipe.load_lora_weights(lora)  # unfused: loads


def test_fused_model_compiles_as_one_graph(quantized):
    model, inputs = quantized
    fused = copy.deepcopy(model)
    fuse_shared_input_projections(fused)
    with torch.no_grad():
        ref = fused(**inputs)[0]
        out = torch.compile(fused, fullgraph=True, backend="aot_eager")(**inputs)[0]
    assert _rel(out, ref) < 1e-3


def test_modules_without_diffusers_fused_path_are_left_alone():
    """A module with q/k/v siblings but no fused path in its forward (here a plain module, as for diffusers'
    legacy Attention class) is not fused, even when its siblings share their input quantization."""
    from torch import nn

    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.to_q, self.to_k, self.to_v = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 64)
            self.fused_projections = False

    m = nn.Sequential(Plain())
    quantize_model(m, SVDQuantConfig(rank=8), progress=False, shared_input_groups=qkv_groups(m))
    assert fuse_shared_input_projections(m) == [] and hasattr(m[0], "to_q")


def test_calibrated_joint_pipeline_saves_reloads_and_fuses(tmp_path):
    """quantize_pipeline(joint_qkv=True) -> save_pretrained -> from_pretrained: the reloaded q/k/v still share
    their input quantization, so they fuse, and the fused pipeline gives the same latents."""
    from diffusers import FluxPipeline

    from svdquant_hf.pipeline import quantize_pipeline

    call = dict(height=64, width=64, guidance_scale=3.5, max_sequence_length=16, num_inference_steps=2,
                output_type="latent")
    pipe = T.tiny_flux_pipeline(seed=1)
    quantize_pipeline(pipe, SVDQuantConfig(rank=8, alpha_grid=3), ["a red tree", "a blue car"],
                      num_inference_steps=2, progress=False, joint_qkv=True, **{k: v for k, v in call.items()
                                                                                   if k not in ("num_inference_steps", "output_type")})
    attn = pipe.transformer.transformer_blocks[0].attn
    assert torch.equal(attn.to_q.proj_down, attn.to_v.proj_down) and attn.to_q.rank == min(24, attn.to_q.in_features)
    pipe.save_pretrained(tmp_path / "q")
    again = FluxPipeline.from_pretrained(tmp_path / "q")
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    ref = again(prompt="a cat", generator=gen(), **call).images
    assert fuse_shared_input_projections(again.transformer)
    out = again(prompt="a cat", generator=gen(), **call).images
    assert _rel(out, ref) < 1e-3


def test_a_fused_model_saves_with_safetensors(quantized, tmp_path):
    """The member tensors a fused model's state_dict produces are separate copies (safetensors refuses shared
    memory) and load back into the unfused model."""
    from safetensors.torch import load_file, save_file

    model, inputs = quantized
    fused = copy.deepcopy(model)
    fuse_shared_input_projections(fused)
    save_file(fused.state_dict(), tmp_path / "m.safetensors")
    again = copy.deepcopy(model)
    again.load_state_dict(load_file(tmp_path / "m.safetensors"))
    with torch.no_grad():
        assert torch.equal(again(**inputs)[0], model(**inputs)[0])


# ---- quantize on load: SVDQuantConfig(joint_qkv=True) through diffusers' from_pretrained


@pytest.fixture(scope="module")
def sharded_16bit(tmp_path_factory):
    ref = T.tiny_flux_transformer(seed=3)
    path = T.save_tiny_model(ref, tmp_path_factory.mktemp("flux16") / "m", max_shard_size="60KB")
    assert len(list(path.glob("*.safetensors"))) > 3  # q, k and v of a block land in different shards
    return ref, path


def test_quantize_on_load_joint_qkv_across_shards_saves_reloads_and_fuses(sharded_16bit, tmp_path):
    from diffusers import FluxTransformer2DModel

    ref, path = sharded_16bit
    plain = FluxTransformer2DModel.from_pretrained(path, quantization_config=SVDQuantConfig(rank=8),
                                                   torch_dtype=torch.bfloat16)
    joint = FluxTransformer2DModel.from_pretrained(path, quantization_config=SVDQuantConfig(rank=8, joint_qkv=True),
                                                   torch_dtype=torch.bfloat16)
    for attn in (joint.transformer_blocks[0].attn, joint.single_transformer_blocks[0].attn):
        assert torch.equal(attn.to_q.proj_down, attn.to_k.proj_down) and torch.equal(attn.to_q.proj_down, attn.to_v.proj_down)
        assert attn.to_q.rank == 24
    a = joint.transformer_blocks[0].attn
    assert torch.equal(a.add_q_proj.proj_down, a.add_v_proj.proj_down) and a.to_out[0].rank == 8
    ref = copy.deepcopy(ref).to(torch.bfloat16)
    inputs = T.model_inputs(ref, seed=5)
    with torch.no_grad():
        y_ref, y_plain, y_joint = (m(**inputs)[0] for m in (ref, plain, joint))
    assert _rel(y_joint, y_ref) < 1.5 * _rel(y_plain, y_ref) + 0.01
    joint.save_pretrained(tmp_path / "q")
    again = FluxTransformer2DModel.from_pretrained(tmp_path / "q", torch_dtype=torch.bfloat16)
    assert again.config.quantization_config.joint_qkv is True
    assert again.transformer_blocks[0].attn.to_q.rank == 24
    assert fuse_shared_input_projections(again)
    with torch.no_grad():
        assert _rel(again(**inputs)[0], y_joint) < 1e-3


def test_quantize_on_load_joint_qkv_names_a_missing_member(sharded_16bit, tmp_path):
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import load_file, save_file

    ref, _ = sharded_16bit
    path = T.save_tiny_model(ref, tmp_path / "m")
    f = next(path.glob("*.safetensors"))
    sd = load_file(f)
    del sd["transformer_blocks.0.attn.to_k.weight"]
    save_file(sd, f, metadata={"format": "pt"})
    with pytest.raises(Exception, match=r"transformer_blocks\.0\.attn\.to_k"):
        FluxTransformer2DModel.from_pretrained(path, quantization_config=SVDQuantConfig(rank=8, joint_qkv=True),
                                               torch_dtype=torch.bfloat16)


def test_diffusers_fuse_qkv_projections_on_a_quantized_model(tmp_path):
    """diffusers' own fuse_qkv_projections / unfuse_qkv_projections (which concatenate 16-bit weights) work on a
    model quantized on load: its attention modules fuse their SVDQuant layers (same outputs, exact unfuse); with a
    LoRA loaded, fusing asks for the LoRA to be merged or unloaded first."""
    from diffusers import FluxTransformer2DModel

    src = T.save_tiny_model(T.tiny_flux_transformer(seed=7), tmp_path / "fp")
    q = FluxTransformer2DModel.from_pretrained(src, quantization_config=SVDQuantConfig(), torch_dtype=torch.bfloat16)
    inputs = T.model_inputs(q, seed=3)
    with torch.no_grad():
        y0 = q(**inputs)[0]
    q.fuse_qkv_projections()
    double, single = q.transformer_blocks[0].attn, q.single_transformer_blocks[0].attn
    for attn in (double, single):
        assert attn.fused_projections and isinstance(attn.to_qkv, SVDQuantLinear) and not hasattr(attn, "to_q")
    assert isinstance(double.to_added_qkv, SVDQuantLinear)
    with torch.no_grad():
        assert torch.equal(q(**inputs)[0], y0)
    q.unfuse_qkv_projections()
    assert not double.fused_projections and isinstance(double.to_q, SVDQuantLinear) and not hasattr(double, "to_qkv")
    with torch.no_grad():
        assert torch.equal(q(**inputs)[0], y0)

    q.load_lora_adapter(LT.peft_lora(q, rank=8, seed=1, strength=0.3, prefix=None, include=("attn",)), prefix=None)
    with pytest.raises(ValueError, match="LoRA adapters are loaded"):
        q.fuse_qkv_projections()


@pytest.mark.parametrize("family", ["wan", "flux2", "sd3"])
def test_diffusers_fuse_qkv_projections_on_other_families(family, tmp_path):
    """Wan fuses its self-attention's q/k/v (to_qkv) and its cross-attention's k/v (to_kv), FLUX.2 its double blocks'
    projections: same outputs, exact unfuse; SD3's attention class (no fused path for these layers) refuses with a
    clear error before anything changes."""
    model = T.TINY_BUILDERS[family](seed=7)
    cls = type(model)
    q = cls.from_pretrained(T.save_tiny_model(model, tmp_path / "fp"), quantization_config=SVDQuantConfig(),
                            torch_dtype=torch.bfloat16)
    inputs = T.model_inputs(q, seed=3)
    with torch.no_grad():
        y0 = q(**inputs)[0]
    if family == "sd3":
        with pytest.raises(ValueError, match="Attention: fusing the projections of SVDQuant layers is supported"):
            q.fuse_qkv_projections()
        return
    q.fuse_qkv_projections()
    fused = {n.rsplit(".", 1)[-1] for n, m in q.named_modules() if hasattr(m, "fused_members")}
    assert fused == ({"to_qkv", "to_kv"} if family == "wan" else {"to_qkv", "to_added_qkv"})
    if family == "wan":
        assert isinstance(q.blocks[0].attn2.to_q, SVDQuantLinear) and not hasattr(q.blocks[0].attn2, "to_k")
    with torch.no_grad():
        assert torch.equal(q(**inputs)[0], y0)
    q.unfuse_qkv_projections()
    assert not any(hasattr(m, "fused_members") for m in q.modules())
    with torch.no_grad():
        assert torch.equal(q(**inputs)[0], y0)

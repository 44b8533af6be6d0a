"""torch.compile(fullgraph=True) on a quantized diffusers transformer: one graph, the SVDQuant custom ops in it."""
from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo
from diffusers import FluxTransformer2DModel

from svdquant_hf import SVDQuantConfig
from svdquant_hf.testing import model_inputs, save_tiny_model, tiny_flux_transformer

from _hf_helpers import fullgraph_targets, inject_random_lora, svd_layers


@pytest.fixture(scope="module")
def q_model(tmp_path_factory):
    src = save_tiny_model(tiny_flux_transformer(seed=12), tmp_path_factory.mktemp("compile") / "fp")
    return FluxTransformer2DModel.from_pretrained(src, quantization_config=SVDQuantConfig(), torch_dtype=torch.bfloat16)


def test_quantizer_declares_compileable(q_model):
    assert q_model.hf_quantizer.is_compileable


def test_fullgraph_compile_has_no_graph_break_and_keeps_custom_ops(q_model):
    inp = model_inputs(q_model, seed=4)
    with torch.no_grad():
        eager = q_model(**inp)[0]
    out, targets = fullgraph_targets(q_model, inp)
    n_layers = len(svd_layers(q_model))
    assert sum("svdquant.quantize_act" in t for t in targets) == n_layers
    assert sum("svdquant.w4a4_gemm" in t for t in targets) == n_layers
    assert torch.equal(out, eager)


def test_fullgraph_compile_aot_eager_matches_eager(q_model):
    """AOTAutograd traces the ops through their fake implementations (shapes/dtypes must agree)."""
    inp = model_inputs(q_model, seed=5)
    with torch.no_grad():
        eager = q_model(**inp)[0]
        dynamo.reset()
        out = torch.compile(q_model, fullgraph=True, backend="aot_eager")(**inp)[0]
    assert torch.equal(out, eager)


@pytest.mark.slow
def test_fullgraph_compile_inductor(q_model):
    inp = model_inputs(q_model, seed=6)
    with torch.no_grad():
        eager = q_model(**inp)[0]
        dynamo.reset()
        out = torch.compile(q_model, fullgraph=True)(**inp)[0]
    assert out.shape == eager.shape and out.dtype == eager.dtype
    # inductor fuses the 16-bit ops around the custom ops: bf16 rounding may differ slightly
    assert (out.float() - eager.float()).abs().max() < 0.05


def _unique_graphs(model, inp, **compile_kwargs) -> tuple[torch.Tensor, int]:
    from torch._dynamo.utils import counters

    dynamo.reset()
    counters.clear()
    model.compile_repeated_blocks(fullgraph=True, **compile_kwargs)
    with torch.no_grad():
        out = model(**inp)[0]
    return out, counters["stats"]["unique_graphs"]


def test_regional_compile_reuses_one_graph_per_block_class(tmp_path):
    """diffusers' compile_repeated_blocks (regional compilation: each block class compiled once, the graph reused
    by every block) on a quantized FLUX with 3 + 3 blocks: the 4-bit layers cause no per-block recompile (as many
    graphs as the 16-bit model, fewer than blocks) and the outputs equal eager."""
    blocks = dict(num_layers=3, num_single_layers=3)
    src = save_tiny_model(tiny_flux_transformer(seed=13, **blocks), tmp_path / "fp")
    plain = FluxTransformer2DModel.from_pretrained(src, torch_dtype=torch.bfloat16)
    quant = FluxTransformer2DModel.from_pretrained(src, quantization_config=SVDQuantConfig(), torch_dtype=torch.bfloat16)
    inp = model_inputs(quant, seed=7)
    with torch.no_grad():
        eager = quant(**inp)[0]
    out, graphs = _unique_graphs(quant, inp, backend="aot_eager")
    _, plain_graphs = _unique_graphs(plain, inp, backend="aot_eager")
    assert torch.equal(out, eager)
    assert graphs == plain_graphs < 6, (graphs, plain_graphs)
    dynamo.reset()


def test_traced_quantizer_matches_the_reference_rule():
    """quantize_act_2l_traced: xq and xscale bit-identical to the reference quantizer (awkward values: outlier
    channels, an all-zero token), lr the plain matmul."""
    from svdquant_hf.ops import quantize_act_2l_ref, quantize_act_2l_traced

    g = torch.Generator().manual_seed(3)
    x = (torch.randn(37, 512, generator=g) * 2).to(torch.bfloat16)
    x[:, [5, 300]] *= 40
    x[4] = 0
    smooth = (torch.rand(512, generator=g) * 3 + 0.25).to(torch.bfloat16)
    pd = (torch.randn(512, 32, generator=g) / 512**0.5).to(torch.bfloat16)
    for gs in (32, 64, 128):
        xq, xs, lr = quantize_act_2l_traced(x, smooth, pd, gs)
        rq, rs, rl = quantize_act_2l_ref(x, smooth, pd, gs)
        assert torch.equal(xq, rq) and torch.equal(xs, rs)
        assert lr.dtype == x.dtype and torch.allclose(lr.float(), rl.float(), atol=2e-2, rtol=2e-2)


def test_traced_quantizer_replaces_the_quantize_op_under_compile_only(tmp_path):
    """set_trace_quantizer(True): the compiled graph holds the GEMM ops but no quantize op (the quantizer is torch
    ops that Inductor can fuse with the norm before it), and matches eager; eager and the default are unchanged."""
    from svdquant_hf.ops import set_trace_quantizer

    src = save_tiny_model(tiny_flux_transformer(seed=14), tmp_path / "fp")
    model = FluxTransformer2DModel.from_pretrained(
        src, quantization_config=SVDQuantConfig(quant_format="int4_2l"), torch_dtype=torch.bfloat16
    )
    inp = model_inputs(model, seed=8)
    n_layers = len(svd_layers(model))
    with torch.no_grad():
        eager = model(**inp)[0]
    _, default_targets = fullgraph_targets(model, inp)
    assert sum("svdquant.quantize_act_2l" in t for t in default_targets) == n_layers
    set_trace_quantizer(True)
    try:
        with torch.no_grad():
            assert torch.equal(model(**inp)[0], eager)  # eager always calls the op
        out, targets = fullgraph_targets(model, inp)
    finally:
        set_trace_quantizer(False)
        dynamo.reset()
    assert not any("svdquant.quantize_act_2l" in t for t in targets)
    assert sum("svdquant.w4a4_gemm_2l" in t for t in targets) == n_layers
    assert torch.equal(out, eager)  # on the CPU the traced ops are the reference's own


def test_regional_compile_with_lora_and_int8_weights_adds_no_graphs(tmp_path):
    """The variants the FLUX.1 benchmark compiles regionally: int4_2l with a rank-8 LoRA on every 4-bit layer
    (PEFT-injected, folded into the branch) and with the int8 weight copy (packed weights parked): still one
    graph per block class (a per-layer guard would compile one per block), outputs equal to eager."""
    from svdquant_hf import set_int8_weights

    blocks = dict(num_layers=3, num_single_layers=3)
    src = save_tiny_model(tiny_flux_transformer(seed=17, **blocks), tmp_path / "fp")
    plain = FluxTransformer2DModel.from_pretrained(src, torch_dtype=torch.bfloat16)
    inp = model_inputs(plain, seed=8)
    _, plain_graphs = _unique_graphs(plain, inp, backend="aot_eager")
    for variant in ("lora", "int8"):
        quant = FluxTransformer2DModel.from_pretrained(
            src, quantization_config=SVDQuantConfig(quant_format="int4_2l"), torch_dtype=torch.bfloat16
        )
        with torch.no_grad():
            base = quant(**inp)[0]
        if variant == "lora":
            inject_random_lora(quant)
        else:
            assert set_int8_weights(quant, packed_on_host=True) > 0
        with torch.no_grad():
            eager = quant(**inp)[0]
        out, graphs = _unique_graphs(quant, inp, backend="aot_eager")
        assert torch.equal(out, eager), variant
        assert torch.equal(eager, base) == (variant == "int8"), variant  # the LoRA is live, the copy exact
        assert graphs == plain_graphs < 6, (variant, graphs, plain_graphs)
    dynamo.reset()

"""torch.compile(fullgraph=True) on a quantized diffusers transformer: one graph, the SVDQuant custom ops in it."""
from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo
from diffusers import FluxTransformer2DModel

from svdquant_hf import SVDQuantConfig
from svdquant_hf.testing import model_inputs, save_tiny_model, tiny_flux_transformer

from _hf_helpers import fullgraph_targets, svd_layers


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

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

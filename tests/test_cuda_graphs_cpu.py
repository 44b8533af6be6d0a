"""svdquant_hf.enable_cuda_graphs off CUDA: clear errors, the module untouched (the replays are GPU-tested in
tests/gpu/test_kernels_2l.py::test_enable_cuda_graphs_replays_the_forward)."""
import pytest
import torch
from torch import nn

from svdquant_hf import disable_cuda_graphs, enable_cuda_graphs


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only error path")
def test_enable_cuda_graphs_without_cuda_names_the_module_and_leaves_it_eager():
    model = nn.Linear(4, 4)
    x = torch.randn(2, 4)
    want = model(x)
    with pytest.raises(ValueError, match="enable_cuda_graphs\\(Linear\\): CUDA graphs need a CUDA device"):
        enable_cuda_graphs(model)
    assert "forward" not in vars(model) and torch.equal(model(x), want)
    assert disable_cuda_graphs(model) is model  # a module never enabled: nothing to undo


def test_enable_cuda_graphs_rejects_what_is_not_a_module_and_a_zero_warmup():
    with pytest.raises(TypeError, match="expected an nn.Module, got function"):
        enable_cuda_graphs(lambda x: x)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="warmup must be >= 1"):
            enable_cuda_graphs(nn.Linear(4, 4).cuda(), warmup=0)


def test_the_graphed_forward_keeps_the_module_signature():
    """Pipelines that inspect transformer.forward's parameters see the real ones after enable_cuda_graphs."""
    import inspect

    from svdquant_hf.cuda_graphs import _GraphedForward

    model = nn.Linear(4, 4)
    assert inspect.signature(_GraphedForward(model, model.forward, 2)) == inspect.signature(model.forward)

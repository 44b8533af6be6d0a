"""Shared helpers for the diffusers-integration tests (not a test module)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from torch import nn

from svdquant_hf.modules import SVDQuantLinear

REPO = Path(__file__).resolve().parents[1]


def materialize(model: nn.Module) -> nn.Module:
    """Copy every parameter/buffer into fresh memory.

    CPU fp32 GEMMs can round differently depending on the data pointer's alignment, and loaded
    tensors live inside mmap'd safetensors files. Bit-identity claims compare models whose tensors
    are equal, so both sides are re-materialised the same way first.
    """
    with torch.no_grad():
        for mod in model.modules():
            for name, p in list(mod._parameters.items()):
                if p is not None:
                    p.data = p.data.clone()
            for name, b in list(mod._buffers.items()):
                if b is not None:
                    mod._buffers[name] = b.clone()
    return model


def svd_layers(model: nn.Module) -> dict[str, SVDQuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, SVDQuantLinear)}


def tensors_off_the_gpu(model: nn.Module) -> list[tuple[str, str]]:
    """(name, device) of every parameter and buffer not on a CUDA device, except what Hopper's fragment order keeps
    in host memory by design: the canonical ``qweight`` of a layer whose GEMM reads its GPU copy ``qweight_fo``."""
    layers = svd_layers(model)
    off = []
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        owner, _, attr = name.rpartition(".")
        if attr == "qweight" and owner in layers and layers[owner].holds_fragment_order:
            continue
        if t.device.type != "cuda":
            off.append((name, str(t.device)))
    return off


def fullgraph_targets(model: nn.Module, inputs: dict) -> tuple[torch.Tensor, list[str]]:
    """Compile ``model`` with fullgraph=True and a recording backend: (output, the one graph's call targets).

    Fails if dynamo produced more than one graph (a graph break).
    """
    import torch._dynamo as dynamo

    graphs: list[torch.fx.GraphModule] = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    dynamo.reset()
    with torch.no_grad():
        out = torch.compile(model, fullgraph=True, backend=backend)(**inputs)[0]
    assert len(graphs) == 1, f"{len(graphs)} graphs"
    return out, [str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"]


def plain_linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if type(m) is nn.Linear}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm())


def run_fresh(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python process (same interpreter, repo root as cwd); raise on failure."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    env["PYTHONSAFEPATH"] = "1"  # import the installed svdquant_hf, not the source folder in cwd
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"fresh process failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def inject_random_lora(model: nn.Module, rank: int = 8, adapter: str = "t", std: float = 0.05) -> None:
    """A PEFT LoRA of ``rank`` on every SVDQuantLinear, B drawn from N(0, std) (PEFT starts it at zero), folded into
    the layers' branches by lora.refresh."""
    from peft import LoraConfig, inject_adapter_in_model

    from svdquant_hf.lora import refresh

    targets = [n for n, m in model.named_modules() if isinstance(m, SVDQuantLinear)]
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets), model, adapter)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "lora_B") and adapter in m.lora_B:
                m.lora_B[adapter].weight.normal_(0, std)
    refresh(model)


def quantize_joint_qkv(model: nn.Module, quant_format: str = "int4_2l", rank: int = 16, group_rank: int = 48) -> dict:
    """Quantize a diffusers model in place with q/k/v jointly quantized (fusable; the other plain Linears left
    16-bit); returns the model's test inputs (batch 1)."""
    from svdquant_hf import SVDQuantConfig, qkv_groups, quantize_model
    from svdquant_hf import testing as T
    from svdquant_hf.quantizers.common import quantizable_linears

    opts = SVDQuantConfig(quant_format=quant_format, rank=rank)
    names = list(quantizable_linears(model, opts))
    skip = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in names]
    quantize_model(model, opts, progress=False, extra_skip=skip, shared_input_groups=qkv_groups(model, names),
                   group_rank=group_rank)
    return T.model_inputs(model, seed=5, batch=1)

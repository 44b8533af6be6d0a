"""Runs every python snippet of docs/usage.md, in order, on a tiny offline FLUX.1 pipeline.

Two mechanical substitutions keep it fast on CPU: generation calls get 2 steps at 64x64, and
torch.compile uses the aot_eager backend (inductor: tests/test_compile.py, marked slow).
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import torch

from svdquant_hf import SVDQuantLinear
from svdquant_hf.testing import save_tiny_flux_pipeline

DOC = Path(__file__).resolve().parents[1] / "docs" / "usage.md"
FAST = {"num_inference_steps=28": "num_inference_steps=2, height=64, width=64, max_sequence_length=16"}


def snippets(text: str) -> list[tuple[str, bool]]:
    """(code, gpu_only) for each ```python block; ``<!-- test: gpu -->`` on the line before marks GPU-only."""
    out = []
    for m in re.finditer(r"(?P<pre>[^\n]*)\n```python\n(?P<code>.*?)\n```", text, flags=re.S):
        out.append((m.group("code"), "<!-- test: gpu -->" in m.group("pre")))
    return out


def n_svd(module: torch.nn.Module) -> int:
    return sum(isinstance(m, SVDQuantLinear) for m in module.modules())


def test_doc_has_all_call_forms():
    text = DOC.read_text()
    blocks = snippets(text)
    assert len(blocks) >= 10
    code = "\n".join(c for c, _ in blocks)
    for form in (
        "quantization_config=SVDQuantConfig()",
        'quant_backend="svdquant"',
        'quant_mapping={"transformer": SVDQuantConfig()}',
        "components_to_quantize=",
        "save_pretrained(",
        "enable_model_cpu_offload()",
        'device_map="cuda"',
        "fullgraph=True",
    ):
        assert form in code, form


def test_usage_snippets_run(tmp_path, monkeypatch):
    model_path = str(save_tiny_flux_pipeline(tmp_path / "tiny-flux", seed=6))
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    ns: dict = {"model_path": model_path, "save_dir": tmp_path / "out"}
    ran = 0
    for code, gpu_only in snippets(DOC.read_text()):
        if gpu_only and not torch.cuda.is_available():
            continue
        for a, b in FAST.items():
            code = code.replace(a, b)
        exec(compile(code, f"{DOC.name} snippet {ran}", "exec"), ns)
        ran += 1
        if "transformer" in ns and "pipe" not in ns:
            assert n_svd(ns["transformer"]) > 0
        if "pipe" in ns:
            assert n_svd(ns["pipe"].transformer) == 20
    assert ran >= 8
    # the saved pipeline had its T5 quantized too (transformers side): it reloads quantized
    assert n_svd(ns["pipe"].text_encoder_2) > 0 and n_svd(ns["pipe"].text_encoder) == 0
    assert ns["image"].size == (64, 64)
    assert (ns["save_dir"] / "flux-svdquant" / "transformer" / "config.json").read_text().count("svdquant") == 1

"""Runs the ```python examples of docs/lora.md (in order, one namespace) on the tiny offline pipeline."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")

DOC = Path(__file__).resolve().parents[1] / "docs" / "lora.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_lora_docs_examples_run(tmp_path, monkeypatch, capsys):
    import functools

    import torch

    blocks = python_blocks(DOC.read_text(encoding="utf-8"))
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    # the torch.compile example traces the real graph; aot_eager skips inductor's C++ build on CI's CPU
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    ns: dict = {"__name__": "lora_docs"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{DOC.name}[python block {i}]", "exec"), ns)
    out = capsys.readouterr().out.split()
    assert "SVDQuantLoraLinear" in out and out[out.index("SVDQuantLoraLinear") + 1] == "64"
    assert out[-3:] == ["48", "32", "48"]  # fuse / unfuse ranks, then the folded checkpoint's rank
    assert (tmp_path / "flux-svdq-base" / "transformer").is_dir()
    assert len(ns["image_compiled"]) == 1
    assert not isinstance(ns["pipe"].transformer, torch._dynamo.eval_frame.OptimizedModule)

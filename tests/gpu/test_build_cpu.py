"""The kernel build module never compiles without CUDA, and a failed build warns exactly once (CPU tests)."""
from __future__ import annotations

import warnings

import pytest
import torch

from svdquant_hf.ops import build, cuda, library
from svdquant_hf.ops.reference import quantize_act_ref


@pytest.fixture
def fresh_state(monkeypatch):
    monkeypatch.setattr(build, "_state", {"tried": False, "module": None})
    monkeypatch.delenv("SVDQUANT_HF_DISABLE_KERNELS", raising=False)
    monkeypatch.setenv("SVDQUANT_HF_KERNELS_DIR", "/nonexistent-svdquant-kernels")


def _no_compile(*args, **kwargs):
    raise AssertionError("the build was attempted")


def test_no_build_without_cuda(fresh_state, monkeypatch):
    from torch.utils import cpp_extension

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cpp_extension, "load", _no_compile)
    monkeypatch.setattr(build, "build", _no_compile)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build.load_extension() is None
        assert build.load_extension() is None
    assert not cuda.kernels_available()
    assert build.local_arch_list() == []
    assert build.main(["--aot"]) == 1  # no GPU and no --arch-list: refuses instead of guessing


def test_cpu_ops_use_reference(fresh_state, monkeypatch):
    monkeypatch.setattr(build, "build", _no_compile)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(5, 128, generator=g).to(torch.bfloat16)
    smooth = (torch.rand(128, generator=g) + 0.5).to(torch.bfloat16)
    pd = torch.randn(128, 16, generator=g).to(torch.bfloat16)
    got = library.quantize_act(x, smooth, pd, 64)
    ref = quantize_act_ref(x, smooth, pd, 64)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)


def test_failed_build_warns_once(fresh_state, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(build, "local_arch_list", lambda: ["9.0"])

    def broken(*args, **kwargs):
        raise RuntimeError("Error building extension 'svdquant_hf_kernels': nvcc not found")

    monkeypatch.setattr(build, "_build_with_progress", broken)
    with pytest.warns(RuntimeWarning, match="falling back") as rec:
        assert build.load_extension() is None
        assert build.load_extension() is None
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1
    assert "nvcc not found" in str(rec[0].message)


def test_disable_env(fresh_state, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("SVDQUANT_HF_DISABLE_KERNELS", "1")
    monkeypatch.setattr(build, "_build_with_progress", _no_compile)
    assert build.load_extension() is None


def test_hopper_builds_as_sm90a():
    """wgmma needs the arch-specific target: 9.0 in the arch list becomes 9.0a, others stay."""
    from svdquant_hf.ops.build import SOURCES, with_arch_features

    assert with_arch_features(["8.0", "8.9", "9.0"]) == ["8.0", "8.9", "9.0a"]
    assert with_arch_features(["8.6"]) == ["8.6"]
    assert "w4a4_gemm_2l_sm90.cu" in SOURCES and "quantize_act_2l.cu" in SOURCES
    assert "w4a4_gemm_2l_pingpong_sm90.cu" in SOURCES


def test_loaded_extension_gets_the_python_fallbacks(fresh_state, monkeypatch):
    """When the extension loads, its C++ op kernels are handed the Python CUDA paths (for the inputs they
    do not take); a callback registered after loading runs at once."""
    from types import SimpleNamespace

    calls = []
    fake = SimpleNamespace(register_fallbacks=lambda q, g, g8, fo, ep: calls.append((q, g, g8, fo, ep)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(build, "_load_prebuilt", lambda: fake)
    monkeypatch.setattr(build, "_on_load", list(build._on_load))
    assert build.load_extension() is fake
    assert calls == [(cuda.quantize_act_2l_cuda, cuda.w4a4_gemm_2l_cuda, cuda.w8a4_gemm_2l_cuda,
                      cuda.w4a4_gemm_2l_fo_cuda, cuda.w4a4_gemm_2l_fo_ep_cuda)]
    seen = []
    build.on_load(seen.append)
    assert seen == [fake]

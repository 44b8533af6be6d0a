"""kernel_gaps: which 4-bit layers the fused CUDA kernels do not take on a GPU, and why; the warning after loading."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from svdquant_hf import SVDQuantConfig, SVDQuantLinear, kernel_gaps
from svdquant_hf.kernel_coverage import describe_gaps
from svdquant_hf.ops import cuda as ops_cuda
from svdquant_hf.ops.kernel_shapes import gemm_2l_shape_ok, quantizer_2l_takes
from svdquant_hf.quantizers import common

HOPPER, ADA = (9, 0), (8, 9)


def layer(k: int, n: int, fmt: str = "int4_2l", rank: int = 32, gs: int = 64, weight_only: bool = False,
          dtype: torch.dtype = torch.bfloat16) -> SVDQuantLinear:
    return SVDQuantLinear(k, n, rank=rank, group_size=gs, quant_format=fmt, weight_only=weight_only, dtype=dtype,
                          device="meta")


def model() -> nn.Module:
    """FLUX-like layers the kernels take, and one of each kind they do not."""
    return nn.ModuleDict({
        "flux_qkv": layer(3072, 9216),
        "flux_fc2": layer(12288, 3072),
        "sd35_large": layer(2432, 2432),  # the quantizer's partial block (v2.25): covered
        "sana_attn": layer(2240, 2240),  # K % 128 == 64: padded to the GEMM's tiles in fragment order
        "odd_out": layer(3072, 200),
        "lora_heavy": layer(3072, 3072, rank=288),
        "w4a16": layer(3072, 3072, weight_only=True),
        "nvfp4": layer(3072, 3072, fmt="nvfp4", gs=16),
        "fp32": layer(3072, 3072, dtype=torch.float32),
        "int4": layer(3072, 3072, fmt="int4"),
    })


def test_kernel_gaps_on_hopper_name_each_layer_and_its_reason():
    gaps = kernel_gaps(model(), capability=HOPPER)
    assert set(gaps) == {"sana_attn", "odd_out", "lora_heavy", "w4a16", "nvfp4", "fp32"}
    hint = "are not multiples of 128: set_fragment_order(model) pads them to the GEMM's tiles"
    assert gaps["sana_attn"] == f"features 2240 x 2240 {hint}"
    assert gaps["odd_out"] == f"features 3072 x 200 {hint}"
    assert "rank 288" in gaps["lora_heavy"]
    assert "weight-only" in gaps["w4a16"] and "NVFP4" in gaps["nvfp4"] and "float32" in gaps["fp32"]


def test_kernel_gaps_elsewhere_int4_2l_gemm_is_hopper_only():
    gaps = kernel_gaps(model(), capability=ADA)
    assert "flux_qkv" in gaps and "Hopper-only" in gaps["flux_qkv"]
    assert "int4" not in gaps  # the int4 format's kernels run on sm_80+
    assert "compute capability 7.5" in kernel_gaps(model(), capability=(7, 5))["int4"]


def test_describe_gaps_counts_reasons_with_an_example():
    text = describe_gaps(model(), capability=HOPPER)
    assert text.startswith("SVDQuant: 6 of 10 4-bit layers run the reference ops")
    assert "1 x features 2240 x 2240 are not multiples of 128" in text and "(e.g. sana_attn)" in text
    assert describe_gaps(nn.ModuleDict({"a": layer(3072, 3072)}), capability=HOPPER) is None


def test_fragment_order_pads_the_layers_the_gemm_tiles_do_not_divide():
    """What loading on Hopper does (set_fragment_order): layers of any K / N (multiples of the group and of 8) take
    the kernels, padded to the 128-wide tiles; the int8 weight copy is not padded; K past the quantizer's limit stays
    out."""
    from svdquant_hf import set_fragment_order

    m = model()
    set_fragment_order(m)
    gaps = kernel_gaps(m, capability=HOPPER)
    assert set(gaps) == {"lora_heavy", "w4a16", "nvfp4", "fp32"}
    assert m["sana_attn"].kernel_shape() == (2304, 2304) and m["odd_out"].kernel_shape() == (3072, 256)
    assert m["sana_attn"].qweight_fo.shape == (2304, 1152) and m["sana_attn"].wscales_kp.shape == (36, 2304)
    w8 = SVDQuantLinear(2240, 2240, quant_format="int4_2l")
    w8.set_int8_weights()
    assert kernel_gaps(nn.ModuleDict({"w8": w8}), capability=HOPPER) == {
        "w8": "features 2240 x 2240 (not multiples of 128) with the int8 weight copy"}
    assert "up to 32768" in kernel_gaps(nn.ModuleDict({"huge": layer(32768 + 64, 128)}), HOPPER)["huge"]


def test_without_cuda_the_capability_must_be_given(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="pass capability"):
        kernel_gaps(model())
    assert common.warn_kernel_gaps(model()) is None


@pytest.mark.parametrize("k", [8, 64, 192, 1152, 2240, 2432, 3072, 8320, 31872, 32768, 32776, 33024, 65536])
@pytest.mark.parametrize("gs", [32, 64, 128])
def test_quantizer_rule_mirrors_the_kernel(k, gs):
    """The quantizer kernel's rule (csrc/quantize_act_2l.cu vectors_per_thread): K a multiple of 8 and of the group,
    a row in one block of at most 512 threads x 8 vectors, computed here the kernel's way."""
    vpr = k // 8
    fits = k % 8 == 0 and any(-(-vpr // (32 * v)) * 32 <= 512 for v in range(1, 9))
    assert quantizer_2l_takes(k, gs) == (fits and k % gs == 0)


def test_the_dispatcher_uses_the_same_gemm_rule():
    assert gemm_2l_shape_ok(3072, 9216) and not gemm_2l_shape_ok(2240, 2240) and not gemm_2l_shape_ok(3072, 200)
    assert not gemm_2l_shape_ok(65536 + 128, 128)
    assert ops_cuda.gemm_2l_shape_ok is gemm_2l_shape_ok


def test_loading_calls_the_warning_which_logs_once_on_a_gpu(tmp_path, monkeypatch, caplog):
    """The diffusers quantizer calls warn_kernel_gaps after loading; on a CUDA machine (faked for that call) it logs
    one warning for a model whose layers the kernels do not take (the tiny model's widths)."""
    from svdquant_hf.quantizers.diffusers import quantizer as dq
    from svdquant_hf.testing import TINY_BUILDERS, save_tiny_model

    seen = []
    monkeypatch.setattr(dq, "warn_kernel_gaps", lambda m: seen.append(m))
    cls = type(TINY_BUILDERS["sd3"](seed=1))
    src = save_tiny_model(TINY_BUILDERS["sd3"](seed=1), tmp_path / "fp")
    q = cls.from_pretrained(src, quantization_config=SVDQuantConfig(quant_format="int4_2l"), torch_dtype=torch.bfloat16)
    assert seen == [q]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: HOPPER)
    with caplog.at_level(logging.WARNING, logger="svdquant_hf.quantizers.common"):
        message = common.warn_kernel_gaps(q)
    n = sum(isinstance(m, SVDQuantLinear) for m in q.modules())
    assert [r.getMessage() for r in caplog.records] == [message]
    assert f"{n} of {n} 4-bit layers" in message and "not multiples of 128" in message

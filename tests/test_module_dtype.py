"""SVDQuantLinear keeps its stored dtypes under model-wide dtype casts; device moves still apply."""
import pytest
import torch
from torch import nn

import svdquant_hf


def _quantized(dtype: torch.dtype) -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(192, 128), nn.GELU(), nn.Linear(128, 40))
    return svdquant_hf.quantize_model(m.to(dtype), progress=False)


@pytest.mark.parametrize("cast", [torch.float32, torch.float16])
def test_dtype_cast_keeps_quantized_tensors_and_outputs(cast):
    m = _quantized(torch.bfloat16)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(5, 192, dtype=torch.bfloat16)
    y0 = m(x)
    m.to(cast)
    after = m.state_dict()
    for k, v in before.items():
        assert after[k].dtype == v.dtype, k
        assert torch.equal(after[k], v), k
    y1 = m(x.to(cast))
    assert y1.dtype == cast
    # the 4-bit layers compute exactly as before; only the GELU between them sees the cast input
    torch.testing.assert_close(y1.float(), y0.float(), rtol=2e-2, atol=2e-2)
    first = m[0](x)
    assert first.dtype == torch.bfloat16 and torch.equal(first, m[0](x.to(cast)).to(torch.bfloat16))


def test_to_empty_and_fp8_scales_survive_half():
    with torch.device("meta"):
        lin = svdquant_hf.SVDQuantLinear(64, 32, quant_format="nvfp4")
    lin.to_empty(device="cpu")
    assert lin.qweight.device.type == "cpu" and lin.wscales.dtype == torch.float8_e4m3fn
    lin.half()
    assert lin.wscales.dtype == torch.float8_e4m3fn
    assert lin.wtscale.dtype == torch.float32
    assert lin.proj_up.dtype == torch.bfloat16

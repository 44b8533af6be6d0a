"""quantize_model on small named modules: the happy paths and clear errors on bad input."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from svdquant_hf import QuantizationError, SVDQuantLinear, SVDQuantOptions, quantize_model


class Block(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.nn.functional.gelu(self.up(x)))


class Net(nn.Module):
    def __init__(self, dim: int = 128, hidden: int = 192, depth: int = 2, head: int = 40) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, hidden) for _ in range(depth))
        self.head = nn.Linear(dim, head)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return self.head(x) * scale


def _net(seed: int = 0, **kw) -> Net:
    torch.manual_seed(seed)
    return Net(**kw).eval()


def _inputs(seed: int, n: int = 4, t: int = 9, dim: int = 128) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, t, dim, generator=g)
    x[..., :3] *= 25  # activation outlier channels, as in real transformers
    return x


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm())


# ----------------------------------------------------------------------------- happy paths


def test_data_free_replaces_every_linear_and_tracks_the_model() -> None:
    net = _net()
    x = _inputs(1)
    ref = net(x)
    out = quantize_model(net, SVDQuantOptions(rank=16), progress=False)
    assert out is net
    names = [n for n, m in net.named_modules() if isinstance(m, SVDQuantLinear)]
    assert names == ["blocks.0.up", "blocks.0.down", "blocks.1.up", "blocks.1.down", "head"]
    assert not any(isinstance(m, nn.Linear) for m in net.modules())
    assert net.blocks[1].down.layer_name == "blocks.1.down" and net.blocks[1].down.bias is None
    y = net(x)
    assert y.dtype == torch.float32 and y.shape == ref.shape
    assert _rel(y, ref) < 0.3
    sd = net.state_dict()
    assert sd["blocks.0.up.qweight"].dtype == torch.int8 and sd["blocks.0.up.qweight"].shape == (192, 64)
    assert sd["blocks.0.up.wscales"].shape == (2, 192) and sd["blocks.0.up.wscales"].dtype == torch.bfloat16


@pytest.mark.parametrize("form", ["iterable", "tuples", "dicts", "callable"])
def test_calibrated_beats_data_free(form: str) -> None:
    x_eval = _inputs(2)
    batches = [_inputs(10 + i) for i in range(3)]
    data = {
        "iterable": batches,
        "tuples": [(b, 1.0) for b in batches],
        "dicts": [{"x": b, "scale": 1.0} for b in batches],
        "callable": lambda m: [m(b) for b in batches],
    }[form]
    ref = _net()(x_eval)
    free = quantize_model(_net(), SVDQuantOptions(rank=8, alpha_grid=6), progress=False)
    cal = quantize_model(_net(), SVDQuantOptions(rank=8, alpha_grid=6), calibration_data=data, progress=False)
    assert float(cal.blocks[0].up.smooth_factor.float().std()) > 0  # smoothing was applied
    assert _rel(cal(x_eval), ref) < 0.8 * _rel(free(x_eval), ref)


def test_skip_patterns_leave_layers_in_16_bits() -> None:
    net = quantize_model(_net(), SVDQuantOptions(rank=8, modules_to_not_convert=["head", "blocks.1.*"]), progress=False)
    assert isinstance(net.head, nn.Linear)
    assert isinstance(net.blocks[1].up, nn.Linear) and isinstance(net.blocks[1].down, nn.Linear)
    assert isinstance(net.blocks[0].up, SVDQuantLinear)


def test_layer_without_calibration_input_warns_and_uses_data_free_rule() -> None:
    net = _net()
    net.unused = nn.Linear(128, 64)
    with pytest.warns(UserWarning, match="'unused' saw no calibration input"):
        quantize_model(net, SVDQuantOptions(rank=8, alpha_grid=3), [_inputs(0)], progress=False)
    assert isinstance(net.unused, SVDQuantLinear)
    assert torch.equal(net.unused.smooth_factor, torch.ones(128, dtype=torch.bfloat16))


def test_fp16_model_keeps_its_dtype() -> None:
    net = _net().half()
    quantize_model(net, SVDQuantOptions(rank=8), progress=False)
    assert net.head.proj_up.dtype == torch.float16 and net.head.wscales.dtype == torch.float16
    y = net(_inputs(3).half())
    assert y.dtype == torch.float16 and torch.isfinite(y).all()


# ----------------------------------------------------------------------------- bad input


def _untouched(net: Net) -> bool:
    return not any(isinstance(m, SVDQuantLinear) for m in net.modules())


def test_group_size_not_dividing_in_features_names_the_layer() -> None:
    net = _net()
    net.blocks[1].odd = nn.Linear(96, 32)
    with pytest.raises(QuantizationError, match=r"'blocks\.1\.odd'.*in_features=96.*group_size=64"):
        quantize_model(net, SVDQuantOptions(rank=8), progress=False)
    assert _untouched(net)  # validated before anything was replaced
    with pytest.raises(QuantizationError, match=r"'blocks\.0\.down'.*in_features=192.*group_size=128"):
        quantize_model(net, SVDQuantOptions(rank=8, group_size=128), progress=False)


def test_rank_larger_than_layer_names_the_layer() -> None:
    net = _net(head=16)
    with pytest.raises(QuantizationError, match=r"'head'.*rank=32 exceeds min\(out, in\) = 16"):
        quantize_model(net, SVDQuantOptions(rank=32), progress=False)
    assert _untouched(net)


def test_non_float_weight_names_the_layer() -> None:
    net = _net()
    net.blocks[0].down.weight = nn.Parameter(torch.randint(-5, 5, (128, 192), dtype=torch.int8), requires_grad=False)
    with pytest.raises(QuantizationError, match=r"'blocks\.0\.down'.*torch\.int8.*float"):
        quantize_model(net, SVDQuantOptions(rank=8), progress=False)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_weight_names_the_layer(bad: float) -> None:
    net = _net()
    with torch.no_grad():
        net.blocks[1].up.weight[3, 7] = bad
    with pytest.raises(QuantizationError, match=r"'blocks\.1\.up'.*NaN or Inf"):
        quantize_model(net, SVDQuantOptions(rank=8), progress=False)
    assert _untouched(net)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_calibration_data_names_the_layer(bad: float) -> None:
    net = _net()
    x = _inputs(4)
    x[1, 2, 5] = bad
    with pytest.raises(QuantizationError, match=r"'blocks\.0\.up'.*calibration input contains NaN or Inf"):
        quantize_model(net, SVDQuantOptions(rank=8), calibration_data=[_inputs(5), x], progress=False)
    assert _untouched(net)


@pytest.mark.parametrize("empty", [[], (), lambda m: None])
def test_empty_calibration_set(empty) -> None:
    net = _net()
    with pytest.raises(QuantizationError, match=r"calibration data is empty.*'blocks\.0\.up'"):
        quantize_model(net, SVDQuantOptions(rank=8), calibration_data=empty, progress=False)
    assert _untouched(net)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"group_size": 48}, "group_size=48"),
        ({"rank": -1}, "rank=-1"),
        ({"quant_format": "int3"}, "quant_format='int3'"),
        ({"alpha": 1.5}, "alpha=1.5"),
        ({"alpha_grid": 1}, "alpha_grid=1"),
    ],
)
def test_bad_options_name_the_option(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SVDQuantOptions(**kw)


def test_bad_config_type_and_unknown_dict_key() -> None:
    with pytest.raises(TypeError, match="quantization config"):
        quantize_model(_net(), 42, progress=False)
    with pytest.raises(ValueError, match="Unknown SVDQuant option.*'rnak'"):
        quantize_model(_net(), {"rnak": 4}, progress=False)


def test_nothing_to_quantize_warns() -> None:
    net = _net()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        quantize_model(net, SVDQuantOptions(modules_to_not_convert=["blocks", "head"]), progress=False)
    assert any("no nn.Linear layer to quantize" in str(w.message) for w in rec)
    assert _untouched(net)

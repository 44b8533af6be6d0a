"""Joint quantization of layers that read one input (q/k/v): shared smoothing and down projection,
outputs equal to one fused layer's, and clear errors on bad groups."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from svdquant_hf import SVDQuantLinear, SVDQuantOptions, qkv_groups, quantize_model
from svdquant_hf.algorithm.groups import split_outputs
from svdquant_hf.algorithm.svdquant import QuantizationError, quantize_weight

pytestmark = pytest.mark.usefixtures("one_thread")


class Attn(nn.Module):
    def __init__(self, dim: int = 128, kv: int = 64) -> None:
        super().__init__()
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, kv, bias=False)
        self.to_v = nn.Linear(dim, kv)
        self.to_out = nn.Linear(dim + 2 * kv, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_out(torch.cat([self.to_q(x), self.to_k(x), self.to_v(x)], -1))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = Attn()
        self.b = Attn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def _net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


def _x(seed: int = 1) -> torch.Tensor:
    x = torch.randn(3, 11, 128, generator=torch.Generator().manual_seed(seed))
    x[..., :4] *= 20  # outlier channels
    return x


def test_qkv_groups_finds_each_attention_triple():
    net = _net()
    assert qkv_groups(net) == [("a.to_q", "a.to_k", "a.to_v"), ("b.to_q", "b.to_k", "b.to_v")]
    assert qkv_groups(net, names=["a.to_q", "a.to_k", "a.to_v", "b.to_q"]) == [("a.to_q", "a.to_k", "a.to_v")]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("fmt", ["int4", "int4_2l", "nvfp4"])
def test_split_members_compute_what_one_fused_layer_computes(fmt):
    """split_outputs is exact: the members' outputs, concatenated, are the fused layer's."""
    opts = SVDQuantOptions(rank=16, quant_format=fmt)
    g = torch.Generator().manual_seed(4)
    w = torch.randn(256, 128, generator=g) / 11
    bias = torch.randn(256, generator=g)
    qw = quantize_weight(w, opts, torch.bfloat16, act_absmax=_x().abs().amax((0, 1)), alpha=0.5)
    fused = SVDQuantLinear.from_quantized(qw, bias, opts, torch.bfloat16)
    parts = split_outputs(qw, [128, 64, 64])
    members = [SVDQuantLinear.from_quantized(p, bias[a:b], opts, torch.bfloat16)
               for p, (a, b) in zip(parts, [(0, 128), (128, 192), (192, 256)])]
    for m in members:
        assert torch.equal(m.smooth_factor, qw.smooth_factor) and torch.equal(m.proj_down, qw.proj_down)
    x = _x().to(torch.bfloat16)
    with torch.no_grad():
        y_members = torch.cat([m(x) for m in members], -1)
        y_fused = fused(x)
    assert _rel(y_members, y_fused) < 1e-3
    assert torch.equal(torch.cat([p.qweight for p in parts]), qw.qweight)
    assert torch.equal(torch.cat([p.wscales for p in parts], 1), qw.wscales)


def test_split_outputs_rejects_sizes_that_do_not_partition():
    qw = quantize_weight(torch.randn(64, 64), SVDQuantOptions(rank=8), torch.bfloat16)
    with pytest.raises(QuantizationError, match=r"to_q, to_k.*do not partition 64"):
        split_outputs(qw, [32, 16], ["to_q", "to_k"])


@pytest.mark.parametrize("fmt", ["int4", "int4_2l"])
@pytest.mark.parametrize("calibrated", [False, True])
def test_quantize_model_groups_share_smoothing_and_down_projection(fmt, calibrated):
    net = _net()
    x = _x()
    with torch.no_grad():
        ref = [m(x) for m in (net.a.to_q, net.a.to_k, net.a.to_v)]
    opts = SVDQuantOptions(rank=16, quant_format=fmt, alpha_grid=3)
    calib = [_x(s) for s in (2, 3)] if calibrated else None
    quantize_model(net, opts, calib, progress=False, shared_input_groups=qkv_groups(net))
    q, k, v = net.a.to_q, net.a.to_k, net.a.to_v
    assert all(isinstance(m, SVDQuantLinear) for m in (q, k, v))
    assert torch.equal(q.smooth_factor, k.smooth_factor) and torch.equal(q.smooth_factor, v.smooth_factor)
    assert torch.equal(q.proj_down, k.proj_down) and torch.equal(q.proj_down, v.proj_down)
    assert (q.out_features, k.out_features, v.out_features) == (128, 64, 64)
    assert q.rank == 48 and net.a.to_out.rank == 16  # the groups' default: 3x the rank
    assert k.bias is None and q.bias is not None and v.bias is not None
    assert not torch.equal(net.a.to_q.proj_down, net.b.to_q.proj_down)  # one group per attention
    # the joint quantization costs little against each layer quantized alone (same options and data)
    alone = _net()
    quantize_model(alone, opts, calib, progress=False)
    with torch.no_grad():
        for m, m_alone, r in zip((q, k, v), (alone.a.to_q, alone.a.to_k, alone.a.to_v), ref):
            assert _rel(m(x), r) < 1.5 * _rel(m_alone(x), r) + 0.01, m.layer_name


def test_joint_qkv_option_groups_every_attention():
    net = _net()
    quantize_model(net, SVDQuantOptions(rank=8, joint_qkv=True), progress=False)
    for attn in (net.a, net.b):
        assert torch.equal(attn.to_q.proj_down, attn.to_v.proj_down) and attn.to_q.rank == 24
    assert not torch.equal(net.a.to_q.proj_down, net.b.to_q.proj_down)
    with pytest.raises(ValueError, match="joint_qkv"):
        SVDQuantOptions(joint_qkv="yes")


def test_group_rank_sets_the_groups_branch_only():
    net = _net()
    quantize_model(net, SVDQuantOptions(rank=8), progress=False, shared_input_groups=qkv_groups(net), group_rank=24)
    assert net.a.to_q.proj_down.shape[1] == 24 and net.a.to_v.proj_up.shape[1] == 24
    assert net.a.to_out.proj_down.shape[1] == 8
    with pytest.raises(ValueError, match="group_rank must be >= 0"):
        quantize_model(_net(), SVDQuantOptions(rank=8), progress=False, shared_input_groups=qkv_groups(net),
                       group_rank=-1)


def test_bad_groups_are_refused_before_anything_is_replaced():
    for groups, msg in [
        ([("a.to_q", "a.nope")], r"'a.nope' is not a linear layer being quantized"),
        ([("a.to_q", "a.to_k"), ("a.to_k", "a.to_v")], r"'a.to_k' is in more than one group"),
        ([("a.to_q", "a.to_out")], r"different in_features"),
        ([("a.to_q",)], r"fewer than two layers"),
    ]:
        net = _net()
        with pytest.raises(ValueError, match=msg):
            quantize_model(net, SVDQuantOptions(rank=8), progress=False, shared_input_groups=groups)
        assert not any(isinstance(m, SVDQuantLinear) for m in net.modules())

"""benchmarks/flux_e2e.py stays runnable: the tiny config on CPU, including the LoRA variant."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import flux_e2e  # noqa: E402


def test_lora_variant_wraps_every_4bit_layer_and_changes_the_output():
    from svdquant_hf import SVDQuantLinear
    from svdquant_hf.lora.layer import SVDQuantLoraLinear

    inputs = flux_e2e.make_inputs(flux_e2e.TINY, 64, 1, "cpu")
    plain = flux_e2e.build_variant("svdq2l", flux_e2e.TINY, "cpu", cap=False)
    lora = flux_e2e.build_variant("svdq2l_lora", flux_e2e.TINY, "cpu", cap=False)
    wrapped = [m for m in lora.modules() if isinstance(m, SVDQuantLoraLinear)]
    n_quant = sum(isinstance(m, SVDQuantLinear) for m in plain.modules())
    assert n_quant > 0 and len(wrapped) == n_quant
    assert all(m.branch_rank() == 64 for m in wrapped)  # rank 32 + LoRA 32, folded into one branch
    with torch.inference_mode():
        a = plain(**inputs)[0]
        b = lora(**inputs)[0]
    assert a.shape == b.shape and not torch.equal(a, b)


def test_main_writes_rows_and_json(tmp_path):
    out = tmp_path / "e2e.json"
    rows = flux_e2e.main(["--tiny", "--device", "cpu", "--variants", "bf16,svdq2l,svdq2l_fused", "--res", "64",
                          "--batch", "1",
                          "--iters", "1", "--warmup", "0", "--out", str(out)])
    assert [r["variant"] for r in rows] == ["bf16", "svdq2l", "svdq2l_fused"]
    assert all(r["ms"] > 0 for r in rows)
    assert out.exists()


def test_fused_variant_runs_each_attention_as_fused_layers():
    model = flux_e2e.build_variant("svdq2l_fused", flux_e2e.TINY, "cpu", cap=False)
    for block in [*model.transformer_blocks, *model.single_transformer_blocks]:
        assert block.attn.fused_projections and not hasattr(block.attn, "to_q")
    attn = model.transformer_blocks[0].attn
    assert attn.to_qkv.rank == min(96, attn.to_qkv.in_features) and attn.to_added_qkv.out_features == 3 * attn.inner_dim


def test_compiled_lora_variant_is_lora_wrapped():
    from svdquant_hf.lora.layer import SVDQuantLoraLinear

    model = flux_e2e.build_variant("svdq2l_lora_compile", flux_e2e.TINY, "cpu", cap=False)
    assert isinstance(model, torch._dynamo.eval_frame.OptimizedModule)
    assert any(isinstance(m, SVDQuantLoraLinear) for m in model.modules())


def test_fused_lora_variant_runs_the_folded_branch():
    """svdq2l_lorafused_*: the same random LoRA, fused (merged) into every 4-bit layer's own branch: the
    outputs of the live-adapter variant, bit for bit."""
    from svdquant_hf.lora.layer import SVDQuantLoraLinear

    inputs = flux_e2e.make_inputs(flux_e2e.TINY, 64, 1, "cpu")
    live = flux_e2e.build_variant("svdq2l_lora", flux_e2e.TINY, "cpu", cap=False)
    fused = flux_e2e.build_variant("svdq2l_lorafused", flux_e2e.TINY, "cpu", cap=False)
    layers = [m for m in fused.modules() if isinstance(m, SVDQuantLoraLinear)]
    assert layers and all(m.merged and m.get_base_layer().proj_down.shape[1] == 64 for m in layers)
    with torch.inference_mode():
        assert torch.equal(fused(**inputs)[0], live(**inputs)[0])


def test_regional_variant_compiles_each_block_and_nothing_else():
    model = flux_e2e.build_variant("svdq2l_regional", flux_e2e.TINY, "cpu", cap=False)
    blocks = [*model.transformer_blocks, *model.single_transformer_blocks]
    assert all(b._compiled_call_impl is not None for b in blocks)
    assert model._compiled_call_impl is None and not hasattr(model, "_orig_mod")


def test_traced_quantizer_variant_runs_and_switches_back(tmp_path):
    from svdquant_hf.ops import traced

    rows = flux_e2e.main(["--tiny", "--device", "cpu", "--variants", "svdq2l_tq_regional", "--res", "64", "--batch", "1",
                          "--iters", "1", "--warmup", "0", "--out", str(tmp_path / "e2e.json")])
    assert rows[0]["variant"] == "svdq2l_tq_regional" and rows[0]["ms"] > 0
    assert not traced._enabled


def test_loop_timing_is_recorded(tmp_path):
    rows = flux_e2e.main(["--tiny", "--device", "cpu", "--variants", "bf16", "--res", "64", "--batch", "1",
                          "--iters", "3", "--warmup", "0", "--loop", "--out", str(tmp_path / "e2e.json")])
    assert rows[0]["timing"] == "loop" and rows[0]["ms"] > 0
    rows = flux_e2e.main(["--tiny", "--device", "cpu", "--variants", "bf16", "--res", "64", "--batch", "1",
                          "--iters", "1", "--warmup", "0", "--out", str(tmp_path / "e2e2.json")])
    assert rows[0]["timing"] == "each" and "loop_ms" not in rows[0]
    rows = flux_e2e.main(["--tiny", "--device", "cpu", "--variants", "bf16", "--res", "64", "--batch", "1",
                          "--iters", "2", "--warmup", "0", "--loop-too"])
    assert rows[0]["timing"] == "each" and rows[0]["ms"] > 0 and rows[0]["loop_ms"] > 0


def test_kernel_breakdown_categories_span_and_top():
    kernels = [  # (name, duration us, start us, end us)
        ("void svdq::w4a4_gemm_2l_sm90_kernel<...>", 100.0, 0.0, 100.0),
        ("void svdq::quantize_act_2l_kernel<...>", 20.0, 100.0, 120.0),
        ("sm90_xmma_gemm_bf16bf16_bf16f32", 30.0, 110.0, 140.0),  # overlaps the quantizer (side stream)
        ("flash_fwd_kernel", 50.0, 200.0, 250.0),  # after a 60 us gap
        ("triton_poi_fused_add_mul_0", 5.0, 250.0, 255.0),
        ("triton_poi_fused_gelu_quantize_act_2l_3", 4.0, 355.0, 359.0),  # Inductor's, named after what it feeds
        ("void svdq::w4a4_gemm_2l_sm90_kernel<...>", 100.0, 255.0, 355.0),
        ("elementwise_kernel", 1.0, 359.0, 360.0),
    ]
    out = flux_e2e.kernel_breakdown(kernels, top=2)
    assert out["busy_ms"] == pytest.approx(0.310) and out["span_ms"] == 0.36
    assert out["categories_ms"] == pytest.approx({"svdq gemm 2l": 0.2, "attention": 0.05, "cublas/cutlass gemm": 0.03,
                                                  "svdq quantize 2l": 0.02, "triton (inductor)": 0.009, "other": 0.001})
    assert [k["name"] for k in out["top_kernels"]] == ["void svdq::w4a4_gemm_2l_sm90_kernel<...>", "flash_fwd_kernel"]
    assert out["top_kernels"][0]["count"] == 2


def test_kernel_sequence_file_is_in_start_order(tmp_path):
    kernels = [("b_kernel", 5.0, 30.0, 35.0), ("a_kernel", 10.0, 12.5, 22.5)]
    path = tmp_path / "seq" / "v_1024_b1.tsv"
    flux_e2e.write_kernel_seq(path, sorted(kernels, key=lambda k: k[2]))
    lines = [line.split("\t") for line in path.read_text().splitlines()]
    assert lines == [["0.0", "10.0", "a_kernel"], ["17.5", "5.0", "b_kernel"]]


def test_state_bytes_counts_the_inner_tensors_of_wrapper_subclasses():
    """torchao's fp8 weights are wrapper tensor subclasses that own no storage: their inner tensors are counted
    (the first H200 table reported 0.01 GiB for the fp8 model)."""
    from torch.testing._internal.two_tensor import TwoTensor

    m = torch.nn.Linear(64, 32, bias=False)
    plain = flux_e2e.state_bytes(m)
    assert plain == 64 * 32 * 4
    a, b = torch.randn(32, 64), torch.randn(32, 64)
    m.weight = torch.nn.Parameter(TwoTensor(a, b), requires_grad=False)
    m.register_buffer("shared", a)  # the same storage once
    m.register_buffer("extra", torch.zeros(10, dtype=torch.float64))
    assert flux_e2e.state_bytes(m) == 2 * a.numel() * 4 + 10 * 8
    assert flux_e2e.state_bytes(m, "cpu") == flux_e2e.state_bytes(m) and flux_e2e.state_bytes(m, "cuda") == 0


def _fp8_scaled_mm_on_cpu() -> bool:
    try:
        a = torch.ones(16, 16).to(torch.float8_e4m3fn)
        one = torch.ones(16, 1)
        torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one.t(), out_dtype=torch.bfloat16)
        return True
    except (RuntimeError, NotImplementedError):
        return False


@pytest.mark.skipif(not _fp8_scaled_mm_on_cpu(), reason="this torch has no CPU _scaled_mm with rowwise scales")
def test_fp8_scaled_mm_linear_is_the_rowwise_dequantized_product():
    """The plain-torch fp8 peer: per-row e4m3 weights and per-token e4m3 activations, scales amax / 448."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 48).to(torch.bfloat16)
    x = torch.randn(3, 5, 96, dtype=torch.bfloat16) * torch.linspace(0.1, 8, 96).to(torch.bfloat16)
    fp8 = flux_e2e.Fp8RowwiseLinear(lin)
    assert fp8.qweight.dtype == torch.float8_e4m3fn and fp8.wscale.shape == (1, 48)
    y = fp8(x)
    x2 = x.reshape(-1, 96).float()
    sx = x2.abs().amax(1, keepdim=True) / 448
    w = lin.weight.float()
    sw = w.abs().amax(1, keepdim=True) / 448
    xd = (x2 / sx).to(torch.float8_e4m3fn).float() * sx
    wd = (w / sw).to(torch.float8_e4m3fn).float() * sw
    want = (xd @ wd.t() + lin.bias.float()).reshape(3, 5, 48)
    assert y.shape == (3, 5, 48) and y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), want, rtol=1e-2, atol=1e-2)
    exact = lin(x).float()
    err = ((y.float() - exact).norm() / exact.norm()).item()
    assert 1e-3 < err < 0.08  # fp8's rounding: visible, but small


@pytest.mark.skipif(not _fp8_scaled_mm_on_cpu(), reason="this torch has no CPU _scaled_mm with rowwise scales")
def test_fp8_scaled_mm_variant_replaces_every_linear_and_runs():
    model = flux_e2e.build_variant("fp8mm", flux_e2e.TINY, "cpu", cap=False)
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    assert sum(isinstance(m, flux_e2e.Fp8RowwiseLinear) for m in model.modules()) > 10
    inputs = flux_e2e.make_inputs(flux_e2e.TINY, 64, 1, "cpu")
    with torch.inference_mode():
        out = model(**inputs)[0]
    assert torch.isfinite(out).all()



@pytest.mark.parametrize("name,producer,persistent,ts,qp,wlr", [
    ("svdq2l_regional", False, -1, False, 1, True), ("svdq2l_w8p_regional", True, -1, False, 1, True),
    ("svdq2l_w8ps_regional", True, 1, False, 1, True), ("svdq2l_w8p_ts_regional", True, -1, True, 1, True),
    ("svdq2l_np_regional", False, 0, False, 1, True), ("svdq2l_w8_np_regional", False, 0, False, 1, True),
    ("svdq2l_w8_regional", False, -1, False, 1, True), ("svdq2l_fo_q1r_regional", False, -1, False, 0, True),
    ("svdq2l_fo_ep_lora_nowlr_regional_cg", False, -1, False, 1, False),
    ("svdq2l_fo_ep_nrbc_regional_cg", False, -1, False, 1, True), ("svdq2l_fo_ep_pdl_regional_cg", False, -1, False, 1, True),
    ("svdq2l_fo_ep_r3_regional_cg", False, -1, False, 1, True), ("svdq2l_fo_ep_nr3_regional_cg", False, -1, False, 1, True),
    ("svdq2l_fo_ep_pdl_nql_regional_cg", False, -1, False, 1, True),
    ("svdq2l_fo_ep_m0_regional_cg", False, -1, False, 1, True),
    ("svdq2l_fo_ep_lead_regional_cg", False, -1, False, 1, True),
    ("svdq2l_fo_ep_pipe_regional_cg", False, -1, False, 1, True),
    ("svdq2l_fo_ep_turns_regional_cg", False, -1, False, 1, True),
    ("svdq2l_fo_ep_pp_regional_cg", False, -1, False, 1, True),
    ("svdq2l_fo_ep_1p_regional_cg", False, -1, False, 1, True)])
def test_kernel_switches_follow_the_variant_name(monkeypatch, name, producer, persistent, ts, qp, wlr):
    from svdquant_hf.ops import build

    class FakeExt:
        def __init__(self):
            self.calls = {}

        def __getattr__(self, attr):
            if attr == "set_quantize_act_2l_persistent":
                return lambda on, max_ctas: self.calls.__setitem__("quant_persistent", (on, max_ctas))
            if attr in ("set_pdl", "set_quantize_act_2l_lean"):
                return lambda on: self.calls.__setitem__(attr[4:], on)
            if not attr.startswith("set_gemm_2l_"):
                raise AttributeError(attr)
            return lambda *args: self.calls.__setitem__(attr[len("set_gemm_2l_"):], args if len(args) > 1 else args[0])

    fake = FakeExt()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(build, "load_extension", lambda: fake)
    flux_e2e.set_kernel_switches(name)
    assert fake.calls == {"w8_producer": producer, "persistent": persistent, "tma_store": ts,
                          "quant_persistent": (qp, 0), "rf_wide_lr": wlr, "rf_by_cost": "_nrbc" not in name,
                          "pdl": "_pdl" in name, "rf3_stage": (1100, 1250) if "_r3_" in name else (0, 0),
                          "rf3_model": 0 if "_m0" in name else 1,
                          "quantize_act_2l_lean": "_nql" not in name, "rf_lead": "_lead" in name,
                          "rf_pipelined": "_turns" not in name, "rf_pingpong": 2 if "_pp_" in name else 0,
                          "out_pieces": (192, 1 if "_1p_" in name else 2)}  # (the last of its calls: 256, then 192)
    assert type(fake.calls["persistent"]) is int


def test_the_non_persistent_variants_are_known():
    assert {"svdq2l_np_regional", "svdq2l_w8_np_regional"} <= set(flux_e2e.ALL_VARIANTS)
    assert len(set(flux_e2e.ALL_VARIANTS)) == len(flux_e2e.ALL_VARIANTS)


def test_default_variants_cover_the_comparison_and_exist():
    """bf16 eager and compiled, torchao fp8 eager, an fp8 compiled peer, NF4, SVDQuant eager and compiled."""
    d = flux_e2e.DEFAULT_VARIANTS
    assert set(d) <= set(flux_e2e.ALL_VARIANTS)
    assert {"bf16", "fp8", "nf4", "svdq2l_fo_ep"} <= set(d)  # SVDQuant as from_pretrained gives it on Hopper
    compiled = [v for v in d if v.endswith(("_regional", "_compile", "_graphs"))]
    assert {v.split("_")[0] for v in compiled} == {"bf16", "fp8mm", "svdq2l"}


def test_fragment_order_variant_holds_it_and_runs():
    """svdq2l_fo_*: every int4_2l layer holds the fragment order (padded where the tiny widths need it); it runs."""
    from svdquant_hf import SVDQuantLinear

    model = flux_e2e.build_variant("svdq2l_fo_regional", flux_e2e.TINY, "cpu", cap=False)
    layers = [m for m in model.modules() if isinstance(m, SVDQuantLinear)]
    assert any(m.holds_fragment_order for m in layers)
    assert all(m.holds_fragment_order for m in layers)
    inputs = flux_e2e.make_inputs(flux_e2e.TINY, 64, 1, "cpu")
    with torch.inference_mode():
        out = model(**inputs)[0]
    assert torch.isfinite(out).all()


def test_inductor_pdl_follows_the_variant_and_is_reset(monkeypatch):
    """_ipdl sets torch._inductor.config.triton.enable_pdl for that variant's compilation only (where torch has it)."""
    import torch._inductor.config as inductor_config

    if not hasattr(inductor_config.triton, "enable_pdl"):
        assert flux_e2e.set_inductor_pdl(True) is False
        return
    monkeypatch.setattr(inductor_config.triton, "enable_pdl", False)
    assert flux_e2e.set_inductor_pdl(True) and inductor_config.triton.enable_pdl is True
    assert flux_e2e.set_inductor_pdl(False) and inductor_config.triton.enable_pdl is False
    assert {"bf16_ipdl_regional_cg", "fp8mm_ipdl_regional_cg", "svdq2l_fo_ep_ipdl_regional_cg"} <= set(
        flux_e2e.ALL_VARIANTS)

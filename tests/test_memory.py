"""Memory: quantized bytes of a full-size FLUX.1 block, and what is alive while quantizing on load.

Run with ``-s`` to print the figures quoted in docs/memory.md.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from diffusers import FluxTransformer2DModel
from torch import nn

from svdquant_hf import SVDQuantConfig, SVDQuantLinear
from svdquant_hf.quantizers.diffusers import quantizer as qmod
from svdquant_hf.testing import save_tiny_model, tiny_flux_transformer

from _hf_helpers import tensors_off_the_gpu

BF16 = torch.bfloat16
FLUX_BLOCK = dict(
    patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=128,
    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)


def tensor_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()] if not t.is_meta)


def random_full_size_flux_block(seed: int = 0) -> FluxTransformer2DModel:
    """FLUX.1 dimensions (width 3072, 24 heads, T5 width 4096), 1 double + 1 single block, random bf16."""
    with torch.device("meta"):
        model = FluxTransformer2DModel(**FLUX_BLOCK)
    model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).mul_(0.02).to(BF16))
    return model.to(BF16).eval()


class AliveMeter:
    """Records, at every quantized layer, the bytes of the model's materialised tensors plus that
    layer's 16-bit weight in flight (the only 16-bit copy of a targeted layer that ever exists)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.peak = 0
        self.max_layer = 0
        self.layers = 0
        real = qmod.SVDQuantDiffusersQuantizer._quantize_layer

        def wrapped(quantizer, model, name, weight, device):
            layer = weight.numel() * 2  # in bf16
            self.max_layer = max(self.max_layer, layer)
            self.peak = max(self.peak, tensor_bytes(model) + layer)
            self.layers += 1
            return real(quantizer, model, name, weight, device)

        monkeypatch.setattr(qmod.SVDQuantDiffusersQuantizer, "_quantize_layer", wrapped)


def layer_ratio(q: nn.Module, device: str | None = None) -> tuple[int, int]:
    """(quantized bytes, bf16 bytes of the same layers: weight + bias); device: count only tensors there (on Hopper a
    layer's GEMM reads its fragment-order copy of the weights on the GPU, and the canonical ones wait in host memory)."""
    qb = fb = 0
    for m in q.modules():
        if isinstance(m, SVDQuantLinear):
            qb += sum(t.numel() * t.element_size() for t in [*m.parameters(), *m.buffers()]
                      if not t.is_meta and (device is None or t.device.type == device))
            fb += 2 * (m.in_features * m.out_features + (m.out_features if m.bias is not None else 0))
    return qb, fb


def meta_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def test_full_size_flux_block_quantized_bytes_from_shapes():
    """Fast: the stored format's size follows from the shapes alone (built on meta, nothing computed)."""
    from svdquant_hf.quantizers.common import replace_with_svdquant_linear

    with torch.device("meta"):
        model = FluxTransformer2DModel(**FLUX_BLOCK).to(BF16)
    bf16_total = meta_bytes(model)
    names = replace_with_svdquant_linear(model, SVDQuantConfig(), dtype=BF16, device="meta")
    assert len(names) == 20  # 14 in the double block, 6 in the single block (embedders/proj_out skipped)
    qb, fb = layer_ratio_meta(model)
    assert qb <= 0.30 * fb, qb / fb
    assert 0.27 < qb / fb  # 4-bit weights (0.25) + scales + low-rank branch: not an empty model
    assert meta_bytes(model) < 0.4 * bf16_total


def test_full_flux_dev_quantized_bytes_from_shapes():
    """The whole FLUX.1-dev transformer (19 double + 38 single blocks), on meta: format size only."""
    from svdquant_hf.quantizers.common import replace_with_svdquant_linear

    with torch.device("meta"):
        model = FluxTransformer2DModel(guidance_embeds=True).to(BF16)
    bf16_total = meta_bytes(model)
    names = replace_with_svdquant_linear(model, SVDQuantConfig(), dtype=BF16, device="meta")
    qb, fb = layer_ratio_meta(model)
    total = meta_bytes(model)
    print(
        f"\nFLUX.1-dev transformer: {len(names)} SVDQuant layers; quantized layers {qb / 2**30:.3f} GiB vs bf16 "
        f"{fb / 2**30:.3f} GiB (ratio {qb / fb:.4f}); whole model {total / 2**30:.3f} GiB vs bf16 "
        f"{bf16_total / 2**30:.3f} GiB (ratio {total / bf16_total:.4f})"
    )
    assert len(names) == 19 * 14 + 38 * 6 and qb <= 0.30 * fb and total <= 0.30 * bf16_total


def layer_ratio_meta(q: nn.Module) -> tuple[int, int]:
    qb = fb = 0
    for m in q.modules():
        if isinstance(m, SVDQuantLinear):
            qb += meta_bytes(m)
            fb += 2 * (m.in_features * m.out_features + (m.out_features if m.bias is not None else 0))
    return qb, fb


def test_alive_bytes_while_quantizing_on_load_tiny(monkeypatch, tmp_path):
    src = save_tiny_model(tiny_flux_transformer(seed=2, dtype=BF16), tmp_path / "fp")
    meter = AliveMeter(monkeypatch)
    q = FluxTransformer2DModel.from_pretrained(src, quantization_config=SVDQuantConfig(), torch_dtype=BF16)
    final = tensor_bytes(q)
    full16 = tensor_bytes(tiny_flux_transformer(seed=2, dtype=BF16))
    assert meter.layers == sum(isinstance(m, SVDQuantLinear) for m in q.modules()) == 20
    assert meter.peak <= final + meter.max_layer
    assert meter.max_layer < full16 / 10  # one layer at a time, never the whole 16-bit model


@pytest.mark.slow
def test_full_size_flux_block_memory(monkeypatch, tmp_path):
    t0 = time.perf_counter()
    model = random_full_size_flux_block()
    bf16_total = tensor_bytes(model)
    src = Path(tmp_path / "flux_block")
    model.save_pretrained(src, max_shard_size="10GB")
    del model
    t1 = time.perf_counter()
    meter = AliveMeter(monkeypatch)
    q = FluxTransformer2DModel.from_pretrained(src, quantization_config=SVDQuantConfig(), torch_dtype=BF16)
    t2 = time.perf_counter()
    qb, fb = layer_ratio(q)
    total_q = tensor_bytes(q)
    print(
        f"\nfull-size FLUX.1 block (1 double + 1 single block, width 3072): "
        f"{sum(isinstance(m, SVDQuantLinear) for m in q.modules())} SVDQuant layers\n"
        f"  quantized layers: {qb / 2**20:.1f} MiB vs bf16 {fb / 2**20:.1f} MiB -> ratio {qb / fb:.4f}\n"
        f"  whole model: {total_q / 2**20:.1f} MiB vs bf16 {bf16_total / 2**20:.1f} MiB -> ratio {total_q / bf16_total:.4f}\n"
        f"  alive while loading: peak {meter.peak / 2**20:.1f} MiB = final {total_q / 2**20:.1f} MiB + "
        f"{(meter.peak - total_q) / 2**20:.1f} MiB (largest layer in bf16: {meter.max_layer / 2**20:.1f} MiB)\n"
        f"  build+save {t1 - t0:.1f} s, quantize-on-load {t2 - t1:.1f} s"
    )
    assert qb <= 0.30 * fb
    assert meter.peak <= total_q + meter.max_layer
    assert meter.peak < 0.5 * bf16_total


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_full_size_flux_block_gpu_peak_while_loading(tmp_path):
    """Quantize on load straight onto the GPU: peak allocated GPU memory vs the quantized model."""
    model = random_full_size_flux_block(seed=1)
    bf16_total = tensor_bytes(model)
    largest = max(m.weight.numel() * 2 for m in model.modules() if isinstance(m, nn.Linear))
    model.save_pretrained(tmp_path / "flux_block", max_shard_size="10GB")
    del model
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    q = FluxTransformer2DModel.from_pretrained(
        tmp_path / "flux_block", quantization_config=SVDQuantConfig(), torch_dtype=BF16, device_map="cuda"
    )
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() - base
    final = torch.cuda.memory_allocated() - base
    qb, fb = layer_ratio(q, "cuda")
    print(
        f"\nGPU quantize-on-load of the full-size FLUX.1 block ({torch.cuda.get_device_name()}): {dt:.1f} s\n"
        f"  bf16 model {bf16_total / 2**20:.1f} MiB; quantized model on GPU {final / 2**20:.1f} MiB "
        f"(layers ratio {qb / fb:.4f})\n"
        f"  peak allocated while loading {peak / 2**20:.1f} MiB = final + {(peak - final) / 2**20:.1f} MiB "
        f"(largest layer in bf16: {largest / 2**20:.1f} MiB)"
    )
    assert not tensors_off_the_gpu(q), tensors_off_the_gpu(q)[:5]  # (on Hopper the canonical qweight is on the host)
    assert qb <= 0.30 * fb
    # the only extra is the layer in flight: its 16-bit weight plus the fp32 working copies that
    # quantize_weight makes (measured on an H100: 1403.6 MiB = 13.0x the largest layer's 108 MiB)
    assert peak - final <= 14 * largest

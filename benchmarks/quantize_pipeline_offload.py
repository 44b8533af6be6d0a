"""Peak GPU memory of quantize_pipeline with block-level offloading, on a Flux pipeline whose
denoiser has FLUX.1's real width (3072, 24 heads x 128) and a few blocks (random weights).

    python benchmarks/quantize_pipeline_offload.py --double 2 --single 4 --offload block

Prints the bf16 size of the denoiser, the peak GPU memory during calibration and quantization,
and the time of each phase. Needs CUDA.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import svdquant_hf
from svdquant_hf import SVDQuantLinear, testing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--double", type=int, default=2)
    ap.add_argument("--single", type=int, default=4)
    ap.add_argument("--offload", default="block", choices=["block", "model", "none"])
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    pipe = testing.tiny_flux_pipeline(dtype=torch.bfloat16)
    with torch.device("cpu"):
        tr = FluxTransformer2DModel(
            patch_size=1, in_channels=pipe.transformer.config.in_channels, num_layers=args.double,
            num_single_layers=args.single, attention_head_dim=128, num_attention_heads=24,
            joint_attention_dim=64, pooled_projection_dim=64, guidance_embeds=False, axes_dims_rope=(16, 56, 56),
        ).to(torch.bfloat16).eval()
    pipe.transformer = tr
    denoiser_bytes = sum(p.numel() * p.element_size() for p in tr.parameters())
    prompts = list(svdquant_hf.pipeline.BUILTIN_PROMPTS[: args.prompts])
    if args.offload == "none":
        pipe.to("cuda")
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    svdquant_hf.quantize_pipeline(
        pipe, svdquant_hf.SVDQuantConfig(alpha_grid=20), prompts=prompts, num_inference_steps=args.steps,
        offload=None if args.offload == "none" else args.offload, device="cuda",
        height=args.size, width=args.size, guidance_scale=3.5, max_sequence_length=16, progress=False,
    )
    torch.cuda.synchronize()
    total = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated()
    qbytes = sum(t.numel() * t.element_size() for m in tr.modules() if isinstance(m, SVDQuantLinear)
                 for t in [*m.buffers(recurse=False), *m.parameters(recurse=False)])
    n_layers = sum(isinstance(m, SVDQuantLinear) for m in tr.modules())
    gen = torch.Generator("cpu").manual_seed(0)
    img = pipe(prompt="a cat", num_inference_steps=2, height=args.size, width=args.size, guidance_scale=3.5,
               max_sequence_length=16, output_type="latent", generator=gen).images
    print(json.dumps({
        "gpu": torch.cuda.get_device_name(), "offload": args.offload, "double_blocks": args.double,
        "single_blocks": args.single, "denoiser_bf16_GiB": denoiser_bytes / 2**30,
        "quantized_layers": n_layers, "quantized_layer_GiB": qbytes / 2**30,
        "peak_gpu_GiB_calibration_and_quantization": peak / 2**30,
        "peak_over_denoiser_bf16": peak / denoiser_bytes, "seconds_total": total,
        "prompts": args.prompts, "steps": args.steps, "image_size": args.size,
        "after_quantization_output_finite": bool(torch.isfinite(img.float()).all()),
    }, indent=1))


if __name__ == "__main__":
    main()

"""Fused W4A4 + low-rank (ours: quantize_act + w4a4_gemm, and the int4_2l pair) vs cuBLAS bf16, fp8 rowwise, NF4.

usage: python benchmarks/gemm_bench.py [--json OUT.json] [--rank 32] [--reps 50] [--ms 4608,256] [--formats int4,int4_2l]
Builds the extension (svdquant_hf.ops.build), then for M = 4608 and M in {256, 1024} on the FLUX.1
linear shapes prints the median CUDA-event time of each variant, TFLOP/s (2MNK / t) and the speedup
of ours over each peer (peer time / our time; > 1 means ours is faster). Inputs rotate over several
buffers so that repeated runs do not measure the L2 cache.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from cuda_timing import time_eager, time_graph

FLUX_SHAPES = [(3072, 3072), (3072, 12288), (12288, 3072), (3072, 9216), (15360, 3072)]
MS = [4608, 1024, 256]


def _nbuf(bytes_per_set: int) -> int:
    return max(2, min(8, (200 << 20) // max(bytes_per_set, 1) + 1))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--json", default=None)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--ms", default=",".join(map(str, MS)))
    p.add_argument("--formats", default="int4,int4_2l", help="which of our formats to time (comma list)")
    p.add_argument("--bt", type=int, default=0, help="force the int4_2l GEMM's token tile (64/128/256)")
    args = p.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    from svdquant_hf.formats.int4 import pack_int4
    from svdquant_hf.ops import build

    ext = build.load_extension()
    assert ext is not None, "kernel build failed"
    try:
        import bitsandbytes as bnb
        from bitsandbytes.functional import quantize_4bit
    except Exception as exc:  # noqa: BLE001
        print(f"bitsandbytes not importable ({exc}); NF4 column skipped", file=sys.stderr)
        bnb = None
    dev = torch.cuda.get_device_name()
    formats = set(args.formats.split(","))
    if args.bt and hasattr(ext, "set_gemm_2l_tile_tokens"):
        ext.set_gemm_2l_tile_tokens(args.bt)
    dt = torch.bfloat16
    R, gs = args.rank, 64
    rows = []
    for M in [int(m) for m in args.ms.split(",")]:
        for K, N in FLUX_SHAPES:
            torch.manual_seed(M + K + N)
            nb = _nbuf(M * K * 2)
            xs = [torch.randn(M, K, device="cuda", dtype=dt) for _ in range(nb)]
            smooth = (torch.rand(K, device="cuda") + 0.5).to(dt)
            pd = (torch.randn(K, R, device="cuda") / K**0.5).to(dt)
            pu = (torch.randn(N, R, device="cuda") / R**0.5).to(dt)
            qw = pack_int4(torch.randint(-8, 8, (N, K), device="cuda", dtype=torch.int8))
            wsc = (torch.rand(K // gs, N, device="cuda") * 0.01).to(dt)
            bias = torch.randn(N, device="cuda", dtype=dt)
            w = torch.randn(N, K, device="cuda", dtype=dt) / K**0.5
            flops = 2.0 * M * N * K

            def ours(x):
                xq, asc, lr = ext.quantize_act(x, smooth, pd, gs)
                return ext.w4a4_gemm(xq, asc, qw, wsc, lr, pu, bias, gs)

            nan = float("nan")
            t_ours = t_ours_eager = t_q = t_g = nan
            if "int4" in formats:
                t_ours = time_graph(ours, [(x,) for x in xs], args.reps)
                t_ours_eager = time_eager(ours, [(x,) for x in xs], args.reps)
                qs = [ext.quantize_act(x, smooth, pd, gs) for x in xs]
                t_q = time_graph(lambda x: ext.quantize_act(x, smooth, pd, gs), [(x,) for x in xs], args.reps)
                t_g = time_graph(lambda xq, asc, lr: ext.w4a4_gemm(xq, asc, qw, wsc, lr, pu, bias, gs), qs, args.reps)
                del qs
            # two-level INT4 (int4_2l): quantize_act_2l + the wgmma GEMM (Hopper)
            t2 = t2_eager = t2_q = t2_g = t2_prev = t2_prev_q = nan
            if "int4_2l" in formats and getattr(ext, "sm90a_built", False):
                wsc2 = torch.randint(1, 17, (K // gs, N), device="cuda", dtype=torch.uint8)
                wch = torch.rand(N, device="cuda") * 1e-3

                def ours2(x):
                    xq, xsc, lr = ext.quantize_act_2l(x, smooth, pd, gs)
                    return ext.w4a4_gemm_2l(xq, xsc, qw, wsc2, wch, lr, pu, bias, gs)

                t2 = time_graph(ours2, [(x,) for x in xs], args.reps)
                t2_eager = time_eager(ours2, [(x,) for x in xs], args.reps)
                qs = [ext.quantize_act_2l(x, smooth, pd, gs) for x in xs]
                t2_q = time_graph(lambda x: ext.quantize_act_2l(x, smooth, pd, gs), [(x,) for x in xs], args.reps)
                t2_g = time_graph(lambda xq, xsc, lr: ext.w4a4_gemm_2l(xq, xsc, qw, wsc2, wch, lr, pu, bias, gs), qs,
                             args.reps)
                del qs
                if hasattr(ext, "set_quantize_act_2l_overlap"):  # the previous version (v2.4) side by side:
                    ext.set_quantize_act_2l_overlap(False)     # down projection after the quantizer,
                    ext.set_gemm_2l_splits(1)                  # no K split
                    try:
                        t2_prev = time_graph(ours2, [(x,) for x in xs], args.reps)
                        t2_prev_q = time_graph(lambda x: ext.quantize_act_2l(x, smooth, pd, gs), [(x,) for x in xs],
                                               args.reps)
                    finally:
                        ext.set_quantize_act_2l_overlap(True)
                        ext.set_gemm_2l_splits(0)
            t_bf16 = time_graph(lambda x: torch.nn.functional.linear(x, w, bias), [(x,) for x in xs], args.reps)
            t_bf16_eager = time_eager(lambda x: torch.nn.functional.linear(x, w, bias), [(x,) for x in xs], args.reps)
            # fp8 rowwise GEMM alone (activations pre-quantized: the ceiling of a dynamic fp8 linear)
            w8 = w.to(torch.float8_e4m3fn)
            sb = torch.rand(1, N, device="cuda", dtype=torch.float32) + 0.5
            x8s = [(x.to(torch.float8_e4m3fn), torch.rand(M, 1, device="cuda", dtype=torch.float32) + 0.5) for x in xs]
            try:
                t_fp8 = time_graph(
                    lambda a, sa: torch._scaled_mm(a, w8.t(), scale_a=sa, scale_b=sb, out_dtype=dt, use_fast_accum=True),
                    x8s, args.reps,
                )
            except Exception as exc:  # noqa: BLE001
                print(f"_scaled_mm failed: {exc}", file=sys.stderr)
                t_fp8 = float("nan")
            del x8s, w8
            t_nf4 = float("nan")
            if bnb is not None:
                try:
                    wq4, st = quantize_4bit(w, quant_type="nf4")
                    t_nf4 = time_graph(lambda x: bnb.matmul_4bit(x, wq4.t(), bias=bias, quant_state=st), [(x,) for x in xs],
                                       args.reps)
                    del wq4
                except Exception as exc:  # noqa: BLE001
                    print(f"bnb NF4 failed: {exc}", file=sys.stderr)
            row = dict(M=M, K=K, N=N, R=R, ours2l_ms=t2, ours2l_eager_ms=t2_eager, quant2l_ms=t2_q, gemm2l_ms=t2_g,
                       ours2l_v24_ms=t2_prev, quant2l_v24_ms=t2_prev_q,
                       gemm2l_tflops=flops / t2_g / 1e9, speedup2l_vs_bf16=t_bf16 / t2, speedup2l_vs_fp8=t_fp8 / t2,
                       speedup2l_vs_nf4=t_nf4 / t2, ours_ms=t_ours, quant_ms=t_q, gemm_ms=t_g, bf16_ms=t_bf16,
                       ours_eager_ms=t_ours_eager, bf16_eager_ms=t_bf16_eager,
                       fp8_ms=t_fp8, nf4_ms=t_nf4, ours_tflops=flops / t_ours / 1e9,
                       gemm_tflops=flops / t_g / 1e9, bf16_tflops=flops / t_bf16 / 1e9,
                       fp8_tflops=flops / t_fp8 / 1e9, speedup_vs_bf16=t_bf16 / t_ours,
                       speedup_vs_fp8=t_fp8 / t_ours, speedup_vs_nf4=t_nf4 / t_ours)
            rows.append(row)
            del xs, w
            torch.cuda.empty_cache()
    print(f"\ndevice: {dev}, torch {torch.__version__}, rank {R}, group {gs}; device time per call from CUDA-graph "
          f"replays (median); 'eager' = one eager call incl. host dispatch")
    print("speedup = peer time / our fused time (>1: ours faster); fp8 = _scaled_mm alone (no act quant)")
    hdr = (f"{'M':>5} {'K':>6} {'N':>6} | {'ours us':>8} {'quant':>6} {'gemm':>7} {'gemmTF':>6} | {'bf16 us':>8} "
           f"{'bf16TF':>6} | {'fp8 us':>7} {'nf4 us':>8} | {'x bf16':>6} {'x fp8':>6} {'x nf4':>6}")
    print(hdr)
    for r in rows:
        print(f"{r['M']:>5} {r['K']:>6} {r['N']:>6} | {r['ours_ms']*1e3:>8.1f} {r['quant_ms']*1e3:>6.1f} "
              f"{r['gemm_ms']*1e3:>7.1f} {r['gemm_tflops']:>6.0f} | {r['bf16_ms']*1e3:>8.1f} {r['bf16_tflops']:>6.0f} | "
              f"{r['fp8_ms']*1e3:>7.1f} {r['nf4_ms']*1e3:>8.1f} | {r['speedup_vs_bf16']:>6.2f} "
              f"{r['speedup_vs_fp8']:>6.2f} {r['speedup_vs_nf4']:>6.2f} | {r['ours_eager_ms']*1e3:>8.1f}/{r['bf16_eager_ms']*1e3:<8.1f}")
    print("\nint4_2l (two-level scales, wgmma on sm_90a): quantize_act_2l + w4a4_gemm_2l")
    print(f"{'M':>5} {'K':>6} {'N':>6} | {'2l us':>8} {'quant':>6} {'gemm':>7} {'gemmTF':>6} | {'bf16 us':>8} "
          f"{'fp8 us':>7} {'nf4 us':>8} | {'x bf16':>6} {'x fp8':>6} {'x nf4':>6} | eager 2l/bf16     | "
          f"v2.4 us (quant) new/v2.4")
    for r in rows:
        print(f"{r['M']:>5} {r['K']:>6} {r['N']:>6} | {r['ours2l_ms']*1e3:>8.1f} {r['quant2l_ms']*1e3:>6.1f} "
              f"{r['gemm2l_ms']*1e3:>7.1f} {r['gemm2l_tflops']:>6.0f} | {r['bf16_ms']*1e3:>8.1f} {r['fp8_ms']*1e3:>7.1f} "
              f"{r['nf4_ms']*1e3:>8.1f} | {r['speedup2l_vs_bf16']:>6.2f} {r['speedup2l_vs_fp8']:>6.2f} "
              f"{r['speedup2l_vs_nf4']:>6.2f} | {r['ours2l_eager_ms']*1e3:>8.1f}/{r['bf16_eager_ms']*1e3:<8.1f} | "
              f"{r['ours2l_v24_ms']*1e3:>7.1f} ({r['quant2l_v24_ms']*1e3:>5.1f}) {r['ours2l_ms']/r['ours2l_v24_ms']:.2f}")
    out = args.json or (os.path.join(os.environ["OUT"], "gemm_bench.json") if os.environ.get("OUT") else None)
    if out:
        with open(out, "w") as f:
            json.dump(dict(device=dev, torch=torch.__version__, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

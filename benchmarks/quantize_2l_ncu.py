"""quantize_act_2l at one shape, fused (--mode 1: q.7, 2: fixed columns) then per-row, a few calls each: ncu's target.

usage: ncu --kernel-name regex:quantize_act_2l ... python benchmarks/quantize_2l_ncu.py [--m 4608] [--k 12288]
       [--mode 1]
"""
from __future__ import annotations

import argparse

import torch

from problems_2l import gemm_switches, hopper_extension


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--m", type=int, default=4608)
    ap.add_argument("--k", type=int, default=12288)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--mode", type=int, default=1, choices=(1, 2), help="the fused quantizer: 1 q.7, 2 fixed columns")
    args = ap.parse_args()
    ext = hopper_extension("quantize_2l_ncu")
    if ext is None:
        return 2
    M, K = args.m, args.k
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    smooth = (torch.rand(K, device="cuda") + 0.5).to(torch.bfloat16)
    pd = torch.randn(K, 32, device="cuda", dtype=torch.bfloat16) / K**0.5
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print("fused shape (C, S, smem):", ext.quantize_act_2l_fused_shape(M, K, 32, 64, sms))
    print("fixed-column shape (C, threads, smem, mma warps):", ext.quantize_act_2l_cols_shape(M, K, 32, 64))
    for fused in (args.mode, 0):
        with gemm_switches(ext, fused_quant=fused):
            for _ in range(args.calls):
                ext.quantize_act_2l(x, smooth, pd, 64)
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

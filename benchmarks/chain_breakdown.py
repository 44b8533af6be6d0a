"""Where the int4_2l chain's time goes at one M: each part timed alone under CUDA graphs, side by side.

usage: python benchmarks/chain_breakdown.py [--ms 256] [--reps 30]

Per FLUX.1 shape (us per call, CUDA-graph device time, weights in fragment order, default switches):
  "chain"  quantize_act_2l + w4a4_gemm_2l_fo (what SVDQuantLinear runs on Hopper);
  "chain_fq" / "chain_pr": the chain with the fused quantizer forced on / off (set_quantize_act_2l_fused);
  "q_fq"   quantize_act_2l alone, fused (x read once for the quantization and the down projection);
  "q_pr"   quantize_act_2l alone, per-row (its 1 / smooth launch, the quantizer and, on a side stream while x fits
           in L2, cuBLAS's down projection);
  "q_only" the per-row quantizer alone (rank 0: no down projection); "down" cuBLAS x @ proj_down alone;
  "gemm"   w4a4_gemm_2l_fo alone (its plan: two or three consumer warpgroups as the cost model picks, or not
           persistent); "gemm2" the same with two warpgroups only (set_gemm_2l_rf_warpgroups(2));
  "empty"  one trivial kernel (a graph node's floor);
  "bf16"   cuBLAS x @ w.T + bias, the bar's peer.
"""
from __future__ import annotations

import argparse

import torch

from cuda_timing import time_graph
from problems_2l import FLUX_SHAPES, gemm_switches, hopper_extension, random_2l

from svdquant_hf.ops.layout_2l import fragment_order

COLS = ["chain", "chain_fq", "chain_pr", "q_fq", "q_pr", "q_only", "down", "gemm", "gemm2", "empty", "bf16"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ms", default="256")
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    ext = hopper_extension("chain_breakdown")
    if ext is None:
        return 2
    print(f"{torch.cuda.get_device_name()}: int4_2l chain by part, us per call (CUDA graph), rank 32, group 64")
    print(f"{'M':>5} {'K':>6} {'N':>6} | " + " ".join(f"{c:>7}" for c in COLS) + " | parts-sum  bf16/chain  q_fq GB/s")
    for M in [int(m) for m in args.ms.split(",")]:
        for K, N in FLUX_SHAPES:
            p = random_2l(M, K, N)
            qw = fragment_order(p.qweight)
            gs = p.group_size
            w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) / K**0.5
            pd0 = p.proj_down[:, :0].contiguous()
            pre = [ext.quantize_act_2l(x, p.smooth, p.proj_down, gs) for x in p.xs]
            xs = [(x,) for x in p.xs]

            def chain(x):
                xq, xsc, lr = ext.quantize_act_2l(x, p.smooth, p.proj_down, gs)
                return ext.w4a4_gemm_2l_fo(xq, xsc, qw, p.wscales, p.wchannel, lr, p.proj_up, p.bias, gs)

            fns = {
                "chain": (chain, xs),
                "quant": (lambda x: ext.quantize_act_2l(x, p.smooth, p.proj_down, gs), xs),
                "q_only": (lambda x: ext.quantize_act_2l(x, p.smooth, pd0, gs), xs),  # rank 0: per-row
                "down": (lambda x: x @ p.proj_down, xs),
                "gemm": (lambda xq, xsc, lr: ext.w4a4_gemm_2l_fo(xq, xsc, qw, p.wscales, p.wchannel, lr, p.proj_up,
                                                                  p.bias, gs), pre),
                "empty": (lambda x: x[:1].add_(0), xs),
                "bf16": (lambda x: torch.addmm(p.bias, x, w.t()), xs),
            }
            t = {c: 1e3 * time_graph(fn, a, args.reps) for c, (fn, a) in fns.items()}
            with gemm_switches(ext, rf_warpgroups=2):
                t["gemm2"] = 1e3 * time_graph(fns["gemm"][0], pre, args.reps)
            for tag, on in (("fq", 1), ("pr", 0)):
                with gemm_switches(ext, fused_quant=on):
                    t["q_" + tag] = 1e3 * time_graph(fns["quant"][0], xs, args.reps)
                    t["chain_" + tag] = 1e3 * time_graph(chain, xs, args.reps)
            moved = M * K * 3 + M * (4 + 2 * p.proj_down.shape[1])  # x in, int8 out, scales and lr out
            print(f"{M:>5} {K:>6} {N:>6} | " + " ".join(f"{t[c]:7.1f}" for c in COLS)
                  + f" | {t['quant'] + t['gemm']:9.1f}  {t['bf16'] / t['chain']:9.2f}  {moved / t['q_fq'] / 1e3:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The int4_2l GEMM at a few tokens: the dp4a weight stream (csrc/w4a4_gemv_2l.cu) against the tile GEMM and cuBLAS bf16.

usage: python benchmarks/gemv_2l.py [--ms 1,2,4,8] [--reps 40] [--hot] [--orders]

FLUX.1's AdaLN modulation layers run at M = batch (1: temb [1, 3072] -> 18432 in the double blocks, -> 9216 in the
single blocks); the tile GEMM widens every weight for a 64-token tile of which one token is real. For each M and
shape this times, under CUDA graphs, w4a4_gemm_2l_fo with the few-token kernel forced (set_gemv_2l_mode(8)) and with it
off (set_gemv_2l_mode(0): the tile GEMM), and cuBLAS bf16 x @ w.T. Each call of a graph reads another copy of
the weights (more bytes than L2 holds), so nothing is timed from L2. Prints us, the weight stream's GB/s (packed
weights + group scales; bf16 weights for cuBLAS) and the ratios to the few-token kernel (> 1: it is faster).
--hot: one copy of the weights (read from L2 after the first call, as in ab_2l.py, where the fragment-order chain at
M = 1 was ~1.3-1.6x the canonical one, perf-notes v2.23); --orders: the few-token kernel on canonical weights too
(column gemv_c).
"""
from __future__ import annotations

import argparse
import sys

import torch

from cuda_timing import time_graph
from problems_2l import hopper_extension

from svdquant_hf.formats.int4 import pack_int4
from svdquant_hf.ops.layout_2l import fragment_order

SHAPES = ((3072, 18432), (3072, 9216), (3072, 3072), (3072, 12288), (12288, 3072), (15360, 3072))
L2_BYTES = 60 << 20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ms", default="1,2,4,8")
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--hot", action="store_true", help="one weight copy (L2-resident)")
    ap.add_argument("--orders", action="store_true", help="the few-token kernel on canonical weights too")
    args = ap.parse_args(argv)
    ext = hopper_extension("gemv_2l")
    if ext is None:
        return 2
    gs, R, dev, dt = 64, 32, "cuda", torch.bfloat16
    print(f"{torch.cuda.get_device_name()}: one int4_2l layer at a few tokens, us per call (CUDA graph, "
          f"{'one weight copy (L2)' if args.hot else 'weights cycled past L2'})")
    print(f"{'M':>2} {'K':>6} {'N':>6} | {'gemv':>7} {'tile':>7} {'bf16':>7} | {'GB/s gemv':>9} {'tile':>6} "
          f"{'bf16':>6} | {'tile/gemv':>9} {'bf16/gemv':>9}" + (f" | {'gemv_c':>7} {'gemv/gemv_c':>11}" if args.orders
                                                                 else ""))
    for K, N in SHAPES:
        packed_bytes = N * K // 2 + N * K // gs
        copies = 1 if args.hot else max(2, -(-3 * L2_BYTES // packed_bytes))
        bf_copies = 1 if args.hot else max(2, -(-3 * L2_BYTES // (2 * N * K)))
        torch.manual_seed(K + N)
        qc = [pack_int4(torch.randint(-8, 8, (N, K), device=dev, dtype=torch.int8)) for _ in range(copies)]
        qf = [fragment_order(q) for q in qc]
        qc = qc if args.orders else None
        wsc = [torch.randint(1, 17, (K // gs, N), device=dev, dtype=torch.uint8) for _ in range(copies)]
        wch = torch.rand(N, device=dev) * 1e-3
        pu = (torch.randn(N, R, device=dev) / R**0.5).to(dt)
        bias = torch.randn(N, device=dev, dtype=dt)
        wbf = [torch.randn(N, K, device=dev, dtype=dt) for _ in range(bf_copies)]
        for M in (int(m) for m in args.ms.split(",")):
            x = torch.randn(M, K, device=dev, dtype=dt)
            xq, xs, lr = ext.quantize_act_2l(x, (torch.rand(K, device=dev) + 0.5).to(dt),
                                             (torch.randn(K, R, device=dev) / K**0.5).to(dt), gs)
            calls = [(i,) for i in range(copies)]

            def packed(i):
                return ext.w4a4_gemm_2l_fo(xq, xs, qf[i], wsc[i], wch, lr, pu, bias, gs)

            def canonical(i):
                return ext.w4a4_gemm_2l(xq, xs, qc[i], wsc[i], wch, lr, pu, bias, gs)

            try:
                ext.set_gemv_2l_mode(8)
                t_gemv = 1e3 * time_graph(packed, calls, args.reps)
                t_canon = 1e3 * time_graph(canonical, calls, args.reps) if args.orders else 0.0
                ext.set_gemv_2l_mode(0)
                t_tile = 1e3 * time_graph(packed, calls, args.reps)
            finally:
                ext.set_gemv_2l_mode(-1)
            t_bf = 1e3 * time_graph(lambda i: x @ wbf[i].T, [(i,) for i in range(bf_copies)], args.reps)
            gb = packed_bytes / 1e3
            print(f"{M:>2} {K:>6} {N:>6} | {t_gemv:>7.1f} {t_tile:>7.1f} {t_bf:>7.1f} | {gb / t_gemv:>9.0f} "
                  f"{gb / t_tile:>6.0f} {2 * N * K / 1e3 / t_bf:>6.0f} | {t_tile / t_gemv:>9.2f} {t_bf / t_gemv:>9.2f}" +
                  (f" | {t_canon:>7.1f} {t_gemv / t_canon:>11.2f}" if args.orders else ""), flush=True)
        del qf, qc, wsc, wbf
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The fused quantizer's cost per row block: cluster size forced, token count swept, side by side with the per-row one.

usage: python benchmarks/quantize_2l_sweep.py [--ks 3072,12288] [--ms 16,256,1024,4608] [--reps 30] [--mode 1]

For each K and M: the per-row quantizer + cuBLAS down projection ("per-row"), "q_only" the per-row quantizer alone
(rank 0: no down projection; the floor a fused quantizer aims at), then the fused one of --mode (1: q.7; 2: threads
on fixed columns, perf-notes v2.47; set_quantize_act_2l_fused(mode, C)) at its rule's cluster size ("C=0") and
every forced size with a shape.
Columns: cluster size and x stages (mode 2: threads per CTA), CTAs launched (clusters that fit x C), rounds of row
blocks per cluster, us per call (CUDA graph), and us per round over the M = 16 call's (one round: launch and prologue).
Then (mode 1), at the cost model's cluster size, the timing-only probes (WRONG results, bfloat16 rank 32 only):
"no-xchg" leaves out the cluster exchange (st.async + mbarrier wait), "no-mma" the down projection, "neither" both; and
"spin" (exact results) waits for the exchange by spinning on mbarrier.test_wait instead of try_wait; "cap-1" /
"cap/2" launch one cluster fewer / half as many clusters as fit (if the occupancy query overstates what fits at
once, the last clusters run as a second wave and the full grid is the slowest).
perf-notes v2.16: a round of 16-row blocks costs ~12 us at K = 3072 and 12288, whatever the slice width.
"""
from __future__ import annotations

import argparse

import torch

from cuda_timing import time_graph
from problems_2l import gemm_switches, hopper_extension


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in (("--ks", "3072,12288"), ("--ms", "16,256,1024,4608")):
        ap.add_argument(name, default=default)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--mode", type=int, default=1, choices=(1, 2))
    args = ap.parse_args()
    if (ext := hopper_extension("quantize_2l_sweep")) is None:
        return 2
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    R, G = 32, 64
    print(f"{torch.cuda.get_device_name()}: quantize_act_2l, us per call (CUDA graph), rank {R}, group {G}, {sms} SMs, "
          f"fused mode {args.mode}")
    print(f"{'K':>6} {'M':>5} {'config':>8} {'C':>2} {'S':>2} {'CTAs':>5} {'rounds':>6} {'us':>8} {'us/round':>9}")
    for K in [int(k) for k in args.ks.split(",")]:
        smooth = (torch.rand(K, device="cuda") + 0.5).to(torch.bfloat16)
        pd = (torch.randn(K, R, device="cuda") / K**0.5).to(torch.bfloat16)
        one_round: dict[int, float] = {}
        for M in [int(m) for m in args.ms.split(",")]:
            xs = [(torch.randn(M, K, device="cuda", dtype=torch.bfloat16),) for _ in range(2)]
            fn = lambda x: ext.quantize_act_2l(x, smooth, pd, G)  # noqa: E731
            with gemm_switches(ext, fused_quant=0):
                t = 1e3 * time_graph(fn, xs, args.reps)
            print(f"{K:>6} {M:>5} {'per-row':>8} {'':>2} {'':>2} {'':>5} {'':>6} {t:8.1f}")
            pd0 = pd[:, :0].contiguous()
            with gemm_switches(ext, fused_quant=0):
                t = 1e3 * time_graph(lambda x: ext.quantize_act_2l(x, smooth, pd0, G), xs, args.reps)
            print(f"{K:>6} {M:>5} {'q_only':>8} {'':>2} {'':>2} {'':>5} {'':>6} {t:8.1f}")
            for C in ((0, 2, 3, 4, 6, 8) if args.mode == 1 else (0, 4, 8, 16)):
                with gemm_switches(ext, fused_quant=args.mode, quant_cluster=C):
                    if args.mode == 1:
                        c, s, _ = ext.quantize_act_2l_fused_shape(M, K, R, G, sms)
                    else:  # (s: threads per CTA)
                        c, s, _, _ = ext.quantize_act_2l_cols_shape(M, K, R, G, C)
                    if c == 0 or (C and c != C) or not ext.quantize_act_2l_fused_applies(M, K, R, G):
                        continue
                    t = 1e3 * time_graph(fn, xs, args.reps)
                    ctas = ext.quantize_act_2l_fused_last_grid()
                rounds = -(-((M + 15) // 16) // max(1, ctas // c))
                if M == 16:
                    one_round[C] = t
                # (the model's own choice, C=0, may change with M: no per-round figure for it)
                per = (t - one_round[C]) / (rounds - 1) if C and C in one_round and rounds > 1 else float("nan")
                print(f"{K:>6} {M:>5} {'C=' + str(C):>8} {c:>2} {s:>3} {ctas:>5} {rounds:>6} {t:8.1f} {per:9.2f}")
            if args.mode != 1:
                continue
            before = ext.quantize_act_2l_fused_mode()
            with gemm_switches(ext, fused_quant=1):
                c = ext.quantize_act_2l_fused_shape(M, K, R, G, sms)[0]
                fn(xs[0][0])
                full = ext.quantize_act_2l_fused_last_grid() // max(c, 1)
            runs = [(1, 0, "no-xchg"), (2, 0, "no-mma"), (3, 0, "neither"), (4, 0, "spin"),
                    (0, max(1, full - 1), "cap-1"), (0, max(1, full // 2), "cap/2")]
            for probe, cap, name in runs:
                ext.set_quantize_act_2l_fused(1, 0, probe, cap)
                try:
                    t = 1e3 * time_graph(fn, xs, args.reps)
                    ctas = ext.quantize_act_2l_fused_last_grid()
                finally:
                    ext.set_quantize_act_2l_fused(before, 0, 0, 0)
                print(f"{K:>6} {M:>5} {name:>8} {'':>2} {'':>2} {ctas:>5} {'':>6} {t:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

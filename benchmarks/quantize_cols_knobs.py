"""The fixed-column fused quantizer (set_quantize_act_2l_fused(2)) under its tuning knobs, side by side with the
per-row pair (the default: the per-row kernel + the down projection), in interleaved rounds of one run.

usage: python benchmarks/quantize_cols_knobs.py [--ks 3072,12288,15360] [--ms 4608] [--rounds 3] [--reps 20]
         [--variants "v8:0,1,0,0;st2:4000,2,0,0;..."]

A variant is name:stagger_cycles,stagger_phases,probe,mma_sets (set_quantize_act_2l_cols_tuning; perf-notes v2.50):
cluster c starts its loads (c % phases) x cycles SM clocks late; probe 1 leaves xq unwritten (WRONG results: how much
of a block the stores cost); mma_sets 4 runs the down projection's k-steps on four accumulator sets. Prints each
variant's median time per call (CUDA graph) and its ratio to the per-row pair's; the last line per shape is the
fastest exact variant.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from cuda_timing import time_graph
from problems_2l import gemm_switches, hopper_extension

DEFAULT = ("v8:0,1,0,0;nostore:0,1,1,0;mma4:0,1,0,4;st2x2k:2000,2,0,0;st2x4k:4000,2,0,0;st4x2k:2000,4,0,0;"
           "st3x3k:3000,3,0,0;st2x4k_mma4:4000,2,0,4")


def parse_variants(spec: str) -> list[tuple[str, tuple[int, int, int, int]]]:
    """'name:a,b,c,d;...' -> [(name, (stagger_cycles, stagger_phases, probe, mma_sets))]."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        name, _, vals = item.partition(":")
        t = tuple(int(v) for v in vals.split(","))
        if len(t) != 4:
            raise SystemExit(f"variant {item!r}: want name:stagger_cycles,stagger_phases,probe,mma_sets")
        out.append((name, t))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", default="3072,12288,15360")
    ap.add_argument("--ms", default="4608")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--variants", default=DEFAULT)
    args = ap.parse_args()
    variants = parse_variants(args.variants)
    if (ext := hopper_extension("quantize_cols_knobs")) is None:
        return 2
    R, G = 32, 64
    names = ["pair"] + [n for n, _ in variants]
    print(f"{torch.cuda.get_device_name()}: fixed-column quantizer by tuning (stagger_cycles, phases, probe, "
          f"mma_sets), us per call (CUDA graph), median of {args.rounds} interleaved rounds, rank {R}, group {G}")
    for n, t in variants:
        print(f"  {n}: {t}{'  (WRONG results: timing only)' if t[2] else ''}")
    print(f"{'M':>5} {'K':>6} | " + " ".join(f"{n[:12]:>12}" for n in names) + " | best exact / pair")
    before = ext.quantize_act_2l_cols_tuning()
    try:
        for M in [int(m) for m in args.ms.split(",")]:
            for K in [int(k) for k in args.ks.split(",")]:
                smooth = (torch.rand(K, device="cuda") + 0.5).to(torch.bfloat16)
                pd = (torch.randn(K, R, device="cuda") / K**0.5).to(torch.bfloat16)
                xs = [(torch.randn(M, K, device="cuda", dtype=torch.bfloat16),) for _ in range(2)]
                fn = lambda x: ext.quantize_act_2l(x, smooth, pd, G)  # noqa: E731
                with gemm_switches(ext, fused_quant=2):
                    if not ext.quantize_act_2l_fused_applies(M, K, R, G):
                        print(f"{M:>5} {K:>6} | no fixed-column shape")
                        continue
                times: dict[str, list[float]] = {n: [] for n in names}
                for r in range(args.rounds):
                    order = names if r % 2 == 0 else names[::-1]
                    for n in order:
                        if n == "pair":
                            with gemm_switches(ext, fused_quant=0):
                                times[n].append(1e3 * time_graph(fn, xs, args.reps))
                            continue
                        ext.set_quantize_act_2l_cols_tuning(*dict(variants)[n])
                        with gemm_switches(ext, fused_quant=2):
                            times[n].append(1e3 * time_graph(fn, xs, args.reps))
                        ext.set_quantize_act_2l_cols_tuning(*before)
                med = {n: statistics.median(v) for n, v in times.items()}
                exact = [n for n, t in variants if t[2] == 0]
                best = min(exact, key=med.get) if exact else None
                tail = f"{best} {med[best] / med['pair']:.3f}" if best else ""
                print(f"{M:>5} {K:>6} | " + " ".join(f"{med[n]:12.1f}" for n in names) + f" | {tail}")
                print(f"{'':>5} {'':>6} | " + " ".join(f"{med[n] / med['pair']:12.3f}" for n in names))
    finally:
        ext.set_quantize_act_2l_cols_tuning(*before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

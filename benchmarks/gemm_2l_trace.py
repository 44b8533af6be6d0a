"""Where a K stage of the int4_2l GEMM spends its time, and the A-tile buffering variants side by side (sm_90a).

usage: python benchmarks/gemm_2l_trace.py [--ms 256,1024,4608] [--rounds 5] [--reps 20] [--json OUT.json]

1. Trace: one CTA of the plan's kernel records clock64() at seven points of every K stage (per warpgroup);
   prints the median cycles per segment over the middle stages and the SM clock (clock64 against
   %globaltimer over the kernel): the stage time set against the wgmma work (tile x 128 x 128 MACs at 4096
   int8 MACs per clock per SM).
2. A/B: the GEMM alone (CUDA-graph device time, interleaved rounds, median) with 2 and 3 A-tile buffers
   per warpgroup, outputs checked bit-identical. bfloat16, group 64, rank 32, the plan's tile and split.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from cuda_timing import time_graph
from problems_2l import FLUX_SHAPES, random_2l

SEGMENTS = ["syncthreads", "data wait", "widen+fence", "wg barrier", "wgmma issue", "wgmma wait"]


def trace_stages(ext, run, K: int, a_buffers: int) -> dict:
    nk = K // 128
    buf = torch.zeros(2 * nk * 8 + 4, dtype=torch.int64, device="cuda")
    ext.set_gemm_2l_variant(a_buffers, buf.data_ptr())
    try:
        run()
        torch.cuda.synchronize()
    finally:
        ext.set_gemm_2l_variant(2, 0)
    t = buf.cpu()
    head = t[2 * nk * 8:]
    ghz = float(head[2] - head[0]) / max(float(head[3] - head[1]), 1.0)
    out = {"ghz": ghz, "kernel_us": float(head[3] - head[1]) / 1e3}
    stages = t[: 2 * nk * 8].view(2, nk, 8)
    mid = range(nk // 4, max(nk // 4 + 1, 3 * nk // 4))  # steady state
    for wg in range(2):
        seg = {name: statistics.median(float(stages[wg, i, e + 1] - stages[wg, i, e]) for i in mid)
               for e, name in enumerate(SEGMENTS)}
        per = [float(stages[wg, i + 1, 0] - stages[wg, i, 0]) for i in mid if i + 1 < nk]
        seg["stage"] = statistics.median(per) if per else float("nan")
        out[f"wg{wg}"] = seg
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ms", default="256,1024,4608")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from svdquant_hf.ops import build

    ext = build.load_extension()
    if ext is None or not getattr(ext, "sm90a_built", False) or torch.cuda.get_device_capability() != (9, 0):
        print("gemm_2l_trace: needs the sm_90a build on a Hopper GPU", file=sys.stderr)
        return 2
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    R, gs = 32, 64
    rows = []
    print(f"{torch.cuda.get_device_name()}: int4_2l GEMM alone, bf16, group {gs}, rank {R}")
    for M in [int(m) for m in args.ms.split(",")]:
        for K, N in FLUX_SHAPES:
            p = random_2l(M, K, N, R, gs)
            qs = [ext.quantize_act_2l(x, p.smooth, p.proj_down, gs) for x in p.xs]
            call = lambda xq, xsc, lr: ext.w4a4_gemm_2l(xq, xsc, p.qweight, p.wscales, p.wchannel, lr, p.proj_up,  # noqa: E731
                                                        p.bias, gs)
            bt, splits = ext.gemm_2l_plan(M, N, K, sms)
            outs = {}
            for ab in (2, 3):
                ext.set_gemm_2l_variant(ab, 0)
                outs[ab] = call(*qs[0])
            ext.set_gemm_2l_variant(2, 0)
            identical = torch.equal(outs[2], outs[3])
            times = {2: [], 3: []}
            for _ in range(args.rounds):
                for ab in (2, 3):
                    ext.set_gemm_2l_variant(ab, 0)
                    times[ab].append(1e3 * time_graph(call, qs, args.reps))
            ext.set_gemm_2l_variant(2, 0)
            med = {ab: statistics.median(v) for ab, v in times.items()}
            traces = {ab: trace_stages(ext, lambda: call(*qs[0]), K, ab) for ab in (2, 3)}
            wgmma_cycles = bt * 128 * 128 / 4096  # both warpgroups' wgmmas of one stage on one SM
            row = {"M": M, "K": K, "N": N, "tile": bt, "splits": splits, "us_ab2": med[2], "us_ab3": med[3],
                   "identical": identical, "wgmma_cycles": wgmma_cycles, "trace": traces}
            rows.append(row)
            print(f"M={M:5d} K={K:5d} N={N:5d} plan ({bt}, {splits}) | AB2 {med[2]:7.1f} us  AB3 {med[3]:7.1f} us "
                  f"({med[3] / med[2]:.2f}) | identical {identical}")
            for ab in (2, 3):
                tr = traces[ab]
                segs = " ".join(f"{k}={tr['wg0'][k]:.0f}" for k in SEGMENTS)
                print(f"    AB{ab} trace: {tr['ghz']:.2f} GHz, stage {tr['wg0']['stage']:.0f} / {tr['wg1']['stage']:.0f} "
                      f"cycles (wgmma work {wgmma_cycles:.0f}) | wg0 {segs}")
            del qs, p, outs
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
    print("\nsummary: M K N | plan | AB3/AB2 | stage cycles AB2 -> AB3 (wgmma work)")
    for r in rows:
        s2, s3 = r["trace"][2]["wg0"]["stage"], r["trace"][3]["wg0"]["stage"]
        print(f"{r['M']:5d} {r['K']:5d} {r['N']:5d} | ({r['tile']}, {r['splits']}) | {r['us_ab3'] / r['us_ab2']:.3f} | "
              f"{s2:.0f} -> {s3:.0f} ({r['wgmma_cycles']:.0f}){'' if r['identical'] else '  NOT IDENTICAL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

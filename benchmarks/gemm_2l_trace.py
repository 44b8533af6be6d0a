"""Where a K stage of the int4_2l GEMM spends its time (sm_90a).

usage: python benchmarks/gemm_2l_trace.py [--ms 256,1024,4608] [--reps 20] [--json OUT.json]

One CTA of the plan's kernel (bfloat16, group 64, rank 32; a separately built tracing instance) records
clock64() at seven points of every K stage, per warpgroup. Printed: the GEMM's time (CUDA graph), the
tracing kernel's output checked bit-identical to the dispatched kernel's, the SM clock (clock64 against
%globaltimer over the kernel), and the median cycles per segment over the middle stages against the
wgmma work of a stage (tile x 128 x 128 MACs at 4096 int8 MACs per clock per SM), and the CTA's life outside
the stages (cycles, warpgroup 0): start to the first stage's data, the loop, then the epilogue's steps (low-rank
tile loaded, scales applied, low-rank branch added, bias and stores to the end). No split-K plans
(only CTA z = 0 would record). Thread 0 issues the TMA loads, so warpgroup 0's "data wait" includes them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
from cuda_timing import time_graph
from problems_2l import FLUX_SHAPES, hopper_extension, random_2l

SEGMENTS = ["syncthreads", "data wait", "widen+fence", "wg barrier", "wgmma issue", "wgmma wait"]
TILE_STEPS = ["to first data", "stages", "lr tile", "scales", "low-rank", "bias+stores"]


def trace_stages(ext, run, K: int, segments: list[str]) -> tuple[dict, torch.Tensor]:
    nk = K // 128
    buf = torch.zeros(2 * nk * 8 + 12, dtype=torch.int64, device="cuda")
    ext.set_gemm_2l_trace(buf.data_ptr())
    try:
        y = run()
        torch.cuda.synchronize()
    finally:
        ext.set_gemm_2l_trace(0)
    return parse_trace(buf.cpu(), nk, segments), y


def parse_trace(t: torch.Tensor, nk: int, segments: list[str]) -> dict:
    """The tracing kernel's buffer: [2 warpgroups][nk stages][8 clock64 marks], then (clock64, globaltimer) at
    the kernel's start (0, 1) and end (2, 3), and clock64 after the loop (4) and the epilogue's steps (6, 8, 10)."""
    head = t[2 * nk * 8:]
    out = {"ghz": float(head[2] - head[0]) / max(float(head[3] - head[1]), 1.0),
           "kernel_us": float(head[3] - head[1]) / 1e3}
    stages = t[: 2 * nk * 8].view(2, nk, 8)
    marks = [float(head[0]), float(stages[0, 0, 2]), float(head[4]), float(head[6]), float(head[8]),
             float(head[10]), float(head[2])]
    out["tile"] = {name: marks[i + 1] - marks[i] for i, name in enumerate(TILE_STEPS)}
    mid = range(nk // 4, max(nk // 4 + 1, 3 * nk // 4))  # steady state
    for wg in range(2):
        seg = {name: statistics.median(float(stages[wg, i, e + 1] - stages[wg, i, e]) for i in mid)
               for e, name in enumerate(segments)}
        per = [float(stages[wg, i + 1, 0] - stages[wg, i, 0]) for i in mid if i + 1 < nk]
        seg["stage"] = statistics.median(per) if per else float("nan")
        out[f"wg{wg}"] = seg
    return out


def trace_shape(ext, M: int, K: int, N: int, R: int, gs: int, sms: int, reps: int) -> dict | None:
    p = random_2l(M, K, N, R, gs)
    qs = [ext.quantize_act_2l(x, p.smooth, p.proj_down, gs) for x in p.xs]

    def call(xq, xsc, lr):
        return ext.w4a4_gemm_2l(xq, xsc, p.qweight, p.wscales, p.wchannel, lr, p.proj_up, p.bias, gs)

    bt, splits = ext.gemm_2l_plan(M, N, K, sms)
    if splits > 1:
        print(f"M={M:5d} K={K:5d} N={N:5d} plan ({bt}, {splits}): split-K, not traced")
        return None
    y = call(*qs[0])
    us = 1e3 * time_graph(call, qs, reps)
    tr, y_traced = trace_stages(ext, lambda: call(*qs[0]), K, SEGMENTS)
    identical = torch.equal(y_traced, y)
    wgmma_cycles = bt * 128 * 128 / 4096  # both warpgroups' wgmmas of one stage on one SM
    segs = " ".join(f"{k}={tr['wg0'][k]:.0f}" for k in SEGMENTS)
    print(f"M={M:5d} K={K:5d} N={N:5d} tile {bt}: {us:7.1f} us | {tr['ghz']:.2f} GHz, stage "
          f"{tr['wg0']['stage']:.0f} / {tr['wg1']['stage']:.0f} cycles (wgmma work {wgmma_cycles:.0f}) | "
          f"wg0 {segs}{'' if identical else ' | TRACED OUTPUT DIFFERS'}")
    print("    tile, cycles: " + " ".join(f"{k}={v:.0f}" for k, v in tr["tile"].items()))
    return {"M": M, "K": K, "N": N, "tile": bt, "us": us, "identical": identical,
            "wgmma_cycles": wgmma_cycles, "trace": tr}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ms", default="256,1024,4608")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    ext = hopper_extension("gemm_2l_trace")
    if ext is None:
        return 2
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    R, gs = 32, 64
    rows = []
    print(f"{torch.cuda.get_device_name()}: int4_2l GEMM alone, bf16, group {gs}, rank {R}")
    for M in [int(m) for m in args.ms.split(",")]:
        for K, N in FLUX_SHAPES:
            row = trace_shape(ext, M, K, N, R, gs, sms, args.reps)
            if row is not None:
                rows.append(row)
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Host cost per call of the int4_2l ops on CUDA: the dispatcher into the C++ kernels vs the Python path.

usage: python benchmarks/op_host_overhead.py [--calls 3000] [--profile]

A compiled graph calls torch.ops.svdquant.{quantize_act_2l, w4a4_gemm_2l} about 1000 times per FLUX.1
forward. On a problem so small that the GPU never sets the pace (M = 8, K = 256, N = 128), this times
back-to-back calls on the host, in one run, of: the ops through the dispatcher (the extension's C++
kernels take them), the Python CUDA path those calls went through before (svdquant_hf/ops/cuda.py:
checks, then the extension), and the extension's pybind functions alone (what the eager shortcut of
v2.5 called).
Prints microseconds per quantize + GEMM pair; --profile adds the host time per pair of each CUDA
runtime / driver call and operator (torch.profiler) on the dispatcher path.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch


def _per_call_us(fn, calls: int) -> float:
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / calls * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    from problems_2l import random_2l

    from svdquant_hf.ops import build, cuda, library

    ext = build.load_extension()
    if ext is None or not cuda.gemm_2l_kernel_usable(ext, torch.device("cuda")):
        print("op_host_overhead: needs the sm_90a build on a Hopper GPU", file=sys.stderr)
        return 2
    gs = 64
    p = random_2l(8, 256, 128, 32, gs)
    x = p.xs[0]
    w = (p.qweight, p.wscales, p.wchannel)

    def ops():
        xq, xs, lr = library.quantize_act_2l(x, p.smooth, p.proj_down, gs)
        return library.w4a4_gemm_2l(xq, xs, *w, lr, p.proj_up, p.bias, gs)

    def python_path():
        xq, xs, lr = cuda.quantize_act_2l_cuda(x, p.smooth, p.proj_down, gs)
        return cuda.w4a4_gemm_2l_cuda(xq, xs, *w, lr, p.proj_up, p.bias, gs)

    def pybind():
        xq, xs, lr = ext.quantize_act_2l(x, p.smooth, p.proj_down, gs)
        return ext.w4a4_gemm_2l(xq, xs, *w, lr, p.proj_up, p.bias, gs)

    assert torch.equal(ops(), python_path()) and torch.equal(ops(), pybind())
    rows = [(name, _per_call_us(fn, args.calls)) for name, fn in
            (("ops via dispatcher (C++ kernels)", ops), ("Python CUDA path", python_path), ("pybind alone", pybind))]
    print(f"{torch.cuda.get_device_name()}: host us per quantize_act_2l + w4a4_gemm_2l pair (M=8, K=256, N=128)")
    for name, us in rows:
        print(f"  {name:34s} {us:7.1f} us  ({us / rows[0][1]:.2f}x the dispatcher)")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        n = 200
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(n):
                ops()
            torch.cuda.synchronize()
        host = {}
        for e in prof.key_averages():
            if e.self_cpu_time_total > 0:
                host[e.key] = (e.self_cpu_time_total / n, e.count / n)
        print(f"host self time per pair (us, calls per pair), top 15 of {len(host)}:")
        for key, (us, cnt) in sorted(host.items(), key=lambda kv: -kv[1][0])[:15]:
            print(f"  {us:7.2f} us  x{cnt:4.1f}  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

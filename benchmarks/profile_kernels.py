"""Launch quantize_act + w4a4_gemm a few times at one shape, for Nsight Compute (ncu) to profile.

usage: ncu --kernel-name regex:"quantize_act_kernel|w4a4_gemm_kernel" --launch-skip 2 --launch-count 2 \
           python benchmarks/profile_kernels.py M K N [int4|int4_2l]
       python benchmarks/profile_kernels.py --quantize-2l-breakdown   (torch.profiler: us per kernel of one
           quantize_act_2l call with the down projection in order on one stream, at 4608x3072, 4608x12288, 256x3072)
"""
import sys

import torch

from svdquant_hf.formats.int4 import pack_int4
from svdquant_hf.ops import build

ext = build.load_extension()
if sys.argv[1:] == ["--quantize-2l-breakdown"]:
    ext.set_quantize_act_2l_overlap(False)
    for M, K in [(4608, 3072), (4608, 12288), (256, 3072)]:
        x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        sm = (torch.rand(K, device="cuda") + 0.5).to(torch.bfloat16)
        pd = (torch.randn(K, 32, device="cuda") / K**0.5).to(torch.bfloat16)
        for _ in range(3):
            ext.quantize_act_2l(x, sm, pd, 64)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                ext.quantize_act_2l(x, sm, pd, 64)
            torch.cuda.synchronize()
        per_kernel: dict[str, float] = {}
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                per_kernel[e.name[:60]] = per_kernel.get(e.name[:60], 0) + e.device_time / 10
        print(M, K, {k: round(v, 1) for k, v in per_kernel.items()})
    sys.exit(0)
M, K, N = (int(v) for v in sys.argv[1:4]) if len(sys.argv) >= 4 else (4608, 3072, 3072)
dt, R, gs = torch.bfloat16, 32, 64
x = torch.randn(M, K, device="cuda", dtype=dt)
smooth = (torch.rand(K, device="cuda") + 0.5).to(dt)
pd = (torch.randn(K, R, device="cuda") / K**0.5).to(dt)
pu = (torch.randn(N, R, device="cuda") / R**0.5).to(dt)
qw = pack_int4(torch.randint(-8, 8, (N, K), device="cuda", dtype=torch.int8))
wsc = (torch.rand(K // gs, N, device="cuda") * 0.01).to(dt)
bias = torch.randn(N, device="cuda", dtype=dt)
fmt = sys.argv[4] if len(sys.argv) >= 5 else "int4"
wsc2 = torch.randint(1, 17, (K // gs, N), device="cuda", dtype=torch.uint8)
wch = torch.rand(N, device="cuda") * 1e-3
for _ in range(3):
    if fmt == "int4_2l":
        xq, xs, lr = ext.quantize_act_2l(x, smooth, pd, gs)
        y = ext.w4a4_gemm_2l(xq, xs, qw, wsc2, wch, lr, pu, bias, gs)
    else:
        xq, asc, lr = ext.quantize_act(x, smooth, pd, gs)
        y = ext.w4a4_gemm(xq, asc, qw, wsc, lr, pu, bias, gs)
torch.cuda.synchronize()
print("done", M, K, N)

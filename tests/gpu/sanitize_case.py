"""Small kernel run for compute-sanitizer (memcheck): awkward M, N, K and rank so every guard is hit."""
import torch

from svdquant_hf.formats.int4 import pack_int4
from svdquant_hf.ops import build

ext = build.load_extension()
assert ext is not None
g = torch.Generator(device="cuda").manual_seed(3)
for dtype, gs, (M, K, N, R) in [
    (torch.bfloat16, 64, (7, 192, 40, 40)),
    (torch.float16, 32, (33, 96, 24, 16)),
    (torch.bfloat16, 128, (130, 256, 136, 0)),
]:
    x = torch.randn(M, K, device="cuda", generator=g).to(dtype)
    smooth = (torch.rand(K, device="cuda", generator=g) + 0.5).to(dtype)
    pd = torch.randn(K, R, device="cuda", generator=g).to(dtype)
    pu = torch.randn(N, R, device="cuda", generator=g).to(dtype)
    qw = pack_int4(torch.randint(-8, 8, (N, K), device="cuda", generator=g, dtype=torch.int8))
    wsc = (torch.rand(K // gs, N, device="cuda", generator=g) * 0.01).to(dtype)
    b = torch.randn(N, device="cuda", generator=g).to(dtype)
    xq, asc, lr = ext.quantize_act(x, smooth, pd, gs)
    y = ext.w4a4_gemm(xq, asc, qw, wsc, lr, pu, b, gs)
torch.cuda.synchronize()
print("sanitize case done", float(y.float().abs().sum()))

"""Overhead of a LoRA folded into the SVDQuant low-rank branch, on the FLUX.1 linear shapes (GPU).

usage: python benchmarks/lora_overhead.py [--lora-rank 32] [--reps 30] [--format int4|int4_2l] [--json OUT.json]

Every 4-bit linear layer of one FLUX.1 transformer forward at 1024x1024 (4096 image + 512 text tokens,
batch 1: 19 double blocks, 38 single blocks) is timed once without LoRA (rank-32 branch) and once as
the real ``SVDQuantLoraLinear`` (PEFT-injected, rank-``r`` LoRA folded in: branch rank 32 + r padded to
16), then weighted by how often it occurs per forward. Timings per layer:
  * graph: device time of CUDA-graph replays (launch cost out, as with torch.compile + CUDA graphs);
  * eager: CUDA-event time of plain Python calls (host dispatch and the wrapper's cache check in);
  * graph_plain: a plain SVDQuantLinear built at the extended rank (the kernels' share of the overhead).
The overhead is given over the linear layers alone and over linears + attention (SDPA at the FLUX.1
shapes), which is the better estimate of a whole denoising step (norms, RoPE, etc. are left out, so
the true whole-model overhead is a little lower still). Goal: < 5 %.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from cuda_timing import time_eager, time_graph

D, MLP, HEADS, HEAD_DIM = 3072, 12288, 24, 128
IMG, TXT = 4096, 512
# (name, N, K, M, occurrences per forward)
FLUX1_LINEARS = [
    ("double.img.qkv (to_q/k/v)", D, D, IMG, 19 * 3),
    ("double.img.to_out", D, D, IMG, 19),
    ("double.img.ff.0", MLP, D, IMG, 19),
    ("double.img.ff.2", D, MLP, IMG, 19),
    ("double.img.norm1.linear", 6 * D, D, 1, 19),
    ("double.txt.qkv (add_q/k/v)", D, D, TXT, 19 * 3),
    ("double.txt.to_add_out", D, D, TXT, 19),
    ("double.txt.ff_context.0", MLP, D, TXT, 19),
    ("double.txt.ff_context.2", D, MLP, TXT, 19),
    ("double.txt.norm1_context.linear", 6 * D, D, 1, 19),
    ("single.qkv (to_q/k/v)", D, D, IMG + TXT, 38 * 3),
    ("single.proj_mlp", MLP, D, IMG + TXT, 38),
    ("single.proj_out", D, D + MLP, IMG + TXT, 38),
    ("single.norm.linear", 3 * D, D, 1, 38),
]
N_ATTN = 19 + 38


def random_layer(n: int, k: int, rank: int = 32, dtype=torch.bfloat16, quant_format: str = "int4"):
    from svdquant_hf import SVDQuantLinear

    dev = "cuda"
    layer = SVDQuantLinear(k, n, bias=True, rank=rank, quant_format=quant_format, dtype=dtype, device=dev)
    layer.qweight = torch.randint(-128, 128, (n, k // 2), dtype=torch.int8, device=dev)
    if quant_format == "int4_2l":
        layer.wscales = torch.randint(1, 17, (k // 64, n), dtype=torch.uint8, device=dev)
        layer.wchannel = torch.rand(n, device=dev) * 1e-4
    else:
        layer.wscales = (torch.rand(k // 64, n, device=dev) * 1e-3).to(dtype)
    layer.smooth_factor = (torch.rand(k, device=dev) + 0.5).to(dtype)
    layer.proj_down = (torch.randn(k, rank, device=dev) / k**0.5).to(dtype)
    layer.proj_up = (torch.randn(n, rank, device=dev) / rank**0.5).to(dtype)
    layer.bias = nn.Parameter(torch.randn(n, device=dev, dtype=dtype), requires_grad=False)
    return layer


def with_lora(layer: nn.Module, lora_rank: int) -> nn.Module:
    """The layer wrapped by PEFT exactly as diffusers' load_lora_weights does it."""
    from peft import LoraConfig, inject_adapter_in_model

    holder = nn.Module()
    holder.layer = layer
    inject_adapter_in_model(LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=["layer"]), holder, "bench")
    wrapped = holder.layer
    with torch.no_grad():
        wrapped.lora_A["bench"].weight.normal_(0, layer.in_features**-0.5)
        wrapped.lora_B["bench"].weight.normal_(0, 0.02)
    return wrapped


def host_overhead_us(wrapped: nn.Module, n: int = 2000) -> float:
    """Python cost of the wrapper's cache check (the part a LoRA adds to each eager call)."""
    wrapped._branch()
    t = time.perf_counter()
    for _ in range(n):
        wrapped._branch()
    return (time.perf_counter() - t) / n * 1e6


def attention_ms(reps: int) -> float:
    q, k, v = (torch.randn(1, HEADS, IMG + TXT, HEAD_DIM, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    return time_graph(lambda x: F.scaled_dot_product_attention(x, k, v), [(q,)], reps)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--format", default="int4", choices=["int4", "int4_2l"], help="the layers' quant_format")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("lora_overhead: needs a CUDA GPU", file=sys.stderr)
        return 2
    import svdquant_hf  # noqa: F401  (installs the LoRA hooks)
    from svdquant_hf.lora import padded_rank
    from svdquant_hf.ops.cuda import kernels_available

    kernels = kernels_available()
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  fused kernels: {kernels}")
    if not kernels:
        print("lora_overhead: the CUDA kernels did not build; timings would be of the reference path", file=sys.stderr)
        return 3
    ext_rank = padded_rank(32 + args.lora_rank)
    rows = []
    tot = {"graph": [0.0, 0.0], "eager": [0.0, 0.0], "graph_plain": [0.0, 0.0]}
    host = []
    hdr = (f"{'layer':34s} {'M':>5s} {'N':>6s} {'K':>6s} {'x':>4s} | graph ms: base  +LoRA   ovh "
           "| eager ms: base  +LoRA   ovh | graph ms, no wrapper")
    print(f"format {args.format}, LoRA rank {args.lora_rank}: branch rank 32 -> {ext_rank}\n{hdr}")
    for name, n, k, m, count in FLUX1_LINEARS:
        torch.manual_seed(0)
        base = random_layer(n, k, quant_format=args.format)
        inputs = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
        with torch.no_grad():
            y_base = base(inputs[0])
            sets = [(x,) for x in inputs]
            tb_g, tb_e = time_graph(base, sets, args.reps), time_eager(base, sets, args.reps)
            wrapped = with_lora(base, args.lora_rank)
            assert wrapped.branch_rank() == ext_rank, wrapped.branch_rank()
            y_lora = wrapped(inputs[0])
            a, b = wrapped.lora_A["bench"].weight.float(), wrapped.lora_B["bench"].weight.float()
            want = y_base.float() + (inputs[0].float() @ a.t()) @ b.t() * wrapped.scaling["bench"]
            err = float((y_lora.float() - want).norm() / want.norm())
            tl_g, tl_e = time_graph(wrapped, sets, args.reps), time_eager(wrapped, sets, args.reps)
            host.append(host_overhead_us(wrapped))
            plain = random_layer(n, k, rank=ext_rank, quant_format=args.format)  # the kernels alone at the extended rank, no wrapper
            tp_g = time_graph(plain, sets, args.reps)
            del plain
        for key, (tb, tl) in {"graph": (tb_g, tl_g), "eager": (tb_e, tl_e), "graph_plain": (tb_g, tp_g)}.items():
            tot[key][0] += count * tb
            tot[key][1] += count * tl
        row = {"layer": name, "M": m, "N": n, "K": k, "count": count, "graph_base_ms": tb_g, "graph_lora_ms": tl_g,
               "eager_base_ms": tb_e, "eager_lora_ms": tl_e, "graph_plain_rank_ms": tp_g, "rel_err_vs_separate": err}
        rows.append(row)
        print(f"{name:34s} {m:5d} {n:6d} {k:6d} {count:4d} | {tb_g:12.4f} {tl_g:6.4f} {100 * (tl_g / tb_g - 1):5.1f}% "
              f"| {tb_e:12.4f} {tl_e:6.4f} {100 * (tl_e / tb_e - 1):5.1f}% | plain rank-{ext_rank} layer {tp_g:.4f} | "
              f"err vs separate LoRA {err:.1e}")
        del base, wrapped, inputs
        torch.cuda.empty_cache()
    attn = attention_ms(args.reps) * N_ATTN
    summary = {}
    for key, (tb, tl) in tot.items():
        summary[key] = {
            "linears_base_ms": tb, "linears_lora_ms": tl, "overhead_linears_pct": 100 * (tl / tb - 1),
            "overhead_with_attention_pct": 100 * ((tl + attn) / (tb + attn) - 1),
        }
        print(f"{key:5s}: linears per forward {tb:8.2f} ms -> {tl:8.2f} ms (+{100 * (tl / tb - 1):.2f} %); "
              f"with attention ({attn:.2f} ms): +{summary[key]['overhead_with_attention_pct']:.2f} %")
    print(f"wrapper cache check: median {statistics.median(host):.1f} us per layer call on the host")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "format": args.format, "lora_rank": args.lora_rank,
                       "branch_rank": ext_rank,
                       "rows": rows, "attention_ms": attn, "summary": summary,
                       "host_check_us": statistics.median(host)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

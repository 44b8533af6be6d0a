"""The per-row int4_2l quantizer alone: one CTA per row vs persistent CTAs with a shared-memory ring, side by side.

usage: python benchmarks/quantize_2l_rows.py [--ks 3072,12288,15360] [--ms 256,1024,4608] [--reps 30]

Rank 0 (no down projection), bfloat16, group 64, us per call under CUDA graphs (the 1 / smooth launch included),
and the bytes the kernel must move (x in, int8 out) per us. Columns: "1row" one CTA per row
(set_quantize_act_2l_persistent(0)), "default" the shipped rule (persistent from K = 8192 on), "persist" persistent
CTAs forced at every K (max_ctas large), with the CTAs launched; "lean" the default rule with the kernel's lean form
(set_quantize_act_2l_lean: the row's 16 scale reciprocals by table, no clamp where it cannot bind; perf-notes v2.24).
"""
from __future__ import annotations

import argparse

import torch

from cuda_timing import time_graph

from svdquant_hf.ops import build


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", default="3072,12288,15360")
    ap.add_argument("--ms", default="256,1024,4608")
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    ext = build.load_extension()
    if ext is None or not hasattr(ext, "set_quantize_act_2l_persistent"):
        print("quantize_2l_rows: needs the CUDA extension with the persistent per-row quantizer")
        return 2
    print(f"{torch.cuda.get_device_name()}: per-row quantize_act_2l (rank 0, bfloat16, group 64), us per call")
    lean_ok = hasattr(ext, "set_quantize_act_2l_lean")
    modes = (("1row", 0, 0, True), ("default", 1, 0, True), ("persist", 1, 1 << 30, True))
    modes += (("plain", 1, 0, False),) if lean_ok else ()  # the form before v2.25's lean default
    print(f"{'K':>6} {'M':>5} | " + " ".join(f"{n:>7}" for n, *_ in modes) + f" {'CTAs':>5} | GB/s: "
          + " / ".join(n for n, *_ in modes))
    for K in [int(k) for k in args.ks.split(",")]:
        smooth = (torch.rand(K, device="cuda") + 0.5).to(torch.bfloat16)
        pd = torch.empty(K, 0, device="cuda", dtype=torch.bfloat16)
        for M in [int(m) for m in args.ms.split(",")]:
            xs = [(torch.randn(M, K, device="cuda", dtype=torch.bfloat16),) for _ in range(2)]
            t, ctas = {}, 0
            for name, on, cap, lean in modes:
                ext.set_quantize_act_2l_persistent(on, cap)
                if lean_ok:
                    ext.set_quantize_act_2l_lean(lean)
                try:
                    t[name] = 1e3 * time_graph(lambda x: ext.quantize_act_2l(x, smooth, pd, 64), xs, args.reps)
                    ctas = ext.quantize_act_2l_last_ctas() if name == "persist" else ctas
                finally:
                    ext.set_quantize_act_2l_persistent(1, 0)
                    if lean_ok:
                        ext.set_quantize_act_2l_lean(True)
            moved = M * K * 3 + M * 4
            print(f"{K:>6} {M:>5} | " + " ".join(f"{t[n]:7.1f}" for n, *_ in modes) + f" {ctas:>5} | "
                  + " / ".join(f"{moved / t[n] / 1e3:5.0f}" for n, *_ in modes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

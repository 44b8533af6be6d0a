"""Peak host memory of quantize_weight for one FLUX.1-size layer (the scratch of quantize-on-load).

  python benchmarks/quantize_peak_memory.py [--out 18432 --in 3072] [--format int4|int4_2l|nvfp4]

Prints the growth of the process's peak RSS while one bf16 weight is quantized, as a multiple of the
layer's bf16 size (on the GPU the same tensors are allocated on the device).
"""
from __future__ import annotations

import argparse
import resource

import torch

from svdquant_hf.algorithm.svdquant import quantize_weight
from svdquant_hf.config import SVDQuantOptions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=int, default=18432)
    ap.add_argument("--in", dest="inp", type=int, default=3072)
    ap.add_argument("--format", default="int4", help="quant_format (default int4)")
    args = ap.parse_args()
    w = torch.randn(args.out, args.inp, dtype=torch.bfloat16)
    layer_mib = w.numel() * 2 / 2**20
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    quantize_weight(w, SVDQuantOptions(quant_format=args.format), torch.bfloat16)
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    print(f"{args.format} {args.out}x{args.inp}: bf16 layer {layer_mib:.0f} MiB, peak RSS growth {grew:.0f} MiB = {grew / layer_mib:.1f}x")


if __name__ == "__main__":
    main()

"""Host cost of the LoRA wrapper's per-call branch check (pure Python; runs on CPU).

usage: python benchmarks/lora_host_check.py [--calls 20000]

Every forward of an SVDQuantLoraLinear first checks whether its cached extended branch still matches
the active adapters, their strengths and weights. This times that check alone, on a small layer with
one rank-32 adapter, and prints microseconds per call.
"""
from __future__ import annotations

import argparse
import time

from torch import nn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20000)
    args = ap.parse_args()
    from peft import LoraConfig, inject_adapter_in_model

    import svdquant_hf  # noqa: F401  (installs the LoRA hooks)
    from svdquant_hf import SVDQuantLinear

    holder = nn.Module()
    holder.layer = SVDQuantLinear(256, 256, rank=32, quant_format="int4_2l")
    inject_adapter_in_model(LoraConfig(r=32, lora_alpha=32, target_modules=["layer"]), holder, "a")
    wrapped = holder.layer
    wrapped._branch()
    t = time.perf_counter()
    for _ in range(args.calls):
        wrapped._branch()
    print(f"branch check: {(time.perf_counter() - t) / args.calls * 1e6:.1f} us per call")


if __name__ == "__main__":
    main()

"""The Hopper default chain (quantize_act_2l, then w4a4_gemm_2l_fo) at one shape, a few calls: a target for ncu.

usage: ncu --kernel-name regex:"lowrank_down|quantize_act_2l|w4a4_gemm_2l" --launch-skip 6 --launch-count 3 \
           python benchmarks/chain_ncu.py M K N [--calls 4] [--plan NAME]

--plan: the GEMM on one of gemm_2l_fo_plans.py's candidates (with its splits), e.g. rs256x4, instead of its own choice.
"""
from __future__ import annotations

import argparse

import torch

from gemm_2l_fo_plans import candidates, plan_forced
from problems_2l import hopper_extension, random_2l
from svdquant_hf.ops.layout_2l import fragment_order


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shape", type=int, nargs=3, metavar=("M", "K", "N"))
    ap.add_argument("--calls", type=int, default=4)
    ap.add_argument("--plan", default="auto", help="a gemm_2l_fo_plans.py candidate (with --splits)")
    args = ap.parse_args()
    ext = hopper_extension("chain_ncu")
    if ext is None:
        return 2
    M, K, N = args.shape
    p = random_2l(M, K, N, sets=1)
    qf = fragment_order(p.qweight)
    plans = {c[0]: c for c in candidates(N, splits=True)}
    if args.plan not in plans:
        ap.error(f"--plan {args.plan}: not one of {sorted(plans)}")
    _, switches, bt = plans[args.plan]
    with plan_forced(ext, switches, bt):
        for _ in range(args.calls):
            xq, xsc, lr = ext.quantize_act_2l(p.xs[0], p.smooth, p.proj_down, p.group_size)
            y = ext.w4a4_gemm_2l_fo(xq, xsc, qf, p.wscales, p.wchannel, lr, p.proj_up, p.bias, p.group_size)
            assert y is not None, ext.last_error()
        torch.cuda.synchronize()
    print("done", M, K, N)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where a block's time goes in the fixed-column fused quantizer (set_quantize_act_2l_fused(2)), by clock stamps.

usage: python benchmarks/quantize_cols_stamps.py [--ms 4608] [--ks 3072,12288] [--calls 3] [--clusters 0,16]

With set_quantize_act_2l_cols_stamps, two threads of every CTA write clock64 at the steps of each of its first blocks
(quantize_act_2l_cols_sm90.cu): thread 0 for the unit warps (stamps 0-6: before the stage wait, after it, after the
units' pass, after their barrier, after the row maxima's sends, after their wait, after the quantization), the first
mma thread for the mma warps (7-13: before the stage wait, after it, after the mma, after the mma warps' barrier, after
the partials' sends, after their wait, after the owners' sums) and the producer warp's lane 0 (14-16, at block j the
loads of block j + 2: before the stage's release, after it, after the loads' issue). Per
shape it prints each step's cycles (the difference of its two stamps, median over CTAs and blocks, the first block left
out) and each group's period (its first stamp to the next block's), for each cluster size of --clusters (0: the
rule's; a forced size without a shape or not schedulable is left out). Cycles are SM clocks; a thread sees its own
waits only.
"""
from __future__ import annotations

import argparse

import torch

# (name, from stamp, to stamp) of each group's steps, and its period's column (its first stamp to the next block's)
UNIT_STEPS = [("stage wait", 0, 1), ("units' pass", 1, 2), ("barrier", 2, 3), ("maxima sends", 3, 4),
              ("maxima wait", 4, 5), ("quantization", 5, 6)]
MMA_STEPS = [("mma: stage wait", 7, 8), ("mma", 8, 9), ("mma barrier", 9, 10), ("partials' sends", 10, 11),
             ("partials wait", 11, 12), ("owners' sums", 12, 13)]
PRODUCER_STEPS = [("release wait", 14, 15), ("loads' issue", 15, 16)]
GROUPS = [("units", UNIT_STEPS, "period (units)"), ("mma", MMA_STEPS, "period (mma)"),
          ("producer", PRODUCER_STEPS, "period (producer)")]
STAMPS = 17
COLUMNS = [c for _, steps, period in GROUPS for c in [*(n for n, _, _ in steps), period]]


def step_table(stamps: torch.Tensor, nblk: torch.Tensor, groups=None) -> dict[str, float]:
    """Median cycles of each step and of each group's period. stamps: [ctas, blocks, steps] clock64 values; nblk:
    [ctas] blocks each CTA ran (stamps past them, or past the buffer's blocks, are ignored); groups: (name, steps,
    period column) as GROUPS (this kernel's, the default). Blocks 1 .. n - 2 are used (the first fills the pipeline;
    the last has no next block for its period); the producer's 1 .. n - 4 (its block j loads block j + 2, so it stamps
    blocks 0 .. n - 3)."""
    groups = GROUPS if groups is None else groups
    columns = [c for _, steps, period in groups for c in [*(n for n, _, _ in steps), period]]
    ctas, blocks, _ = stamps.shape
    out: dict[str, list[float]] = {k: [] for k in columns}
    for c in range(ctas):
        n = min(int(nblk[c]), blocks)
        for group, group_steps, period in groups:
            last = min(n - 2, int(nblk[c]) - 4) if group == "producer" else n - 2
            first = group_steps[0][1]
            for j in range(1, last + 1):
                s = stamps[c, j].tolist()
                for name, a, b in group_steps:
                    out[name].append(s[b] - s[a])
                out[period].append(stamps[c, j + 1, first].item() - s[first])
    return {k: float(torch.tensor(v, dtype=torch.float64).median()) if v else float("nan") for k, v in out.items()}


def stamped_calls(set_stamps, ctas: int, blocks: int, steps: int, call, calls: int) -> torch.Tensor:
    """[ctas, blocks, steps] stamps of the last of `calls` calls of `call` with set_stamps(buffer) on (off after)."""
    buf = torch.zeros(ctas * blocks * steps, device="cuda", dtype=torch.int64)
    set_stamps(buf.data_ptr())
    try:
        for _ in range(calls):  # the last call's stamps stay
            call()
        torch.cuda.synchronize()
    finally:
        set_stamps(0)
    return buf.view(ctas, blocks, steps).cpu()


HEADER = f"{'M':>5} {'K':>6} {'C':>3} {'CTAs':>5} | " + " ".join(f"{c[:14]:>14}" for c in COLUMNS)


def table_row(M: int, K: int, C: int, ctas: int, t: dict[str, float]) -> str:
    """One shape's line of the printed table (step_table's values in COLUMNS order)."""
    return f"{M:>5} {K:>6} {C:>3} {ctas:>5} | " + " ".join(f"{t[c]:14.0f}" for c in COLUMNS)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ms", default="4608")
    ap.add_argument("--ks", default="3072,12288")
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--clusters", default="0")
    ap.add_argument("--tuning", default="0,1,0,0",
                    help="stagger_cycles,stagger_phases,probe,mma_sets (set_quantize_act_2l_cols_tuning)")
    args = ap.parse_args()
    tuning = tuple(int(v) for v in args.tuning.split(","))
    from problems_2l import hopper_extension

    if (ext := hopper_extension("quantize_cols_stamps")) is None:
        return 2
    layout = ext.quantize_act_2l_cols_stamp_layout()
    blocks, steps = layout // 100, layout % 100
    R, G = 32, 64
    print(f"{torch.cuda.get_device_name()}: fixed-column fused quantizer, cycles per step (median), rank {R}, group {G}, "
          f"tuning {tuning}")
    before = ext.quantize_act_2l_cols_tuning()
    ext.set_quantize_act_2l_cols_tuning(*tuning)
    try:
        return _tables(ext, args, blocks, steps, R, G)
    finally:
        ext.set_quantize_act_2l_cols_tuning(*before)


def _tables(ext, args, blocks: int, steps: int, R: int, G: int) -> int:
    from problems_2l import gemm_switches

    assert steps == STAMPS, f"the extension stamps {steps} steps, this script reads {STAMPS}"
    print(HEADER)
    for M in [int(m) for m in args.ms.split(",")]:
        for K in [int(k) for k in args.ks.split(",")]:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            smooth = (torch.rand(K, device="cuda") + 0.5).to(torch.bfloat16)
            pd = (torch.randn(K, R, device="cuda") / K**0.5).to(torch.bfloat16)
            for cluster in [int(c) for c in args.clusters.split(",")]:
                C = ext.quantize_act_2l_cols_shape(M, K, R, G, cluster)[0]
                with gemm_switches(ext, fused_quant=2, quant_cluster=cluster):
                    if C == 0 or not ext.quantize_act_2l_fused_applies(M, K, R, G):
                        continue
                    ext.quantize_act_2l(x, smooth, pd, G)  # the grid
                    ctas = ext.quantize_act_2l_fused_last_grid()
                    st = stamped_calls(ext.set_quantize_act_2l_cols_stamps, ctas, blocks, steps,
                                       lambda: ext.quantize_act_2l(x, smooth, pd, G), args.calls)
                clusters, nrb = ctas // C, (M + 15) // 16
                nblk = torch.tensor([(nrb - c // C + clusters - 1) // clusters for c in range(ctas)])
                t = step_table(st, nblk)
                print(table_row(M, K, C, ctas, t))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

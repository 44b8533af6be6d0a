"""Where a block's time goes in the CTA-pair fused quantizer (set_quantize_act_2l_fused(3), q.9), by clock stamps.

usage: python benchmarks/quantize_pairs_stamps.py [--ms 4608] [--ks 1024,3072] [--calls 3] [--mma-warps 0,4]
       [--forms v2,v3,t,v3t]

With set_quantize_act_2l_pairs_stamps, three threads of every CTA write clock64 at the steps of each of its first
blocks (quantize_act_2l_pairs_sm90.cu): thread 0 for the unit warps (stamps 0-6: before the stage wait, after it, after
the units' pass, after their barrier, after the quantization, after the staging's barrier, after the bulk stores'
issue), the first mma thread for the mma warps (7-12: before the stage wait, after it, after the k-steps, after the
partials' barrier, after the sums, after the second barrier) and the producer's lane 0 (13-15, at block j the loads of
block j + 2: before the stage's release, after it, after the loads' issue); thread 0 also stamps the kernel's start
(16) and the prologue's end (17) at block 0, and the global timer at its start and end (18-19). Per shape it prints
each step's cycles (median over CTAs and blocks, the first block left out), each group's period, the prologue and the
first block's wait, the kernel's time (CUDA events, median of --calls, L2 flushed before each) and, in us from the
global timer, the CTAs' start skew, a CTA's time (median, max) and the span from the first start to the last end; for
each of --mma-warps (set_quantize_act_2l_pairs_mma_warps; 0: the rule's) and each of --forms (FORMS; v2: proj_down
loaded and transposed by every thread; v3: by TMA, set_quantize_act_2l_pairs_pd_tma; t: the down projection
transposed, set_quantize_act_2l_pairs_lr_t; b: x's block as one 3-D TMA box, p2 / p4: blocks prefetched into L2 two /
four ahead of their loads, set_quantize_act_2l_pairs_loads, perf-notes v2.52; d: the unit threads store their own xq
bytes, c: the staged rows copied out by all unit threads, w: a row's maximum by shuffles,
set_quantize_act_2l_pairs_units, v2.53; combined as in bdw). Cycles are SM clocks; a thread sees its own waits only.
"""
from __future__ import annotations

import argparse

import torch

from quantize_cols_stamps import stamped_calls, step_table

UNIT_STEPS = [("stage wait", 0, 1), ("units' pass", 1, 2), ("barrier", 2, 3), ("quantization", 3, 4),
              ("staging barrier", 4, 5), ("stores' issue", 5, 6)]
MMA_STEPS = [("mma: stage wait", 7, 8), ("k-steps", 8, 9), ("partials barrier", 9, 10), ("sums", 10, 11),
             ("sums barrier", 11, 12)]
PRODUCER_STEPS = [("release wait", 13, 14), ("loads' issue", 14, 15)]
GROUPS = [("units", UNIT_STEPS, "period (units)"), ("mma", MMA_STEPS, "period (mma)"),
          ("producer", PRODUCER_STEPS, "period (producer)")]
STAMPS = 20
SPAN = ["start skew", "CTA median", "CTA max", "span"]  # us, from the global timer (stamps 18-19)
COLUMNS = ["us", "prologue", "first wait"] + [c for _, s, p in GROUPS for c in [*(n for n, _, _ in s), p]] + SPAN
# q.9's forms: (pd_tma, lr_t, box3d, ahead, stores, warp_max) (set_quantize_act_2l_pairs_pd_tma / _lr_t / _loads /
# _units); d: the unit threads store their own xq bytes (stores 1), c: the staged rows copied out by all unit threads
# (stores 2), w: a row's maximum by shuffles (perf-notes v2.53)
F, T = False, True
FORMS = {"v2": (F, F, F, 0, 0, F), "v3": (T, F, F, 0, 0, F), "t": (F, T, F, 0, 0, F), "v3t": (T, T, F, 0, 0, F),
         "b": (F, F, T, 0, 0, F), "p2": (F, F, F, 2, 0, F), "bp2": (F, F, T, 2, 0, F), "bp4": (F, F, T, 4, 0, F),
         "v3b": (T, F, T, 0, 0, F), "v3bp2": (T, F, T, 2, 0, F), "bd": (F, F, T, 0, 1, F), "bw": (F, F, T, 0, 0, T),
         "bdw": (F, F, T, 0, 1, T), "v3bdw": (T, F, T, 0, 1, T), "v3tbdw": (T, T, T, 0, 1, T),
         "bc": (F, F, T, 0, 2, F), "bcw": (F, F, T, 0, 2, T), "v3bcw": (T, F, T, 0, 2, T), "v3tbcw": (T, T, T, 0, 2, T)}


def pair_form(ext) -> tuple[bool, bool, bool, int, int, bool]:
    """The CTA-pair quantizer's form now, as FORMS' tuples."""
    return (ext.quantize_act_2l_pairs_pd_tma(), ext.quantize_act_2l_pairs_lr_t(), *ext.quantize_act_2l_pairs_loads(),
            *ext.quantize_act_2l_pairs_units())


def set_pair_form(ext, form: tuple[bool, bool, bool, int, int, bool]) -> None:
    ext.set_quantize_act_2l_pairs_pd_tma(form[0])
    ext.set_quantize_act_2l_pairs_lr_t(form[1])
    ext.set_quantize_act_2l_pairs_loads(form[2], form[3])
    ext.set_quantize_act_2l_pairs_units(form[4], form[5])


def span_columns(st: torch.Tensor) -> dict[str, float]:
    """SPAN from each CTA's global-timer stamps at its start and end (stamps 18 / 19 of its first block, ns), in us."""
    t0, t1 = st[:, 0, 18].double(), st[:, 0, 19].double()
    return {"start skew": float(t0.max() - t0.min()) / 1e3, "CTA median": float((t1 - t0).median()) / 1e3,
            "CTA max": float((t1 - t0).max()) / 1e3, "span": float(t1.max() - t0.min()) / 1e3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ms", default="4608")
    ap.add_argument("--ks", default="1024,3072")
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--mma-warps", default="0")
    ap.add_argument("--forms", default="v2,v3,t,v3t")
    args = ap.parse_args()
    from problems_2l import hopper_extension

    if (ext := hopper_extension("quantize_pairs_stamps")) is None:
        return 2
    layout = ext.quantize_act_2l_pairs_stamp_layout()
    blocks, steps = layout // 100, layout % 100
    assert steps == STAMPS, f"the extension stamps {steps} steps, this script reads {STAMPS}"
    R, G = 32, 64
    print(f"{torch.cuda.get_device_name()}: CTA-pair fused quantizer (q.9), cycles per step (median), rank {R}, "
          f"group {G}")
    print(f"{'form':>4} {'M':>5} {'K':>5} {'MW':>3} {'CTAs':>5} | " + " ".join(f"{c[:12]:>12}" for c in COLUMNS))
    try:
        for form in args.forms.split(","):
            if form not in FORMS:
                raise SystemExit(f"--forms: unknown {form!r}; choose from {sorted(FORMS)}")
            set_pair_form(ext, FORMS[form])
            for mw in [int(v) for v in args.mma_warps.split(",")]:
                ext.set_quantize_act_2l_pairs_mma_warps(mw)
                _shapes(ext, args, blocks, steps, R, G, form)
    finally:
        ext.set_quantize_act_2l_pairs_mma_warps(0)
        set_pair_form(ext, FORMS["v2"])
    return 0


def _shapes(ext, args, blocks: int, steps: int, R: int, G: int, form: str) -> None:
    from problems_2l import gemm_switches

    for M in [int(m) for m in args.ms.split(",")]:
        for K in [int(k) for k in args.ks.split(",")]:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            smooth = (torch.rand(K, device="cuda") + 0.5).to(torch.bfloat16)
            pd = (torch.randn(K, R, device="cuda") / K**0.5).to(torch.bfloat16)
            with gemm_switches(ext, fused_quant=3):
                if not ext.quantize_act_2l_fused_applies(M, K, R, G):
                    print(f"{M:>5} {K:>5}: q.9 does not apply")
                    continue
                ext.quantize_act_2l(x, smooth, pd, G)
                ctas = ext.quantize_act_2l_fused_last_grid()
                times, flush = [], torch.empty(128 << 20, device="cuda", dtype=torch.uint8)
                for _ in range(args.calls):  # unstamped, timed, x out of L2 (128 MB written first)
                    flush.zero_()
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    ext.quantize_act_2l(x, smooth, pd, G)
                    b.record()
                    torch.cuda.synchronize()
                    times.append(a.elapsed_time(b) * 1e3)
                st = stamped_calls(ext.set_quantize_act_2l_pairs_stamps, ctas, blocks, steps,
                                   lambda: ext.quantize_act_2l(x, smooth, pd, G), args.calls)
            pairs, nb = ctas // 2, (M + 7) // 8
            nblk = torch.tensor([(nb - c // 2 + pairs - 1) // pairs for c in range(ctas)])
            t = step_table(st, nblk, GROUPS)
            t["us"] = sorted(times)[len(times) // 2]
            t["prologue"] = float((st[:, 0, 17] - st[:, 0, 16]).double().median())
            t["first wait"] = float((st[:, 0, 1] - st[:, 0, 0]).double().median())
            t.update(span_columns(st))
            mw = ext.quantize_act_2l_pairs_shape(M, K, R, G)[1]
            cells = " ".join(f"{t[c]:12.1f}" if c == "us" or c in SPAN else f"{t[c]:12.0f}" for c in COLUMNS)
            print(f"{form:>4} {M:>5} {K:>5} {mw:>3} {ctas:>5} | {cells}")


if __name__ == "__main__":
    raise SystemExit(main())

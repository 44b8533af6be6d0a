"""What a K stage and what a tile's fixed part cost: the int4_2l GEMMs alone at M = 4608, N = 3072 over K.

usage: python benchmarks/gemm_2l_ksweep.py [--ks 768,1536,3072,6144,12288] [--reps 20] [--tile 64|128|224|256]
                                          [--rank 32] [--probes | --widen | --pipelined]
       python benchmarks/gemm_2l_ksweep.py --plot LOG [--out PNG]   (a stored run's chart; no GPU)

The activations are quantized once outside the timing; each GEMM and torch._scaled_mm fp8 rowwise is timed
under a CUDA graph: "packed" (w4a4_gemm_2l, not persistent: set_gemm_2l_persistent(0)), "packed_ps" (packed,
persistent: 1), "w8" (int8 weights, the shared loop, not persistent), "w8p" (the producer loop, not persistent),
"w8ps" (int8 weights, persistent), "packed_rf" (w4a4_gemm_2l_fo: weights in fragment order, the persistent
kernel's register-fragment loop, two consumer warpgroups), "packed_rf3" (the same with three: 192-row tiles of
--tile tokens if 128 or 192, else 192), "fp8". The persistent kernels pick their own plan (no 256-token tile). A
least-squares line through time(K) gives, per 128-deep K stage and per tile, slope / waves and intercept /
waves, where waves = ceil(tiles / SMs) for the plan's token tile: a kernel paced by its stages has a small
intercept, one paced by per-tile work (prologue, epilogue) a large one. --tile forces every kernel's token tile:
a register-fragment stage minus its warpgroup's own wgmma time (BT / 2 cycles at 4096 int8 MACs per clock) is the
fixed part of a warpgroup's turn (perf-notes v2.14). --probes: the register-fragment kernel against its epilogue
probes (without the low-rank mma / the output's TMA store / the whole epilogue; timing only) and the low-rank branch
by mma.sync (rf_mma) or with the consumer warpgroups meeting at CTA barriers around the epilogue (rf_coupled), the
epilogue before v2.18 in two parts (exact): what the fixed part per tile is made of. --widen (with --tile 224): the
register-fragment kernel against the same kernel with the widening before v2.22 (rf_widen1) and with none
(rf_nowiden: the loaded words used as fragments), both timing only, and int8 weights (w8ps): what a stage's
widening costs. --pipelined: the register-fragment kernel with turns against the same loop pipelined within each
warpgroup (rf_pipe, set_gemm_2l_rf_pipelined; the same bits): whether the turns or something else set a stage's pace;
and rf_pipe_wg0, the pipelined loop with warpgroup 1 idle in it (probe 8, timing only): whether one warpgroup alone keeps
the tensor cores busy (then its stage is half of rf_pipe's), which a ping-pong of warpgroups over tiles needs; and
rf_pp, that ping-pong (set_gemm_2l_rf_pingpong: 128 x 128 tiles, each warpgroup's epilogue under the other's loop; its
"fixed per tile" is per warpgroup tile, near zero if the epilogues hide).
"""
from __future__ import annotations

import argparse
import sys

import torch

from cuda_timing import time_graph
from problems_2l import gemm_switches, hopper_extension, random_2l

from svdquant_hf.ops.layout_2l import fragment_order
from svdquant_hf.ops.reference import weight_operand_2l


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def parse(text: str) -> tuple[str, dict[str, list[tuple[int, float]]]]:
    """A printed run -> (title line, {kernel: [(K, us), ...]})."""
    lines = text.splitlines()
    head = next((i for i, ln in enumerate(lines) if ln.split("|")[0].strip() == "K"), None)
    if head is None:
        raise ValueError("no gemm_2l_ksweep.py table in the text")
    cols = lines[head].split("|")[1].split()
    series: dict[str, list[tuple[int, float]]] = {c: [] for c in cols}
    for ln in lines[head + 1:]:
        if "|" not in ln:
            break
        k, vals = ln.split("|")
        for c, v in zip(cols, vals.split()):
            series[c].append((int(k), float(v)))
    return lines[head - 1], series


def plot(log: str, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    title, series = parse(open(log).read())
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, pts in series.items():
        ks, us = [k for k, _ in pts], [u for _, u in pts]
        a, b = fit([k / 128 for k in ks], us)
        line = ax.plot(ks, us, "o", label=f"{name}: {a:.0f} us + {b:.2f} us per 128 of K")[0]
        ax.plot([0, max(ks)], [a, a + b * max(ks) / 128], "-", color=line.get_color(), lw=1)
    ax.set_xlabel("K")
    ax.set_ylabel("us per GEMM (CUDA graph)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_title(title.split(",")[0] + ": M = 4608, N = 3072; the intercept is the per-tile part", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plot", default=None, help="chart a stored run's log instead of measuring")
    ap.add_argument("--out", default=None, help="PNG path for --plot (default: beside the log)")
    ap.add_argument("--ks", default="768,1536,3072,6144,12288")
    ap.add_argument("--m", type=int, default=4608)
    ap.add_argument("--n", type=int, default=3072)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--tile", type=int, default=0, help="force this token tile in every kernel (0: their plans)")
    ap.add_argument("--rank", type=int, default=32, help="the low-rank branch's rank (0: none)")
    ap.add_argument("--probes", action="store_true",
                    help="only the register-fragment kernel and its epilogue probes (set_gemm_2l_probe: without the "
                         "low-rank mma, without the output's TMA store, without the epilogue; timing only)")
    ap.add_argument("--pipelined", action="store_true",
                    help="only the register-fragment kernel with turns against it pipelined within each warpgroup "
                         "(set_gemm_2l_rf_pipelined), and fp8")
    ap.add_argument("--widen", action="store_true",
                    help="only the register-fragment kernel against its widening probes (6: the widening before "
                         "v2.22, 7: none; timing only) and int8 weights; use with --tile 224")
    args = ap.parse_args(argv)
    if args.plot:
        plot(args.plot, args.out or args.plot.rsplit(".", 1)[0] + ".png")
        return 0
    ext = hopper_extension("gemm_2l_ksweep")
    if ext is None:
        return 2
    M, N, gs = args.m, args.n, 64
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    ext.set_gemm_2l_tile_tokens(args.tile)
    try:
        return sweep(ext, args, M, N, gs, sms)
    finally:
        ext.set_gemm_2l_tile_tokens(0)


def sweep(ext, args, M: int, N: int, gs: int, sms: int) -> int:
    bt, splits = ext.gemm_2l_plan(M, N, 3072, sms)
    waves = -(-((N // 128) * -(-M // bt) * splits) // sms)  # the plan at K = 3072 (small M: it may differ by K)
    ks = [int(k) for k in args.ks.split(",")]
    cols = (["packed_rf", "rf_mma", "rf_coupled", "rf_nolr", "rf_nostore", "rf_noepi", "fp8"] if args.probes
            else ["packed_rf", "rf_widen1", "rf_nowiden", "w8ps", "fp8"] if args.widen
            else ["packed_rf", "rf_pipe", "rf_pipe_wg0", "rf_pp", "fp8"] if args.pipelined
            else ["packed", "packed_ps", "packed_rf", "packed_rf3", "w8", "w8p", "w8ps", "fp8"])
    probe = {"rf_nolr": 1, "rf_nostore": 2, "rf_noepi": 3, "rf_mma": 4, "rf_coupled": 5, "rf_widen1": 6,
             "rf_nowiden": 7, "rf_pipe_wg0": 8}
    rows: dict[str, list[float]] = {c: [] for c in cols}
    print(f"{torch.cuda.get_device_name()}: GEMM alone, us (CUDA graph), M={M} N={N} rank {args.rank}, plan tile {bt} "
          f"split {splits}, {waves} waves of {sms} SMs")
    print(f"{'K':>6} | " + " ".join(f"{c:>9}" for c in cols))
    for K in ks:
        p = random_2l(M, K, N, args.rank, gs)
        q = [ext.quantize_act_2l(x, p.smooth, p.proj_down, gs) for x in p.xs]
        w8 = weight_operand_2l(p.qweight, p.wscales, gs)
        packed = lambda xq, xs, lr: ext.w4a4_gemm_2l(xq, xs, p.qweight, p.wscales, p.wchannel, lr, p.proj_up,  # noqa: E731
                                                     p.bias, gs)
        wide = lambda xq, xs, lr: ext.w8a4_gemm_2l(xq, xs, w8, p.wchannel, lr, p.proj_up, p.bias)  # noqa: E731
        qf = fragment_order(p.qweight)
        frag = lambda xq, xs, lr: ext.w4a4_gemm_2l_fo(xq, xs, qf, p.wscales, p.wchannel, lr, p.proj_up,  # noqa: E731
                                                      p.bias, gs)
        t = {}
        rf3_tile = args.tile if args.tile in (128, 192) else 192
        for name, fn, prod, pers, cw in (("packed", packed, False, 0, 0), ("packed_ps", packed, False, 1, 0),
                                         ("packed_rf", frag, False, 1, 2), ("packed_rf3", frag, False, 1, 3),
                                         ("w8", wide, False, 0, 0), ("w8p", wide, True, 0, 0),
                                         ("w8ps", wide, False, 1, 0), ("rf_nolr", frag, False, 1, 2),
                                         ("rf_nostore", frag, False, 1, 2), ("rf_noepi", frag, False, 1, 2),
                                         ("rf_mma", frag, False, 1, 2), ("rf_coupled", frag, False, 1, 2),
                                         ("rf_widen1", frag, False, 1, 2), ("rf_nowiden", frag, False, 1, 2),
                                         ("rf_pipe", frag, False, 1, 2), ("rf_pipe_wg0", frag, False, 1, 2),
                                         ("rf_pp", frag, False, 1, 2)):
            if name not in cols:
                continue
            with gemm_switches(ext, producer=prod, persistent=pers, rf_warpgroups=cw, rf3_tile=rf3_tile,
                               rf_pipelined=name == "rf_pipe", rf_pingpong=name == "rf_pp"):  # (rf_pipe_wg0: probe 8)
                ext.set_gemm_2l_probe(probe.get(name, 0))
                try:
                    t[name] = time_graph(fn, q, args.reps)
                finally:
                    ext.set_gemm_2l_probe(0)
        w = torch.randn(N, K, device="cuda").to(torch.float8_e4m3fn)
        x8 = [(xq.to(torch.float8_e4m3fn),) for xq, _, _ in q]
        one_a, one_b = torch.ones(M, 1, device="cuda"), torch.ones(1, N, device="cuda")
        t["fp8"] = time_graph(lambda a: torch._scaled_mm(a, w.t(), scale_a=one_a, scale_b=one_b,
                                                         out_dtype=torch.bfloat16, use_fast_accum=True), x8, args.reps)
        if args.probes:  # the low-rank branch by wgmma (default) against mma.sync (probe 4): the same numbers?
            xq, xs, lr = q[0]
            with gemm_switches(ext, persistent=1, rf_warpgroups=2):  # the loop that has the probes
                y = frag(xq, xs, lr)
                ext.set_gemm_2l_probe(4)
                try:
                    y4 = frag(xq, xs, lr)
                finally:
                    ext.set_gemm_2l_probe(0)
            diff = (y.float() - y4.float()).abs()
            print(f"  K={K}: wgmma vs mma.sync low-rank epilogue: {(y != y4).sum().item()} of {y.numel()} outputs "
                  f"differ, max |diff| {diff.max().item():.3g} (|y| max {y.float().abs().max().item():.3g})")
        for c in cols:
            rows[c].append(1e3 * t[c])
        print(f"{K:>6} | " + " ".join(f"{1e3 * t[c]:>9.1f}" for c in cols))
        del p, q, w8, w, x8, qf
        torch.cuda.empty_cache()
    print(f"\nline through time(K): per 128-deep stage and per tile (ours: / {waves} waves; fp8 per its whole K)")
    rf3_tile = args.tile if args.tile in (128, 192) else 192
    waves3 = -(-((N // 192) * -(-M // rf3_tile)) // sms)  # tiles per CTA of the three-warpgroup loop
    for c in cols:
        a, b = fit([k / 128 for k in ks], rows[c])
        per = {"fp8": 1, "packed_rf3": waves3}.get(c, waves)
        if c == "rf_pp":  # its own 128 x 128 tiles, two per CTA at a time: tiles / (2 SMs) per warpgroup
            per = -(-((N // 128) * -(-M // 128)) // (2 * sms))
        elif c in probe or c == "rf_pipe" or ((args.probes or args.widen or args.pipelined) and c == "packed_rf"):
            per = -(-((N // 128) * -(-M // (args.tile or 224))) // sms)  # the persistent plan's tiles (224 at 4608)
        print(f"{c:>9}: {b / per:7.3f} us per stage, {a / per:7.2f} us fixed per tile"
              + ("" if c != "fp8" else " (whole GEMM)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

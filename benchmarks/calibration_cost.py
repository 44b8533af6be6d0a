"""Cost of one alpha-grid point of the calibrated SVDQuant search on full-size FLUX.1 linears.

One grid point = quantize_weight (smoothing, rank-32 randomized SVD, INT4 residual) + the output
error on the cached calibration rows. Random weights with a few outlier input channels.

    python benchmarks/calibration_cost.py --threads 2 --rows 1024 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from svdquant_hf.algorithm.svdquant import quantize_weight, relative_output_error
from svdquant_hf.config import SVDQuantOptions

SHAPES = {
    "attn 3072x3072": (3072, 3072),
    "mlp up 12288x3072": (12288, 3072),
    "mlp down 3072x12288": (3072, 12288),
    "single proj_out 3072x15360": (3072, 15360),
}
# FLUX.1 (12B): 19 double blocks (8 attention projections, 2 MLP up, 2 MLP down each) and 38 single
# blocks (q/k/v, proj_mlp, proj_out each); AdaLN modulation linears and embedders are left out.
FLUX1_LAYER_COUNTS = {
    "attn 3072x3072": 19 * 8 + 38 * 3,
    "mlp up 12288x3072": 19 * 2 + 38,
    "mlp down 3072x12288": 19 * 2,
    "single proj_out 3072x15360": 38,
}


def time_point(n: int, k: int, rows: int, repeats: int, device: str) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    w = (torch.randn(n, k, generator=gen) * 0.02).to(torch.bfloat16).to(device)
    x = torch.randn(rows, k, generator=gen)
    x[:, torch.randperm(k, generator=gen)[:16]] *= 30.0  # activation outlier channels
    x = x.to(torch.bfloat16).to(device)
    absmax = x.float().abs().amax(0)
    opts = SVDQuantOptions()
    t_q, t_e = [], []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        qw = quantize_weight(w, opts, torch.bfloat16, absmax, 0.5, None, "bench")
        if device == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        relative_output_error(qw, w, None, x, opts)
        if device == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if i:  # first round is warm-up
            t_q.append(t1 - t0)
            t_e.append(t2 - t1)
    return {"quantize_s": min(t_q), "error_eval_s": min(t_e), "grid_point_s": min(a + b for a, b in zip(t_q, t_e))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--rows", type=int, default=1024, help="cached calibration rows (calib_tokens)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"device": args.device, "threads": torch.get_num_threads(), "rows": args.rows,
           "cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "shapes": {}}
    for label, (n, k) in SHAPES.items():
        out["shapes"][label] = time_point(n, k, args.rows, args.repeats, args.device)
        print(label, json.dumps(out["shapes"][label]), flush=True)
    per_point = sum(FLUX1_LAYER_COUNTS[k] * v["grid_point_s"] for k, v in out["shapes"].items())
    out["flux1_layers"] = sum(FLUX1_LAYER_COUNTS.values())
    out["flux1_s_per_grid_point_all_layers"] = per_point
    out["flux1_search_s_alpha_grid_20"] = per_point * 20
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

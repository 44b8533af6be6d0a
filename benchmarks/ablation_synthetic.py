"""Quality ablation of SVDQuant on synthetic layers with injected outliers.

Each layer has a weight with a few outlier input columns and output rows and activations with a
few outlier channels (tens of times larger than the rest, as in real transformers), mixed by a
random correlation. Calibration rows (2048, 4x K: GPTQ overfits a Hessian of fewer rows) and evaluation rows
(512) are disjoint draws.
The metric is the relative squared output error ||Y_q - Y||^2 / ||Y||^2 on the evaluation rows.
Rows without a format name use INT4 with group 64 ("int4"); "int4_2l" is INT4 with two-level
scales (docs/format.md); the "plain weight rule" row is a diagnostic with the weight search off.

    python benchmarks/ablation_synthetic.py [--plot docs/ablation_synthetic.png]
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from svdquant_hf import SVDQuantOptions
from svdquant_hf.algorithm import quantize_weight, relative_output_error, search_alpha


@dataclass
class SyntheticLayer:
    weight: torch.Tensor  # [N, K]
    bias: torch.Tensor  # [N]
    calib: torch.Tensor  # [rows, K]
    evaluate: torch.Tensor  # [rows, K]


def make_layer(
    n: int = 256,
    k: int = 512,
    seed: int = 0,
    rows: int = 512,
    calib_rows: int = 2048,
    act_outliers: int = 8,
    act_outlier_scale: float = 40.0,
    weight_outliers: int = 8,
    weight_outlier_scale: float = 12.0,
) -> SyntheticLayer:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) / k**0.5
    w[:, torch.randperm(k, generator=g)[:weight_outliers]] *= weight_outlier_scale
    w[torch.randperm(n, generator=g)[: max(1, weight_outliers // 2)]] *= weight_outlier_scale / 2
    mix = torch.eye(k) + torch.randn(k, k, generator=g) * (0.5 / k**0.5)
    chan = torch.ones(k)
    chan[torch.randperm(k, generator=g)[:act_outliers]] = act_outlier_scale
    chan *= torch.exp(torch.randn(k, generator=g) * 0.3)  # mild per-channel spread

    def draw(m: int) -> torch.Tensor:
        tok = torch.exp(torch.randn(m, 1, generator=g) * 0.3)  # per-token magnitude
        return (torch.randn(m, k, generator=g) @ mix) * chan * tok

    return SyntheticLayer(w, torch.randn(n, generator=g) * 0.1, draw(calib_rows), draw(rows))


def _w8a8_error(layer: SyntheticLayer) -> float:
    """Reference W8A8: int8 per-output-channel weights, int8 per-token activations (RNE, absmax/127)."""
    w = layer.weight.float()
    ws = (w.abs().amax(1, keepdim=True) / 127).clamp_min(1e-12)
    wq = torch.round(w / ws).clamp(-128, 127) * ws
    x = layer.evaluate.to(torch.bfloat16).float()
    xs = (x.abs().amax(1, keepdim=True) / 127).clamp_min(1e-12)
    xq = torch.round(x / xs).clamp(-128, 127) * xs
    ref = x @ w.t() + layer.bias
    out = xq @ wq.t() + layer.bias
    return float((out - ref).pow(2).sum() / ref.pow(2).sum())


def _method(options: SVDQuantOptions, calibrated: bool) -> Callable[[SyntheticLayer], float]:
    def run(layer: SyntheticLayer) -> float:
        dtype = torch.bfloat16
        if calibrated:
            h = layer.calib.t() @ layer.calib if options.gptq else None
            qw = search_alpha(layer.weight, layer.bias, options, dtype, layer.calib.abs().amax(0), layer.calib, h)
        else:
            qw = quantize_weight(layer.weight, options, dtype)
        return relative_output_error(qw, layer.weight, layer.bias, layer.evaluate, options)

    return run


@contextmanager
def plain_2l_weights() -> Iterator[None]:
    """Diagnostic: int4_2l weights by the plain activation rule (no per-group / per-row search)."""
    from svdquant_hf.algorithm import svdquant as sq

    searched = sq.quantize_weight_2l
    sq.quantize_weight_2l = lambda w, group_size: searched(w, group_size, search=False)
    try:
        yield
    finally:
        sq.quantize_weight_2l = searched


def _plain_2l(run: Callable[[SyntheticLayer], float]) -> Callable[[SyntheticLayer], float]:
    def wrapped(layer: SyntheticLayer) -> float:
        with plain_2l_weights():
            return run(layer)

    return wrapped


METHODS: dict[str, Callable[[SyntheticLayer], float]] = {
    "naive W4A4 (no smoothing, rank 0)": _method(SVDQuantOptions(rank=0), calibrated=False),
    "SmoothQuant W4A4 (alpha 0.5, rank 0)": _method(SVDQuantOptions(rank=0, alpha=0.5), calibrated=True),
    "smoothing only (alpha searched, rank 0)": _method(SVDQuantOptions(rank=0), calibrated=True),
    "low-rank only (rank 32, no smoothing)": _method(SVDQuantOptions(rank=32), calibrated=False),
    "SVDQuant W4A4 (alpha 0.5, rank 32)": _method(SVDQuantOptions(rank=32, alpha=0.5), calibrated=True),
    "SVDQuant W4A4 (alpha searched, rank 32)": _method(SVDQuantOptions(rank=32), calibrated=True),
    "SVDQuant W4A4 + GPTQ (rank 32)": _method(SVDQuantOptions(rank=32, gptq=True), calibrated=True),
    "SVDQuant W4A4 int4 g128 (alpha searched, rank 32)": _method(SVDQuantOptions(rank=32, group_size=128), calibrated=True),
    "SVDQuant W4A4 int4_2l g64 (alpha searched, rank 32)": _method(
        SVDQuantOptions(rank=32, quant_format="int4_2l"), calibrated=True
    ),
    "SVDQuant W4A4 int4_2l g64, plain weight rule (alpha searched, rank 32)": _plain_2l(
        _method(SVDQuantOptions(rank=32, quant_format="int4_2l"), calibrated=True)
    ),
    "SVDQuant W4A4 int4_2l g64 + GPTQ (rank 32)": _method(
        SVDQuantOptions(rank=32, quant_format="int4_2l", gptq=True), calibrated=True
    ),
    "SVDQuant W4A4 int4_2l g128 (alpha searched, rank 32)": _method(
        SVDQuantOptions(rank=32, group_size=128, quant_format="int4_2l"), calibrated=True
    ),
    "SVDQuant W4A4 int4 g32 (alpha searched, rank 32)": _method(SVDQuantOptions(rank=32, group_size=32), calibrated=True),
    "SVDQuant W4A4 int4_2l g32 (alpha searched, rank 32)": _method(
        SVDQuantOptions(rank=32, group_size=32, quant_format="int4_2l"), calibrated=True
    ),
    "SVDQuant NVFP4 (alpha searched, rank 32)": _method(SVDQuantOptions(rank=32, quant_format="nvfp4"), calibrated=True),
    "W8A8 reference (per-channel / per-token int8)": _w8a8_error,
}


def run_ablation(
    seeds: tuple[int, ...] = (0, 1, 2),
    n: int = 256,
    k: int = 512,
    methods: list[str] | None = None,
    calib_rows: int = 2048,
) -> dict[str, float]:
    """Mean relative squared output error per method over ``len(seeds)`` synthetic layers."""
    names = methods or list(METHODS)
    layers = [make_layer(n, k, seed=s, calib_rows=calib_rows) for s in seeds]
    return {name: sum(METHODS[name](layer) for layer in layers) / len(layers) for name in names}


def format_table(results: dict[str, float]) -> str:
    naive = results.get("naive W4A4 (no smoothing, rank 0)")
    lines = ["| method | rel. output error | vs naive W4A4 |", "|---|---:|---:|"]
    for name, err in results.items():
        ratio = f"{naive / err:.1f}x lower" if naive else ""
        lines.append(f"| {name} | {err:.2e} | {ratio} |")
    return "\n".join(lines)


def plot(results: dict[str, float], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.32 * len(results)))
    names = list(results)
    ax.barh(names[::-1], [results[n] for n in names[::-1]], color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("relative squared output error (log scale, lower is better)")
    ax.set_title("SVDQuant ablation: synthetic 256x512 layers with outlier channels", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--plot", default=None, help="write a bar chart PNG here")
    args = ap.parse_args()
    res = run_ablation(tuple(range(args.seeds)))
    print(format_table(res))
    if args.plot:
        plot(res, args.plot)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()

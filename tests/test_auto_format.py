"""quant_format="auto" (the default): int4_2l on Hopper, int4 elsewhere, resolved when the options are made."""
from __future__ import annotations

import json

import pytest
import torch

from svdquant_hf import SVDQuantOptions
from svdquant_hf.config import auto_quant_format
from svdquant_hf.quantizers import SVDQuantConfig


def _fake_gpus(monkeypatch, caps):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(caps))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(caps))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: caps[i])


@pytest.mark.parametrize(
    "caps,expected",
    [([], "int4"), ([(8, 9)], "int4"), ([(8, 0), (8, 6)], "int4"), ([(9, 0)], "int4_2l"), ([(8, 9), (9, 0)], "int4_2l")],
)
def test_auto_resolves_per_gpu(monkeypatch, caps, expected):
    _fake_gpus(monkeypatch, caps)
    assert auto_quant_format() == expected
    assert SVDQuantOptions().quant_format == expected
    assert SVDQuantOptions(quant_format="auto").quant_format == expected


def test_config_records_the_resolved_format(monkeypatch):
    _fake_gpus(monkeypatch, [(9, 0)])
    cfg = SVDQuantConfig()
    assert cfg.quant_format == "int4_2l"
    d = json.loads(cfg.to_json_string(use_diff=False))
    assert d["quant_format"] == "int4_2l"
    # a checkpoint's config made on Hopper reloads as int4_2l on any machine
    _fake_gpus(monkeypatch, [])
    assert SVDQuantConfig.from_dict(d).quant_format == "int4_2l"


def test_explicit_formats_are_kept(monkeypatch):
    _fake_gpus(monkeypatch, [(9, 0)])
    assert SVDQuantConfig(quant_format="int4").quant_format == "int4"
    _fake_gpus(monkeypatch, [])
    assert SVDQuantOptions(quant_format="int4_2l").quant_format == "int4_2l"
    with pytest.raises(ValueError, match="quant_format='int5'.*'auto'"):
        SVDQuantOptions(quant_format="int5")


def test_transformers_config_default_is_auto(monkeypatch):
    pytest.importorskip("transformers")
    from svdquant_hf.quantizers.transformers.config import SVDQuantTransformersConfig as TfConfig

    _fake_gpus(monkeypatch, [(9, 0)])
    assert TfConfig().quant_format == "int4_2l"
    _fake_gpus(monkeypatch, [(8, 9)])
    assert TfConfig().quant_format == "int4"

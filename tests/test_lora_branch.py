"""The pure folding function and the lazy PEFT/diffusers hooks."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from svdquant_hf.lora import extend_branch, padded_rank


@pytest.mark.parametrize("ranks", [(4,), (16,), (5, 11), (32, 1, 7)])
def test_extend_branch_adds_scaled_lora_and_pads_to_16(ranks):
    g = torch.Generator().manual_seed(sum(ranks))
    k, n, r0 = 192, 80, 32
    down = torch.randn(k, r0, generator=g, dtype=torch.float64)
    up = torch.randn(n, r0, generator=g, dtype=torch.float64)
    factors = [(torch.randn(r, k, generator=g), torch.randn(n, r, generator=g), s) for r, s in zip(ranks, (0.5, -2.0, 1.25))]
    d2, u2 = extend_branch(down, up, factors)
    assert d2.shape == (k, padded_rank(r0 + sum(ranks))) and u2.shape == (n, d2.shape[1]) and d2.shape[1] % 16 == 0
    assert torch.equal(d2[:, :r0], down) and torch.equal(u2[:, :r0], up)  # base factors intact, first
    extra = r0 + sum(ranks)
    assert not d2[:, extra:].any() and not u2[:, extra:].any()
    x = torch.randn(7, k, generator=g, dtype=torch.float64)
    want = x @ down @ up.t() + sum(s * (x @ a.double().t()) @ b.double().t() for a, b, s in factors)
    torch.testing.assert_close(x @ d2 @ u2.t(), want, rtol=1e-5, atol=1e-5)


def test_extend_branch_rejects_a_misfit_with_the_layer_name():
    down, up = torch.zeros(64, 32), torch.zeros(48, 32)
    with pytest.raises(ValueError, match=r"blocks\.3\.to_q.*in_features=64"):
        extend_branch(down, up, [(torch.zeros(4, 65), torch.zeros(48, 4), 1.0)], name="blocks.3.to_q")
    with pytest.raises(ValueError, match="lora_B"):
        extend_branch(down, up, [(torch.zeros(4, 64), torch.zeros(48, 5), 1.0)], name="x")


def test_install_patches_modules_that_are_already_imported():
    pytest.importorskip("peft")
    import peft.tuners.lora.model as m
    import peft.utils.hotswap as h

    from svdquant_hf.lora import install

    patched = m.LoraModel._create_new_module
    swap = h.hotswap_adapter_from_state_dict
    assert patched._svdquant_lora_patched and swap._svdquant_lora_patched
    try:  # as if peft had been imported before svdquant_hf
        m.LoraModel._create_new_module = staticmethod(patched.__wrapped__)
        h.hotswap_adapter_from_state_dict = swap.__wrapped__
        install()
        assert m.LoraModel._create_new_module._svdquant_lora_patched
        assert h.hotswap_adapter_from_state_dict._svdquant_lora_patched
        install()  # idempotent: no double wrapping
        assert m.LoraModel._create_new_module.__wrapped__ is patched.__wrapped__
    finally:
        m.LoraModel._create_new_module = staticmethod(patched)
        h.hotswap_adapter_from_state_dict = swap


def test_import_svdquant_hf_does_not_import_peft_but_patches_it_later():
    code = (
        "import sys, svdquant_hf\n"
        "assert 'peft' not in sys.modules, 'import svdquant_hf must stay cheap'\n"
        "import peft.tuners.lora.model as m\n"
        "assert m.LoraModel._create_new_module._svdquant_lora_patched\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]

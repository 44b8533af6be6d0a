"""Kernel layouts of the int4_2l packed weights (the checkpoint keeps the canonical layout, docs/format.md).

Fragment order: within each row's 64 bytes of a 128-deep K stage, the bytes are regrouped so that the
wgmma A-fragment words of lane group t (lane % 4) for the stage's four 32-deep k-steps are 16 consecutive
bytes: byte 16 t + 4 j + 2 b + h holds canonical byte 16 j + 8 h + 2 t + b (j k-step, h 0 / 1 for k 4t.. /
16 + 4t.., b 0 / 1 the byte of a nibble pair), and every nibble is stored offset by 8 (q + 8, i.e. each byte
XOR 0x88). The register-fragment GEMM kernel then loads a row's words for a whole stage with one 16-byte load
and widens a word with two nibbles per integer multiply (csrc/widen_2l.cuh, widen8_fo). A byte-wise map
inside each row's stage, so it commutes with slicing or concatenating rows.
"""
from __future__ import annotations

import torch

STAGE_K = 128  # K values per stage: 64 packed bytes per row


def _check(qweight: torch.Tensor) -> tuple[int, int]:
    if qweight.dim() != 2 or qweight.dtype != torch.int8 or qweight.shape[1] % (STAGE_K // 2):
        raise ValueError(
            f"int4_2l qweight: expected int8 [N, K/2] with K a multiple of {STAGE_K}, got {qweight.dtype} "
            f"{tuple(qweight.shape)}"
        )
    return qweight.shape[0], qweight.shape[1] // (STAGE_K // 2)


_OFFSET = -120  # 0x88 as int8: both nibbles of a byte offset by 8


def fragment_order(qweight: torch.Tensor) -> torch.Tensor:
    """Canonical packed weights [N, K/2] -> fragment order (a new contiguous tensor of the same shape)."""
    n, stages = _check(qweight)
    v = qweight.reshape(n, stages, 4, 2, 4, 2)  # canonical byte 16 j + 8 h + 2 t + b: (j, h, t, b)
    v = v.permute(0, 1, 4, 2, 5, 3).reshape(qweight.shape)  # -> (t, j, b, h)
    return torch.bitwise_xor(v, _OFFSET).contiguous()


def canonical_order(qweight: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fragment_order`."""
    n, stages = _check(qweight)
    v = torch.bitwise_xor(qweight, _OFFSET).reshape(n, stages, 4, 4, 2, 2)  # (t, j, b, h)
    return v.permute(0, 1, 3, 5, 2, 4).reshape(qweight.shape).contiguous()  # -> (j, h, t, b)


def kernel_padded(t: torch.Tensor, rows: int, cols: int | None = None, value: int = 0) -> torch.Tensor:
    """``t`` (1-D or 2-D) padded with ``value`` at the end to ``rows`` (and ``cols``): a layer's operands grown to the
    Hopper GEMM's 128-wide tiles. Zero activations in the padded K columns make the padded weights add exactly 0, and
    zero weight rows give output columns that are sliced off, so the result is the unpadded product's."""
    if t.dim() == 1:
        return torch.nn.functional.pad(t, (0, rows - t.shape[0]), value=value)
    return torch.nn.functional.pad(t, (0, (cols or t.shape[1]) - t.shape[1], 0, rows - t.shape[0]), value=value)

"""Kernel layouts of the int4_2l packed weights (the checkpoint keeps the canonical layout, docs/format.md).

Fragment order: within each row's 128-deep K stage (64 bytes), the wgmma A-fragment words of lane group t (lane % 4)
for the stage's four 32-deep k-steps are 16 consecutive bytes: byte 16 t + 4 j + e holds k 32 j + 4 t + e in its low
nibble and k 32 j + 16 + 4 t + e in its high nibble (j the k-step, e 0..3), two's complement as in the canonical
bytes. The register-fragment GEMM kernel then loads a row's words for a whole stage with one 16-byte load and widens
a word to its two fragment registers with four bytes per integer multiply-add (csrc/widen_2l.cuh, widen8_fo). A map
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


def _nibbles(qweight: torch.Tensor) -> torch.Tensor:
    """Packed bytes [N, K/2] -> the K nibbles as uint8 in [0, 15] (low nibble first)."""
    b = qweight.view(torch.uint8)
    return torch.stack([b & 0xF, b >> 4], dim=-1).reshape(qweight.shape[0], -1)


def _packed(nibbles: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_nibbles`."""
    v = nibbles.reshape(nibbles.shape[0], -1, 2)
    return (v[..., 0] | (v[..., 1] << 4)).view(torch.int8)


def fragment_order(qweight: torch.Tensor) -> torch.Tensor:
    """Canonical packed weights [N, K/2] -> fragment order (a new contiguous tensor of the same shape)."""
    n, stages = _check(qweight)
    v = _nibbles(qweight).reshape(n, stages, 4, 2, 4, 4)  # k 32 j + 16 h + 4 t + e: (j, h, t, e)
    return _packed(v.permute(0, 1, 4, 2, 5, 3).reshape(n, -1)).contiguous()  # -> (t, j, e, h)


def canonical_order(qweight: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fragment_order`."""
    n, stages = _check(qweight)
    v = _nibbles(qweight).reshape(n, stages, 4, 4, 4, 2)  # (t, j, e, h)
    return _packed(v.permute(0, 1, 3, 5, 2, 4).reshape(n, -1)).contiguous()  # -> (j, h, t, e)


def kernel_padded(t: torch.Tensor, rows: int, cols: int | None = None, value: int = 0) -> torch.Tensor:
    """``t`` (1-D or 2-D) padded with ``value`` at the end to ``rows`` (and ``cols``): a layer's operands grown to the
    Hopper GEMM's 128-wide tiles. Zero activations in the padded K columns make the padded weights add exactly 0, and
    zero weight rows give output columns that are sliced off, so the result is the unpadded product's."""
    if t.dim() == 1:
        return torch.nn.functional.pad(t, (0, rows - t.shape[0]), value=value)
    return torch.nn.functional.pad(t, (0, (cols or t.shape[1]) - t.shape[1], 0, rows - t.shape[0]), value=value)

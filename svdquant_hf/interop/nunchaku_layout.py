"""Nunchaku's tiled tensor layouts for SVDQuant W4A4 (INT4, group 64), written from its published description.

Nunchaku's kernels read every tensor of an SVDQuant linear in MMA-tile order. All layouts below are
pure index permutations (plus nibble packing), so conversion in both directions is exact.

qweight (INT4 codes W[N, K], N % 128 == 0, K % 128 == 0)
    n = ((nt * 8 + p) * 2 + s) * 8 + l        nt: 128-row tile, p: 8 packs, s: 2 per pack, l: 8 lanes
    k = ((kt * 2 + t) * 4 + m) * 8 + r        kt: 64-col tile, t: 2 per pack, m: 4 lanes, r: 8 per register
    stored order (nt, kt, p, l, m, s, t, r); every 8 consecutive codes form one little-endian uint32
    (code r at bits 4r), i.e. consecutive pairs are bytes with the first code in the low nibble.
    Stored as int8 [N, K/2].
wscales (S[N, G], G = K/64) and per-channel vectors (bias [N], smooth [K]: G = 1)
    n = (((nt * 8 + a) * 2 + b) * 4 + c) * 2 + d
    stored order (nt, g, a, c, b, d); shape [G, N] (vectors: [N]).
low-rank factors: the 16x16 MMA fragment order, with the non-rank axis outermost
    lora_down D[R, K] (Nunchaku's logical [rank, in]) is stored as [K, R];
    lora_up   U[N, R] is stored as [N, R].
    For a logical matrix X[rows="n", cols="k"] (down: n = rank, k = in; up: n = out, k = rank):
    n = (nf * 2 + s) * 8 + l,  k = (kf * 2 + t) * 8 + m * 2 + e     (s, t: 2; l: 8; m: 4; e: 2)
    stored order (outer frag, rank frag, l, m, s, t, e) where the outer axis is the non-rank one.
    The rank is padded with zeros to a multiple of 16.
"""
from __future__ import annotations

import torch

from ..formats.int4 import pack_int4, unpack_int4

TILE_N = 128  # output channels per weight/scale tile
TILE_K = 128  # input channels that must divide K (64-column tiles, unrolled twice)
GROUP = 64  # the only INT4 group size Nunchaku's W4A4 kernels use
RANK_MULTIPLE = 16


class LayoutError(ValueError):
    """A tensor does not fit Nunchaku's tiled layout; the message names the tensor."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise LayoutError(msg)


# --- qweight -----------------------------------------------------------------------------------

_W_TILED = (0, 4, 1, 3, 6, 2, 5, 7)  # (nt, p, s, l, kt, t, m, r) -> (nt, kt, p, l, m, s, t, r)


def _w_shape(n: int, k: int) -> tuple[int, ...]:
    return (n // 128, 8, 2, 8, k // 64, 2, 4, 8)


def _w_bytes_shape(n: int, k: int) -> tuple[int, ...]:
    # the 8 codes of register r are 4 bytes (2 codes each, first code in the low nibble) in both layouts,
    # so the tiling is a permutation of whole bytes: r -> (byte rb, nibble) with the nibble innermost
    return (n // 128, 8, 2, 8, k // 64, 2, 4, 4)


def _check_wshape(n: int, k: int, what: str) -> None:
    _check(n % TILE_N == 0 and k % TILE_K == 0,
           f"{what}: shape [{n}, {k}] must have out % {TILE_N} == 0 and in % {TILE_K} == 0 for Nunchaku's tiles")


def tile_qweight(qweight: torch.Tensor, what: str = "qweight") -> torch.Tensor:
    """Our qweight int8 [N, K/2] (row-major nibbles) -> Nunchaku's tiled int8 [N, K/2]."""
    _check(qweight.dim() == 2 and qweight.dtype in (torch.int8, torch.uint8),
           f"{what}: expected int8 [out, in/2], got {qweight.dtype} {tuple(qweight.shape)}")
    n, k = qweight.shape[0], qweight.shape[1] * 2
    _check_wshape(n, k, what)
    b = qweight.view(torch.int8).reshape(_w_bytes_shape(n, k)).permute(_W_TILED)
    return b.reshape(n, k // 2).contiguous()


def untile_qweight(packed: torch.Tensor, what: str = "qweight") -> torch.Tensor:
    """Nunchaku's tiled int8 [N, K/2] -> our qweight int8 [N, K/2] (row-major nibbles)."""
    _check(packed.dim() == 2 and packed.dtype in (torch.int8, torch.uint8),
           f"{what}: expected int8 [out, in/2], got {packed.dtype} {tuple(packed.shape)}")
    n, k = packed.shape[0], packed.shape[1] * 2
    _check(n % TILE_N == 0 and k % TILE_K == 0,
           f"{what}: shape [{n}, {k // 2}] is not a whole number of Nunchaku tiles ({TILE_N} x {TILE_K // 2})")
    tiled = packed.view(torch.int8).reshape(n // 128, k // 64, 8, 8, 4, 2, 2, 4)
    return tiled.permute([_W_TILED.index(i) for i in range(8)]).reshape(n, k // 2).contiguous()


def pack_weight(codes: torch.Tensor, what: str = "qweight") -> torch.Tensor:
    """INT4 codes [N, K] (int8 storage, -8..7) in logical order -> Nunchaku's tiled int8 [N, K/2]."""
    _check(codes.dim() == 2, f"{what}: expected a 2-D code matrix, got shape {tuple(codes.shape)}")
    _check_wshape(codes.shape[0], codes.shape[1], what)
    return tile_qweight(pack_int4(codes), what)


def unpack_weight(packed: torch.Tensor, what: str = "qweight") -> torch.Tensor:
    """Nunchaku's tiled int8 [N, K/2] -> INT4 codes [N, K] (int8 storage) in logical order."""
    return unpack_int4(untile_qweight(packed, what))


# --- scales and per-channel vectors --------------------------------------------------------------

_S_TILED = (0, 5, 1, 3, 2, 4)  # (nt, a, b, c, d, g) -> (nt, g, a, c, b, d)


def pack_scales(scales: torch.Tensor, what: str = "wscales") -> torch.Tensor:
    """Group scales in our layout [G, N] -> Nunchaku's tiled [G, N]."""
    _check(scales.dim() == 2, f"{what}: expected [groups, out], got shape {tuple(scales.shape)}")
    g, n = scales.shape
    _check(n % TILE_N == 0, f"{what}: out_features={n} must be a multiple of {TILE_N}")
    s = scales.t().reshape(n // 128, 8, 2, 4, 2, g)
    return s.permute(_S_TILED).reshape(g, n).contiguous()


def unpack_scales(packed: torch.Tensor, what: str = "wscales") -> torch.Tensor:
    """Nunchaku's tiled [G, N] -> our [G, N] (row g holds group g of every output channel)."""
    _check(packed.dim() == 2, f"{what}: expected [groups, out], got shape {tuple(packed.shape)}")
    g, n = packed.shape
    _check(n % TILE_N == 0, f"{what}: out_features={n} must be a multiple of {TILE_N}")
    s = packed.reshape(n // 128, g, 8, 4, 2, 2)
    inverse = [_S_TILED.index(i) for i in range(6)]
    return s.permute(inverse).reshape(n, g).t().contiguous()


def pack_vector(v: torch.Tensor, what: str = "vector") -> torch.Tensor:
    """A per-channel vector (bias [N] or smooth [K]) -> Nunchaku's tiled order (same length)."""
    _check(v.dim() == 1, f"{what}: expected a vector, got shape {tuple(v.shape)}")
    return pack_scales(v.reshape(1, -1), what).reshape(-1)


def unpack_vector(v: torch.Tensor, what: str = "vector") -> torch.Tensor:
    _check(v.dim() == 1, f"{what}: expected a vector, got shape {tuple(v.shape)}")
    return unpack_scales(v.reshape(1, -1), what).reshape(-1)


# --- low-rank factors ----------------------------------------------------------------------------

_L_FRAG = (0, 1, 3, 5, 2, 4, 6)  # (outer, rank, s, l, t, m, e) -> (outer, rank, l, m, s, t, e)


def _frag_pack(x: torch.Tensor, rank_is_n: bool) -> torch.Tensor:
    """x: logical [n, k] with dims multiple of 16; returns the fragment-ordered flat tensor."""
    n, k = x.shape
    v = x.reshape(n // 16, 2, 8, k // 16, 2, 4, 2)  # (nf, s, l, kf, t, m, e)
    if rank_is_n:  # outer = k fragments (input channels), then rank (n) fragments
        v = v.permute(3, 0, 1, 2, 4, 5, 6)
    else:  # outer = n fragments (output channels), then rank (k) fragments
        v = v.permute(0, 3, 1, 2, 4, 5, 6)
    return v.permute(_L_FRAG).reshape(-1)


def _frag_unpack(flat: torch.Tensor, n: int, k: int, rank_is_n: bool) -> torch.Tensor:
    outer, inner = (k // 16, n // 16) if rank_is_n else (n // 16, k // 16)
    v = flat.reshape(outer, inner, 8, 4, 2, 2, 2)  # (outer, rank, l, m, s, t, e)
    v = v.permute([_L_FRAG.index(i) for i in range(7)])  # (outer, rank, s, l, t, m, e)
    if rank_is_n:  # (kf, nf, s, l, t, m, e) -> (nf, s, l, kf, t, m, e)
        v = v.permute(1, 2, 3, 0, 4, 5, 6)
    else:  # (nf, kf, s, l, t, m, e) -> (nf, s, l, kf, t, m, e)
        v = v.permute(0, 2, 3, 1, 4, 5, 6)
    return v.reshape(n, k)


def padded_rank(rank: int) -> int:
    return -(-rank // RANK_MULTIPLE) * RANK_MULTIPLE


def _pad_rank(x: torch.Tensor, dim: int) -> torch.Tensor:
    r = x.shape[dim]
    extra = padded_rank(r) - r
    if not extra:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def pack_proj_down(proj_down: torch.Tensor, what: str = "proj_down") -> torch.Tensor:
    """Our proj_down [K, R] -> Nunchaku's packed lora_down [K, R16] (rank zero-padded to 16)."""
    _check(proj_down.dim() == 2, f"{what}: expected [in, rank], got shape {tuple(proj_down.shape)}")
    k = proj_down.shape[0]
    _check(k % 16 == 0, f"{what}: in_features={k} must be a multiple of 16")
    d = _pad_rank(proj_down, 1).t().contiguous()  # logical [R16, K]
    return _frag_pack(d, rank_is_n=True).reshape(k, -1)


def unpack_proj_down(packed: torch.Tensor, what: str = "lora_down") -> torch.Tensor:
    """Nunchaku's packed lora_down [K, R] -> our proj_down [K, R]."""
    _check(packed.dim() == 2, f"{what}: expected [in, rank], got shape {tuple(packed.shape)}")
    k, r = packed.shape
    _check(k % 16 == 0 and r % 16 == 0, f"{what}: shape [{k}, {r}] must be multiples of 16 (packed fragments)")
    return _frag_unpack(packed.reshape(-1), r, k, rank_is_n=True).t().contiguous()


def pack_proj_up(proj_up: torch.Tensor, what: str = "proj_up") -> torch.Tensor:
    """Our proj_up [N, R] -> Nunchaku's packed lora_up [N, R16]."""
    _check(proj_up.dim() == 2, f"{what}: expected [out, rank], got shape {tuple(proj_up.shape)}")
    n = proj_up.shape[0]
    _check(n % 16 == 0, f"{what}: out_features={n} must be a multiple of 16")
    u = _pad_rank(proj_up, 1).contiguous()
    return _frag_pack(u, rank_is_n=False).reshape(n, -1)


def unpack_proj_up(packed: torch.Tensor, what: str = "lora_up") -> torch.Tensor:
    """Nunchaku's packed lora_up [N, R] -> our proj_up [N, R]."""
    _check(packed.dim() == 2, f"{what}: expected [out, rank], got shape {tuple(packed.shape)}")
    n, r = packed.shape
    _check(n % 16 == 0 and r % 16 == 0, f"{what}: shape [{n}, {r}] must be multiples of 16 (packed fragments)")
    return _frag_unpack(packed.reshape(-1), n, r, rank_is_n=False).contiguous()


# --- AWQ W4A16 (TinyChat layout), used by Nunchaku for FLUX's AdaNorm linears ------------------------
# codes q in 0..15, dequantized w = q * wscales + wzeros (zeros stored negated and pre-scaled), groups of 64.
# Within each row, every 32 consecutive inputs i = a*8 + b become 8 uint16 words, word b holding input a*8+b
# at bits 4a; rows are taken 4 at a time and, per 64 inputs, the 4 rows' 16 words are laid out row after row.
# qweight is stored as int32 [out/4, in/2] (the uint16 words viewed two at a time).


def unpack_awq_weight(qweight: torch.Tensor, what: str = "qweight") -> torch.Tensor:
    """Nunchaku/TinyChat int32 [N/4, K/2] -> codes [N, K] (int16 storage, values 0..15)."""
    _check(qweight.dim() == 2 and qweight.dtype == torch.int32,
           f"{what}: expected int32 [out/4, in/2], got {qweight.dtype} {tuple(qweight.shape)}")
    n4, k = qweight.shape[0], qweight.shape[1] * 2
    _check(k % 64 == 0, f"{what}: in_features={k} must be a multiple of 64")
    words = qweight.view(torch.int16).to(torch.int32) & 0xFFFF  # [N/4, K]
    words = words.reshape(n4, k // 64, 4, 16).permute(0, 2, 1, 3).reshape(n4 * 4, k // 32, 8)
    nibbles = torch.stack([(words >> (4 * a)) & 0xF for a in range(4)], dim=2)  # [N, K/32, a, b]
    return nibbles.reshape(n4 * 4, k).to(torch.int16)


def pack_awq_weight(codes: torch.Tensor) -> torch.Tensor:
    """Codes [N, K] in 0..15 -> Nunchaku/TinyChat int32 [N/4, K/2] (inverse of unpack_awq_weight)."""
    n, k = codes.shape
    _check(n % 4 == 0 and k % 64 == 0, f"AWQ codes [{n}, {k}]: need out % 4 == 0 and in % 64 == 0")
    c = codes.to(torch.int32).reshape(n, k // 32, 4, 8)
    words = sum(c[:, :, a] << (4 * a) for a in range(4))  # [N, K/32, 8]
    words = words.reshape(n // 4, 4, k // 64, 16).permute(0, 2, 1, 3).reshape(n // 4, k)
    return _u16_to_i16(words).view(torch.int32)


def _u16_to_i16(x: torch.Tensor) -> torch.Tensor:
    return (x - ((x & 0x8000) << 1)).to(torch.int16).contiguous()


__all__ = [
    "unpack_awq_weight", "pack_awq_weight",
    "LayoutError", "GROUP", "TILE_N", "TILE_K", "pack_weight", "unpack_weight", "tile_qweight", "untile_qweight", "pack_scales", "unpack_scales",
    "pack_vector", "unpack_vector", "pack_proj_down", "unpack_proj_down", "pack_proj_up", "unpack_proj_up",
    "padded_rank",
]

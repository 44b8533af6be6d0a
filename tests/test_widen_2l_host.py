"""The int4_2l GEMM's register-fragment widening (csrc/widen_2l.cuh) checked on the CPU.

The header's integer code also compiles for the host: a small harness built with the system C++ compiler
runs ``gather_frag`` for every thread of the CTA on a packed weight stage laid out as TMA writes it (64-byte
swizzle), and the fragments are compared with the wgmma A-fragment layout (m64 k32, s8; PTX ISA), derived
here independently: register e of thread (warp w, lane l) holds rows 16 w + l / 4 (+ 8 for e = 1, 3),
k 4 (l % 4) .. + 3 (+ 16 for e = 2, 3), each byte q * s_int as int8.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from svdquant_hf.formats.int4 import pack_int4, unpack_int4
from svdquant_hf.ops.layout_2l import canonical_order, fragment_order

CSRC = Path(__file__).resolve().parents[1] / "csrc"
ROWS, BK = 128, 128  # weight rows per CTA, K per stage (the kernel's kRows, kBK)

HARNESS = r"""
#include <cstdio>
#include <vector>
#include "widen_2l.cuh"
int main() {
  std::vector<uint8_t> wt(HROWS * 64), sc(HROWS * (128 / HG));
  if (fread(wt.data(), 1, wt.size(), stdin) != wt.size() || fread(sc.data(), 1, sc.size(), stdin) != sc.size())
    return 2;
  for (int w = 0; w < 8; ++w)            // 2 warpgroups x 4 warps: rows 16 w .. 16 w + 15
    for (int lane = 0; lane < 32; ++lane)
      for (int j = 0; j < 4; ++j) {
        uint32_t a[4];
#ifdef HFRAG  // the tile is in fragment order: one frag_stage call per thread gives all four k-steps (and
              // frag_widen_step, k-step by k-step, the same)
        uint32_t f[4][4];
        svdq::frag_stage<HG, HROWS>(wt.data(), sc.data(), 16 * w + lane / 4, lane % 4, f);
        for (int e = 0; e < 4; ++e) a[e] = f[j][e];
        uint32_t lw[2][4], ls[2][128 / HG], step[4];  // the pipelined loop's one k-step at a time: the same fragments
        svdq::frag_load<HG, HROWS>(wt.data(), sc.data(), 16 * w + lane / 4, lane % 4, lw, ls);
        svdq::frag_widen_step<HG>(lw, ls, j, step);
        for (int e = 0; e < 4; ++e)
          if (step[e] != a[e]) return 3;
#else
        svdq::gather_frag<HG, HROWS>(wt.data(), sc.data(), 16 * w + lane / 4, lane % 4, j, a);
#endif
        printf("%u %u %u %u\n", a[0], a[1], a[2], a[3]);
      }
  return 0;
}
"""


def _compiler() -> str | None:
    return shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def _tma_swizzle64(tile: np.ndarray) -> np.ndarray:
    """Rows of 64 bytes as TMA's 64-byte swizzle stores them: byte address bits 4-5 ^= bits 7-8."""
    flat = tile.reshape(-1)
    out = np.empty_like(flat)
    addr = np.arange(flat.size)
    out[addr ^ (((addr >> 7) & 3) << 4)] = flat
    return out


def _fragment_slots():
    """(warp, lane, k-step j, register e, row, first k) of every A-fragment register of the CTA's stage."""
    for w in range(8):
        for lane in range(32):
            r0, t = 16 * w + lane // 4, lane % 4
            for j in range(4):
                for e in range(4):
                    yield w, lane, j, e, r0 + (8 if e in (1, 3) else 0), 32 * j + 4 * t + (16 if e >= 2 else 0)


def _expected(q: np.ndarray, s: np.ndarray, G: int) -> np.ndarray:
    exp = np.empty((8, 32, 4, 4), dtype=np.uint32)
    for w, lane, j, e, r, k0 in _fragment_slots():
        vals = (q[r, k0 : k0 + 4].astype(np.int32) * s[(32 * j) // G, r]).astype(np.int8)
        exp[w, lane, j, e] = int.from_bytes(vals.tobytes(), "little")
    return exp


@pytest.mark.skipif(_compiler() is None, reason="needs a C++ compiler")
@pytest.mark.parametrize("frag", [False, True], ids=["gather_frag", "frag_stage"])
@pytest.mark.parametrize("G", [32, 64, 128])
def test_fragments_match_the_wgmma_a_fragment_layout(tmp_path, G, frag):
    """gather_frag on the canonical tile, and frag_stage on the tile in fragment order (ops/layout_2l.py), both
    give every thread the wgmma A fragments of the layout derived above."""
    exe = tmp_path / f"widen_{G}"
    src = tmp_path / "harness.cpp"
    src.write_text(HARNESS)
    subprocess.run(
        [_compiler(), "-std=c++17", "-O1", "-Wno-unknown-pragmas", f"-DHG={G}", f"-DHROWS={ROWS}", f"-I{CSRC}",
         *(["-DHFRAG"] if frag else []), str(src), "-o", str(exe)],
        check=True, capture_output=True, text=True,
    )
    rng = np.random.default_rng(G)
    for trial in range(3):
        q = rng.integers(-8, 8, size=(ROWS, BK), dtype=np.int8)
        if trial == 1:  # the extremes of both factors
            q[::2] = -8
            q[1::2] = 7
        s = rng.integers(1, 17, size=(BK // G, ROWS), dtype=np.uint8)
        if trial == 2:
            s[:] = 16
        packed = pack_int4(torch.from_numpy(q))  # [128, 64], canonical checkpoint bytes
        if frag:
            packed = fragment_order(packed)
        stdin = _tma_swizzle64(packed.numpy().view(np.uint8)).tobytes() + s.tobytes()
        out = subprocess.run([str(exe)], input=stdin, capture_output=True, check=True).stdout.decode()
        got = np.array(out.split(), dtype=np.uint64).astype(np.uint32).reshape(8, 32, 4, 4)
        exp = _expected(q, s, G)
        bad = np.argwhere(got != exp)
        assert bad.size == 0, f"G={G} trial {trial}: {len(bad)} fragment registers differ, first (warp, lane, j, reg) {bad[0]}"


def test_fragment_order_round_trip_and_row_slices():
    """canonical_order inverts fragment_order; the order maps nibbles inside each row's 64-byte stage only (so row
    slices and concatenations commute with it), byte 16 t + 4 j + e holding k 32 j + 4 t + e and 32 j + 16 + 4 t + e;
    bad shapes are refused with the tensor named."""
    g = torch.Generator().manual_seed(3)
    qw = torch.randint(-128, 128, (40, 3 * 64), generator=g, dtype=torch.int8)
    fo = fragment_order(qw)
    assert not torch.equal(fo, qw)
    assert torch.equal(canonical_order(fo), qw)
    assert torch.equal(fragment_order(qw[8:24]), fo[8:24])
    q, qf = unpack_int4(qw), unpack_int4(fo)
    for r in (0, 17):
        for st in range(3):
            seg = slice(128 * st, 128 * st + 128)
            assert sorted(qf[r, seg].tolist()) == sorted(q[r, seg].tolist())
            for t, j, e in ((1, 2, 0), (3, 0, 3), (2, 3, 1), (0, 1, 2)):
                byte = 128 * st + 2 * (16 * t + 4 * j + e)
                assert qf[r, byte].item() == q[r, 128 * st + 32 * j + 4 * t + e].item()
                assert qf[r, byte + 1].item() == q[r, 128 * st + 32 * j + 16 + 4 * t + e].item()
    with pytest.raises(ValueError, match="qweight"):
        fragment_order(torch.zeros(4, 48, dtype=torch.int8))


def test_expected_layout_covers_every_weight_once():
    """The oracle's layout is a bijection onto the 128 x 128 stage: each (row, k) lands in exactly one byte."""
    seen = np.zeros((ROWS, BK), dtype=np.int32)
    for *_, r, k0 in _fragment_slots():
        seen[r, k0 : k0 + 4] += 1
    assert (seen == 1).all()

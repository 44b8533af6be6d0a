"""The few-token int4_2l GEMM's arithmetic (csrc/gemv_2l.cuh) checked on the CPU.

A harness built with the system C++ compiler walks one weight row the way the kernel's lanes do (every 128-deep
stage, its four 16-byte chunks) and sums ``gemv_chunk_dot``; the total must be the exact integer dot product of
the activation row with the row's q * s_int (group 64), for weights in canonical and in fragment order.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from svdquant_hf.formats.int4 import pack_int4
from svdquant_hf.ops.layout_2l import fragment_order

CSRC = Path(__file__).resolve().parents[1] / "csrc"
G = 64

HARNESS = r"""
#include <cstdio>
#include <vector>
#include "gemv_2l.cuh"
int main() {
  int rows, K;
  if (scanf("%d %d", &rows, &K) != 2) return 2;
  std::vector<int> buf(rows * K / 2 + K + rows * (K / 64));
  for (int& v : buf) if (scanf("%d", &v) != 1) return 3;
  std::vector<uint8_t> w(rows * K / 2), sc(rows * (K / 64));
  std::vector<int8_t> x(K);
  for (size_t i = 0; i < w.size(); ++i) w[i] = (uint8_t)buf[i];
  for (int i = 0; i < K; ++i) x[i] = (int8_t)buf[w.size() + i];
  for (size_t i = 0; i < sc.size(); ++i) sc[i] = (uint8_t)buf[w.size() + K + i];  // [K / 64, rows]
  for (int r = 0; r < rows; ++r) {
    long long total = 0;
    for (int s = 0; s < K / 128; ++s)
      for (int kk = 0; kk < 4; ++kk) {
        const uint8_t* c = w.data() + (size_t)r * (K / 2) + 64 * s + 16 * kk;
        uint32_t words[4];
        for (int j = 0; j < 4; ++j)
          words[j] = c[4 * j] | (c[4 * j + 1] << 8) | (c[4 * j + 2] << 16) | ((uint32_t)c[4 * j + 3] << 24);
        total += svdq::gemv_chunk_dot<HFRAG>(words, x.data() + 128 * s, kk, sc[(2 * s) * rows + r],
                                             sc[(2 * s + 1) * rows + r]);
      }
    printf("%lld\n", total);
  }
  return 0;
}
"""


def _compiler() -> str | None:
    return shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


@pytest.mark.skipif(_compiler() is None, reason="needs a C++ compiler")
@pytest.mark.parametrize("frag", [False, True], ids=["canonical", "fragment_order"])
def test_chunk_dots_sum_to_the_exact_row_product(tmp_path, frag):
    exe = tmp_path / "gemv"
    src = tmp_path / "harness.cpp"
    src.write_text(HARNESS)
    subprocess.run([_compiler(), "-std=c++17", "-O1", "-Wno-unknown-pragmas", f"-DHFRAG={int(frag)}", f"-I{CSRC}",
                    str(src), "-o", str(exe)], check=True, capture_output=True, text=True)
    rng = np.random.default_rng(int(frag))
    rows, K = 24, 384
    for trial in range(3):
        q = rng.integers(-8, 8, size=(rows, K), dtype=np.int8)
        x = rng.integers(-128, 113, size=K).astype(np.int8)
        s = rng.integers(1, 17, size=(K // G, rows), dtype=np.uint8)
        if trial == 1:  # the extremes: |q| = 8, |x| = 128, s = 16 everywhere
            q[:] = -8
            x[:] = -128
            s[:] = 16
        packed = pack_int4(torch.from_numpy(q))
        if frag:
            packed = fragment_order(packed)
        data = np.concatenate([packed.numpy().view(np.uint8).ravel().astype(np.int64), x.astype(np.int64),
                               s.ravel().astype(np.int64)])
        stdin = f"{rows} {K}\n" + " ".join(map(str, data.tolist()))
        out = subprocess.run([str(exe)], input=stdin.encode(), capture_output=True, check=True).stdout.decode()
        got = np.array(out.split(), dtype=np.int64)
        w8 = q.astype(np.int64) * np.repeat(s.T.astype(np.int64), G, axis=1)  # q * s_int [rows, K]
        np.testing.assert_array_equal(got, w8 @ x.astype(np.int64), err_msg=f"trial {trial}")

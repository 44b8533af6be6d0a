"""Stream-K's partition (csrc/stream_k.cuh, the one-warpgroup kernel's EP 28) checked on the CPU.

The header compiles for the host; this harness walks every CTA's run the way the kernel does (segment by segment) for
grids of 1 CTA up to one per unit, and checks:
- every unit (a tile's stage) is computed exactly once, and no run or segment is empty;
- only a run's first segment starts inside a tile (a contributor), and a tile whose first stage is in a run is owned
  by that CTA (own_lo .. own_hi), each tile by exactly one;
- an owner that does not compute its whole tile finds its contributors as CTAs owner + 1 .. contrib_end - 1, each of
  which starts its run inside that tile, and every contributor is added by exactly one owner;
- an owner waits only in its run's last segment (the contributors computed theirs first: no cycle of waits).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"

HARNESS = r"""
#include <cstdio>
#include <cstdlib>
#include <vector>
#include "stream_k.cuh"

static int fails = 0;
static void fail(const char* what, int tiles, int stages, int grid, int c) {
  if (fails++ < 10) printf("FAIL %s tiles %d stages %d grid %d cta %d\n", what, tiles, stages, grid, c);
}

static void check(int tiles, int stages, int grid) {
  const svdq::SkRuns runs{(int64_t)tiles * stages, grid, stages};
  std::vector<int> covered(tiles * stages, 0), owner(tiles, -1), contrib_tile(grid, -1), added(grid, 0);
  std::vector<std::pair<int, int>> waits;  // (owner, tile) where the owner adds contributors
  for (int c = 0; c < grid; ++c) {
    const int lo = runs.lo(c), hi = runs.lo(c + 1);
    if (hi <= lo) fail("empty run", tiles, stages, grid, c);
    for (int u = lo; u < hi;) {
      const svdq::SkSegment sg = runs.segment(u, hi);
      if (sg.nk <= 0 || sg.kt + sg.nk > stages || sg.tile * stages + sg.kt != u) fail("bad segment", tiles, stages, grid, c);
      for (int k = 0; k < sg.nk; ++k) covered[u + k]++;
      if (sg.kt > 0) {
        if (u != lo) fail("contributor not first in its run", tiles, stages, grid, c);
        contrib_tile[c] = sg.tile;
      } else {
        if (sg.tile < runs.own_lo(c) || sg.tile >= runs.own_hi(c)) fail("owned tile out of range", tiles, stages, grid, c);
        if (owner[sg.tile] >= 0) fail("two owners", tiles, stages, grid, c);
        owner[sg.tile] = c;
        if (sg.nk < stages) {
          if (u + sg.nk != hi) fail("owner waits before its run's end", tiles, stages, grid, c);
          if (runs.contrib_end(sg.tile) <= c + 1) fail("no contributor for a partial tile", tiles, stages, grid, c);
          waits.push_back({c, sg.tile});
        }
      }
      u += sg.nk;
    }
    int owned = 0;
    for (int t = runs.own_lo(c); t < runs.own_hi(c); ++t) owned++;
    for (int t = 0; t < tiles; ++t)
      if (t * stages >= lo && t * stages < hi) owned--;
    if (owned != 0) fail("own_lo .. own_hi is not the tiles starting in the run", tiles, stages, grid, c);
  }
  for (auto& w : waits)
    for (int c2 = w.first + 1; c2 < runs.contrib_end(w.second); ++c2) {
      if (contrib_tile[c2] != w.second) fail("a listed contributor is not in the tile", tiles, stages, grid, c2);
      added[c2]++;
    }
  for (int c = 0; c < grid; ++c)
    if ((contrib_tile[c] >= 0) != (added[c] == 1)) fail("contributor added not exactly once", tiles, stages, grid, c);
  for (int i = 0; i < tiles * stages; ++i)
    if (covered[i] != 1) fail("unit not computed exactly once", tiles, stages, grid, i);
  for (int t = 0; t < tiles; ++t)
    if (owner[t] < 0) fail("tile without owner", tiles, stages, grid, t);
}

int main() {
  const int tile_counts[] = {1, 2, 3, 5, 7, 16, 48, 96, 192};
  const int stage_counts[] = {1, 2, 3, 8, 10, 24, 96};
  int cases = 0;
  for (int tiles : tile_counts)
    for (int stages : stage_counts) {
      const int units = tiles * stages;
      for (int grid = 1; grid <= units && grid <= 140; ++grid, ++cases) check(tiles, stages, grid);
      if (units > 140) check(tiles, stages, units), ++cases;  // one unit per CTA
    }
  printf("cases %d fails %d\n", cases, fails);
  return fails ? 1 : 0;
}
"""


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    d = tmp_path_factory.mktemp("stream_k")
    (d / "h.cpp").write_text(HARNESS)
    exe = d / "h"
    subprocess.run([cxx, "-std=c++17", "-O1", f"-I{CSRC}", str(d / "h.cpp"), "-o", str(exe)], check=True)
    return exe


def test_every_unit_once_and_every_partial_added_once(harness):
    r = subprocess.run([str(harness)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fails 0" in r.stdout


def test_a_wrong_contributor_range_fails_the_harness(tmp_path):
    """The harness catches a contributor range one CTA short (the owner would miss a partial)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    header = (CSRC / "stream_k.cuh").read_text()
    broken = header.replace("return c < grid ? c : grid;", "return (c < grid ? c : grid) - 1;")
    assert broken != header
    (tmp_path / "stream_k.cuh").write_text(broken)
    (tmp_path / "h.cpp").write_text(HARNESS)
    subprocess.run([cxx, "-std=c++17", "-O1", f"-I{tmp_path}", str(tmp_path / "h.cpp"), "-o", str(tmp_path / "h")],
                   check=True)
    r = subprocess.run([str(tmp_path / "h")], capture_output=True, text=True)
    assert r.returncode != 0 and "contributor added not exactly once" in r.stdout

"""The pipelined register-fragment loop (csrc/rf_loop.cuh) checked on the CPU against PTX's rule for wgmma inputs.

The header's loop also compiles for the host, where its waits call a hook: this harness keeps a queue of commit groups
(issue(i, j) appends the group of stage i's k-step j; a wait completes the oldest until at most N are in flight, as
wgmma.wait_group N does) and checks, for tiles of 1 to 96 stages starting anywhere in the ring's count:
- widen(j) writes k-step j's fragments only once the last group that read them is complete (PTX: registers of an
  in-flight wgmma must not be written; ptxas serializes, or the result is undefined);
- issue(i, j) reads the fragments widened from stage i's words, fetched before;
- release(i) comes once all of stage i's groups are complete, each stage exactly once, in order;
- the loop keeps four groups issued before each wait (three in flight while it widens), so it does pipeline;
- with kRelease = 0 (the default), 1 or 2, stage i is released right after the next stage's k-step kRelease is issued.
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
#include <deque>
#include <utility>
#include <vector>

static std::deque<std::pair<int, int>> in_flight;  // (stage, k-step) of the groups issued and not complete
static int most_before_wait = 0;
void rf_host_wait(int n) {
  if ((int)in_flight.size() > most_before_wait) most_before_wait = (int)in_flight.size();
  while ((int)in_flight.size() > n) in_flight.pop_front();
}
#include "rf_loop.cuh"

static void fail(const char* what, int a, int b) {
  printf("FAIL %s %d %d\n", what, a, b);
  exit(1);
}
static bool flying(int i, int j) {
  for (auto& g : in_flight)
    if (g.first == i && g.second == j) return true;
  return false;
}

int main(int argc, char** argv) {
  const int first = atoi(argv[1]), count = atoi(argv[2]);
  int words = -1, next_fetch = first, next_release = first, issued = 0;
  int from[4] = {-1, -1, -1, -1}, reader[4][2] = {{-1, -1}, {-1, -1}, {-1, -1}, {-1, -1}};
  std::vector<int> done(count, 0);
  auto fetch = [&](int i) {
    if (i != next_fetch) fail("fetch out of order", i, next_fetch);
    words = i, ++next_fetch;
  };
  auto widen = [&](int j) {
    if (reader[j][0] >= 0 && flying(reader[j][0], reader[j][1])) fail("widened under its reader", reader[j][0], j);
    from[j] = words;
  };
  auto issue = [&](int i, int j) {
    if (from[j] != i) fail("issued fragments of another stage", i, j);
    if (issued != (i - first) * 4 + j) fail("issued out of order", i, j);
    ++issued;
    in_flight.emplace_back(i, j);
    reader[j][0] = i, reader[j][1] = j;
  };
  auto release = [&](int i) {
    if (i != next_release) fail("released out of order", i, next_release);
    if (i + 1 < first + count && issued != (i + 1 - first) * 4 + HREL + 1) fail("released at another k-step", i, issued);
    for (int j = 0; j < 4; ++j)
      if (flying(i, j)) fail("released with a group in flight", i, j);
    done[i - first] = 1, ++next_release;
  };
  svdq::rf_pipelined_loop<HREL>(first, count, fetch, widen, issue, release);
  if (issued != 4 * count) fail("groups issued", issued, 4 * count);
  for (int s = 0; s < count; ++s)
    if (!done[s]) fail("stage never released", first + s, 0);
  if (!in_flight.empty()) fail("groups left in flight", (int)in_flight.size(), 0);
  printf("OK %d\n", most_before_wait);
  return 0;
}
"""


def _compiler() -> str | None:
    return shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


@pytest.fixture(scope="module", params=[2, 1, 0], ids=lambda r: f"release{r}")
def harness(tmp_path_factory, request):
    if _compiler() is None:
        pytest.skip("needs a C++ compiler")
    d = tmp_path_factory.mktemp("rf_loop")
    (d / "harness.cpp").write_text(HARNESS)
    exe = d / "rf_loop"
    subprocess.run([_compiler(), "-std=c++17", "-O1", "-Wno-unknown-pragmas", f"-I{CSRC}", f"-DHREL={request.param}",
                    str(d / "harness.cpp"), "-o", str(exe)], check=True, capture_output=True)
    return exe


@pytest.mark.parametrize("first,count", [(0, 1), (0, 2), (7, 3), (3, 24), (100, 96), (1, 5)])
def test_pipelined_loop_keeps_ptx_wgmma_input_rule_and_releases_each_stage_once(harness, first, count):
    out = subprocess.run([str(harness), str(first), str(count)], capture_output=True, text=True).stdout.strip()
    assert out.startswith("OK"), out
    # four groups issued before a wait: the next k-step is widened under the three the wait leaves in flight
    assert int(out.split()[1]) == 4 or count == 0

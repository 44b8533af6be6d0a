// The register-fragment main loop pipelined within one warpgroup (perf-notes v2.31), shared by the two-warpgroup kernel
// (set_gemm_2l_rf_pipelined) and the ping-pong kernel. Each k-step's wgmmas are one commit group; after issuing one,
// the warpgroup waits until at most three groups are in flight, which completes the group four back (the last reader
// of the fragments it widens next), then widens the next k-step under the three. ptxas keeps these wgmmas
// unserialized (one IGMMA and WARPGROUP.DEPBAR.LE 3 per k-step in the SASS), unlike a stage-level double buffer (v2.8).
// The loop is plain code around four callbacks and the waits, so it also compiles for the host: there rf_wait calls a
// function the including file defines, and tests/test_rf_loop_host.py checks the loop's order against PTX's rule for
// wgmma inputs (no register written while a group that reads it may be in flight) with a simulated group queue.
#pragma once
#if defined(__CUDACC__)
#include "wgmma_s8.cuh"
#define SVDQ_RF_HD __device__ __forceinline__
#else
#define SVDQ_RF_HD inline
void rf_host_wait(int in_flight);  // (host tests) complete the oldest groups until at most in_flight remain
#endif

namespace svdq {

template <int N>
SVDQ_RF_HD void rf_wait() {
#if defined(__CUDACC__)
  wgmma_wait<N>();
#else
  rf_host_wait(N);
#endif
}

// Stages first .. first + count - 1 of the ring, four k-steps each: fetch(i) waits for stage i and loads its weight
// words, widen(j) widens k-step j of the words last loaded into its fragments, issue(i, j) issues k-step j of stage i
// (fence, wgmmas, commit), release(i) gives stage i back once its groups are complete (at the next stage's third
// k-step; the last stage after the loop, when every group is complete).
template <typename Fetch, typename Widen, typename Issue, typename Release>
SVDQ_RF_HD void rf_pipelined_loop(int first, int count, Fetch&& fetch, Widen&& widen, Issue&& issue, Release&& release) {
  fetch(first);
  widen(0);
  for (int i = first; i < first + count; ++i) {
    const bool next = i + 1 < first + count;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      issue(i, j);
      if (j == 3 && next) fetch(i + 1);
      rf_wait<3>();
      if (j == 2 && i > first) release(i - 1);
      if (j < 3) widen(j + 1);
      else if (next) widen(0);
    }
  }
  rf_wait<0>();
  release(first + count - 1);
}

// rf_pipelined_loop with each stage's weight words fetched in two halves (perf-notes v2.35's g.48): fetch_half(i, 0)
// waits for stage i and loads the words of its k-steps 0-1, fetch_half(i, 1) those of k-steps 2-3, each into the
// registers the same k-steps of the stage before were widened from: the next stage's first half right after this
// stage's third k-step is issued, its second half after the fourth. So the first half lands under this stage's
// fourth widening and wgmmas instead of being waited for at the next stage's first widening (v2.35's stall sampling:
// ~12 % of the consumer warps' time there).
template <typename FetchHalf, typename Widen, typename Issue, typename Release>
SVDQ_RF_HD void rf_pipelined_loop_halves(int first, int count, FetchHalf&& fetch_half, Widen&& widen, Issue&& issue,
                                         Release&& release) {
  fetch_half(first, 0);
  fetch_half(first, 1);
  widen(0);
  for (int i = first; i < first + count; ++i) {
    const bool next = i + 1 < first + count;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      issue(i, j);
      if (next && j >= 2) fetch_half(i + 1, j - 2);
      rf_wait<3>();
      if (j == 2 && i > first) release(i - 1);
      if (j < 3) widen(j + 1);
      else if (next) widen(0);
    }
  }
  rf_wait<0>();
  release(first + count - 1);
}

}  // namespace svdq

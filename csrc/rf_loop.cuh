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
// (fence, wgmmas, commit), release(i) gives stage i back once its groups are complete: after the next stage's k-step
// kRelease, waiting there until kRelease + 1 groups remain in flight (0, the default since perf-notes v2.35's g.49: its
// first, which gives the producer two k-steps more lead for the loads than 2, the third, where the wait that keeps
// three groups in flight already completes stage i); the last stage after the loop, when every group is complete.
template <int kRelease = 0, typename Fetch, typename Widen, typename Issue, typename Release>
SVDQ_RF_HD void rf_pipelined_loop(int first, int count, Fetch&& fetch, Widen&& widen, Issue&& issue,
                                  Release&& release) {
  static_assert(kRelease >= 0 && kRelease <= 2, "a stage is released at one of the next stage's first three k-steps");
  fetch(first);
  widen(0);
  for (int i = first; i < first + count; ++i) {
    const bool next = i + 1 < first + count;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      issue(i, j);
      if (j == 3 && next) fetch(i + 1);
      // at k-step kRelease, groups (i, 0 .. kRelease) may stay in flight: stage i - 1's are then complete
      if (kRelease == 2 || j != kRelease || i == first) rf_wait<3>();
      else rf_wait<kRelease + 1>();
      if (j == kRelease && i > first) release(i - 1);
      if (j < 3) widen(j + 1);
      else if (next) widen(0);
    }
  }
  rf_wait<0>();
  release(first + count - 1);
}

}  // namespace svdq

// Stream-K's partition of a GEMM's (tile, stage) units over a grid (perf-notes v2.45's g.69), shared by the
// one-warpgroup kernel's stream-K instance (EP 28) and its host test (tests/test_stream_k_host.py). The units are the
// tiles' stages, tile-major; CTA c runs units lo(c) .. lo(c + 1) - 1, so the runs differ by at most one stage. A run
// is cut into segments at tile boundaries. A CTA owns the tiles whose first stage is in its run (own_lo .. own_hi -
// 1) and finishes them; only a run's first segment can start inside a tile, and that tile's owner is the CTA before,
// whose segment of it is its run's last. So the CTAs whose partials an owner adds (owner + 1 .. contrib_end - 1)
// computed them first in their runs, and nothing waits in a cycle.
#pragma once
#include <cstdint>
#if defined(__CUDACC__)
#define SVDQ_SK_HD __host__ __device__ __forceinline__
#else
#define SVDQ_SK_HD inline
#endif

namespace svdq {

// The workspace: kSkMaxCtas flags, 128 bytes apart (a fixed region, so a launch on a larger grid never reads a slot's
// bytes as a flag), then one slot of partials per CTA.
constexpr int kSkMaxCtas = 1024;
constexpr int kSkFlagBytes = 128;

struct SkSegment {
  int tile, kt, nk;  // the tile, its first stage in this segment, the segment's stages
};

struct SkRuns {
  int64_t units;  // tiles x stages per tile
  int grid, stages;

  SVDQ_SK_HD int lo(int c) const { return (int)((int64_t)c * units / grid); }
  // the segment starting at unit u of a run ending before unit hi
  SVDQ_SK_HD SkSegment segment(int u, int hi) const {
    const int tile = u / stages, kt = u - tile * stages;
    return {tile, kt, stages - kt < hi - u ? stages - kt : hi - u};
  }
  // CTA c's owned tiles: own_lo(c) .. own_hi(c) - 1 (none where equal)
  SVDQ_SK_HD int own_hi(int c) const { return (lo(c + 1) + stages - 1) / stages; }
  SVDQ_SK_HD int own_lo(int c) const {
    const int first = (lo(c) + stages - 1) / stages, hi = own_hi(c);
    return first < hi ? first : hi;
  }
  // one past the last CTA whose run starts inside tile t: lo(c) < X <=> c < X * grid / units, X the tile's end
  SVDQ_SK_HD int contrib_end(int t) const {
    const int c = (int)(((int64_t)(t + 1) * stages * grid + units - 1) / units);
    return c < grid ? c : grid;
  }
};

}  // namespace svdq

"""Device timing shared by the benchmark scripts (CUDA events; each call cycles through input sets)."""
from __future__ import annotations

import statistics
import sys

import torch


def time_eager(fn, args_list, reps: int, warmup: int = 5) -> float:
    """Median milliseconds of one eager call (host dispatch included), cycling through args_list."""
    for i in range(warmup):
        fn(*args_list[i % len(args_list)])
    torch.cuda.synchronize()
    events = []
    for i in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn(*args_list[i % len(args_list)])
        e.record()
        events.append((s, e))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def time_graph(fn, args_list, reps: int, warmup: int = 3) -> float:
    """Median device milliseconds per call: one CUDA graph holds one call per input set (so the host
    launch cost is out, as under torch.compile's CUDA graphs); each replay is timed with events.
    Falls back to eager timing when the calls cannot be captured."""
    for i in range(warmup):
        fn(*args_list[i % len(args_list)])
    torch.cuda.synchronize()
    try:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for a in args_list:
                fn(*a)
    except Exception as exc:  # noqa: BLE001 - not capturable: eager timing
        print(f"graph capture failed ({type(exc).__name__}); eager timing", file=sys.stderr)
        torch.cuda.synchronize()
        return time_eager(fn, args_list, reps)
    g.replay()
    torch.cuda.synchronize()
    events = []
    for _ in range(max(3, reps // len(args_list))):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        g.replay()
        e.record()
        events.append((s, e))
    torch.cuda.synchronize()
    t = statistics.median(s.elapsed_time(e) for s, e in events) / len(args_list)
    del g
    return t

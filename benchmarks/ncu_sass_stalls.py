"""Where a kernel's warps stall, per SASS instruction: a summary of Nsight Compute's source page.

usage: ncu --clock-control none --section SourceCounters --section WarpStateStats -o rep ... python3 chain_ncu.py M K N
       ncu --import rep.ncu-rep --page source --csv --print-source sass > sass.csv
       python benchmarks/ncu_sass_stalls.py sass.csv [--top 40] [--range 0x7f..8b10:0x7f..94b0]

Reads the CSV's address, SASS text and warp-stall-sampling columns (found by name, so that other columns in between
do not matter), and prints: the total samples, the share by opcode (HGMMA, WARPGROUP.DEPBAR, SYNCS, BAR, LDS, ...),
and the instructions holding the most samples with their share and their address, in address order within the top,
so that runs of hot instructions (a loop's waits) read as one block. Every stall-reason column the CSV has (names with
"stall" in them) is summed too. With the "Instructions Executed" column it also counts each mbarrier wait's misses:
ptxas compiles `mbarrier.try_wait` in a loop as a first try in line and a retry loop out of line (a TRYWAIT and a
branch back to it), so the retry loop's exits are the waits that found the phase incomplete. (The samples alone hide
this: a warp sleeping inside a try-wait is sampled on the instruction after it, as `long_sb`.) With --range FIRST:LAST
(addresses as the CSV gives them, both included) it also summarizes that span alone, e.g. a main loop from its first
instruction to its back branch, with the span's share of all samples.
"""
from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class SassLine:
    address: int
    text: str
    samples: float
    not_issued: float = 0.0
    reasons: dict[str, float] = field(default_factory=dict)
    executed: float = 0.0

    @property
    def opcode(self) -> str:
        """The opcode without predicate and modifiers: "@!P0 SYNCS.ARRIVE.TRANS64 [R1]" -> "SYNCS"."""
        words = [w for w in self.text.split() if not w.startswith("@")]
        return words[0].split(".")[0] if words else ""

    @property
    def branch_target(self) -> int | None:
        """A BRA's target address ("@!P0 BRA 0x7f5b...a10" -> 0x7f5b...a10), else None."""
        m = re.search(r"\bBRA\s+(0x[0-9a-fA-F]+)", self.text)
        return int(m.group(1), 16) if m else None


@dataclass
class BarrierWait:
    """An mbarrier wait: its first try (address), its retry loop (address), how often it ran (waits), how many of
    those found the phase incomplete (missed: the retry loop's exits) and the retry tries those took (retries)."""
    first: int
    retry: int
    text: str
    waits: float
    missed: float
    retries: float


def _number(cell: str) -> float:
    cell = cell.strip().replace(",", "")
    try:
        return float(cell)
    except ValueError:
        return 0.0


def _address(cell: str) -> int | None:
    cell = cell.strip()
    try:
        return int(cell, 16) if cell.lower().startswith("0x") else int(cell)
    except ValueError:
        return None


def parse(rows: list[list[str]]) -> list[SassLine]:
    """The CSV's rows (header first, possibly after lines that are not the table) -> its SASS lines. Columns: the
    first whose name has "address", the first named "source" (else one with "source" in it), all-samples = the first
    with "sampling" and "all" (else the first with "sampling"), not-issued = one with "sampling" and "not"; reason
    columns = names with "stall" that are not the sampling columns."""
    head_at = next((i for i, r in enumerate(rows) if any("address" in c.lower() for c in r)
                    and any("source" in c.lower() for c in r)), None)
    if head_at is None:
        raise ValueError("no header with an address and a source column: is this `--page source --csv`?")
    head = [c.strip().lower() for c in rows[head_at]]

    def find(pred, default=None):
        return next((i for i, c in enumerate(head) if pred(c)), default)

    addr = find(lambda c: "address" in c)
    src = find(lambda c: c == "source", find(lambda c: "source" in c))
    allc = find(lambda c: "sampling" in c and "all" in c, find(lambda c: "sampling" in c))
    notc = find(lambda c: "sampling" in c and "not" in c)
    exe = find(lambda c: c == "instructions executed")
    if allc is None:
        raise ValueError("no warp stall sampling column: collect with --section SourceCounters")
    reasons = [i for i, c in enumerate(head) if "stall" in c and i not in (allc, notc)]
    out = []
    for r in rows[head_at + 1:]:
        if len(r) <= max(addr, src, allc):
            continue
        a = _address(r[addr])
        if a is None:
            continue
        out.append(SassLine(a, r[src].strip(), _number(r[allc]), _number(r[notc]) if notc is not None else 0.0,
                            {rows[head_at][i].strip(): _number(r[i]) for i in reasons if i < len(r)},
                            _number(r[exe]) if exe is not None and exe < len(r) else 0.0))
    return out


def barrier_waits(lines: list[SassLine], reach: int = 0x40) -> list[BarrierWait]:
    """The mbarrier waits compiled as a first try in line and a retry loop out of line. A retry loop: a predicated
    branch back by at most `reach` bytes over a TRYWAIT; its exits are the executions of the instruction after that
    branch. A first try: a TRYWAIT outside every retry loop whose next predicated branch (within 16 instructions) goes to
    a retry loop's start."""
    by_addr = {x.address: i for i, x in enumerate(lines)}
    loops = {}  # start address -> (TRYWAIT line, exits)
    inside = set()
    for i, x in enumerate(lines):
        t = x.branch_target
        if t is None or not x.text.lstrip().startswith("@") or not (0 <= x.address - t <= reach) or t not in by_addr:
            continue
        body = lines[by_addr[t]:i + 1]
        tw = next((y for y in body if "TRYWAIT" in y.text), None)
        if tw is None:
            continue
        loops[t] = (tw, lines[i + 1].executed if i + 1 < len(lines) else 0.0)
        inside.update(y.address for y in body)
    out = []
    for i, x in enumerate(lines):
        if "TRYWAIT" not in x.text or x.address in inside:
            continue
        for y in lines[i + 1:i + 17]:
            t = y.branch_target
            if t is not None and y.text.lstrip().startswith("@"):
                if t in loops:
                    tw, exits = loops[t]
                    out.append(BarrierWait(x.address, t, x.text, x.executed, exits, tw.executed))
                break
    return out


def summarize(lines: list[SassLine], top: int = 40) -> dict:
    """{"total": samples, "by_opcode": [(opcode, share)], "top": [(address, text, share)] in address order,
    "reasons": {name: share}}; shares of the total samples."""
    total = sum(x.samples for x in lines) or 1.0
    ops = Counter()
    for x in lines:
        ops[x.opcode] += x.samples
    hot = sorted(sorted(lines, key=lambda x: -x.samples)[:top], key=lambda x: x.address)
    reasons = Counter()
    for x in lines:
        reasons.update(x.reasons)
    rsum = sum(reasons.values()) or 1.0
    return {"total": sum(x.samples for x in lines),
            "by_opcode": [(o, s / total) for o, s in ops.most_common(12)],
            "top": [(x.address, x.text, x.samples / total) for x in hot],
            "reasons": {k: v / rsum for k, v in reasons.most_common(12)}}


def in_range(lines: list[SassLine], span: str) -> list[SassLine]:
    """The lines whose address lies in "FIRST:LAST" (hex or decimal, both included)."""
    first, sep, last = span.partition(":")
    lo, hi = _address(first), _address(last)
    if not sep or lo is None or hi is None or lo > hi:
        raise ValueError(f"--range: expected FIRST:LAST addresses, first <= last, got {span!r}")
    return [x for x in lines if lo <= x.address <= hi]


def _print_summary(s: dict) -> None:
    print("by opcode: " + ", ".join(f"{o} {100 * v:.1f}%" for o, v in s["by_opcode"]))
    if s["reasons"]:
        print("by reason: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in s["reasons"].items()))
    print(f"the {len(s['top'])} hottest instructions, in address order:")
    for a, text, share in s["top"]:
        print(f"  {a:#07x} {100 * share:5.1f}%  {text[:110]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--range", default=None, help="FIRST:LAST: also summarize the lines between these addresses")
    args = ap.parse_args(argv)
    with open(args.csv, newline="") as f:
        rows = list(csv.reader(f))
    lines = parse(rows)
    s = summarize(lines, args.top)
    print(f"warp stall samples: {s['total']:.0f}")
    _print_summary(s)
    if args.range:
        part = in_range(lines, args.range)
        r = summarize(part, args.top)
        print(f"range {args.range}: {len(part)} instructions, {r['total']:.0f} samples "
              f"({100 * r['total'] / (s['total'] or 1.0):.1f} % of all); shares below are of the range")
        _print_summary(r)
    waits = [w for w in barrier_waits(lines) if w.waits > 0]
    if waits:
        print("mbarrier waits (first try in line, retry loop out of line), by how often they missed:")
        for w in sorted(waits, key=lambda w: -w.missed):
            per = f", {w.retries / w.missed:.1f} retries each" if w.missed else ""
            print(f"  {w.first:#07x} {w.waits:10.0f} waits, {w.missed:9.0f} missed ({100 * w.missed / w.waits:4.1f} %){per}"
                  f"  {w.text.strip()[:70]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Checks a Chrome trace (what `--profile_trace` writes) against the Trace Event Format.

    python3 scripts/check_trace.py TRACE.json

Every event has `ph`, `ts`, `pid`, `tid` (numbers where they must be); complete events (`X`)
have a `dur` >= 0; begin/end pairs (`B`/`E`) balance per track; the slices of each track
(`X`, and matched `B`/`E`) nest: each either encloses or is disjoint from the next; flow events
(`s`/`f`) come in pairs sharing an `id`. Prints a summary and exits 1 with every problem listed.
Not part of `cargo test` (it needs Python); the viewer check is scripts/render_trace.sh.
"""

import json
import sys
from collections import defaultdict

# Tolerance in microseconds for nesting: ts and dur are rounded to nanoseconds.
EPS_US = 0.002


def check(path):
    with open(path) as f:
        doc = json.load(f)
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    problems = []
    slices = defaultdict(list)  # (pid, tid) -> [(start, end, name)]
    open_b = defaultdict(list)
    flows = defaultdict(set)
    counts = defaultdict(int)
    for i, e in enumerate(events):
        for k in ("ph", "ts", "pid", "tid"):
            if k not in e:
                problems.append(f"event {i}: no `{k}`: {e}")
        ph = e.get("ph")
        counts[ph] += 1
        if not isinstance(e.get("ts", 0), (int, float)):
            problems.append(f"event {i}: ts is not a number")
        track = (e.get("pid"), e.get("tid"))
        if ph == "X":
            dur = e.get("dur")
            if not isinstance(dur, (int, float)) or dur < 0:
                problems.append(f"event {i} ({e.get('name')}): complete event without a dur >= 0")
                continue
            slices[track].append((e["ts"], e["ts"] + dur, e.get("name")))
        elif ph == "B":
            open_b[track].append(e)
        elif ph == "E":
            if not open_b[track]:
                problems.append(f"event {i}: E without a B on track {track}")
            else:
                b = open_b[track].pop()
                slices[track].append((b["ts"], e["ts"], b.get("name")))
        elif ph in ("s", "f"):
            flows[e.get("id")].add(ph)
    for track, stack in open_b.items():
        for b in stack:
            problems.append(f"track {track}: B {b.get('name')!r} at {b['ts']} never ends")
    for fid, phs in flows.items():
        if phs != {"s", "f"}:
            problems.append(f"flow {fid}: has {sorted(phs)}, needs s and f")
    for track, sl in slices.items():
        sl.sort(key=lambda s: (s[0], -(s[1] - s[0])))
        stack = []
        for start, end, name in sl:
            while stack and stack[-1][1] <= start + EPS_US:
                stack.pop()
            if stack and end > stack[-1][1] + EPS_US:
                problems.append(
                    f"track {track}: {name!r} [{start}, {end}] overlaps {stack[-1][2]!r} "
                    f"[{stack[-1][0]}, {stack[-1][1]}] without nesting"
                )
            stack.append((start, end, name))
    n_slices = sum(len(s) for s in slices.values())
    print(
        f"{path}: {len(events)} events ({dict(counts)}), {n_slices} slices on "
        f"{len(slices)} tracks, {len(flows)} flows"
    )
    return problems


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    problems = check(sys.argv[1])
    for p in problems[:50]:
        print("problem:", p)
    if problems:
        print(f"{len(problems)} problems")
        sys.exit(1)
    print("ok: valid Trace Event Format, every track nests")


if __name__ == "__main__":
    main()

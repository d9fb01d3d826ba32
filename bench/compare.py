#!/usr/bin/env python3
"""Joins benchmark outputs (JSON lines {"op", "shape", "ms"}) and prints, per op, our time, the
reference's time and the ratio ours / reference (below 1.0 means we are faster).

usage: compare.py OURS.jsonl[,OURS2.jsonl...] REFERENCE.jsonl[,REF2.jsonl...] [--goal 1.2]

With several comma-separated files per side (rounds run alternately, ours then the reference),
each op's time is the best round: the machine is a shared VM whose speed drifts by 20% over
minutes, and the fastest round is the one least disturbed.
"""
import json
import sys


def load(paths):
    rows = {}
    for path in paths.split(","):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    r = json.loads(line)
                    if r["op"] not in rows or r["ms"] < rows[r["op"]]["ms"]:
                        rows[r["op"]] = r
    return rows


def main():
    args = sys.argv[1:]
    goal = None
    if "--goal" in args:
        i = args.index("--goal")
        goal = float(args[i + 1])
        del args[i : i + 2]
    ours, ref = load(args[0]), load(args[1])
    print(f"{'op':<28} {'shape':<34} {'ours ms':>10} {'torch ms':>10} {'ratio':>7}")
    worst = 0.0
    for op, r in ours.items():
        if op not in ref:
            print(f"{op:<28} {r.get('shape', ''):<34} {r['ms']:>10.3f} {'-':>10} {'-':>7}")
            continue
        ratio = r["ms"] / ref[op]["ms"]
        worst = max(worst, ratio)
        flag = "" if goal is None or ratio <= goal else "  (over goal)"
        print(f"{op:<28} {r.get('shape', ''):<34} {r['ms']:>10.3f} {ref[op]['ms']:>10.3f} {ratio:>7.2f}{flag}")
    missing = [op for op in ref if op not in ours]
    if missing:
        print("only in the reference:", ", ".join(missing))
    if goal is not None:
        print(f"worst ratio {worst:.2f} (goal <= {goal})")


if __name__ == "__main__":
    main()

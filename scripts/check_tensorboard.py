#!/usr/bin/env python3
"""Checks the TensorBoard event files of a `cotmae pretrain` run against its trainer_log.jsonl.

TensorBoard silently drops records whose CRC or framing is wrong, so "the files exist" proves
nothing. This reads the logging directory with TensorBoard's own EventAccumulator (the reader
behind the TensorBoard UI, with its purge of steps re-logged after a resume) and checks that:
  - every key of every JSON line appears as the scalar tag `train/<key>` at that line's step,
    with the same value once both are rounded to float32 (what TensorBoard stores);
  - each tag has exactly the steps of the JSON lines, once each, and no other tag exists.

Usage: python scripts/check_tensorboard.py --output_dir OUT [--logging_dir DIR]
(the logging directory defaults to the one recorded in OUT/trainer_state.json). Needs
`pip install tensorboard numpy`. Exit status 0 when everything matches, 1 otherwise.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import (
    SCALARS,
    EventAccumulator,
)


def expected_scalars(log_path):
    """{tag: {step: value}} from the JSON lines (null: NaN)."""
    want = {}
    with open(log_path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            entry = json.loads(line)
            step = entry.pop("step")
            for key, value in entry.items():
                tag = f"train/{key}"
                steps = want.setdefault(tag, {})
                if step in steps:
                    raise SystemExit(f"{log_path}:{n}: step {step} of {key} logged twice")
                steps[step] = math.nan if value is None else float(value)
    return want


def same_f32(a, b):
    a, b = np.float32(a), np.float32(b)
    return (np.isnan(a) and np.isnan(b)) or a == b


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output_dir", required=True)
    ap.add_argument("--logging_dir")
    args = ap.parse_args()

    log_path = os.path.join(args.output_dir, "trainer_log.jsonl")
    logging_dir = args.logging_dir
    if logging_dir is None:
        with open(os.path.join(args.output_dir, "trainer_state.json")) as f:
            logging_dir = json.load(f)["logging_dir"]
    files = sorted(n for n in os.listdir(logging_dir) if "tfevents" in n)
    if not files:
        raise SystemExit(f"{logging_dir}: no event files")

    want = expected_scalars(log_path)
    acc = EventAccumulator(logging_dir, size_guidance={SCALARS: 0})
    acc.Reload()
    have_tags = set(acc.Tags()["scalars"])

    errors = []
    checked = 0
    for tag in sorted(want):
        if tag not in have_tags:
            errors.append(f"{tag}: missing from TensorBoard")
            continue
        events = acc.Scalars(tag)
        steps = [e.step for e in events]
        if len(steps) != len(set(steps)):
            errors.append(f"{tag}: some steps appear more than once: {steps}")
        if set(steps) != set(want[tag]):
            missing = sorted(set(want[tag]) - set(steps))
            extra = sorted(set(steps) - set(want[tag]))
            errors.append(f"{tag}: steps missing {missing[:10]}, unexpected {extra[:10]}")
        for e in events:
            if e.step in want[tag]:
                checked += 1
                if not same_f32(e.value, want[tag][e.step]):
                    errors.append(
                        f"{tag} step {e.step}: TensorBoard {e.value!r}, "
                        f"JSON {want[tag][e.step]!r}"
                    )
    for tag in sorted(have_tags - set(want)):
        errors.append(f"{tag}: in TensorBoard but not in {log_path}")

    print(
        f"{logging_dir}: {len(files)} event file(s), {len(have_tags)} tags, "
        f"{checked} scalars compared with {log_path}"
    )
    for e in errors[:50]:
        print("MISMATCH", e)
    if errors:
        print(f"FAILED: {len(errors)} problem(s)")
        sys.exit(1)
    print("OK: every logged value is in TensorBoard, at its step, once")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""HF reference for bench/src/bin/tokenizer.rs: BertTokenizerFast (the `tokenizers` library) batch
encoding of the same text with the same thread count. Prints JSON lines {"op", "shape", "ms",
"ids_hash", "n_ids", ...}; `ms` is the best of --repeats runs of the backend's `encode_batch` (the
Rust core, without building Python lists), and `call_ms` the full `tokenizer(texts)` call.

usage: python3 bench/tokenizer_hf.py [--threads 2] [--mb 20] [--repeats 3] [--fixtures DIR]
"""
import argparse
import json
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

C1 = 0x9E3779B97F4A7C15
C2 = 0xC2B2AE3D27D4EB4F


def ids_hash(batch):
    """Same as `ids_hash` in bench/src/bin/tokenizer.rs."""
    import numpy as np

    parts = []
    sentinel = np.array([0xFFFFFFFF], dtype=np.uint64)
    for ids in batch:
        parts.append(np.asarray(ids, dtype=np.uint64))
        parts.append(sentinel)
    s = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
    k = np.arange(1, len(s) + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        terms = ((s + np.uint64(1)) * np.uint64(C1)) ^ (k * np.uint64(C2))
        return int(terms.sum(dtype=np.uint64))


def load_texts(fixtures, mb):
    base = []
    with open(os.path.join(fixtures, "sentences.jsonl"), encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if "fast" not in rec:
                base.append(rec["text"])
    nbytes = sum(len(t.encode("utf-8")) for t in base)
    reps = max(1, math.ceil(mb * 1e6 / max(nbytes, 1)))
    return base * reps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mb", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fixtures", default=os.path.join(ROOT, "tests", "fixtures", "tokenizer"))
    args = ap.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    os.environ["RAYON_RS_NUM_CPUS"] = str(args.threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import tokenizers
    import transformers

    try:
        from transformers import BertTokenizerFast
    except ImportError:
        from transformers import BertTokenizer as BertTokenizerFast

    tok = BertTokenizerFast(os.path.join(args.fixtures, "vocab.txt"), do_lower_case=True)
    backend = tok.backend_tokenizer
    texts = load_texts(args.fixtures, args.mb)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    shape = f"lines={len(texts)},MB={nbytes / 1e6:.1f}"
    for op, special, max_len in (("tokenize", False, None), ("encode_trunc128", True, 128)):
        if max_len is None:
            backend.no_truncation()
        else:
            backend.enable_truncation(max_len)
        best = math.inf
        encs = None
        for _ in range(max(1, args.repeats)):
            encs = None  # free the previous result outside the timed region
            t0 = time.perf_counter()
            encs = backend.encode_batch(texts, add_special_tokens=special)
            best = min(best, (time.perf_counter() - t0) * 1e3)
        ids = [e.ids for e in encs]
        del encs
        backend.no_truncation()
        t0 = time.perf_counter()
        call_ids = tok(texts, add_special_tokens=special, truncation=max_len is not None, max_length=max_len)["input_ids"]
        call_ms = (time.perf_counter() - t0) * 1e3
        if call_ids != ids:
            print(f"{op}: tokenizer(texts) and backend encode_batch disagree", file=sys.stderr)
        print(json.dumps({
            "op": op, "shape": shape, "ms": round(best, 3), "ids_hash": f"{ids_hash(ids):016x}",
            "n_ids": sum(map(len, ids)), "threads": args.threads,
            "mb_per_s": round(nbytes / 1e6 / (best / 1e3), 1), "call_ms": round(call_ms, 3),
            "impl": f"transformers {transformers.__version__} / tokenizers {tokenizers.__version__}",
        }), flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The FAISS reference for the exact-search benchmark (bench/src/bin/search.rs): IndexFlatIP on
the data `search gen DIR` wrote (DIR/queries and DIR/corpus, embeddings.safetensors each).

usage:
  search_faiss.py DIR [--depth 1000] [--threads 2] [--reps 3]
      times index.search (one warm-up call, then --reps timed calls, median) and prints one JSON
      line {"op", "shape", "ms"} like the Rust side; saves its top-k to DIR/faiss_topk.npz.
  search_faiss.py DIR --check
      compares DIR/ours_topk.safetensors with DIR/faiss_topk.npz: the two top-k lists must agree
      up to ties (module doc of check()); exits 1 otherwise.
  search_faiss.py --compare OURS.jsonl[,...] FAISS.jsonl[,...]
      prints each side's best round and the ratio ours / faiss (below 1.0: we are faster).
"""
import argparse
import json
import sys
import time

import numpy as np


def load(dir_):
    from safetensors.numpy import load_file

    q = load_file(f"{dir_}/queries/embeddings.safetensors")["embeddings"]
    c = load_file(f"{dir_}/corpus/embeddings.safetensors")["embeddings"]
    return np.ascontiguousarray(q, dtype=np.float32), np.ascontiguousarray(c, dtype=np.float32)


def run(args):
    import faiss

    faiss.omp_set_num_threads(args.threads)
    q, c = load(args.dir)
    index = faiss.IndexFlatIP(c.shape[1])
    index.add(c)
    index.search(q, args.depth)  # warm-up
    times = []
    for _ in range(max(1, args.reps)):
        t = time.perf_counter()
        scores, indices = index.search(q, args.depth)
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    d = c.shape[1]
    print(json.dumps({
        "op": f"search_flat_ip_k{args.depth}",
        "shape": f"[{q.shape[0]},{d}], [{c.shape[0]},{d}]",
        "ms": times[len(times) // 2],
    }))
    np.savez(f"{args.dir}/faiss_topk.npz", scores=scores, indices=indices)


def check(dir_):
    """Agreement up to ties. Per query, with tol = 1e-5 x the largest |score| of the query:
    - the i-th scores of the two lists differ by at most tol (same ranked score profile);
    - wherever the ids at rank i differ, the two scores there are within tol of each other (an
      order swap of near-equal scores), and every id one list has and the other lacks scores
      within tol of the other list's last (k-th) score (a boundary tie).
    The two sides sum 768 products in different orders, so near-equal scores may swap."""
    from safetensors.numpy import load_file

    ours = load_file(f"{dir_}/ours_topk.safetensors")
    ref = np.load(f"{dir_}/faiss_topk.npz")
    oi, os_ = ours["indices"], ours["scores"]
    fi, fs = ref["indices"], ref["scores"]
    if oi.shape != fi.shape:
        print(f"check: shapes differ: ours {oi.shape}, faiss {fi.shape}")
        return 1
    identical, bad, max_diff = 0, 0, 0.0
    for r in range(oi.shape[0]):
        tol = 1e-5 * max(1.0, float(np.abs(fs[r]).max()))
        diff = float(np.abs(os_[r] - fs[r]).max())
        max_diff = max(max_diff, diff)
        ok = diff <= tol
        swapped = oi[r] != fi[r]
        ok &= bool(np.all(np.abs(os_[r][swapped] - fs[r][swapped]) <= tol))
        only_ours = np.setdiff1d(oi[r], fi[r])
        only_ref = np.setdiff1d(fi[r], oi[r])
        score_of = {int(i): float(s) for i, s in zip(oi[r], os_[r])}
        score_of_ref = {int(i): float(s) for i, s in zip(fi[r], fs[r])}
        ok &= all(abs(score_of[int(i)] - float(fs[r][-1])) <= tol for i in only_ours)
        ok &= all(abs(score_of_ref[int(i)] - float(os_[r][-1])) <= tol for i in only_ref)
        identical += int(not swapped.any())
        bad += int(not ok)
    n = oi.shape[0]
    print(f"check: {identical}/{n} queries with identical top-{oi.shape[1]} lists, "
          f"{n - identical - bad} differing only by near-ties, {bad} disagreeing; "
          f"max |score diff| {max_diff:.3g}")
    return 1 if bad else 0


def best(paths):
    rows = {}
    for path in paths.split(","):
        with open(path) as f:
            for line in f:
                if line.startswith("{"):
                    r = json.loads(line)
                    if r["op"] not in rows or r["ms"] < rows[r["op"]]["ms"]:
                        rows[r["op"]] = r
    return rows


def compare(ours_paths, ref_paths):
    ours, ref = best(ours_paths), best(ref_paths)
    print(f"{'op':<22} {'shape':<30} {'ours ms':>10} {'faiss ms':>10} {'ours/faiss':>10} {'speed-up':>9}")
    for op, r in ours.items():
        if op in ref:
            ratio = r["ms"] / ref[op]["ms"]
            print(f"{op:<22} {r['shape']:<30} {r['ms']:>10.1f} {ref[op]['ms']:>10.1f} "
                  f"{ratio:>10.3f} {1 / ratio:>8.2f}x")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir", nargs="?")
    p.add_argument("--depth", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--check", action="store_true")
    p.add_argument("--compare", nargs=2, metavar=("OURS", "FAISS"))
    args = p.parse_args()
    if args.compare:
        compare(*args.compare)
    elif args.check:
        sys.exit(check(args.dir))
    else:
        run(args)


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Exact inner-product search, ours (retrieval::search) against FAISS IndexFlatIP, on the same
# data and with the same thread count: 200,000 x 768 corpus, 1000 queries, k = 1000 by default.
# The two alternate for ROUNDS rounds (default 3); each side keeps its best round. After every
# round the two top-k lists are checked to agree up to ties. Prints the ratio.
# usage: bench/run_search.sh [THREADS [NQ NC DIM [DEPTH]]]    (needs pip install faiss-cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/require_python.sh faiss numpy
threads="${1:-2}" nq="${2:-1000}" nc="${3:-200000}" dim="${4:-768}" depth="${5:-1000}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cargo build --release -p bench --bin search >&2
bin="${CARGO_TARGET_DIR:-target}/release/search"
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, threads=$threads"
echo "# command: bash bench/run_search.sh $threads $nq $nc $dim $depth"
echo "# faiss $(python3 -c 'import faiss; print(faiss.__version__)'), numpy $(python3 -c 'import numpy; print(numpy.__version__)')"
"$bin" gen "$out" "$nq" "$nc" "$dim"
ours=() ref=()
for round in $(seq "${ROUNDS:-3}"); do
  echo "# round $round"
  RAYON_NUM_THREADS="$threads" "$bin" run "$out" "$depth" | tee "$out/ours.$round.jsonl"
  OMP_NUM_THREADS="$threads" python3 bench/search_faiss.py "$out" --depth "$depth" --threads "$threads" | tee "$out/faiss.$round.jsonl"
  python3 bench/search_faiss.py "$out" --check
  ours+=("$out/ours.$round.jsonl") ref+=("$out/faiss.$round.jsonl")
done
python3 bench/search_faiss.py --compare "$(IFS=,; echo "${ours[*]}")" "$(IFS=,; echo "${ref[*]}")"

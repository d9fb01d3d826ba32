#!/usr/bin/env bash
# The linear-layer GEMMs of BERT-base alone, ours (gemm crate, matmul_bias) against PyTorch's
# F.linear, same threads, alternating ROUNDS rounds (default 3), best round per side.
# usage: bench/run_linear.sh [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/require_python.sh torch
threads="${1:-2}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
bin="${CARGO_TARGET_DIR:-target}/release"
cargo build --release -p bench --bin linear_gemm >&2
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, threads=$threads"
echo "# command: bash bench/run_linear.sh $threads"
ours=() ref=()
for round in $(seq "${ROUNDS:-3}"); do
  echo "# round $round"
  RAYON_NUM_THREADS="$threads" "$bin"/linear_gemm | tee "$out/ours.$round.jsonl"
  OMP_NUM_THREADS="$threads" python3 bench/linear_torch.py --threads "$threads" | tee "$out/torch.$round.jsonl"
  ours+=("$out/ours.$round.jsonl") ref+=("$out/torch.$round.jsonl")
done
python3 bench/compare.py "$(IFS=,; echo "${ours[*]}")" "$(IFS=,; echo "${ref[*]}")"

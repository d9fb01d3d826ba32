#!/usr/bin/env bash
# Runs the CPU op benchmark for our tensor library and for PyTorch with the same thread count in
# one go, then prints each op's time ratio. The two alternate for ROUNDS rounds (default 3) and
# each op keeps its best round on each side. usage: bench/run_ops.sh [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/require_python.sh torch
threads="${1:-2}"
out="$(mktemp -d)"
cargo build --release -p bench --bin ops >&2
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, threads=$threads"
echo "# command: bash bench/run_ops.sh $threads"
echo "# torch $(python3 -c 'import torch; print(torch.__version__)')"
ours=() ref=()
for round in $(seq "${ROUNDS:-3}"); do
  echo "# round $round"
  RAYON_NUM_THREADS="$threads" target/release/ops | tee "$out/ours.$round.jsonl"
  OMP_NUM_THREADS="$threads" python3 bench/ops_torch.py --threads "$threads" 2>/dev/null | tee "$out/torch.$round.jsonl"
  ours+=("$out/ours.$round.jsonl") ref+=("$out/torch.$round.jsonl")
done
python3 bench/compare.py "$(IFS=,; echo "${ours[*]}")" "$(IFS=,; echo "${ref[*]}")" --goal 1.2

#!/usr/bin/env bash
# BERT-base on the CPU, ours and PyTorch (transformers) side by side with the same thread count:
# encode, one MLM training step, and loading a bert-base checkpoint (time, peak RSS; each loader
# in a fresh process). The two alternate for ROUNDS rounds (default 2); each op keeps its best
# round on each side (see bench/compare.py). Prints the ratios. usage: bench/run_bert.sh [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/require_python.sh torch transformers
threads="${1:-2}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
bin="${CARGO_TARGET_DIR:-target}/release"
cargo build --release -p bench --bin bert >&2
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, threads=$threads"
echo "# command: bash bench/run_bert.sh $threads"
echo "# torch $(python3 -c 'import torch; print(torch.__version__)'), transformers $(python3 -c 'import transformers; print(transformers.__version__)')"
"$bin"/bert save "$out/ckpt" >&2
ours=() ref=()
for round in $(seq "${ROUNDS:-2}"); do
  echo "# round $round"
  RAYON_NUM_THREADS="$threads" "$bin"/bert | tee "$out/ours.$round.jsonl"
  OMP_NUM_THREADS="$threads" python3 bench/bert_torch.py --threads "$threads" | tee "$out/torch.$round.jsonl"
  RAYON_NUM_THREADS="$threads" "$bin"/bert load "$out/ckpt" | tee -a "$out/ours.$round.jsonl"
  OMP_NUM_THREADS="$threads" python3 bench/bert_torch.py --threads "$threads" --load "$out/ckpt" 2>/dev/null | tee -a "$out/torch.$round.jsonl"
  ours+=("$out/ours.$round.jsonl") ref+=("$out/torch.$round.jsonl")
done
python3 bench/compare.py "$(IFS=,; echo "${ours[*]}")" "$(IFS=,; echo "${ref[*]}")"

#!/usr/bin/env bash
# Tokenizer throughput, ours against HF's BertTokenizerFast on the same ~20 MB of text with the
# same thread count; both print an ids hash, which must agree. usage: bench/run_tokenizer.sh [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/require_python.sh tokenizers transformers
threads="${1:-2}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cargo build --release -p bench --bin tokenizer >&2
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, threads=$threads"
echo "# command: bash bench/run_tokenizer.sh $threads"
echo "# tokenizers $(python3 -c 'import tokenizers; print(tokenizers.__version__)'), transformers $(python3 -c 'import transformers; print(transformers.__version__)')"
target/release/tokenizer --threads "$threads" | tee "$out/ours.jsonl"
RAYON_NUM_THREADS="$threads" TOKENIZERS_PARALLELISM=true python3 bench/tokenizer_hf.py --threads "$threads" | tee "$out/hf.jsonl"
python3 bench/compare.py "$out/ours.jsonl" "$out/hf.jsonl"

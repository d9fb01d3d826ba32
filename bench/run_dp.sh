#!/usr/bin/env bash
# Data-parallel pretraining: one rank vs N ranks (`--nproc_per_node N`) on the same global batch,
# printing the per-step communication report rank 0 logs at the end of a run (bytes of gradients
# all-reduced, time in the all-reduce including waits, share of the step time).
#
#   bench/run_dp.sh [N] [DEVICE]      # N ranks (default 2), DEVICE cpu (default) or cuda
#
# With DEVICE=cuda rank r runs on cuda:r and the gradients go through NCCL (ncclCommInitRank, the
# id published through the TCP store; NCCL found as libnccl.so.2 or libnccl.so): run it on a
# machine with N GPUs and a `--features cuda` build. CPU ranks exchange through the store.
#
# The corpus is made here from the sentences of the tokenizer fixture (every line a document,
# repeated), so the script needs nothing but a build: `cargo build --release [--features cuda]`.
# Model: BERT-small-ish (4 layers, hidden 256) from a config written here; override with
# CONFIG=path/to/config.json. Numbers on a shared or busy machine are indicative only.
set -euo pipefail
N=${1:-2}
DEVICE=${2:-cpu}
BIN=${BIN:-target/release/cotmae}
WORK=${WORK:-$(mktemp -d)}
VOCAB=tests/fixtures/tokenizer
STEPS=${STEPS:-10}
PER_RANK=${PER_RANK:-8}

mkdir -p "$WORK"
if [ ! -f "$WORK/corpus.txt" ]; then
  python3 - "$WORK/corpus.txt" <<'PY' 2>/dev/null || \
    sed -n 's/.*"text": "\([^"]*\)".*/\1/p' "$VOCAB/sentences.jsonl" > "$WORK/corpus.txt"
import json, sys
lines = [json.loads(l)["text"] for l in open("tests/fixtures/tokenizer/sentences.jsonl")]
with open(sys.argv[1], "w") as f:
    for i in range(400):
        f.write(" ".join(lines[(i + k) % len(lines)] for k in range(12)) + "\n")
PY
fi
"$BIN" prepare --file "$WORK/corpus.txt" --save_to "$WORK/data" --tokenizer "$VOCAB" \
  --maxlen 64 --format text >/dev/null 2>&1 || true
CONFIG=${CONFIG:-$WORK/config.json}
[ -f "$CONFIG" ] || cat > "$CONFIG" <<JSON
{"vocab_size": 30522, "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
 "intermediate_size": 1024, "max_position_embeddings": 128,
 "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
JSON
common=(--config_name "$CONFIG" --tokenizer_name "$VOCAB" --train_path "$WORK/data"
        --max_seq_length 64 --max_steps "$STEPS" --logging_steps "$STEPS" --save_steps 1000000
        --device "$DEVICE" --overwrite_output_dir)
echo "== 1 rank, batch $((N * PER_RANK)) documents"
"$BIN" pretrain "${common[@]}" --output_dir "$WORK/one" \
  --per_device_train_batch_size $((N * PER_RANK)) 2>&1 | grep -E 'loss|train_runtime' | tail -3
echo "== $N ranks (--nproc_per_node $N), $PER_RANK documents each"
"$BIN" pretrain "${common[@]}" --output_dir "$WORK/ranks" --nproc_per_node "$N" \
  --master_port "${MASTER_PORT:-29533}" --per_device_train_batch_size "$PER_RANK" 2>&1 \
  | grep -E 'loss|data parallel:|train_runtime' | tail -4

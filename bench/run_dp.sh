#!/usr/bin/env bash
# Data parallel: one rank vs N ranks (`--nproc_per_node N`) on the same global batch, for
# `pretrain` and `train-retriever`, printing the per-step communication line rank 0 prints at the
# end of a run: bytes of gradients all-reduced, time in the all-reduce (waiting for the other
# ranks included) and its share of the step time, and the share of that time in buckets launched
# while the backward pass was still running (or why the backward did not overlap it).
#
#   bench/run_dp.sh [N] [DEVICE] [TASK]   # N ranks (default 2), DEVICE cpu (default) or cuda,
#                                         # TASK pretrain, train-retriever or all (default)
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
TASK=${3:-all}
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
if [ "$TASK" = pretrain ] || [ "$TASK" = all ]; then
common=(--config_name "$CONFIG" --tokenizer_name "$VOCAB" --train_path "$WORK/data"
        --max_seq_length 64 --max_steps "$STEPS" --logging_steps "$STEPS" --save_steps 1000000
        --device "$DEVICE" --overwrite_output_dir)
echo "== pretrain: 1 rank, batch $((N * PER_RANK)) documents"
"$BIN" pretrain "${common[@]}" --output_dir "$WORK/one" \
  --per_device_train_batch_size $((N * PER_RANK)) 2>&1 | grep -E 'loss|train_runtime' | tail -3
echo "== pretrain: $N ranks (--nproc_per_node $N), $PER_RANK documents each"
"$BIN" pretrain "${common[@]}" --output_dir "$WORK/ranks" --nproc_per_node "$N" \
  --master_port "${MASTER_PORT:-29533}" --per_device_train_batch_size "$PER_RANK" 2>&1 \
  | grep -E 'loss|data parallel:|train_runtime' | tail -4
fi

if [ "$TASK" = train-retriever ] || [ "$TASK" = all ]; then
# Tevatron-format examples of random token ids (a query, 1 positive, 3 negatives each).
[ -f "$WORK/retriever.jsonl" ] || awk -v n=400 'BEGIN {
  srand(7)
  for (i = 0; i < n; i++) {
    printf "{\"query\": ["; for (t = 0; t < 12; t++) printf "%s%d", (t ? "," : ""), 1000 + int(rand() * 20000)
    printf "], \"positives\": [["; for (t = 0; t < 60; t++) printf "%s%d", (t ? "," : ""), 1000 + int(rand() * 20000)
    printf "]], \"negatives\": ["
    for (k = 0; k < 3; k++) {
      printf "%s[", (k ? "," : ""); for (t = 0; t < 60; t++) printf "%s%d", (t ? "," : ""), 1000 + int(rand() * 20000); printf "]"
    }
    printf "]}\n"
  }
}' > "$WORK/retriever.jsonl"
retr=(--config_name "$CONFIG" --tokenizer_name "$VOCAB" --train_dir "$WORK/retriever.jsonl"
      --train_n_passages 4 --q_max_len 16 --p_max_len 64 --max_steps "$STEPS"
      --logging_steps "$STEPS" --save_steps 0 --device "$DEVICE" --overwrite_output_dir
      ${RETRIEVER_FLAGS:-})
echo "== train-retriever: 1 rank, batch $((N * PER_RANK)) queries"
"$BIN" train-retriever "${retr[@]}" --output_dir "$WORK/retr-one" --negatives_x_device \
  --per_device_train_batch_size $((N * PER_RANK)) 2>&1 | grep -E 'loss' | tail -2
echo "== train-retriever: $N ranks (--nproc_per_node $N), $PER_RANK queries each, --negatives_x_device"
"$BIN" train-retriever "${retr[@]}" --output_dir "$WORK/retr-ranks" --negatives_x_device \
  --nproc_per_node "$N" --master_port "${MASTER_PORT:-29533}" \
  --per_device_train_batch_size "$PER_RANK" 2>&1 | grep -E 'loss|data parallel:' | tail -3
fi

#!/usr/bin/env bash
# One CoT-MAE pretraining step at bert-base shape (8 documents = 16 sequences x 128 tokens;
# forward, backward, clip 1.0, AdamW) on the CPU, ours and PyTorch (the parity script's model) on
# the same collator batch, with the same thread count. The two alternate for ROUNDS rounds
# (default 2); each side keeps its best round (bench/compare.py), and the ratio ours / torch is
# printed last (goal <= 1.0).
#
# usage: bench/run_cotmae.sh [THREADS] [-- FLAGS...]
#   FLAGS go to both sides: --warmup N --iters N (defaults 2 and 5), --tiny (smoke test only).
#   PROFILE=dev builds the dev profile instead of release (smoke tests); ATTN=eager times torch's
#   eager attention instead of sdpa.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/require_python.sh torch transformers
threads="${1:-2}"
shift || true
[ "${1:-}" = "--" ] && shift
profile="${PROFILE:-release}"
target="${CARGO_TARGET_DIR:-target}/$([ "$profile" = dev ] && echo debug || echo "$profile")"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cargo build --profile "$profile" -p bench --bin cotmae_step >&2
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, threads=$threads"
echo "# command: bash bench/run_cotmae.sh $threads${*:+ -- $*}  (profile $profile, torch attention ${ATTN:-sdpa})"
echo "# torch $(python3 -c 'import torch; print(torch.__version__)'), transformers $(python3 -c 'import transformers; print(transformers.__version__)')"
"$target/cotmae_step" batch "$out/batch.safetensors"
ours=() ref=()
for round in $(seq "${ROUNDS:-2}"); do
  echo "# round $round"
  RAYON_NUM_THREADS="$threads" "$target/cotmae_step" "$out/batch.safetensors" "$@" | tee "$out/ours.$round.jsonl"
  OMP_NUM_THREADS="$threads" python3 bench/cotmae_torch.py "$out/batch.safetensors" --threads "$threads" \
    --attn "${ATTN:-sdpa}" "$@" | tee "$out/torch.$round.jsonl"
  ours+=("$out/ours.$round.jsonl") ref+=("$out/torch.$round.jsonl")
done
python3 bench/compare.py "$(IFS=,; echo "${ours[*]}")" "$(IFS=,; echo "${ref[*]}")" --goal 1.0

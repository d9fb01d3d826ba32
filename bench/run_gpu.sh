#!/usr/bin/env bash
# The GPU benchmarks of the CUDA issue, ours and the references in one run on one device:
#   1. gpu_bandwidth: every memory-bound kernel's bandwidth against a device-to-device copy
#      (f32 and bf16; goal >= 0.80 of the copy), then the flash attention kernels' TFLOP/s at
#      BERT-base's shape (bf16: tensor cores, and again on the CUDA-core reference kernels);
#   2. a BERT-base MLM training step and 3. a CoT-MAE training step, bf16 mixed precision,
#      batch 64 x 128 (32 documents), ours (cotmae_step --device cuda) against PyTorch
#      (bench/gpu_step_torch.py: transformers under bf16 autocast) on the same batch file,
#      alternating for ROUNDS rounds (default 2), best round per side (bench/compare.py).
#      Goal for CoT-MAE: >= 2x faster, i.e. ratio ours / torch <= 0.5.
#
# The GPU machine has no Rust toolchain: build here, copy the two programs into a folder that git
# ignores, and carry it:
#   cargo build --release -p bench --features cuda --bin gpu_bandwidth --bin cotmae_step
#   mkdir -p gpu-bin && cp target/release/{gpu_bandwidth,cotmae_step} gpu-bin/
# usage: bench/run_gpu.sh [BIN_DIR]      (default target/release)
# Environment: PRECISION (bf16 | fp16 | fp32, default bf16), ROUNDS, ITERS (default 20),
# COTMAE_ATTENTION=composed to time our unfused attention path instead of the flash kernels.
# CUDA libraries may live under the PyTorch wheels (nvidia/*/lib); they are added to
# LD_LIBRARY_PATH here when found.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/release}"
precision="${PRECISION:-bf16}"
iters="${ITERS:-20}"
site="$(python3 -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null || true)"
for lib in "$site"/nvidia/*/lib; do
  [ -d "$lib" ] && LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)"
echo "# command: bash bench/run_gpu.sh $bin  (PRECISION=$precision ITERS=$iters ROUNDS=${ROUNDS:-2} COTMAE_ATTENTION=${COTMAE_ATTENTION:-flash})"
echo "# torch $(python3 -c 'import torch; print(torch.__version__)'), transformers $(python3 -c 'import transformers; print(transformers.__version__)')"
echo "## memory-bound kernels vs a device copy"
for dtype in f32 bf16; do
  "$bin/gpu_bandwidth" --dtype "$dtype"
done
echo "## bf16 attention on the CUDA-core (reference) flash kernels, to compare with the line above"
COTMAE_ATTENTION=flash-cuda-cores "$bin/gpu_bandwidth" --dtype bf16 --attention-only
echo "## training steps, batch 64 x 128, $precision"
"$bin/cotmae_step" batch "$out/batch.safetensors" --docs 32
ours=() ref=()
for round in $(seq "${ROUNDS:-2}"); do
  echo "# round $round"
  for model in bert cotmae; do
    flag=()
    [ "$model" = bert ] && flag=(--bert)
    "$bin/cotmae_step" "$out/batch.safetensors" --device cuda --precision "$precision" "${flag[@]}" \
      --warmup 3 --iters "$iters" | tee -a "$out/ours.$round.jsonl"
    python3 bench/gpu_step_torch.py "$model" "$out/batch.safetensors" --precision "$precision" \
      --warmup 3 --iters "$iters" | tee -a "$out/torch.$round.jsonl"
  done
  ours+=("$out/ours.$round.jsonl") ref+=("$out/torch.$round.jsonl")
done
python3 bench/compare.py "$(IFS=,; echo "${ours[*]}")" "$(IFS=,; echo "${ref[*]}")" --goal 0.5

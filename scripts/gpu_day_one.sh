#!/usr/bin/env bash
# The GPU day-one kit: everything the next session lent a GPU needs to run the whole GPU test suite
# and the GPU benchmarks in one device command (15 minutes of device time in all, at most 10 per
# command, 64 MiB carried, no Rust toolchain on the GPU machine).
#
#   scripts/gpu_day_one.sh build   here (with cargo): builds, with no debug info and stripped
#                                  (profile `gpu-kit`), every test binary that holds GPU tests and
#                                  the GPU benchmarks (gpu_bandwidth, cotmae_step) into gpu-bin/
#                                  (git-ignored), checks they total under 64 MiB, and prints the
#                                  device command.
#   scripts/gpu_day_one.sh run [--quick]
#                                  on the GPU machine, from the repository root: runs every GPU test
#                                  binary with COTMAE_REQUIRE_GPU=1 (a skipped GPU test fails), then
#                                  bench/run_gpu.sh gpu-bin, each step under its own timeout, never
#                                  stopping at a failure, teeing raw output into $OUT (default
#                                  ./gpu-day-one-out). --quick (or GPU_KIT_QUICK=1) skips the
#                                  benchmarks that need PyTorch. Exit status: the number of failed
#                                  steps (capped at 100), 0 when all passed.
#
# Dry run with no GPU, on the simulator: COTMAE_CUDA_SIM=1 scripts/gpu_day_one.sh run --quick
# Time: the whole run stays under GPU_KIT_BUDGET seconds (default 450, inside the 8 minutes the
# kit is allowed): each test binary gets at most GPU_KIT_TEST_TIMEOUT (default 150) and never more
# than the budget left after keeping GPU_KIT_BENCH_TIMEOUT (default 240) for the benchmarks.
# Other environment: CARGO_TARGET_DIR (build), OUT (run).
set -uo pipefail
cd "$(dirname "$0")/.."
bin_dir=gpu-bin
limit_mib=64

# The GPU tests: package, target (lib or test name), and the test-name filter that selects the
# GPU tests inside a binary that also holds CPU tests ("" runs the whole binary).
gpu_tests=(
  "cuda test:gpu_runtime -"
  "cuda test:gpu_ops -"
  "cuda test:gpu_nccl -"
  "tensor lib cuda::"
  "autograd lib autocast"
  "nn test:gpu_optim -"
  "nn test:nccl -"
  "bert test:gpu_parity -"
  "retrieval test:search gpu_"
  "retrieval test:dense_encode cuda_"
  "cotmae test:pretrain cuda_"
)

# The file name a test binary gets in gpu-bin/: <package>-<target>.
kit_name() { echo "$1-${2#test:}"; }

build() {
  set -e
  local target_dir="${CARGO_TARGET_DIR:-target}"
  local json
  json="$(mktemp)"
  trap 'rm -f "$json"' RETURN
  rm -rf "$bin_dir"
  mkdir -p "$bin_dir"
  # Test binaries, one cargo call per package (each with the CUDA backend; bert has no feature of
  # its own and takes tensor's).
  local pkg target filter
  for entry in "${gpu_tests[@]}"; do
    read -r pkg target filter <<<"$entry"
    local features=(--features cuda)
    [ "$pkg" = cuda ] && features=()
    [ "$pkg" = bert ] && features=(--features tensor/cuda)
    local sel=(--lib)
    [ "$target" != lib ] && sel=(--test "${target#test:}")
    echo "building $pkg ${sel[*]}" >&2
    cargo test --no-run --profile gpu-kit -p "$pkg" "${features[@]}" "${sel[@]}" \
      --message-format=json >"$json"
    # The one test executable of this call.
    local exe
    exe="$(python3 - "$json" <<'EOF'
import json, sys
exes = []
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        exes.append(m["executable"])
print(exes[-1] if exes else "")
EOF
)"
    if [ -z "$exe" ]; then
      echo "no test executable came out of the build of $pkg $target" >&2
      exit 1
    fi
    cp "$exe" "$bin_dir/$(kit_name "$pkg" "$target")"
  done
  echo "building the GPU benchmarks" >&2
  cargo build --profile gpu-kit -p bench --features cuda --bin gpu_bandwidth --bin cotmae_step
  cp "$target_dir/gpu-kit/gpu_bandwidth" "$target_dir/gpu-kit/cotmae_step" "$bin_dir/"
  # The list the run step reads (package, target, filter per line), so the two steps agree.
  printf '%s\n' "${gpu_tests[@]}" >"$bin_dir/TESTS"
  echo
  echo "gpu-bin/ (sizes in bytes):"
  ls -l "$bin_dir" | awk 'NR > 1 { printf "  %10d  %s\n", $5, $9 }'
  local total
  total=$(du -cb "$bin_dir"/* | tail -1 | cut -f1)
  local tree
  tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  printf 'total %d bytes (%.1f MiB); the tracked tree adds %.1f MiB; the limit for both is %d MiB\n' \
    "$total" "$(echo "$total / 1048576" | bc -l)" "$(echo "$tree / 1048576" | bc -l)" "$limit_mib"
  if [ $((total + tree)) -gt $((limit_mib * 1024 * 1024)) ]; then
    echo "FAIL: gpu-bin/ and the tracked tree are over the $limit_mib MiB that a device call carries" >&2
    exit 1
  fi
  echo
  echo "The device command (the run tool, carry [\"gpu-bin\"], timeout_s 540):"
  echo "  bash scripts/gpu_day_one.sh run"
}

# Records benchmark step $1's exit status $2 in run's summary and failure count.
bench_result() {
  if [ "$2" -eq 0 ]; then
    echo "ok    $1" | tee -a "$summary"
  else
    failed=$((failed + 1))
    echo "FAIL  $1 (exit $2; see bench.log)" | tee -a "$summary"
  fi
}

run() {
  local quick="${GPU_KIT_QUICK:-0}"
  [ "${1:-}" = --quick ] && quick=1
  local out="${OUT:-$PWD/gpu-day-one-out}"
  mkdir -p "$out"
  local test_timeout="${GPU_KIT_TEST_TIMEOUT:-150}"
  local bench_timeout="${GPU_KIT_BENCH_TIMEOUT:-240}"
  local deadline=$((SECONDS + ${GPU_KIT_BUDGET:-450}))
  if [ ! -f "$bin_dir/TESTS" ]; then
    echo "no $bin_dir/TESTS: run 'scripts/gpu_day_one.sh build' first (where cargo is) and carry $bin_dir" >&2
    return 1
  fi
  # CUDA libraries from the Python wheels when there (cuBLAS, NVRTC, NCCL); cudarc opens NCCL as
  # libnccl.so, the wheel ships libnccl.so.2: link it.
  local site links
  site="$(python3 -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null || true)"
  links="$(mktemp -d)"
  for lib in "$site"/nvidia/*/lib; do
    [ -d "$lib" ] && LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    [ -e "$lib/libnccl.so.2" ] && ln -sf "$lib/libnccl.so.2" "$links/libnccl.so"
  done
  export LD_LIBRARY_PATH="$links${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export COTMAE_REQUIRE_GPU=1 COTMAE_REPO_ROOT="$PWD"
  local summary="$out/summary.txt"
  {
    echo "# gpu_day_one run, $(date -u +%Y-%m-%dT%H:%MZ), quick=$quick, COTMAE_CUDA_SIM=${COTMAE_CUDA_SIM:-}"
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1 || true
  } | tee "$summary"
  local failed=0 passed=0 pkg target filter name rc
  local log="$out/tests.log"
  : >"$log"
  while read -r pkg target filter; do
    name="$(kit_name "$pkg" "$target")"
    local args=()
    [ "$filter" != - ] && args=("$filter")
    echo "## $name ${args[*]}" | tee -a "$log"
    local started=$SECONDS
    # This binary's share: its own limit, within what the budget leaves beside the benchmarks.
    local left=$((deadline - SECONDS - bench_timeout))
    local limit=$((left < test_timeout ? left : test_timeout))
    [ "$limit" -lt 5 ] && limit=5
    timeout -k 10 "$limit" "$bin_dir/$name" "${args[@]}" --test-threads=4 >>"$log" 2>&1
    rc=$?
    local line
    line="$(grep '^test result:' "$log" | tail -1)"
    if [ "$rc" -eq 0 ]; then
      passed=$((passed + 1))
      echo "ok    $name ($((SECONDS - started)) s): $line" | tee -a "$summary"
    else
      failed=$((failed + 1))
      [ "$rc" -ge 124 ] && line="timed out after $limit s"
      echo "FAIL  $name ($((SECONDS - started)) s, exit $rc): $line" | tee -a "$summary"
    fi
  done <"$bin_dir/TESTS"
  # Totals over every binary's "test result" line.
  awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "GPU tests: %d passed, %d failed, %d ignored\n", p, f, i }' \
    "$log" | tee -a "$summary"
  # The benchmarks get what is left of the budget, at most their own limit.
  local left=$((deadline - SECONDS))
  [ "$left" -lt "$bench_timeout" ] && bench_timeout=$((left > 30 ? left : 30))
  if [ "$quick" = 1 ]; then
    echo "benchmarks: the memory-bound kernels only (--quick)" | tee -a "$summary"
    for dtype in f32 bf16; do
      timeout -k 10 "$bench_timeout" "$bin_dir/gpu_bandwidth" --dtype "$dtype" >>"$out/bench.log" 2>&1
      bench_result "gpu_bandwidth --dtype $dtype" $?
    done
  else
    timeout -k 10 "$bench_timeout" bash bench/run_gpu.sh "$bin_dir" >"$out/bench.log" 2>&1
    bench_result "bench/run_gpu.sh" $?
  fi
  # What one bf16 bert-base CoT-MAE step does on the device (syncs, launches, GEMMs, cuBLASLt
  # heuristic queries, weight casts, bytes moved): cotmae_step --counters, one JSON line a step.
  if timeout -k 10 120 "$bin_dir/cotmae_step" batch "$out/counters-batch.safetensors" --docs 8 \
    >>"$out/bench.log" 2>&1; then
    timeout -k 10 120 "$bin_dir/cotmae_step" "$out/counters-batch.safetensors" --device cuda \
      --precision bf16 --counters --iters 2 >"$out/step-counters.jsonl" 2>>"$out/bench.log"
    bench_result "cotmae_step --counters" $?
  else
    bench_result "cotmae_step batch (for --counters)" $?
  fi
  echo "$passed test binaries passed, $failed steps failed; raw output in $out" | tee -a "$summary"
  rm -rf "$links"
  return $((failed > 100 ? 100 : failed))
}

case "${1:-}" in
  build) build ;;
  run) shift; run "$@" ;;
  *)
    echo "usage: scripts/gpu_day_one.sh build | run [--quick]" >&2
    exit 2
    ;;
esac

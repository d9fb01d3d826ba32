#!/usr/bin/env bash
# The whole demo (`cotmae demo`: generate, prepare, pretrain three encoders, fine-tune, encode,
# search, evaluate) on the CPU twice in one run: f32, then `--bf16 --device cpu` (the bf16 GEMM
# for every product, f32 master weights). Each run goes into its own directory; the script prints
# both totals (wall and process CPU time), the bf16 / f32 ratios (below 1.0: bf16 is faster) and
# both result tables (bf16 changes the numbers through rounding only).
#
# usage: bench/run_demo.sh [THREADS] [-- DEMO FLAGS...]
#   DEMO FLAGS go to both runs (e.g. `-- --pretrain_steps 300 --finetune_epochs 2` for a short
#   run); the defaults are the demo's own (the full demo, minutes per run).
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"
shift || true
[ "${1:-}" = "--" ] && shift
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
bin="${CARGO_TARGET_DIR:-target}/release/cotmae"
cargo build --release -p cotmae --bin cotmae >&2
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, threads=$threads"
echo "# command: bash bench/run_demo.sh $threads${*:+ -- $*}"
echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
# Runs the demo with extra flags $2.., into $out/$1; appends "name wall_s cpu_s" to $out/times.
run() {
  local name="$1"
  shift
  echo "## $name: cotmae demo --threads $threads $*"
  /usr/bin/time -f "%e %U %S" -o "$out/$name.time" \
    "$bin" demo --output_dir "$out/$name" --threads "$threads" "$@" >"$out/$name.log" 2>"$out/$name.err" \
    || { tail -20 "$out/$name.err"; exit 1; }
  sed -n '/held-out queries/,$p' "$out/$name.log"
  read -r wall user sys <"$out/$name.time"
  echo "$name $wall $(echo "$user + $sys" | bc)" >>"$out/times"
}
run f32 "$@"
run bf16 --bf16 --device cpu "$@"
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
awk '{ wall[$1] = $2; cpu[$1] = $3 }
  END {
    printf "%-6s %10s %10s\n", "run", "wall s", "cpu s"
    printf "%-6s %10.1f %10.1f\n", "f32", wall["f32"], cpu["f32"]
    printf "%-6s %10.1f %10.1f\n", "bf16", wall["bf16"], cpu["bf16"]
    printf "bf16 / f32: wall %.2f, cpu %.2f\n", wall["bf16"] / wall["f32"], cpu["bf16"] / cpu["f32"]
  }' "$out/times"

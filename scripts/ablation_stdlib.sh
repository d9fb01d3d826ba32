#!/usr/bin/env bash
# Runs the committed real-text ablation (docs/ablation/stdlib.toml) and copies its report into
# docs/ablation/stdlib/. usage: scripts/ablation_stdlib.sh [WORK_DIR] [extra cotmae flags...]
# Needs python3 (only to build the data set) and a built `cotmae` (target/release by default;
# set COTMAE=path to use another).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-/tmp/cotmae-ablation-stdlib}"
shift || true
cotmae="${COTMAE:-$root/target/release/cotmae}"
python3 "$root/scripts/stdlib_docstrings.py" "$work/data"
cp "$root/docs/ablation/stdlib.toml" "$work/data/spec.toml"
start=$(date +%s)
"$cotmae" ablation --spec "$work/data/spec.toml" --output_dir "$work/run" "$@"
echo "wall time: $(( $(date +%s) - start )) s"
mkdir -p "$root/docs/ablation/stdlib"
cp "$work/run/report.md" "$work/run/report.json" "$work/run/mrr.svg" "$work/run/loss.svg" \
   "$root/docs/ablation/stdlib/"

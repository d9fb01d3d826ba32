#!/usr/bin/env bash
# Opens a Chrome trace in a real viewer: speedscope (npm package `speedscope`), served on
# localhost and rendered by headless Chromium (Debian's `chromium`), which writes a screenshot.
#
#   bash scripts/render_trace.sh TRACE.json OUT.png [SPEEDSCOPE_DIR]
#
# SPEEDSCOPE_DIR: a folder holding node_modules/speedscope (default: a scratch folder where
# `npm install speedscope` runs once). Not part of `cargo test`; see docs/PROFILING.md.
set -euo pipefail
trace=$(realpath "$1")
out=$(realpath -m "$2")
dir=${3:-${TMPDIR:-/tmp}/cotmae-speedscope}
if [ ! -f "$dir/node_modules/speedscope/dist/release/index.html" ]; then
  mkdir -p "$dir"
  (cd "$dir" && npm install --no-audit --no-fund speedscope >/dev/null)
fi
site=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$site"' EXIT
cp -r "$dir/node_modules/speedscope/dist/release/." "$site/"
cp "$trace" "$site/trace.json"
port=$((20000 + RANDOM % 20000))
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$site" >/dev/null 2>&1 &
server=$!
sleep 1
profile=$(mktemp -d)
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --window-size=1600,1000 --virtual-time-budget=15000 \
  --screenshot="$out" "http://127.0.0.1:$port/index.html#profileURL=http://127.0.0.1:$port/trace.json&title=cotmae" \
  2>/dev/null
rm -rf "$profile"
echo "wrote $out"

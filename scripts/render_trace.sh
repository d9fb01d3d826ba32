#!/usr/bin/env bash
# Checks a Chrome trace and opens it in a real viewer, in one command:
#   1. scripts/check_trace.py (Trace Event Format, nesting per track, flow pairs);
#   2. speedscope (npm package `speedscope`), served on localhost and rendered by headless
#      Chromium (Debian's `chromium`), which writes a screenshot; the run fails unless
#      speedscope's console says it imported the file as a Trace Event Format profile and
#      reports no error.
#
#   bash scripts/render_trace.sh TRACE.json OUT.png [SPEEDSCOPE_DIR]
#   TRACE_PID=2 bash scripts/render_trace.sh ...     # only process 2 (the GPU's stream tracks)
#
# speedscope gets a copy without `args` (it appends a slice's args to its name, which would
# hide the names) and, with TRACE_PID, only that process's events (it opens the first
# process's first thread; the others are in its thread menu).
# SPEEDSCOPE_DIR: a folder holding node_modules/speedscope (default: a scratch folder where
# `npm install speedscope` runs once). speedscope draws with WebGL: headless Chromium gets it
# from SwiftShader (software), hence --use-angle=swiftshader --enable-unsafe-swiftshader (with
# only --disable-gpu, speedscope shows "Something went wrong"). Not part of `cargo test`; see
# docs/PROFILING.md.
set -euo pipefail
here=$(dirname "$0")
trace=$(realpath "$1")
out=$(realpath -m "$2")
dir=${3:-${TMPDIR:-/tmp}/cotmae-speedscope}
python3 "$here/check_trace.py" "$trace"
if [ ! -f "$dir/node_modules/speedscope/dist/release/index.html" ]; then
  mkdir -p "$dir"
  (cd "$dir" && npm install --no-audit --no-fund speedscope >/dev/null)
fi
site=$(mktemp -d)
profile=$(mktemp -d)
server=
trap 'if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; fi; rm -rf "$site" "$profile"' EXIT
cp -r "$dir/node_modules/speedscope/dist/release/." "$site/"
python3 - "$trace" "$site/trace.json" "${TRACE_PID:-}" <<'PY'
import json, sys
src, dst, pid = sys.argv[1], sys.argv[2], sys.argv[3]
doc = json.load(open(src))
events = doc["traceEvents"] if isinstance(doc, dict) else doc
keep = []
for e in events:
    if pid and str(e.get("pid")) != pid:
        continue
    if e.get("ph") != "M":
        e.pop("args", None)
    keep.append(e)
if not any(e.get("ph") != "M" for e in keep):
    sys.exit(f"no events of process {pid} in {src}")
json.dump({"traceEvents": keep}, open(dst, "w"))
PY
port=$((20000 + RANDOM % 20000))
python3 -m http.server "$port" --bind 127.0.0.1 --directory "$site" >/dev/null 2>&1 &
server=$!
sleep 1
url="http://127.0.0.1:$port"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --use-angle=swiftshader --enable-unsafe-swiftshader \
  --user-data-dir="$profile" --window-size=1600,1000 --virtual-time-budget=15000 \
  --enable-logging=stderr --v=0 \
  --screenshot="$out" "$url/index.html#profileURL=$url/trace.json&title=$(basename "$trace")" \
  2>"$site/chromium.log" || true
console=$(grep 'CONSOLE' "$site/chromium.log" | grep -v 'GL Driver Message' || true)
echo "$console" | sed -E 's/^.*CONSOLE[^"]*"([^"]*)".*$/  speedscope: \1/'
if ! grep -q 'Importing as Trace Event Format' <<<"$console"; then
  echo "speedscope did not import $trace as a Trace Event Format profile" >&2
  exit 1
fi
if grep -qiE 'error|failed|went wrong' <<<"$console"; then
  echo "speedscope reported an error (above)" >&2
  exit 1
fi
[ -s "$out" ] || { echo "no screenshot written" >&2; exit 1; }
echo "wrote $out"

#!/usr/bin/env bash
# Builds the book (docs/book, an mdBook) into target/book/; installs mdbook with cargo first when
# it is not on PATH (a few minutes, once). usage: bash scripts/build_book.sh [--serve]
# The book's links, included files and named paths are checked by `cargo test` (tests/tests/book.rs);
# this script only renders it.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mdbook >/dev/null 2>&1; then
  echo "mdbook not found: installing it with cargo (once)" >&2
  cargo install mdbook --locked --version "^0.4"
fi
# The numbers the one-batch chapter includes come from the example itself.
cargo run --quiet --example one_batch > docs/book/src/one-batch-output.txt
if [ "${1:-}" = "--serve" ]; then
  exec mdbook serve docs/book --open
fi
mdbook build docs/book
echo "the book is at target/book/index.html"

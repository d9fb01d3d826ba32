# Sourced by the bench scripts that run a Python twin (`. bench/require_python.sh torch ...`):
# stops before any timing, with a message saying what is missing, when one of the named modules
# does not import. Without it a missing torch showed only as a Python traceback on stderr after
# our side's first round, and a header reading "torch ,".
for module in "$@"; do
  if ! python3 -c "import $module" 2>/dev/null; then
    echo "$0: the reference side needs the Python module '$module', which does not import" \
      "(pip install torch transformers tokenizers faiss-cpu, or point PYTHONPATH at it)" >&2
    exit 1
  fi
done

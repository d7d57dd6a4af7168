#!/usr/bin/env bash
# Create .venv (if missing) and install bertfast into it with the given extras.
# Usage: bash scripts/setup.sh [extras]   e.g. bash scripts/setup.sh test
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-models}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip -q --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        "${pip[@]}" install torch
    else
        # No GPU: a CPU build of torch is a tenth of the download of the CUDA one.
        "${pip[@]}" install "torch==2.13.0+cpu" 2>/dev/null \
            || "${pip[@]}" install torch --index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
            || "${pip[@]}" install torch
    fi
fi
"${pip[@]}" install -e ".[${extras}]" 2>&1 | grep -v "is ignored: it is neither" || true
.venv/bin/python -c "import bertfast" || { echo "setup failed: bertfast does not import" >&2; exit 1; }

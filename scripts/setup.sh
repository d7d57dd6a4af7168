#!/usr/bin/env bash
# Create .venv (if missing) and install bertfast into it with the given extras.
#
# Usage: bash scripts/setup.sh [EXTRAS]    e.g. bash scripts/setup.sh test
#        bash scripts/setup.sh gpu         GPU machine: models,bench,test,build extras, then the
#                                          CUDA extension (same as bash scripts/setup_gpu.sh)
#
# Which torch is installed (only when .venv has none yet) is chosen by two variables:
#   TORCH_WHEEL       a wheel file, URL or requirement to install as torch
#                     (e.g. TORCH_WHEEL=/wheels/torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl)
#   TORCH_INDEX_URL   the index torch comes from. Default without nvidia-smi (a CPU machine):
#                     the newest +cpu build the configured pip indexes already offer, else
#                     https://download.pytorch.org/whl/cpu, the CPU build (a tenth of the CUDA
#                     download); with nvidia-smi: unset, i.e. PyPI's torch, a CUDA build. Pick
#                     a CUDA version with e.g. https://download.pytorch.org/whl/cu128; set it
#                     empty (TORCH_INDEX_URL=) for a plain `pip install torch`.
# If the index cannot be reached, plain `pip install torch` follows (PyPI's torch runs on the
# CPU as well). PYTHON names the interpreter that creates .venv (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-models}"
gpu=0
if [ "$extras" = gpu ]; then
    gpu=1
    extras="models,bench,test,build"
fi
python="${PYTHON:-python3}"
step() { echo "setup: $*"; }

# pip's notes about configured find-links folders that do not exist are noise, not errors.
pip() {
    local log status=0
    log="$(mktemp)"
    .venv/bin/python -m pip -q --disable-pip-version-check "$@" >"$log" 2>&1 || status=$?
    grep -v "is ignored: it is neither a file nor a directory" "$log" || true
    rm -f "$log"
    return "$status"
}

if [ ! -x .venv/bin/python ]; then
    step "creating .venv with $("$python" --version 2>&1) ($python)"
    "$python" -m venv .venv
else
    step "using the existing .venv ($(.venv/bin/python --version 2>&1))"
fi

if .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    step "torch $(.venv/bin/python -c 'import torch; print(torch.__version__)') already installed"
elif [ -n "${TORCH_WHEEL:-}" ]; then
    step "installing torch from TORCH_WHEEL=$TORCH_WHEEL"
    pip install "$TORCH_WHEEL"
else
    cpu_torch=""
    if [ -z "${TORCH_INDEX_URL+set}" ] && ! command -v nvidia-smi >/dev/null 2>&1; then
        # A CPU machine: the newest CPU build (+cpu) that the configured indexes already
        # offer (pip.conf's index-url / extra-index-url / find-links), else PyTorch's index.
        cpu_torch="$(.venv/bin/python -m pip index versions torch 2>/dev/null \
            | sed -n 's/^Available versions: //p' | tr ',' '\n' | tr -d ' ' \
            | grep '+cpu$' | head -1 || true)"
        TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
    fi
    if [ -n "$cpu_torch" ]; then
        step "installing torch==$cpu_torch (the newest CPU build the configured indexes offer)"
        pip install "torch==$cpu_torch"
    # One quick look first: pip would retry an unreachable index once per package.
    elif [ -n "${TORCH_INDEX_URL:-}" ] && ! .venv/bin/python - "$TORCH_INDEX_URL" <<'PY'; then
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=10)
except Exception as exc:
    print(f"setup: {sys.argv[1]} cannot be reached ({exc})")
    sys.exit(1)
PY
        step "installing torch: pip install torch instead (PyPI's build also runs on the CPU)"
        pip install torch
    elif [ -n "${TORCH_INDEX_URL:-}" ]; then
        step "installing torch from TORCH_INDEX_URL=$TORCH_INDEX_URL (takes a minute or two)"
        # That index serves torch's dependencies too; PyPI is left out so that its (CUDA)
        # torch cannot win by a higher version.
        if ! pip install torch --index-url "$TORCH_INDEX_URL" --timeout 30 --retries 1; then
            step "torch from $TORCH_INDEX_URL failed (see above); trying pip install torch"
            pip install torch
        fi
    else
        step "installing torch: pip install torch (takes a few minutes)"
        pip install torch
    fi
fi

step "installing bertfast in editable mode with extras [$extras]"
pip install -e ".[${extras}]"
step "checking that bertfast imports"
.venv/bin/python -c "import bertfast" || { echo "setup failed: bertfast does not import" >&2; exit 1; }

if [ "$gpu" = 1 ]; then
    command -v nvcc >/dev/null 2>&1 || {
        echo "setup failed: nvcc is not on the PATH (install the CUDA toolkit, 12.x or 13.x)" >&2
        exit 1
    }
    # cmake from the build extra (>= 3.24; the system's where the extra could not bring one),
    # and the venv's interpreter, which has pybind11: the shell's python3 may be another one.
    cmake=.venv/bin/cmake
    [ -x "$cmake" ] || cmake=cmake
    step "building the CUDA extension (archs ${CUDA_ARCHS:-80;90a}) into bertfast/ with $cmake"
    "$cmake" -S . -B build -DPython_EXECUTABLE="$PWD/.venv/bin/python" \
        -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-80;90a}" >/dev/null
    "$cmake" --build build -j "$(nproc)"
    step "backends on this machine"
    .venv/bin/bertfast info
fi
step "done; activate with: source .venv/bin/activate"

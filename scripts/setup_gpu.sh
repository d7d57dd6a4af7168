#!/usr/bin/env bash
# One-command GPU setup: .venv with the models, bench, test and build extras, a CUDA torch
# (TORCH_INDEX_URL picks the CUDA version, see setup.sh), then the CUDA extension built with
# the venv's cmake and interpreter (CUDA_ARCHS, default "80;90a"). Needs nvcc on the PATH.
set -euo pipefail
exec bash "$(dirname "$0")/setup.sh" gpu

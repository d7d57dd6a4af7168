#!/usr/bin/env bash
# Quick start, first command: set up, then run the main job on whatever device is present.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "models,hf"
.venv/bin/bertfast info
.venv/bin/bertfast embed \
    "bertfast runs BERT on fused kernels." \
    "BERT inference, made fast with fused GPU kernels." \
    "The weather in Lisbon is mild in winter."

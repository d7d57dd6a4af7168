#!/usr/bin/env bash
# Quick start, first command: set up, then the main job on whatever device is present:
# devices and backends, sentence embeddings with the bundled model, and a validation and
# benchmark report (every backend against transformers, errors and times; GPU rows on a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "models,bench"
.venv/bin/bertfast info
.venv/bin/bertfast embed \
    "bertfast runs BERT on fused kernels." \
    "BERT inference, made fast with fused GPU kernels." \
    "The weather in Lisbon is mild in winter."
.venv/bin/bertfast bench --quick --output out/bench
echo "report: out/bench/results.md (plots beside it)"

#!/usr/bin/env bash
# Quick start, second command: set up, lint the whole tree, run the test suite on the CPU but
# the tests marked slow, then the pytest-benchmark suite's CPU cases once each (so it cannot rot;
# no time is judged). Arguments go to the main pytest run instead (and skip the benchmark run),
# e.g. tests/test_cli.py; `-m slow tests` runs the slow tests, `tests` runs every test.
# The default run spreads the test files over TEST_WORKERS pytest-xdist workers (default 2, one
# torch thread each; tests/conftest.py); TEST_WORKERS=0 runs them in this process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
echo "test: ruff check and ruff format --check over the tree"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "test: lint-imports, the architecture's import rules (.importlinter)"
.venv/bin/lint-imports --no-cache
# Triton kernels run under the interpreter on the CPU (set before triton is imported).
export TRITON_INTERPRET=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
default_run=0
if [ "$#" -eq 0 ]; then
    default_run=1
    set -- -m "not slow" tests
    workers="${TEST_WORKERS:-2}"
    if [ "$workers" != 0 ]; then
        # A file's tests stay on one worker: module fixtures (a server, a torchrun) start once.
        set -- -n "$workers" --dist loadfile "$@"
    fi
fi
echo "test: pytest $*"
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 "$@"
if [ "$default_run" -eq 1 ]; then
    echo "test: the pytest-benchmark suite, CPU cases of the quick grid, one round each"
    .venv/bin/python -m pytest -q -p no:cacheprovider benchmarks/ --bench-quick -m "not gpu" \
        --benchmark-min-rounds=1 --benchmark-max-time=0 --benchmark-warmup=off \
        --benchmark-columns=median,rounds --benchmark-sort=name
fi

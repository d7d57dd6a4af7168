#!/usr/bin/env bash
# Everything that needs a GPU, in one run: build csrc/ (when present), the GPU-marked tests,
# the quick benchmark grid (forward, kernels forward and forward + backward, training steps of
# both heads at base b32x128 and large b8x384). Works offline on a machine where torch, triton
# and transformers are already installed. Results go to benchmarks/results/<gpu>/ and, when
# $OUT is set, to $OUT.
# Usage: bash scripts/gpu_check.sh [--no-bench] [--no-tests] [--no-training] [--training-only] [--tune]
#   --no-training leaves the training steps and backward kernel rows out of the benchmark.
#   --training-only runs only those (no tests, no forward grid), into benchmarks/results/<gpu>-training/.
#   --tune also sweeps the Triton attention block sizes (scripts/tune_attention.py, ~1-2 min).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TRITON_INTERPRET=0  # tests/conftest.py turns the interpreter on when unset
# The results name the commit they measured; a device copy of the tree has no .git, so pass
# it: BERTFAST_GIT_COMMIT=$(git rev-parse HEAD) bash scripts/gpu_check.sh
export BERTFAST_GIT_COMMIT="${BERTFAST_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
python="${PYTHON:-python3}"
# Everything lands in gpu_results/ (and benchmarks/results/<gpu>/); when $OUT is set (a device
# run, which brings back at most 8 files) it gets one archive of all of it plus the summaries.
final_out="${OUT:-}"
out="gpu_results"
rm -rf "$out"  # a warm machine keeps ignored files: nothing stale gets packed
mkdir -p "$out"
export OUT="$out"  # the scripts below also write their files to $OUT
run_tests=1 run_bench=1 run_tune=0 bench_args=() dest_suffix="" run_profile=1
for arg in "$@"; do
    case "$arg" in
        --no-tests) run_tests=0 ;;
        --no-bench) run_bench=0 ;;
        --no-training) bench_args+=(--no-training) ;;
        --training-only) bench_args+=(--training-only); run_tests=0; dest_suffix="-training"; run_profile=0 ;;
        --tune) run_tune=1 ;;
        *) echo "unknown option $arg" >&2; exit 2 ;;
    esac
done
status=0

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$python" -m bertfast info --json > "$out/info.json" || status=1

if [ -f CMakeLists.txt ]; then
    echo "== building csrc/"
    { cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$(command -v "$python")" \
        && cmake --build build -j 16; } > "$out/build.log" 2>&1 || { status=1; tail -30 "$out/build.log"; }
fi

if [ "$run_tests" = 1 ]; then
    echo "== GPU tests"
    "$python" -m pytest -q -p no:cacheprovider -m gpu tests/ 2>&1 | tee "$out/gpu_tests.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    echo "== gradient errors of the Triton backward (fp32, fp16, bf16)"
    "$python" scripts/gradient_errors.py "$out" --device cuda > "$out/gradients.log" 2>&1 \
        || { status=1; tail -20 "$out/gradients.log"; }
fi

if [ "$run_bench" = 1 ] && "$python" -c "import bertfast.bench" 2>/dev/null; then
    echo "== benchmark (quick grid ${bench_args[*]+${bench_args[*]}})"
    dest=$("$python" -c "from bertfast.bench.suite import device_tag; print('benchmarks/results/' + device_tag('cuda'))")$dest_suffix
    "$python" -m bertfast bench --quick --device cuda --output "$dest" ${bench_args[@]+"${bench_args[@]}"} 2>&1 | tee "$out/bench.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    cp "$dest"/*.json "$dest"/*.md "$out/" 2>/dev/null
fi
if [ "$run_bench" = 1 ] && [ "$run_profile" = 1 ]; then
    echo "== forward profile (kernel time vs wall time, launches per forward)"
    "$python" scripts/profile_forward.py "${dest:-$out}" 2>&1 | tee "$out/profile.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if [ "$run_tune" = 1 ]; then
    echo "== attention block-size sweep"
    # At most 8 files come back from a device run: the sweep writes only its JSON there.
    OUT="$out" "$python" scripts/tune_attention.py || status=1
fi
if [ -n "$final_out" ]; then
    results=$("$python" -c "from bertfast.bench.suite import device_tag; print('benchmarks/results/' + device_tag('cuda'))" 2>/dev/null)
    packed=("$out")
    for path in "$results" "$results-training" bertfast/triton/attention_blocks.json; do
        [ -n "$path" ] && [ -e "$path" ] && packed+=("$path")
    done
    tar czf "$final_out/gpu_check.tar.gz" "${packed[@]}"
    for f in gpu_tests.log bench.log gradient_errors.md profile.md; do
        [ -f "$out/$f" ] && tail -c 200000 "$out/$f" > "$final_out/$f"
    done
    echo "packed $(tar tzf "$final_out/gpu_check.tar.gz" | wc -l) files into \$OUT/gpu_check.tar.gz"
fi
echo "gpu_check exit status: $status"
exit $status

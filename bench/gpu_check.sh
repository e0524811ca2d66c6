#!/usr/bin/env bash
# GPU check of the fused kernels, in one call (well under 6 minutes on one H100):
#   1. make the package importable (editable install without dependencies, or a PYTHONPATH
#      overlay that maps kernels/ to ssr_engine.kernels when pip cannot build),
#   2. the op tests on CUDA, kernels compiled (tests/ops),
#   3. the kernel benchmarks (bench/bench_kernels.py), accuracy-gated,
#   4. bench/gpu_eigs.py when present,
#   5. the summary table last (op, ours ms, reference ms, ratio, max rel err, verdict).
# Run from anywhere: bash bench/gpu_check.sh [--quick]. Logs go to $OUT (or a temp folder).
# Set SKIP_TESTS=1 / SKIP_BENCH=1 / SKIP_EIGS=1 to leave a stage out on a rerun.
set -u
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
LOG=${OUT:-$(mktemp -d)}
mkdir -p "$LOG"
unset TRITON_INTERPRET SSR_BACKEND
QUICK=""
[ "${1:-}" = "--quick" ] && QUICK="--quick"
t0=$(date +%s)
stamp() { echo "[gpu_check +$(( $(date +%s) - t0 ))s] $*"; }

stamp "python: $($PY -c 'import sys, torch, triton; print(sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__, "cuda", torch.cuda.is_available())')"
if ! $PY -m pip install --no-deps --no-build-isolation -q -e . > "$LOG/install.log" 2>&1 \
        || ! (cd /tmp && $PY -c "import ssr_engine.kernels.chebyshev, ssr_engine.ops") >> "$LOG/install.log" 2>&1; then
    # overlay: ssr_engine/* linked into a temporary package that also holds kernels/
    ov=$(mktemp -d)/site
    mkdir -p "$ov/ssr_engine"
    for f in ssr_engine/*; do ln -s "$REPO/$f" "$ov/ssr_engine/$(basename "$f")"; done
    ln -s "$REPO/kernels" "$ov/ssr_engine/kernels"
    export PYTHONPATH="$ov${PYTHONPATH:+:$PYTHONPATH}"
    stamp "pip install failed (see $LOG/install.log); using PYTHONPATH overlay $ov"
fi
(cd /tmp && $PY -c "import ssr_engine.kernels.cp_fusion, ssr_engine.ops; print('ssr_engine from', ssr_engine.__file__)") \
    || { stamp "cannot import ssr_engine"; exit 1; }

TEST_SUMMARY="tests: skipped"
if [ -z "${SKIP_TESTS:-}" ]; then
    if $PY -c "import pytest" 2>/dev/null; then
        stamp "pytest tests/ops (CUDA, compiled kernels)"
        # run outside the repo so its ssr_engine/ folder (without kernels/) cannot shadow the
        # installed package; addopts cleared because pytest-benchmark may be absent here
        (cd /tmp && timeout 170 $PY -m pytest "$REPO/tests/ops" -c "$REPO/pyproject.toml" \
            --rootdir "$REPO" -q -o addopts="" --import-mode=importlib -p no:cacheprovider \
            -rfE) 2>&1 | tee "$LOG/tests.log" | tail -25
        TEST_SUMMARY="tests: $(grep -E '(passed|failed|error)' "$LOG/tests.log" | tail -1)"
        [ -n "$(grep -E '(passed|failed|error)' "$LOG/tests.log" | tail -1)" ] || TEST_SUMMARY="tests: timed out or crashed (see $LOG/tests.log)"
    else
        TEST_SUMMARY="tests: pytest not installed"
    fi
    stamp "$TEST_SUMMARY"
fi

if [ -z "${SKIP_BENCH:-}" ]; then
    stamp "bench/bench_kernels.py $QUICK"
    (cd /tmp && timeout 170 $PY "$REPO/bench/bench_kernels.py" $QUICK --table "$LOG/table.txt") \
        2>&1 | tee "$LOG/bench.log" | tail -40
fi

if [ -z "${SKIP_EIGS:-}" ] && [ -f bench/gpu_eigs.py ]; then
    stamp "bench/gpu_eigs.py"
    (cd /tmp && timeout 100 $PY "$REPO/bench/gpu_eigs.py") 2>&1 | tee "$LOG/eigs.log" | tail -30
fi

stamp "done; logs in $LOG"
echo "==================== kernel summary ===================="
echo "$TEST_SUMMARY"
if [ -f "$LOG/table.txt" ]; then cat "$LOG/table.txt"; else echo "bench: no table (see $LOG/bench.log)"; fi

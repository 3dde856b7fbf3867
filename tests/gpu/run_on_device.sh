#!/usr/bin/env bash
# GPU verification of tbdprof on a machine with one (or more) NVIDIA GPUs.
#
# Sets up a virtualenv, runs tests/gpu, profiles resnet50 and transformer
# (small preset) on one GPU, runs the same loops with --no-profile, and prints
# a table (samples/s, GPU and FP32/tensor utilization, memory breakdown,
# sampler cost, overhead ratio). Results go to $OUT when set, else a temporary
# folder. Meant to finish within 8 minutes.
#
# Python environment: if python3 already imports a CUDA build of torch, the
# virtualenv sees its packages and only tbdprof (and what is missing) is
# installed; otherwise torch==$TORCH_VERSION is installed from the package
# index (there a pinned torch is a CUDA build). Wheels in $WHEELS, if set,
# are used for packages the machine lacks (a machine with no network).
set -euo pipefail

cd "$(dirname "$0")/../.."
out="${OUT:-$(mktemp -d)}"
venv="${VENV:-/tmp/tbdprof-gpu-venv}"
torch_version="${TORCH_VERSION:-2.13.0}"
steps="${STEPS:-30}"
export PYTHONUNBUFFERED=1 TBDPROF_DATA="$out/data"
mkdir -p "$out"

if python3 -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    python3 -m venv --system-site-packages "$venv"
    py="$venv/bin/python"
    if [[ -n "${WHEELS:-}" ]]; then
        "$py" -m pip install -q --no-index --find-links "$WHEELS" duckdb
    fi
    "$py" -m pip install -q --no-deps --no-build-isolation -e .
else
    python3 -m venv "$venv"
    py="$venv/bin/python"
    "$py" -m pip install -q "torch==$torch_version"
    "$py" -m pip install -q -e '.[test]'
fi
"$py" - <<'PY'
import duckdb, pynvml, torch  # noqa: F401 - fail early on a missing package
assert torch.cuda.is_available(), "torch sees no CUDA device"
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} GPU(s)")
PY

status=0
timeout 240 "$py" -m pytest -q -rs -p no:cacheprovider tests/gpu --junitxml "$out/gpu-tests.xml" 2>&1 | tee "$out/gpu-tests.txt" || status=1

runs="$out/runs"
for wl in resnet50 transformer; do
    common=(--device cuda --preset small --steps "$steps" --warmup 5 --out "$runs")
    timeout 120 "$py" -m tbdprof run "$wl" --nproc 1 "${common[@]}" --run-id "$wl" > "$out/$wl.txt" 2>&1 || status=1
    timeout 90 "$py" -m tbdprof.workloads.train "$wl" --no-profile "${common[@]}" --run-id "$wl-base" > "$out/$wl-base.txt" 2>&1 || status=1
done
"$py" tests/gpu/device_table.py "$runs" resnet50 transformer | tee "$out/gpu-table.txt" || status=1
echo "results in $out (exit $status)"
exit "$status"

#!/usr/bin/env bash
# GPU verification of tbdprof on a machine with one (or more) NVIDIA GPUs.
#
# Sets up a virtualenv, runs tests/gpu, profiles resnet50 and transformer
# (small preset) on one GPU, runs the same loops with --no-profile, and prints
# a table (samples/s, GPU and FP32/tensor utilization, memory breakdown,
# sampler cost, overhead ratio). Its results, four files (gpu-tests.txt,
# runs.log, gpu-table.txt, gpu_table.json), go to $OUT when set, else to a
# temporary folder; data sets and runs stay in a work folder ($WORK, default a
# temporary one). Meant to finish within 8 minutes.
#
# Python environment: where $PYTHON (python3) already imports torch, a
# virtualenv is layered over it (its site folders added through a .pth file,
# which also works when that Python is itself a virtualenv, where
# --system-site-packages would reach only the base interpreter) and only
# tbdprof is installed, without dependencies; otherwise torch==$TORCH_VERSION
# and .[test] are installed from the package index. Wheels in $WHEELS, if set,
# are installed first: that is how a machine with no network gets what it
# lacks (tests/gpu/fetch_wheels.sh downloads them on a machine that has one).
set -euo pipefail

cd "$(dirname "$0")/../.."
out="${OUT:-$(mktemp -d)}"
work="${WORK:-$(mktemp -d)}"
venv="${VENV:-/tmp/tbdprof-gpu-venv}"
base="${PYTHON:-python3}"
torch_version="${TORCH_VERSION:-2.13.0}"
steps="${STEPS:-30}"
export PYTHONUNBUFFERED=1 TBDPROF_DATA="$work/data"
mkdir -p "$out" "$work"

py="$venv/bin/python"
if "$base" -c 'import torch' 2>/dev/null; then
    if "$base" -m venv --clear --without-pip "$venv"; then  # pip, setuptools and the rest come from $base
        "$base" - >"$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_tbdprof_base.pth" <<'PY'
import site
dirs = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
print("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs))
PY
    else
        echo "no virtualenv here: installing tbdprof into $base's environment" >&2
        py=$(command -v "$base")
    fi
    pip_deps=(--no-deps --no-build-isolation)
else
    "$base" -m venv --clear "$venv"
    "$py" -m pip install -q "torch==$torch_version"
    pip_deps=()
fi
if [[ -n "${WHEELS:-}" ]]; then
    "$py" -m pip install -q --no-index --no-deps "$WHEELS"/*.whl
fi
"$py" -m pip install -q "${pip_deps[@]}" -e '.[test]'
"$py" - <<'PY'
import importlib.util, sys
needed = ("torch", "duckdb", "pyarrow", "psutil", "matplotlib", "rich", "pynvml", "pytest", "hypothesis")
missing = [m for m in needed if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {' '.join(missing)} (WHEELS=folder from tests/gpu/fetch_wheels.sh)")
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA device")
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} GPU(s)")
PY

status=0
timeout 240 "$py" -m pytest -q -rs -p no:cacheprovider tests/gpu 2>&1 | tee "$out/gpu-tests.txt" || status=1

runs="$work/runs"
for wl in resnet50 transformer; do
    common=(--device cuda --preset small --steps "$steps" --warmup 5 --out "$runs")
    { echo "=== $wl, profiled"; timeout 120 "$py" -m tbdprof run "$wl" --nproc 1 "${common[@]}" --run-id "$wl"; } >> "$out/runs.log" 2>&1 || status=1
    { echo "=== $wl, --no-profile"; timeout 90 "$py" -m tbdprof.workloads.train "$wl" --no-profile "${common[@]}" --run-id "$wl-base"; } \
        >> "$out/runs.log" 2>&1 || status=1
done
"$py" tests/gpu/device_table.py "$runs" resnet50 transformer | tee "$out/gpu-table.txt" || status=1
cp "$runs/gpu_table.json" "$out/" 2>/dev/null || status=1
echo "results in $out, runs in $runs (exit $status)"
exit "$status"

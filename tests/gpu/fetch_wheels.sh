#!/usr/bin/env bash
# Download the wheels a GPU machine without network lacks, for its Python, into DEST
# (default .whl); then run the check there with WHEELS=DEST tests/gpu/run_on_device.sh.
#
# Usage: tests/gpu/fetch_wheels.sh [DEST] [PACKAGE==VERSION ...]
# The default package list is what a CUDA image with PyTorch usually lacks:
# duckdb, at the version installed here. PYVER is that machine's Python
# (default 3.12); the wheels are for Linux x86-64.
set -euo pipefail

dest="${1:-.whl}"
shift || true
pyver="${PYVER:-3.12}"
py="${PYTHON:-python3}"
if [[ $# -eq 0 ]]; then
    set -- "duckdb==$("$py" -c 'import duckdb; print(duckdb.__version__)')"
fi
platforms=()
for n in 17 27 28 31 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
mkdir -p "$dest"
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    "${platforms[@]}" --platform manylinux2014_x86_64 -d "$dest" "$@"
ls "$dest"

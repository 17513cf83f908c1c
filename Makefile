# One-command set-up on a fresh machine: `make demo` (main job) and `make test` (test suite).
# Both create .venv, install requirements-dev.txt and build the extension (rebuilt when csrc changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
BUILT := $(VENV)/.ext-built
SOURCES := $(shell find csrc -type f 2>/dev/null) setup.py build_config.py pyproject.toml
THREADS ?= 2

.PHONY: demo test bench build compile-check cuda-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# nvidia-cutlass: the CUTLASS/CuTe headers of the sm_90a kernel (its Python dependencies are not needed).
$(DEPS): requirements-dev.txt | $(PY)
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps nvidia-cutlass==4.2.0.0
	touch $@

$(BUILT): $(DEPS) $(SOURCES)
	MAX_JOBS=2 $(PY) -m pip install -q -e . --no-build-isolation --no-deps
	touch $@

build: $(BUILT)

demo: build
	$(PY) -m fastinfer demo

test: build
	$(PY) -m pytest -q tests

# Every CUDA kernel compiled for sm_80 and sm_90a (registers and spills printed), the CUDA entry layer
# syntax-checked; needs nvcc, no GPU. `make test` runs it too (tests/test_cuda_build.py).
compile-check: $(DEPS)
	$(PY) tests/cuda_compile.py --jobs 2

# The whole CUDA build with no GPU: a CUDA torch (the GPU machine's version) in .venv-cuda, the extension
# built with its kernels in build/cuda-check, loaded, its CPU-side tests run and its SASS checked for the
# tensor-core instructions (tests/cuda_build_check.sh; needs nvcc; CI runs it after `make test`).
cuda-check:
	bash tests/cuda_build_check.sh

bench: build
	$(PY) benchmarks/bench_linear.py --threads $(THREADS) --json benchmarks/latest_linear.json
	$(PY) benchmarks/bench_conv.py --threads $(THREADS) --json benchmarks/latest_conv.json
	$(PY) benchmarks/bench_tiers.py --threads $(THREADS) --json benchmarks/latest_tiers.json

clean:
	rm -rf build *.egg-info fastinfer/_C*.so $(BUILT)

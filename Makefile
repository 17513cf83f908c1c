# One-command set-up on a fresh machine: `make demo` (main job) and `make test` (test suite).
# Both create .venv, install requirements-dev.txt and build the extension (rebuilt when csrc changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEPS := $(VENV)/.deps-installed
BUILT := $(VENV)/.ext-built
SOURCES := $(shell find csrc -type f 2>/dev/null) setup.py pyproject.toml
THREADS ?= 2

.PHONY: demo test bench build compile-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(DEPS): requirements-dev.txt | $(PY)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

$(BUILT): $(DEPS) $(SOURCES)
	MAX_JOBS=2 $(PY) -m pip install -q -e . --no-build-isolation --no-deps
	touch $@

build: $(BUILT)

demo: build
	$(PY) -m fastinfer demo

test: build
	$(PY) -m pytest -q tests

bench: build
	$(PY) benchmarks/bench_linear.py --threads $(THREADS) --json benchmarks/latest_linear.json
	$(PY) benchmarks/bench_conv.py --threads $(THREADS) --json benchmarks/latest_conv.json

clean:
	rm -rf build *.egg-info fastinfer/_C*.so $(BUILT)

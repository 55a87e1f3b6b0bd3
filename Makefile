# conveyor: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Environment defaults (offline, no analytics) live in conveyor/core/env.py: the conveyor command and
# tests/conftest.py apply them, and the benchmarks run through WITH_ENV_DEFAULTS, which applies them too.
WITH_ENV_DEFAULTS := $(BIN)/python -c 'import os, sys; from conveyor.core.env import apply_defaults; \
	apply_defaults(); os.execv(sys.executable, [sys.executable, *sys.argv[1:]])'

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

# torch and torchvision are installed first, pinned as a pair (the range in pyproject.toml admits them).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/conveyor demo --fresh

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(WITH_ENV_DEFAULTS) bench/bench_data_plane.py
	$(WITH_ENV_DEFAULTS) bench/bench_onnx_latency.py
	$(WITH_ENV_DEFAULTS) bench/bench_rerun.py
	$(WITH_ENV_DEFAULTS) bench/bench_monitoring.py
	$(WITH_ENV_DEFAULTS) bench/bench_serving.py
	$(WITH_ENV_DEFAULTS) bench/bench_review.py

clean:
	rm -rf .demo workspace conveyor/demo/specs/workspace conveyor/demo/specs/data .pytest_cache site

# The documentation site (mkdocs.yml), built strictly into build/site: a broken link or a warning fails it.
.PHONY: docs
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

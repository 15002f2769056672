# Developer and CI entry points. `make serve` and `make test` work on a fresh machine with
# Python >= 3.11 and a C++ compiler: they create .venv, install what they need, and build csrc/.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
JOBS ?= 2
# The test build compiles the CUDA kernels (when nvcc is found) for one architecture only: each
# more is another full device compile. Release builds default to 80;90 (pyproject.toml).
CUDA_ARCHITECTURES ?= 90
# Tools the build itself needs, installed into the venv so builds run without isolation (fast,
# and the same versions every time).
BUILD_DEPS := "scikit-build-core>=0.10" "pybind11>=2.13" "grpcio-tools>=1.66" ninja "cmake>=3.24"

.PHONY: help venv system-deps install install-dev serve test lint typecheck cpp-sanitize pytest smoke \
	bench bench-features feast-venv clean

help:
	@echo "make serve   - set up and serve examples/models (gRPC :8001, metrics :8002)"
	@echo "make test    - set up and run every check: ruff, mypy, -Werror build, sanitizers, pytest"
	@echo "make bench   - serving benchmark vs floor, ONNX Runtime, MLServer (BENCH_ARGS=--quick)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

venv: $(BIN)/python

# Debian packages the tests need, installed when missing: redis-server (the feature-store tests
# start their own, on a free port, without persistence).
system-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server (Debian package)"; \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

# The Feast SDK in a venv of its own (build/feast-venv): its pins would downgrade ours. The
# feature tests make it on first use too; this target makes it ahead (for bench-features).
feast-venv: install-dev
	$(BIN)/python tests/integration/features/feast_env.py

install: venv
	$(PIP) install --quiet $(BUILD_DEPS)
	$(PIP) install --quiet --no-build-isolation .

install-dev: venv system-deps
	$(PIP) install --quiet $(BUILD_DEPS)
	HEADRACE_WERROR=ON HEADRACE_CUDA_ARCHITECTURES=$(CUDA_ARCHITECTURES) \
		CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) \
		$(PIP) install --quiet --no-build-isolation ".[test]"

serve: install
	$(BIN)/headrace serve --model-repository examples/models

lint: install-dev
	$(BIN)/ruff check python tests examples bench
	$(BIN)/ruff format --check python tests examples bench

typecheck: install-dev
	$(BIN)/mypy

# The core's C++ tests under AddressSanitizer+UBSan, then ThreadSanitizer, warnings as errors.
# The ThreadSanitizer build leaves CUDA out (HEADRACE_CUDA=OFF): it saves a device compile and
# keeps the build without CUDA (csrc/cuda/cuda_absent.cc) compiled and tested.
cpp-sanitize: install-dev
	@for sanitizer in address,undefined thread; do \
		dir=build/sanitize-$$(echo $$sanitizer | tr , -); \
		cuda=$$([ $$sanitizer = thread ] && echo OFF || echo AUTO); \
		$(BIN)/cmake -S . -B $$dir -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(BIN))/ninja \
			-DHEADRACE_PYTHON=OFF -DHEADRACE_CPP_TESTS=ON -DHEADRACE_WERROR=ON \
			-DHEADRACE_SANITIZE=$$sanitizer -DCMAKE_BUILD_TYPE=Debug \
			-DHEADRACE_CUDA=$$cuda -DHEADRACE_CUDA_ARCHITECTURES=$(CUDA_ARCHITECTURES) \
			>/dev/null || exit 1; \
		$(BIN)/cmake --build $$dir -j $(JOBS) || exit 1; \
		(cd $$dir && TSAN_OPTIONS=halt_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
			$(abspath $(BIN))/ctest --output-on-failure) || exit 1; \
	done

pytest: install-dev feast-venv
	$(BIN)/python -m pytest

# A new user's install: the wheel alone (no extras) in a throwaway venv, then serve + one infer,
# quantize and profile from there. Catches a runtime dependency that only the test extra brings.
SMOKE_VENV := build/smoke-venv
# The wheel takes install-dev's CUDA architectures, so it reuses that build (build/{wheel_tag}).
smoke: install-dev
	rm -rf dist $(SMOKE_VENV)
	HEADRACE_WERROR=ON HEADRACE_CUDA_ARCHITECTURES=$(CUDA_ARCHITECTURES) \
		CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) $(PIP) wheel --quiet --no-build-isolation --no-deps -w dist .
	$(PYTHON) -m venv $(SMOKE_VENV)
	$(SMOKE_VENV)/bin/python -m pip install --quiet dist/headrace-*.whl
	$(SMOKE_VENV)/bin/python tests/smoke/fresh_install.py --with-tritonclient

test: lint typecheck cpp-sanitize pytest smoke

# The serving benchmark (minutes; needs CPUs 0 and 1): make bench BENCH_ARGS="--quick"
BENCH_ARGS ?=
bench: install-dev
	$(PIP) install --quiet matplotlib
	$(BIN)/python bench/bench_serving.py $(BENCH_ARGS)

# Feature lookups: embedded / redis / feast stores vs Feast's own server (minutes; CPUs 0 and 1).
bench-features: feast-venv
	$(BIN)/python bench/bench_features.py $(BENCH_ARGS)

clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache

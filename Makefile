# Moorage: `make run` serves a one-replica registry, `make test` runs everything.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SYSTEM_PACKAGES := etcd-server etcd-client skopeo podman umoci python3-venv iproute2
MOORAGE_DATA_DIR ?= ./.moorage
MOORAGE_HTTP_ADDR ?= 127.0.0.1:5000

.PHONY: install system-packages run test lint bench bench-scale chaos clean fuzz

install: system-packages $(VENV)/.installed

# Installs only what is missing; apt-get needs root (or sudo).
system-packages:
	@./scripts/ensure-packages.sh $(SYSTEM_PACKAGES)

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

run: install
	$(BIN)/moorage run --data-dir "$(MOORAGE_DATA_DIR)" --http-addr "$(MOORAGE_HTTP_ADDR)"

lint: install
	$(BIN)/ruff check src tests harness $(wildcard bench) $(wildcard chaos)
	$(BIN)/ruff format --check src tests harness $(wildcard bench) $(wildcard chaos)
	$(BIN)/mypy

test: install lint
	$(BIN)/pytest $(PYTEST_ARGS)

# The fuzz test of the HTTP API with random seeds and FUZZ_EXAMPLES examples per surface
# (`make test` runs a fixed ~1-minute set); e.g. make fuzz FUZZ_EXAMPLES=20000
FUZZ_EXAMPLES ?= 3000
fuzz: install
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest tests/test_fuzz.py -s --timeout=0 $(PYTEST_ARGS)

bench: install
	@./scripts/ensure-packages.sh docker-registry
	$(BIN)/python -m bench $(BENCH_ARGS)

# Every operation on a 3-replica cluster of 100,000+ tags (bench/scale.py; takes a while);
# e.g. make bench-scale BENCH_SCALE_ARGS="--tags 2000 --repos 200 --big-tags 500"
bench-scale: install
	$(BIN)/python -m bench.scale $(BENCH_SCALE_ARGS)

# Faults under load (SIGKILL, SIGSTOP, network cuts, majority and total loss); e.g.
# make chaos CHAOS_ARGS="--replicas 5 --duration 60 --scenario all"
chaos: install
	$(BIN)/python -m chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

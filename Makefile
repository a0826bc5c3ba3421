# Moorage: `make run` serves a one-replica registry, `make test` runs everything,
# `make test-fast` the in-process unit tier (tests/unit/, under a minute).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# import-linter in a venv of its own (scripts/lint-imports-requirements.txt says why)
LINT_VENV := .venv-lint
# chromium: the web UI's browser tests drive it through Playwright (never a downloaded browser)
SYSTEM_PACKAGES := etcd-server etcd-client skopeo podman umoci python3-venv iproute2 chromium
MOORAGE_DATA_DIR ?= ./.moorage
MOORAGE_HTTP_ADDR ?= 127.0.0.1:5000
BIN_DIR ?= /usr/local/bin

.PHONY: install system-packages run test test-fast lint bench bench-scale chaos clean fuzz

install: system-packages $(VENV)/.installed
	@# Put `moorage` on PATH: as root, link it into $(BIN_DIR) (the commands `moorage
	@# status` prints then run when pasted); otherwise say where it is.
	@if [ "$$(id -u)" = 0 ]; then \
		mkdir -p "$(BIN_DIR)" && ln -sfn "$(abspath $(BIN))/moorage" "$(BIN_DIR)/moorage" && \
		echo "moorage: $(BIN_DIR)/moorage -> $(abspath $(BIN))/moorage"; \
	else \
		echo "moorage: $(abspath $(BIN))/moorage (not root: add $(abspath $(BIN)) to PATH," \
			"or run as root to link it into $(BIN_DIR))"; \
	fi

# Installs only what is missing; apt-get needs root (or sudo).
system-packages:
	@./scripts/ensure-packages.sh $(SYSTEM_PACKAGES)

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

$(LINT_VENV)/.installed: scripts/lint-imports-requirements.txt
	@test -x $(LINT_VENV)/bin/python || $(PYTHON) -m venv $(LINT_VENV)
	$(LINT_VENV)/bin/python -m pip install -q -r scripts/lint-imports-requirements.txt
	@touch $@

run: install
	$(BIN)/moorage run --data-dir "$(MOORAGE_DATA_DIR)" --http-addr "$(MOORAGE_HTTP_ADDR)"

lint: install $(LINT_VENV)/.installed
	$(BIN)/ruff check src tests harness $(wildcard bench) $(wildcard chaos)
	$(BIN)/ruff format --check src tests harness $(wildcard bench) $(wildcard chaos)
	$(BIN)/mypy
	PYTHONPATH=src $(LINT_VENV)/bin/lint-imports --no-cache --no-logo

# Four pytest-xdist workers on the 2-core CI machine: the tests wait on elections, heartbeats
# and timeouts, so fewer workers leave CPU idle (pytest 1,454-1,563 s with two, 1,225 s with
# three on one VM; on another, 2026-12-02, quiet: 1,071 s with three, whose 1,854 CPU-seconds
# kept the two cores 87 % busy, and 999 s with four). A test module runs whole on one worker, the
# network-namespace tests together (pytest_xdist_make_scheduler, tests/conftest.py);
# PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= 4
test: install lint
	@# the Distribution registry: tests/test_bench_tls.py runs the benchmark's servers
	@./scripts/ensure-packages.sh --no-start docker-registry
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

# The unit tier only: no processes, no network, no etcd (see "Development" in README.md).
test-fast: $(VENV)/.installed
	$(BIN)/pytest tests/unit -m unit -q $(PYTEST_ARGS)

# The fuzz test of the HTTP API with random seeds and FUZZ_EXAMPLES examples per surface, on a
# filesystem replica and on an S3 one (`make test` runs a fixed, smaller set); e.g.
# make fuzz FUZZ_EXAMPLES=20000
FUZZ_EXAMPLES ?= 3000
fuzz: install
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest tests/test_fuzz.py tests/test_s3_fuzz.py tests/test_fuzz_accounts.py -s --timeout=0 $(PYTEST_ARGS)

bench: install
	@./scripts/ensure-packages.sh --no-start docker-registry
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
	rm -rf $(VENV) $(LINT_VENV) .mypy_cache .ruff_cache .pytest_cache

# Two commands on a fresh machine: `make run` and `make test` (ruff, mypy, then pytest).
# Each creates .venv, installs what is missing (Python packages, and for the
# tests the system tools: etcd, dig, haproxy, dnsperf, dnsmasq, Node.js deps).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HTTP   ?= 127.0.0.1:8500
DNS    ?= 127.0.0.1:8600
DATA   ?= ./data
PYTEST_ARGS ?=

.PHONY: run dev test setup system-deps lint typecheck bench clean

$(STAMP): pyproject.toml
	@scripts/python-venv.sh "$(PYTHON)" "$(VENV)"
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

system-deps:
	@scripts/system-deps.sh

run: setup
	@echo "the waypost command is $(BIN)/waypost: in another terminal, '. $(BIN)/activate' puts it on the PATH"
	$(BIN)/waypost agent --data-dir $(DATA) --http $(HTTP) --dns $(DNS)

dev: setup
	@echo "the waypost command is $(BIN)/waypost: in another terminal, '. $(BIN)/activate' puts it on the PATH"
	$(BIN)/waypost agent --dev --http $(HTTP) --dns $(DNS)

# Lint and types first (cheap, before the system tools): CI runs `make test`, so it enforces them.
test: setup lint typecheck system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src

typecheck: setup
	$(BIN)/mypy

# Issue 13's agent targets, each by its own benchmark (bench/agent/targets.py;
# health_read.py needs wrk: apt-get install wrk). Never part of `make test`.
bench: setup system-deps
	nice -n -19 $(BIN)/python bench/agent/targets.py

clean:
	rm -rf $(VENV) .venv-compat .pytest_cache .mypy_cache .ruff_cache .hypothesis

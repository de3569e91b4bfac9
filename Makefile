# Everything a developer or CI runs. `make run` for the demo, `make test` for every test tier.
VENV    ?= .venv
PY      := $(VENV)/bin/python
BIN     := $(VENV)/bin
# The first Python >= 3.11 on PATH, newest first (override with PYTHON=...).
PYTHON  ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
             command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
             2>/dev/null && { echo $$p; break; }; done)

# A `docker compose up` of this repository (Kafka and Redis published on 127.0.0.1), when one runs
# and the environment names no services: `make test` and `make run` use it, and need no Java,
# Maven or redis-server (devtools/stack/compose.py; the system's Python, as .venv may not exist yet).
ifeq ($(KAFKA_BOOTSTRAP_SERVERS)$(REDIS_URL),)
COMPOSE_SERVICES := $(if $(PYTHON),$(shell $(PYTHON) -m devtools.stack.compose 2>/dev/null))
ifneq ($(COMPOSE_SERVICES),)
export KAFKA_BOOTSTRAP_SERVERS := $(word 1,$(COMPOSE_SERVICES))
export REDIS_URL := $(word 2,$(COMPOSE_SERVICES))
$(info make: using the running docker compose stack: Kafka $(KAFKA_BOOTSTRAP_SERVERS), Redis $(REDIS_URL))
endif
endif

.PHONY: install services-deps test test-unit test-integration test-cluster lint fmt stack-up stack-down run bench chaos chaos-short clean

$(VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "paynotify needs Python 3.11 or newer (python3.11, python3.12 or python3.13 on PATH)" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# What the local stack runs besides Python: redis-server from the distribution (installed here when
# we are root on Debian/Ubuntu, else one line says how), Java 17+ and Maven for Kafka, whose jars
# are then fetched (once, into ~/.cache/paynotify). Nothing when the services come from elsewhere.
services-deps: install
	@PY=$(PY) sh deploy/services-deps.sh

# All tiers: unit, integration (real Kafka + Redis), e2e (the pipeline with the sandbox), then
# the integration and e2e tiers once more on a local three-primary Redis Cluster (test-cluster).
# Services come from KAFKA_BOOTSTRAP_SERVERS/REDIS_URL, else a local stack on free ports; with
# services from outside (docker compose) there is no cluster to start, and the line says so.
test: install services-deps
	$(PY) -m pytest
ifeq ($(KAFKA_BOOTSTRAP_SERVERS)$(REDIS_URL),)
	PAYNOTIFY_TEST_REDIS_CLUSTER=1 $(PY) -m pytest -m "integration or e2e"
else
	@echo "paynotify: the Redis Cluster pass (make test-cluster) NOT RUN: it starts a local cluster, and KAFKA_BOOTSTRAP_SERVERS/REDIS_URL name services from outside"
endif

test-unit: install
	$(PY) -m pytest -m unit

test-integration: install services-deps
	$(PY) -m pytest -m "integration or e2e"

# The integration and e2e tiers on a local three-primary Redis Cluster alone (docs/scaling.md);
# `make test` runs them too. The chaos run and the modules that stop a Redis of their own keep a
# single server (tests/conftest.py).
test-cluster: install services-deps
	PAYNOTIFY_TEST_REDIS_CLUSTER=1 $(PY) -m pytest -m "integration or e2e"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

stack-up: install services-deps
	$(BIN)/paynotify stack up

stack-down: install
	$(BIN)/paynotify stack down

# The demo: the local Kafka + Redis (reused if up, else started and stopped again), topics, the
# sandbox, ingress, two workers and the sweeper; thousands of messy payments; a summary table.
# Resize with e.g. `make run DEMO_ARGS="--orders 500 --rate 20"` (`python -m devtools.demo -h`).
run: install services-deps
	$(PY) -m devtools.demo $(DEMO_ARGS)

# The six benchmarks (docs/performance.md) against one stack; not part of `make test`.
# Installs what only they need: wrk (Debian, as root), FastStream (the peer), py-spy (profiles).
# BENCH_ARGS: some of ingress worker peer e2e ceiling soak, and/or --profile.
bench: install
	command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq wrk; }
	$(PY) -c 'import faststream' 2>/dev/null || $(BIN)/pip install -q 'faststream[kafka]'
	test -x $(BIN)/py-spy || $(BIN)/pip install -q py-spy
	$(PY) -m benchmarks $(BENCH_ARGS)

# The chaos run (docs/reliability.md): the pipeline on a stack of its own under a seeded schedule
# of faults (kill -9, SIGSTOP, broker and Redis outages, slow, busy and hostile answers,
# forgeries), 10,000 payments; the sandbox's ledger checked against the events topic. Its last
# line is the figures; it exits non-zero when one that must be zero is not.
# CHAOS_ARGS: e.g. "--brokers 3", "--seed 7", "--payments 2000", "--short" (python -m tests.chaos -h).
chaos: install services-deps
	$(PY) -m tests.chaos $(CHAOS_ARGS)

# The short chaos run (~1,000 payments, each fault kind once, one broker) alone: a few minutes
# (`make test` runs it too).
chaos-short: install services-deps
	$(PY) -m pytest -m chaos tests/chaos

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis

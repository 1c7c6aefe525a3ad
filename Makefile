# rdx: the two commands a newcomer needs are `make demo` (run the exchange and its demo)
# and `make test` (run every test). Everything else here is a step of those two.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STATE  ?= .rdx

.PHONY: setup setup-k8s up up-detached down status demo test test-unit test-integration test-e2e lint check-infra clean-state \
        testnet bench bench-consensus bench-gateway bench-catalog bench-billing bench-compute

# The virtual environment, rebuilt only when the dependency list changes.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "rdx needs Python 3.11+")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

# Kafka jars, the CometBFT binary and the ABCI modules, cached under ~/.cache/rdx by version.
setup: $(VENV)/.installed
	@$(PY) -m rdx setup

up: setup
	@$(PY) -m rdx up --state-dir $(STATE)

up-detached: setup
	@$(PY) -m rdx up --state-dir $(STATE) --detach

down:
	@$(PY) -m rdx down --state-dir $(STATE)

status:
	@$(PY) -m rdx status --state-dir $(STATE)

demo: up-detached
	@$(PY) -m rdx demo --state-dir $(STATE)

test: setup setup-k8s check-infra
	@$(PY) -m pytest

# etcd + kube-apiserver for the `rdx ops` tests, built once per version into ~/.cache/rdx.
setup-k8s: $(VENV)/.installed
	@$(PY) -m rdx.k8s_toolchain

# Rendered Kubernetes manifests against the API schemas, workload policy, Dockerfile and compose lint.
check-infra: $(VENV)/.installed
	@$(PY) infra/check.py

test-unit: setup
	@$(PY) -m pytest -m unit

test-integration: setup setup-k8s
	@$(PY) -m pytest -m integration

test-e2e: setup
	@$(PY) -m pytest -m e2e

lint: setup
	@$(VENV)/bin/lint-imports

clean-state: down
	rm -rf $(STATE)

# A local 4-validator network (each validator with its own consensus service), until Ctrl-C.
testnet: setup
	@$(PY) -m rdx.testnet --validators 4 --state-dir .rdx-testnet

# Benchmarks: each writes bench/results/<area>.json (see ../shared/BENCH.md).
bench: bench-consensus bench-gateway bench-catalog bench-billing bench-compute
	@$(PY) -m bench.summary

bench-consensus: setup
	@$(PY) -m bench.consensus

bench-gateway: setup
	@$(PY) -m bench.gateway

bench-catalog: setup
	@$(PY) -m bench.catalog

bench-billing: setup
	@$(PY) -m bench.billing

bench-compute: setup
	@$(PY) -m bench.compute

# rdx: the two commands a newcomer needs are `make demo` (run the exchange and its demo)
# and `make test` (run every test). Everything else here is a step of those two.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STATE  ?= .rdx

.PHONY: setup setup-k8s up up-detached down status demo test test-unit test-integration test-e2e lint check-infra clean-state setup-ts \
        testnet fuzz fuzz-api bench bench-consensus bench-consensus-no-index bench-gateway bench-catalog bench-billing bench-billing-history bench-compute

# The virtual environment, rebuilt only when the dependency list or the native module changes. The
# native module (native/ed25519: the chain's ZIP-215 signature checks) is Rust, built by maturin with
# cargo; its build is kept under ~/.cache/rdx/cargo, outside the checkout.
NATIVE := native/ed25519/Cargo.toml native/ed25519/Cargo.lock native/ed25519/pyproject.toml native/ed25519/src/lib.rs
$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml $(NATIVE)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "rdx needs Python 3.11+")'
	@command -v cargo >/dev/null || { echo "rdx needs Rust's cargo (https://rustup.rs) to build native/ed25519"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	CARGO_TARGET_DIR=$${CARGO_TARGET_DIR:-$$HOME/.cache/rdx/cargo} \
	  $(PY) -m pip install -q --disable-pip-version-check -e '.[dev]' -e clients/python ./native/ed25519
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

# tests/deploy (the containerised exchange, `make test-deploy`) runs beside the rest, in its own pytest
# session: its image builds and containers wait mostly on the network and the engine (6 min from empty
# caches, under 4 warm), so side by side the two take about the time of the longer; its output follows.
# The tools built from the Go module proxy (setup-portal's Hydra, setup-k8s, setup-otel: 10 min of a cold
# make test's 14 min of setup on 2 cores, on 2026-12-03) build in the background at the lowest CPU
# priority while the tests that do not need them run; the six test files that do (marker built_tools)
# run last and wait for their build's lock (tests/conftest.py). Warm, those builds end at once. The
# builds get a session, hence a scheduler autogroup, of their own at nice 19: the services the tests
# start each lead a session (and autogroup) of their own, and Linux weighs autogroups against each
# other before it looks at a process's nice value, so a plain `nice` build competed with them as an equal.
# The unit tests run first, one pytest-xdist worker per core (they are CPU-bound and share nothing:
# 1,443 took 331 s alone, 174 s on 2 workers); the integration and end-to-end tests then run one at a
# time, as their servers, ports and timings expect; the 25 slowest are listed at the end.
test: setup check-infra setup-ts setup-stores
	@log=$$(mktemp /tmp/rdx-test-deploy.XXXXXX); base=$$(mktemp -d /tmp/rdx-test-deploy-tmp.XXXXXX); \
	tools=$$(mktemp /tmp/rdx-test-tools.XXXXXX); \
	setsid -w sh -c 'echo 19 > /proc/self/autogroup 2>/dev/null; exec nice -n 19 "$$0" --no-print-directory setup-portal setup-k8s setup-otel' $(MAKE) > $$tools 2>&1 & builds=$$!; \
	$(PY) -m pytest tests/deploy -p no:cacheprovider --basetemp=$$base > $$log 2>&1 & deploy=$$!; \
	$(PY) -m pytest --ignore=tests/deploy --ignore=tests/kubelet -m unit -n auto; unit=$$?; \
	$(PY) -m pytest --ignore=tests/deploy --ignore=tests/kubelet -m "not unit" --durations=25; tests=$$?; \
	wait $$builds; built=$$?; \
	echo "--- setup-portal, setup-k8s and setup-otel, built beside the tests above ---"; cat $$tools; \
	wait $$deploy; deployed=$$?; \
	echo "--- tests/deploy, run beside the tests above (make test-deploy) ---"; cat $$log; rm -rf $$log $$base $$tools; \
	[ $$unit -eq 0 ] && [ $$tests -eq 0 ] && [ $$deployed -eq 0 ] && [ $$built -eq 0 ]

# The TypeScript signer (sdk/typescript, docs/signing.md): npm ci into a cache outside the checkout, tsc; needs Node.js 20+.
setup-ts:
	@sdk/typescript/setup.sh

# PostgreSQL 15 and Redis from Debian's packages (apt-get install when missing): the shared state of
# replicated gateways, which the gateway-replica tests start on loopback (rdx/stores.py).
.PHONY: setup-stores
setup-stores: $(VENV)/.installed
	@$(PY) -m rdx.stores

# The portal's browser tests: Debian's chromium (apt-get), axe-core (npm) and Ory Hydra, the OIDC provider
# they sign in through (built once from the Go module proxy into ~/.cache/rdx; rdx/portal_toolchain.py).
.PHONY: setup-portal
setup-portal: $(VENV)/.installed
	@$(PY) -m rdx.portal_toolchain

# The OpenTelemetry Collector the tracing test exports to (OTLP receiver, file exporter), built once
# from the Go module proxy into ~/.cache/rdx (rdx/otel_toolchain.py; cold: 2.5-3.7 min of CPU, 3-10 min by load).
.PHONY: setup-otel
setup-otel: $(VENV)/.installed
	@$(PY) -m rdx.otel_toolchain

# Container images from Debian only (debootstrap base; rdx/images.py), cached; starts dockerd if needed.
.PHONY: images test-deploy
images: setup
	@$(PY) -m rdx.images

# Five organisations' exchange in those containers (docker/exchange.yaml, rdx/deploy.py): up, the demo's
# scenarios through its gateway, the borders between the networks, backup and restore, down (tests/deploy).
test-deploy: setup
	@$(PY) -m pytest tests/deploy

# etcd + kube-apiserver for the `rdx ops` tests, built once per version into ~/.cache/rdx.
setup-k8s: $(VENV)/.installed
	@$(PY) -m rdx.k8s_toolchain

# Rendered Kubernetes manifests against the API schemas, workload policy, Dockerfile and compose lint.
check-infra: $(VENV)/.installed
	@$(PY) infra/check.py

test-unit: setup
	@$(PY) -m pytest -m unit -n auto

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

# Coverage-guided fuzzing of the chain's input paths (tests/fuzz/), FUZZ_SECONDS per target.
# Each run starts from tests/fuzz/corpus/<target>/, which is then replaced by the smallest set
# of inputs that covers what the old corpus and the run reached (libFuzzer's -merge); crashes
# land in tests/fuzz/crashes/<target>/. Commit both: `make test` replays them and fuzzes briefly.
FUZZ_SECONDS ?= 600
FUZZ_TARGETS := tx_decode check_tx signed_check_tx query proposal
fuzz: setup
	@for t in $(FUZZ_TARGETS); do \
	  work=$$(mktemp -d); mkdir -p tests/fuzz/crashes/$$t $$work/new $$work/merged; \
	  echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
	  $(PY) -m tests.fuzz.run $$t -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 \
	    -artifact_prefix=tests/fuzz/crashes/$$t/ $$work/new tests/fuzz/corpus/$$t || exit 1; \
	  $(PY) -m tests.fuzz.run $$t -merge=1 $$work/merged tests/fuzz/corpus/$$t $$work/new 2>/dev/null || exit 1; \
	  rm -rf tests/fuzz/corpus/$$t && mv $$work/merged tests/fuzz/corpus/$$t && rm -rf $$work; \
	  echo "fuzz: $$t corpus now $$(ls tests/fuzz/corpus/$$t | wc -l) inputs"; \
	done

# Property-based requests against the gateway's OpenAPI schema, alone and as a replica on PostgreSQL
# and Redis, with more examples per operation than `make test`'s 5 (tests/integration/test_gateway.py).
API_EXAMPLES ?= 100
fuzz-api: setup setup-stores
	@RDX_TEST_SCHEMATHESIS_EXAMPLES=$(API_EXAMPLES) $(PY) -m pytest -p no:cacheprovider -o timeout=0 -k schemathesis \
	  tests/integration/test_gateway.py tests/integration/test_gateway_replicas.py

# Benchmarks: each writes bench/results/<area>.json (see ../shared/BENCH.md).
bench: bench-consensus bench-gateway bench-catalog bench-billing bench-compute
	@$(PY) -m bench.summary

bench-consensus: setup
	@$(PY) -m bench.consensus

# The same with no tx indexing on either chain: kvstore's node indexes six event attributes per tx
# (rdx's txs one), a cost that grows over a run (~3 min; docs/architecture.md).
bench-consensus-no-index: setup
	@$(PY) -m bench.consensus --tx-index null --out bench/results/consensus_no_index.json

bench-gateway: setup
	@$(PY) -m bench.gateway

bench-catalog: setup
	@$(PY) -m bench.catalog

bench-billing: setup
	@$(PY) -m bench.billing

# Today's settlement ratio against the code of before issue 16, alternating in one run (~4 min).
bench-billing-history: setup
	@$(PY) -m bench.billing_history

bench-compute: setup
	@$(PY) -m bench.compute

# rdx's catalog on a real kubelet (not part of `make test`): a one-node cluster of etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy, CoreDNS and kube-router (NetworkPolicies)
# built once from the Go module proxy, Debian's containerd and CNI plugins, images from `make images`
# (rdx/k8s_node.py, tests/kubelet). Needs root.
.PHONY: test-kubelet
test-kubelet: setup
	@$(PY) -m pytest tests/kubelet -p no:cacheprovider -s

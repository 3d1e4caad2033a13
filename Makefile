# latenttracer: every command a user needs. `make help` lists them.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PYTHON  := $(BIN)/python
JOBS    ?= 2

.DEFAULT_GOAL := help
.PHONY: help install test test-slow lint zoo zoo-grid real-set generate reproduce-table1 ablations figures \
        sync-wandb benchmark clean

help: ## list every target
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

install: ## create .venv and install the project with its dev extras (CPU torch 2.13.0)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'

test: ## run the default (fast, CPU, offline) test suite
	$(BIN)/pytest -n $(JOBS) -q

test-slow: ## run the slow tier too
	RUN_SLOW=1 $(BIN)/pytest -n $(JOBS) -q -m "slow or not slow"

lint: ## ruff
	$(BIN)/ruff check latenttracer data_gen experiments benchmarks tests

zoo: ## train the embedded zoo from scratch into zoo/ (CPU)
	$(PYTHON) -m data_gen.zoo --out zoo

benchmark: ## inversion throughput: batched engine vs the authors' procedure
	$(PYTHON) benchmarks/inversion_throughput.py

clean: ## remove caches and Hydra outputs (keeps results/*.md and the zoo)
	rm -rf outputs multirun results/cache .pytest_cache

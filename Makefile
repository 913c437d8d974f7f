# One command per job. `make help` lists them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help install test test-unit test-integration check lint typecheck demo bench kafka-start kafka-stop clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install Matchstream with its dev tools

test: $(STAMP)  ## every test tier; the integration tier starts its own Kafka broker
	$(BIN)/python -m pytest -q tests/unit tests/functional tests/integration

test-unit: $(STAMP)  ## unit and functional tiers only (no broker)
	$(BIN)/python -m pytest -q tests/unit tests/functional

test-integration: $(STAMP)  ## integration tier only (real Kafka)
	$(BIN)/python -m pytest -q tests/integration

lint: $(STAMP)  ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)  ## mypy over the source packages
	$(BIN)/mypy streams agents models matching web

check: lint typecheck test  ## everything CI cares about

demo: $(STAMP)  ## local Kafka + worker + a workload; prints where to look
	$(BIN)/matchstream demo

bench: $(STAMP)  ## throughput and latency next to a bare aiokafka relay
	$(BIN)/matchstream bench

kafka-start: $(STAMP)  ## start the local development broker
	$(BIN)/matchstream kafka start

kafka-stop: $(STAMP)  ## stop it
	$(BIN)/matchstream kafka stop

clean:  ## remove the venv and local data (not the jar cache)
	rm -rf $(VENV) var .pytest_cache .hypothesis

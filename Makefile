# Thin wrappers over the project's own commands (the README names them); `make` lists them.
# Pass arguments through ARGS, e.g. `make test ARGS="-m unit -x"`, `make bench ARGS="model.image_size=112"`.
VENV := .venv/bin
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup repro test test-unit lint fmt typecheck bench

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup: ## create .venv from uv.lock (idempotent)
	bash infra/setup.sh

repro: setup ## run the main job: the DVC pipeline with params.yaml
	$(VENV)/dvc repro $(ARGS)

test: ## set up, then every test tier (infra/test.sh; ARGS go to pytest)
	bash infra/test.sh $(ARGS)

test-unit: setup ## the unit tier only
	$(VENV)/python -m pytest tests/unit $(ARGS)

lint: ## ruff check and the format check (what CI runs)
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .

fmt: ## format the tree and apply ruff's safe fixes
	$(VENV)/ruff check --fix .
	$(VENV)/ruff format .

typecheck: ## mypy over pyproject.toml's [tool.mypy] paths (what CI runs)
	$(VENV)/mypy

bench: setup ## the default profile from nothing, then the no-op re-run (ARGS: section.key=value)
	bash bench/repro.sh $(ARGS)

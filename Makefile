# One command for the main job, one for the tests; both create .venv on first use.
VENV ?= .venv
PYTHON ?= python3
# Stage commands in dvc.yaml call `python`, and DVC's queue workers call `dvc`:
# both must be the venv's.
export PATH := $(abspath $(VENV))/bin:$(PATH)
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: install repro test lint format clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -r requirements.txt
	$(VENV)/bin/pip install --no-deps --no-build-isolation -e .
	touch $@

repro: install  ## set up, then run the whole pipeline on the default data
	dvc repro

test: install  ## lint, then the whole test suite (unit + end-to-end)
	ruff check .
	ruff format --check .
	pytest

lint: install
	ruff check .
	ruff format --check .

format: install
	ruff format .
	ruff check --fix .

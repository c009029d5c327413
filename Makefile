# Two commands for a fresh clone (see README.md):
#   make run    install everything into .venv and start portico on its built-in default config
#   make test   install everything into .venv and run the linters and the whole test suite

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[demo,test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/portico

lint: $(STAMP)
	$(BIN)/ruff check portico tests bench
	$(BIN)/ruff format --check portico tests bench

test: $(STAMP)
	$(BIN)/ruff check portico tests bench
	$(BIN)/ruff format --check portico tests bench
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info

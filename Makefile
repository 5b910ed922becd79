# The two commands a new machine needs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: run test test-fast clean

# (re)install when pyproject.toml changes; torch is pinned there to the CPU build
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/alertlink migrate
	$(BIN)/alertlink serve --host $(HOST) --port $(PORT)

# every test, the slow ones (real model, PostgreSQL, Alertmanager) included
test: $(STAMP)
	$(BIN)/python -m pytest

# the quick loop while developing
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m 'not slow'

clean:
	rm -rf $(VENV) .pytest_cache alertlink.db alertlink.db-* alertlink.faiss alertlink.faiss.*

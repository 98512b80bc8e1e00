# `make test` and `make demo` work on a fresh machine with only Python and a package index.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Reinstall only when the project's metadata changes.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check cnnjax experiments tests
	$(VENV)/bin/ruff format --check cnnjax experiments tests

# The tests run whatever the formatting; CI runs `make lint` as its own, also required, step.
test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) -m experiments.demo

bench: $(STAMP)
	$(PY) -m experiments.conv_backends

clean:
	rm -rf $(VENV) results .pytest_cache .ruff_cache

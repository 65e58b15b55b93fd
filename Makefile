# Two entry points (see README): `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mamba-export-installed
NATIVE := $(shell find plugins -type f) pyproject.toml

.PHONY: setup native demo test clean

setup: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): requirements.txt $(NATIVE) | $(VENV)/bin/python
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-build-isolation --no-deps -e .
	touch $@

# Rebuild the native libraries after editing plugins/ (what `setup` runs when plugins change).
native:
	$(PY) -m pip install --disable-pip-version-check -q --no-build-isolation --no-deps -e .

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf build mamba_export/_lib

# Two entry points (see README): `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mamba-export-installed
NATIVE := $(shell find plugins -type f) pyproject.toml

.PHONY: setup native demo test clean
EXPORT_DIR ?= out/mamba1-pystdlib

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

# The main job on the shipped model: export to ONNX (the scan as one mamba.SelectiveScan
# node), run it in ONNX Runtime through our kernel, validate it against eager PyTorch,
# then generate text through ONNX Runtime with the recurrent state.
demo: $(STAMP)
	$(VENV)/bin/mamba-export validate --backend ort --onnx $(EXPORT_DIR) --json $(EXPORT_DIR)/validation.json
	$(VENV)/bin/mamba-export generate --backend ort --onnx $(EXPORT_DIR) --max-new-tokens 200 \
		--temperature 0.6 --top-k 20 --seed 0 --prompt "class Parser:$$(printf '\n    ')def __init__(self"

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf build mamba_export/_lib

# ACAT for 3D Slicer: set-up, tests, demo, benchmarks.
# `make test` works on a fresh clone: it creates .venv, installs CPU torch FIRST (so that no
# multi-GB CUDA build is ever pulled in by another package), then the package and its test extras.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0

.PHONY: setup test demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH)"
	$(PIP) install --quiet -e ".[test,train]"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q Testing

demo: setup
	$(PY) -m ACATCore.demo

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info

# ACAT for 3D Slicer: set-up, tests, demo, benchmarks.
# `make test` works on a fresh clone: it creates .venv, installs CPU torch FIRST (so that no
# multi-GB CUDA build is ever pulled in by another package), then the package and its test extras,
# all at the exact versions of constraints.txt. `make test-min` does the same in .venv-min at the
# lowest versions pyproject.toml admits (constraints-min.txt).
PYTHON ?= python3
TORCH  ?= torch==2.13.0

.PHONY: setup setup-min test test-min demo bench clean

VENV     := .venv
PY       := $(VENV)/bin/python
VENV_MIN := .venv-min
PY_MIN   := $(VENV_MIN)/bin/python

# $(call install,VENV,CONSTRAINTS)
define install
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet -c $(2) "$(TORCH)"
	$(1)/bin/python -m pip install --quiet -c $(2) -e ".[test]"
	touch $(1)/.installed
endef

setup: $(VENV)/.installed
setup-min: $(VENV_MIN)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt Makefile
	$(call install,$(VENV),constraints.txt)

$(VENV_MIN)/.installed: pyproject.toml constraints-min.txt Makefile
	$(call install,$(VENV_MIN),constraints-min.txt)

test: setup
	$(PY) -m pytest -q Testing

test-min: setup-min
	$(PY_MIN) -m pytest -q Testing

demo: setup
	$(PY) -m ACATCore.demo

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) $(VENV_MIN) build *.egg-info

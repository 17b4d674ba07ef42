# Two commands on a fresh machine: `make demo` trains SmolLM2-135M with self-reward (about 5 minutes on a CPU),
# `make test` runs the test suite. Each first creates .venv when it is missing and installs the tested versions
# (constraints.txt; torch 2.13.0, whose plain PyPI name gives the CPU build here) plus the built-in model and data
# (`python -m srtlab prepare`); an edit to pyproject.toml, setup.py or constraints.txt reinstalls.
#   make test-latest   the suite on the newest releases of every dependency (torch kept at $(TORCH)), in .venv-latest
#   make test-slow     the real-model tests (-m slow);  make lint: ruff;  make lock: rewrite constraints.txt
#   make test PYTEST_ARGS="tests/test_fit.py -x"     any pytest arguments
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
LOCK ?= -c constraints.txt
PIP_FLAGS ?=
PYTEST_ARGS ?=

PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-latest test-slow lint lock

demo: $(STAMP)
	$(PY) -m srtlab fit experiment=srt

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-latest:
	rm -f .venv-latest/.installed
	$(MAKE) test VENV=.venv-latest LOCK= PIP_FLAGS="--upgrade --upgrade-strategy eager"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# the installed versions of a fresh .venv (the project's dependencies only), as the new pins
lock: $(STAMP)
	{ sed -n '/^#/p' constraints.txt; $(PY) -m pip freeze --exclude-editable | sed 's/+cpu$$//'; } > constraints.new
	mv constraints.new constraints.txt

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml setup.py constraints.txt
	$(PY) -m pip install --quiet --disable-pip-version-check $(PIP_FLAGS) $(LOCK) "$(TORCH)" -e ".[dev]"
	$(PY) -m srtlab prepare
	touch $@

# The two commands of README.md: `make demo` (main job) and `make test` (the tests).
# Both create .venv when it is missing and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUTPUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: demo test test-fast install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Search (DrNAS on the embedded digits space), then retrain the found architecture and 3 random ones of
# the same space with the same quick protocol, and print one summary of what the search bought
# (--overwrite: a second `make demo` starts the run in $(OUTPUT) again).
# One torch thread: the models are tiny, and on a shared machine a second thread only waits (10x slower).
DEMO_THREADS ?= 1
demo: $(STAMP)
	OMP_NUM_THREADS=$(DEMO_THREADS) $(VENV)/bin/nni-plugins search --output $(OUTPUT) --overwrite
	OMP_NUM_THREADS=$(DEMO_THREADS) $(VENV)/bin/nni-plugins retrain $(OUTPUT) --random 3 --restart

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --durations=25 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs build *.egg-info

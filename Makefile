# The verbs a newcomer needs. Everything runs from the project's own virtual environment.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/unlearn run

# Two test processes (pytest-xdist): the integration tests spend much of their time waiting on the
# processes they start, so two share two cores well (9 min -> 6 min here); more did worse.
TEST_PROCESSES ?= 2

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_PROCESSES) $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check service workers models tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy service workers
	d=$$(mktemp -d) && UNLEARN_VAR_DIR=$$d $(VENV)/bin/unlearn db upgrade && UNLEARN_VAR_DIR=$$d $(VENV)/bin/unlearn db check

bench: $(STAMP)
	$(PY) bench/quality.py --quick

clean:
	rm -rf var .pytest_cache

# The two commands of the README are `make demo` and `make test`; everything else is a helper.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo serve test test-sqlite lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# Brain-Score's loader, for the tests that load our exports with it (pyproject.toml says why --no-deps)
	$(BIN)/pip install -q --no-deps 'brainscore-brainio==1.1.0'
	touch $(STAMP)

setup: $(STAMP)

# Closed-loop demo on the embedded default (SQLite + in-process jobs + local store).
demo: setup
	$(BIN)/itloop db upgrade
	$(BIN)/itloop demo --days $${DAYS:-3}

serve: setup
	$(BIN)/itloop db upgrade
	$(BIN)/itloop serve

# Full suite against real PostgreSQL and Redis (127.0.0.1 defaults, see tests/conftest.py),
# database tests also on SQLite.
test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-sqlite: setup
	ITLOOP_TEST_BACKENDS=sqlite $(BIN)/pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) itloop-data .pytest_cache

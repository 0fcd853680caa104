# Squall: `make run` starts the platform with the examples deployed; `make test` runs the suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8080
DATA_DIR ?= .squall
STAMP := $(VENV)/.installed
# test files run on this many processes at once (pytest-xdist; a file's tests stay together,
# so module fixtures such as a Ray cluster start once); TEST_WORKERS=0 runs them in one
TEST_WORKERS ?= 2

.PHONY: run test bench bench-quick soak lint setup clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	@$(BIN)/python scripts/run_with_examples.py --port $(PORT) --data-dir $(DATA_DIR)

test: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/run.py

bench-quick: $(STAMP)
	$(BIN)/python bench/run.py --quick

# 30 minutes of mixed load against its own `squall up` (SOAK_MINUTES=5 make soak for less);
# writes bench/results/soak-<date>.md/.png. Not part of `make test`.
soak: $(STAMP)
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .squall .pytest_cache .mypy_cache .ruff_cache

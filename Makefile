# Everything runs from a local virtual environment that these targets build themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

$(BIN)/codevalue: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

.PHONY: demo test lint bench-sandbox clean
demo: $(BIN)/codevalue
	$(BIN)/codevalue demo

test: $(BIN)/codevalue
	$(BIN)/python -m pytest -q

lint: $(BIN)/codevalue
	$(BIN)/ruff check codevalue tests benchmarks

bench-sandbox: $(BIN)/codevalue
	$(BIN)/python benchmarks/bench_sandbox.py

clean:
	rm -rf $(VENV) .pytest_cache runs

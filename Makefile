# Everything runs from a local virtual environment that these targets build themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

$(BIN)/codevalue: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

.PHONY: demo test test-fast mutation lint bench-sandbox clean
demo: $(BIN)/codevalue
	$(BIN)/codevalue demo

test: $(BIN)/codevalue
	$(BIN)/python -m pytest -q

# Everything but the tests marked slow (clusters, servers, training, subprocess jobs, sandbox runs that wait for a
# limit or start their own sandbox); each property on 15 examples instead of 60. Under 30 s on an idle 2-core machine.
test-fast: $(BIN)/codevalue
	CODEVALUE_PROPERTY_EXAMPLES=15 $(BIN)/python -m pytest -q -m "not slow"

# Mutation testing of compare.py, targets.py, the verdict functions of labels.py, evaluate.py's best-of-n and
# bootstrap, and engine.py (slow, not in CI; scores in benchmarks/README.md). MUTATION_JOBS: parallel mutants;
# MUTANTS: which (mutmut's name globs). Survivors: `$(BIN)/mutmut results`, `mutmut show NAME`.
MUTATION_JOBS ?= 2
MUTANTS ?= "codevalue.compare.*" "codevalue.targets.*" "codevalue.labels.x_judge*" \
           "codevalue.labels.x__judge_test*" "codevalue.labels.x__missing_verdict*" \
           "codevalue.evaluate.x_tie_averaged_order*" "codevalue.evaluate.x_best_of_n*" \
           "codevalue.evaluate.x__resamples*" "codevalue.evaluate.x_bootstrap_ci*" "codevalue.evaluate.x__with_ci*" \
           "codevalue.evaluate.x__reranked*" "codevalue.evaluate.x_paired_comparison*" "codevalue.engine.*"
mutation: $(BIN)/codevalue
	$(BIN)/pip install -q 'mutmut>=3.3,<4'
	$(BIN)/mutmut run --max-children $(MUTATION_JOBS) $(MUTANTS)
	$(BIN)/python benchmarks/mutation_scores.py

lint: $(BIN)/codevalue
	$(BIN)/ruff check codevalue tests benchmarks

bench-sandbox: $(BIN)/codevalue
	$(BIN)/python benchmarks/bench_sandbox.py

clean:
	rm -rf $(VENV) .pytest_cache runs mutants

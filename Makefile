# Two entry points (see README.md): `make demo` and `make test`.
# Both create .venv on first use and install the product with the CPU build of torch.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench lint clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/her2-qupath demo -o demo-output

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# the quick subset for development: no slow, Groovy or browser tests (make test runs everything)
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not groovy and not browser" $(PYTEST_ARGS)

# every benchmark runs; the ones that miss their own target are listed at the end (exit 1)
bench: setup
	@failed=""; for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || failed="$$failed $$b"; done; \
	if [ -n "$$failed" ]; then echo "missed their targets:$$failed"; exit 1; fi

lint: setup
	$(BIN)/ruff check her2_qupath tests benchmarks

clean:
	rm -rf $(VENV) demo-output .pytest_cache

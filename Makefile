# The two set-up commands: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export MPLBACKEND := Agg

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job on the bundled demo data; it grows with the pipeline.
demo: $(STAMP)
	@test -f data/label.txt || $(BIN)/sortflow dataset demo data
	$(BIN)/sortflow check-dataset data

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/bench_check_dataset.py

clean:
	rm -rf output bench/out .pytest_cache .ruff_cache

# The two set-up commands: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export MPLBACKEND := Agg

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job on the bundled demo data: every step with params.yaml, then a real Triton server that
# classifies a few images over gRPC and is stopped again.
DEMO_IMAGES := data/images/zero/zero_0000.bmp data/images/three/three_0003.bmp data/images/seven/seven_0007.bmp
demo: $(STAMP)
	@test -f data/label.txt || $(BIN)/sortflow dataset demo data
	$(BIN)/sortflow check-dataset
	$(BIN)/sortflow train
	$(BIN)/sortflow evaluate
	$(BIN)/sortflow export
	$(BIN)/sortflow register
	$(BIN)/sortflow publish
	$(BIN)/sortflow serve
	$(BIN)/sortflow predict --triton 127.0.0.1:8001 --topk 1 --save-path output/predict --input $(DEMO_IMAGES); \
	  status=$$?; $(BIN)/sortflow serve --stop; exit $$status
	@echo "Reports: output/check_dataset_result.json, output/train/, output/evaluate/evaluate_result.json,"
	@echo "         output/export/export_result.json, output/register/register_result.json, output/predict/"

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/bench_check_dataset.py
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_serving.py

clean:
	rm -rf output bench/out .pytest_cache .ruff_cache

# The two set-up commands: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export MPLBACKEND := Agg

.PHONY: install demo test lint docs browser containers bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job on the bundled demo data: the DVC pipeline (dvc.yaml: check, split, train, evaluate, export,
# register, publish), then a real Triton server that classifies a few images over gRPC and is stopped again.
# A second `make demo` reruns only what changed.
DEMO_IMAGES := data/images/zero/zero_0000.bmp data/images/three/three_0003.bmp data/images/seven/seven_0007.bmp
demo: export PATH := $(abspath $(BIN)):$(PATH)
demo: $(STAMP)
	@test -f data/label.txt || sortflow dataset demo data
	dvc repro
	sortflow serve
	sortflow predict --triton 127.0.0.1:8001 --topk 1 --save-path output/predict --input $(DEMO_IMAGES); \
	  status=$$?; sortflow serve --stop; exit $$status
	@sortflow summary

lint: $(STAMP)
	$(BIN)/ruff check .

# The reference pages (commands, parameters, exit codes) are written from the code; the site is built strictly.
docs: $(STAMP)
	$(BIN)/python -m tests.support.reference
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir output/site

# Headless Chromium opens the review contact sheet in the tests; Debian's package, installed once (as root).
browser:
	@command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-headless-shell; }

# The container tests (tests/containers) run the team stack with Debian's Podman and runc, and build a Debian base
# image with mmdebstrap; installed once (as root). podman-compose comes from PyPI with the dev extras.
containers:
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v mmdebstrap >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc mmdebstrap; }

# Two workers, each test file on one of them (its module fixtures built once), the end-to-end folders first
# (RUN_ORDER in tests/conftest.py, hence --no-loadscope-reorder), each with its share of the cores for its thread
# pools (set in the same file): two on 2 cores take about half the time of one (the timings are in the docs),
# three longer than two (17 min 26 s against 16 min 28 s on a 2-core AMD EPYC). The container tests then run on their own: building
# the images and training in them beside the other tests made both slower (30 min in all, against about 26 one
# after the other).
test: lint browser containers
	$(BIN)/pytest -n 2 --dist loadfile --no-loadscope-reorder -m "not container"
	$(BIN)/pytest -m container

# The peer of bench_peer.py (Ultralytics) comes from PyPI, with the numpy that sortflow already has.
bench: $(STAMP)
	$(BIN)/pip install --quiet ultralytics "numpy==$$($(BIN)/python -c 'import numpy; print(numpy.__version__)')"
	$(BIN)/python -m bench.bench_check_dataset
	$(BIN)/python -m bench.bench_train
	$(BIN)/python -m bench.bench_decisions
	$(BIN)/python -m bench.bench_serving
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m bench.bench_monitor
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m bench.bench_bytes
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m bench.bench_shadow
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m bench.bench_see
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m bench.bench_peer
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m bench.bench_orchestration
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m bench.bench_team
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m bench.bench_containers

clean:
	rm -rf output bench/out .pytest_cache .ruff_cache

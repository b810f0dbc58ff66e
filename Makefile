# Two commands matter: `make run` (the whole pipeline on the synthetic default) and `make test`.
# Both create .venv and install the project (versions pinned in pyproject.toml) on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup run test test-all clean
.PHONY: bench bench-ingest

setup: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[train,dev]'
	touch $(INSTALLED)

# The seven DVC stages on params.yaml (synthetic data, default profile), then the variant table.
run: setup
	$(BIN)/dvc repro
	$(BIN)/skyedge verify data/package
	$(BIN)/skyedge report

test: setup
	$(BIN)/python -m pytest

# Including tests marked slow (full profile).
test-all: setup
	$(BIN)/python -m pytest -m ''

clean:
	rm -rf data/ingest data/embed data/distill data/prune data/quantize data/evaluate data/package

# Ingest all of ../shared/datasets (Beijing + SWIMCAT); prints records/s and peak RSS.
bench-ingest: setup
	$(BIN)/python -m stages.ingest --bench ../shared/datasets/beijing ../shared/datasets/swimcat --out $${TMPDIR:-/tmp}/skyedge-bench-ingest --bench-report reports/bench_ingest.json

bench: bench-ingest

# Device footprint: agent peak RSS, pull + verify + swap time, predict latency (data/package when
# built, else a tiny sample package) -> reports/bench_device.json.
.PHONY: bench-device
bench-device: setup
	$(BIN)/python -m skyedge.device.bench --package data/package --out reports/bench_device.json

bench: bench-device

# The pipeline on the real data in ../shared/datasets (SWIMCAT photos + the 9 Beijing stations),
# profile `real` of params.yaml, as a DVC experiment (`dvc exp run -S common.profile=real`: the
# workspace's params.yaml then names the real profile), then the package check and variant table.
.PHONY: run-real bench-models
run-real: setup
	$(BIN)/skyedge repro --profile real
	$(BIN)/skyedge verify data/package
	$(BIN)/skyedge report

# Every model variant of the last run (BENCH_DATA, e.g. after `make run-real`) re-timed side by side
# in one process and scored on the test split, with the issue's targets met / not met -> reports/bench.json.
BENCH_DATA ?= data
bench-models: setup
	$(BIN)/python -m skyedge.bench --data $(BENCH_DATA) --out reports/bench.json

bench: bench-models

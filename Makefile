# Two commands matter: `make run` (the whole pipeline on the synthetic default) and `make test`.
# Both create .venv and install the project (versions pinned in pyproject.toml) on first use.
PYTHON ?= python3
VENV := .venv
VEGA := .skyedge/vega
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup run test test-all clean serve
.PHONY: bench bench-ingest

setup: $(INSTALLED) $(VEGA)/vega.min.js

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[train,dev]'
	touch $(INSTALLED)

# DVC's HTML plots load Vega from a CDN when viewed, which leaves them blank offline. The three
# scripts come once from the npm registry instead; docs/dvc-plots.html (.dvc/config
# plots.html_template) points at them. `make plots` renders dvc_plots/index.html.
$(VEGA)/vega.min.js:
	mkdir -p $(VEGA)
	cd $(VEGA) && npm pack --silent vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0 > /dev/null \
		&& for f in *.tgz; do tar xzf $$f --strip-components=2 package/build/$${f%-*}.min.js; done && rm -f *.tgz

.PHONY: plots
plots: setup
	$(BIN)/dvc plots show
	@echo "open dvc_plots/index.html (works offline: Vega from $(VEGA))"

# The DVC stages on params.yaml (synthetic data, the default profile even after make run-real) run by the retrain flow
# with AUTO approval: gate, publish to the embedded local registry (.skyedge/registry), dvc push to
# .skyedge/registry/dvc. Prefect needs no server here (it starts a temporary local API itself).
run: setup
	@echo "make run: retrain flow with approval AUTO (no operator is asked), local registry .skyedge/registry"
	$(BIN)/skyedge retrain --approval auto --profile default
	$(BIN)/skyedge verify data/package
	$(BIN)/skyedge report

# A local Prefect server on 127.0.0.1:$(PREFECT_PORT) (UI and API; log in .skyedge/prefect-server.log),
# then `skyedge serve`: the retrain deployment on params flow.cron. Ctrl-C stops both.
PREFECT_PORT ?= 4200
serve: setup
	mkdir -p .skyedge
	export PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api; \
	$(BIN)/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) > .skyedge/prefect-server.log 2>&1 & server=$$!; \
	trap 'kill $$server 2>/dev/null' EXIT INT TERM; \
	until $(BIN)/python -c "import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=2)" $$PREFECT_API_URL/health 2>/dev/null; do \
		kill -0 $$server 2>/dev/null || { echo "prefect server failed: see .skyedge/prefect-server.log" >&2; exit 1; }; sleep 1; done; \
	echo "Prefect UI: http://127.0.0.1:$(PREFECT_PORT)"; \
	$(BIN)/skyedge serve

test: setup
	$(BIN)/python -m pytest

# Including tests marked slow (full profile).
test-all: setup
	$(BIN)/python -m pytest -m ''

clean:
	rm -rf data/ingest data/embed data/distill data/prune data/quantize data/evaluate data/package

# Ingest at 1x and 10x ../shared/datasets (Beijing replayed as 10x the stations in a temp folder,
# SWIMCAT once), each in its own process: records/s and peak RSS per scale, a table and
# reports/bench_ingest.json (targets: RSS at 10x within 1.2x of 1x, time linear). Skips without ../shared.
bench-ingest: setup
	$(BIN)/python -m skyedge.evaluation.ingest_bench --shared ../shared/datasets --out reports/bench_ingest.json

bench: bench-ingest

# Device footprint: agent peak RSS, pull + verify + swap time, predict latency (data/package when
# built, else a tiny sample package) -> reports/bench_device.json.
.PHONY: bench-device
bench-device: setup
	$(BIN)/python -m skyedge.evaluation.device_bench --package data/package --out reports/bench_device.json

bench: bench-device

# The pipeline on the real data in ../shared/datasets (SWIMCAT photos + the 9 Beijing stations),
# profile `real` (profiles/real.yaml), as a DVC experiment (`skyedge repro --profile real`: validates
# the profile, writes common.profile: real into params.yaml, then `dvc exp run`), then the package
# check and variant table.
.PHONY: run-real bench-models
run-real: setup
	$(BIN)/skyedge repro --profile real
	$(BIN)/skyedge verify data/package
	$(BIN)/skyedge report

BENCH_DATA ?= data

# Leave-one-capture-day-out sky accuracy of teacher, student alone and student with KD, each fold
# trained with the pipeline's recipe on the other days' photos (skyedge/evaluation/crossval.py):
# the estimate where a fixed split holds out too few days -> reports/crossval.json.
.PHONY: bench-crossval
bench-crossval: setup
	$(BIN)/python -m skyedge.evaluation.crossval --data $(BENCH_DATA) --params $(dir $(abspath $(BENCH_DATA)))params.yaml --out reports/crossval.json

bench: bench-crossval

# Every model variant of the last run (BENCH_DATA, e.g. after `make run-real`) re-timed side by side
# in one process and scored on the test split, with the issue's targets met / not met -> reports/bench.json.
# The KD gain target also reads reports/crossval.json when it estimates this run's photos and recipe.
bench-models: setup
	$(BIN)/python -m skyedge.evaluation.bench --data $(BENCH_DATA) --params $(dir $(abspath $(BENCH_DATA)))params.yaml --out reports/bench.json

bench: bench-models

# Bytes over the air (the model container, deltas, gzip/zstd baselines), decode cost, and what
# weight sharing costs in accuracy -> reports/bench_ota.json. Needs a pipeline run (make run).
.PHONY: bench-ota bench-fleet
bench-ota: setup
	$(BIN)/python -m skyedge.evaluation.bench_ota --data $(BENCH_DATA) --out reports/bench_ota.json

bench: bench-ota

# 200 simulated stations x 72 hours with faults: a good release reaches everyone, a bad one is
# aborted at the first ring -> reports/bench_fleet.json. Needs a package (make run).
bench-fleet: setup
	$(BIN)/python -m flows.fleet_bench --package $(BENCH_DATA)/package --out reports/bench_fleet.json

bench: bench-fleet

# The pipeline through a whole-sky camera (profile `fisheye`: horizon, obstructions, sun, night,
# dome): the student behind selective attention, the package with attention.onnx.
.PHONY: run-fisheye bench-attention
run-fisheye: setup
	$(BIN)/skyedge repro --profile fisheye
	$(BIN)/skyedge verify data/package
	$(BIN)/skyedge report

# Full frame vs attention crop: the distill section's student trained on each (no teacher), same
# input resolution; then (--costs) both distilled from the whole-frame teacher as shipped, at equal
# input resolution and at smaller crop sizes (equal MACs / equal accuracy), with MACs, latency,
# bytes, the attention net's own cost and the targets met or not -> reports/bench_attention.json.
# Needs data/ingest, data/attend and data/embed of fisheye frames (make run-fisheye).
bench-attention: setup
	$(BIN)/python -m skyedge.evaluation.attention_bench --ingest data/ingest --attend data/attend --embed data/embed --costs --out reports/bench_attention.json

bench: bench-attention

"""`skyedge evaluate`: metrics.json schema, runtime in a child process, bad input, real datasets."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skyedge.core.contract import HORIZONS, SKY_CLASSES
from skyedge.core.features import N_FEATURES, N_RAW, RAW_FEATURES
from skyedge.data.dataset import load_ingested
from skyedge.evaluation import packaged, scores
from skyedge.release import manifest
from tests.conftest import shared_dataset

REPO = Path(__file__).resolve().parents[1]
HORIZON_KEYS = {
    "h", "n", "rain_base_rate", "rain_brier", "rain_bss_persistence", "rain_bss_climatology",
    "rain_csi", "temp_rmse", "temp_mae", "temp_skill_persistence",
}  # fmt: skip
FAST = ["--bootstrap", "20", "--runtime-runs", "30", "--warmup-runs", "3"]


def skyedge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *map(str, args)], capture_output=True, text=True, cwd=REPO)


@pytest.fixture(scope="module")
def synthetic(pipeline) -> Path:
    return pipeline.ingest / "raw" / "synthetic-0"


@pytest.fixture(scope="module")
def evaluated(pipeline, synthetic, tmp_path_factory) -> tuple[dict, subprocess.CompletedProcess, Path]:
    """One CLI run on the synthetic folder, with runtime and the HTML report."""
    out = tmp_path_factory.mktemp("evaluate")
    result = skyedge("evaluate", pipeline.package, "--stations", synthetic, "--images", synthetic,
                     "--out", out / "metrics.json", "--report", out / "report.html", *FAST)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads((out / "metrics.json").read_text()), result, out / "report.html"


@pytest.fixture
def package(pipeline, tmp_path) -> Path:
    """A writable copy of the tiny package."""
    return Path(shutil.copytree(pipeline.package, tmp_path / "package"))


def _station_csv(synthetic: Path, tmp_path: Path, rows: int | None = None, drop: str | None = None) -> Path:
    frame = pd.read_csv(next((synthetic / "stations").glob("*.csv")), dtype=str, keep_default_na=False)
    frame = frame.drop(columns=["image", *([drop] if drop else [])])
    if rows is not None:
        frame = frame.head(rows)
    path = tmp_path / "stations" / "one.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


# --- Layers ---------------------------------------------------------------------------------


def test_scoring_and_the_runtime_child_import_no_torch():
    heavy = ("torch", "torchvision", "prefect", "dvc", "matplotlib")
    code = f"import sys, skyedge.evaluation.packaged, skyedge.evaluation.runtime; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_help_lists_evaluate():
    result = skyedge("evaluate", "--help")
    assert result.returncode == 0
    for option in ("--stations", "--images", "--out", "--report", "--no-runtime"):
        assert option in result.stdout


# --- metrics.json ---------------------------------------------------------------------------


def test_metrics_json_has_the_contract_schema(evaluated, pipeline):
    metrics, _, _ = evaluated
    assert {"sky", "horizons", "ci", "skipped", "model", "runtime"} <= set(metrics)
    sky = metrics["sky"]
    assert set(sky) == {"n", "accuracy", "macro_f1", "per_class_recall", "confusion"}
    assert list(sky["per_class_recall"]) == list(SKY_CLASSES)
    assert np.asarray(sky["confusion"]).shape == (5, 5) and np.sum(sky["confusion"]) == sky["n"] > 0
    assert 0 <= sky["accuracy"] <= 1 and 0 <= sky["macro_f1"] <= 1
    assert [entry["h"] for entry in metrics["horizons"]] == list(HORIZONS)
    for entry in metrics["horizons"]:
        assert HORIZON_KEYS <= set(entry)
        assert entry["n"] > 0 and 0 <= entry["rain_base_rate"] <= 1 and entry["temp_rmse"] >= entry["temp_mae"] >= 0
    assert set(metrics["ci"]) >= {"sky_accuracy"} | {f"{k}_h{h}" for h in HORIZONS for k in ("rain_bss_persistence", "rain_bss_climatology", "temp_skill_persistence")}
    low, high = metrics["ci"]["sky_accuracy"]
    assert low <= sky["accuracy"] <= high
    for h, entry in zip(HORIZONS, metrics["horizons"]):
        interval = metrics["ci"][f"temp_skill_persistence_h{h}"]
        assert interval[0] <= interval[1]
    skipped = metrics["skipped"]
    assert {"quarantined_input", "gap_in_window", *(f"no_future_record_h{h}" for h in HORIZONS)} <= set(skipped)
    assert all(isinstance(v, int) and v >= 0 for v in skipped.values())
    # The last h hours of each station have no record at t+h: three stations in the tiny profile.
    assert [skipped[f"no_future_record_h{h}"] for h in HORIZONS] == [3 * h for h in HORIZONS]
    assert skipped["quarantined_input"] == 0
    model_file = pipeline.package / "model.onnx"
    package_manifest = json.loads((pipeline.package / "manifest.json").read_text())
    assert metrics["model"]["sha256"] == manifest.sha256_file(model_file)
    assert metrics["model"]["size_bytes"] == model_file.stat().st_size
    assert metrics["model"]["version"] == package_manifest["version"]


def test_cli_prints_the_summary_and_writes_a_self_contained_report(evaluated):
    _, result, report = evaluated
    assert "sky: n=" in result.stdout and "BSS_pers" in result.stdout and "runtime:" in result.stdout
    text = report.read_text()
    assert text.count("src='data:image/png;base64,") == 3  # confusion, reliability, skill bars
    assert "src='http" not in text and "src=\"" not in text  # nothing to fetch from beside it
    assert "Sky class" in text and "per horizon" in text and "Runtime" in text and "measured on" in text


def test_runtime_is_measured_in_a_child_and_sane(evaluated):
    run = evaluated[0]["runtime"]
    for key in ("batch1_threads1", "batch1_threads_all"):
        latency = run["latency_ms"][key]
        assert 0 < latency["latency_ms_p50"] <= latency["latency_ms_p95"] <= latency["latency_ms_p99"]
    assert run["throughput_batch"] == 32 and run["throughput_samples_per_s"] > 0
    assert run["load_ms"] > 0 and run["threads_all"] >= 1
    # The child's own peak: above its pre-load baseline, far below this test process's data.
    assert 0 < run["peak_rss_before_load_bytes"] <= run["peak_rss_bytes"] < 2e9
    assert run["machine"]["cpu"] and run["machine"]["cores"] >= 1


def test_no_runtime_leaves_the_section_out(pipeline, synthetic, tmp_path):
    result = skyedge("evaluate", pipeline.package / "model.onnx", "--stations", synthetic, "--out", tmp_path / "m.json", "--no-runtime", "--bootstrap", "10")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert "runtime" not in metrics
    assert "sky" not in metrics  # station photos without --images carry no labels
    assert len(metrics["horizons"]) == 4


def test_inputs_equal_the_ingest_stage_for_the_same_records(pipeline, synthetic):
    """Same manifest normalisation, windows, photos and labels as training: outputs match exactly."""
    result = packaged.evaluate(pipeline.package, [synthetic], [synthetic], n_boot=5, measure=False)
    ingested = load_ingested(pipeline.ingest)
    rows = np.flatnonzero(ingested.samples["has_sensors"].to_numpy() == 1)
    mine = result.dataset.samples
    position = {key: i for i, key in enumerate(mine["station_id"] + "|" + mine["timestamp"])}
    theirs = ingested.samples.iloc[rows]
    idx = np.array([position[key] for key in theirs["station_id"] + "|" + theirs["timestamp"]])
    np.testing.assert_array_equal(result.dataset.windows[idx], ingested.windows[rows])
    np.testing.assert_array_equal(mine["sky_label"].to_numpy()[idx], theirs["sky_label"].to_numpy())
    np.testing.assert_allclose(mine["temp_h3"].to_numpy()[idx], theirs["temp_h3"].to_numpy(), equal_nan=True)


def test_sensor_normalisation_comes_from_the_manifest(package, synthetic, pipeline):
    base = packaged.evaluate(pipeline.package, [synthetic], [], n_boot=5, measure=False).dataset.windows
    document = json.loads((package / "manifest.json").read_text())
    sensors = document["preprocessing"]["sensors"]
    humidity = list(RAW_FEATURES).index("humidity_pct")  # a level (temperature is taken relative to its latest reading)
    sensors["mean"][humidity] += 10.0
    (package / "manifest.json").write_text(json.dumps(document))
    shifted = packaged.evaluate(package, [synthetic], [], n_boot=5, measure=False).dataset.windows
    present = base[..., N_RAW + humidity] == 0  # humidity not missing
    np.testing.assert_allclose(base[..., humidity][present] - shifted[..., humidity][present], 10.0 / sensors["std"][humidity], rtol=1e-4)


def test_photos_only_score_the_sky_and_no_horizon(pipeline, synthetic):
    metrics = packaged.evaluate_model(pipeline.package, [], [synthetic], n_boot=10, measure=False)
    assert metrics["sky"]["n"] == metrics["data"]["photo_only_samples"] > 0
    assert metrics["horizons"] == []


# --- Bad input ------------------------------------------------------------------------------


def test_missing_sensor_column_names_the_column_and_the_model(pipeline, synthetic, tmp_path):
    csv = _station_csv(synthetic, tmp_path, drop="pressure_hpa")
    result = skyedge("evaluate", pipeline.package, "--stations", csv, "--out", tmp_path / "m.json", "--no-runtime")
    assert result.returncode == 2
    assert "'pressure_hpa'" in result.stderr and str(csv) in result.stderr
    assert f"model.onnx expects sensors [B, 6, {N_FEATURES}]" in result.stderr
    assert not (tmp_path / "m.json").exists()


def test_corrupt_onnx_names_the_file(package, synthetic, tmp_path):
    (package / "model.onnx").write_bytes(b"\x08\x07 definitely not a protobuf graph" * 10)
    result = skyedge("evaluate", package, "--stations", synthetic, "--out", tmp_path / "m.json", "--no-runtime")
    assert result.returncode == 2
    assert str(package / "model.onnx") in result.stderr and "not a loadable ONNX model" in result.stderr


def test_manifest_window_that_does_not_match_the_graph_names_both(package, synthetic):
    document = json.loads((package / "manifest.json").read_text())
    document["preprocessing"]["sensors"]["window_hours"] = 8
    (package / "manifest.json").write_text(json.dumps(document))
    with pytest.raises(packaged.SignatureMismatchError, match=rf"sensors has shape \[.*6, {N_FEATURES}\] but manifest preprocessing.sensors.window_hours is 8"):
        packaged.evaluate(package, [synthetic], [], measure=False)


def test_photos_too_small_to_resize_name_both_sides(pipeline, tmp_path):
    from PIL import Image

    (tmp_path / "photos").mkdir()
    Image.new("RGB", (8, 8), (90, 120, 200)).save(tmp_path / "photos" / "a.png")
    (tmp_path / "photos" / "index.csv").write_text("path,label\na.png,clear_sky\n")
    with pytest.raises(packaged.SignatureMismatchError, match=r"image \[B, 3, 32, 32\].*8x8"):
        packaged.evaluate(pipeline.package, [], [tmp_path / "photos"], measure=False)


def test_empty_dataset_is_an_error_not_nan(pipeline, synthetic, tmp_path):
    csv = _station_csv(synthetic, tmp_path, rows=0)
    result = skyedge("evaluate", pipeline.package, "--stations", csv, "--out", tmp_path / "m.json", "--no-runtime")
    assert result.returncode == 2 and "nothing to evaluate" in result.stderr
    with pytest.raises(scores.EmptyDatasetError, match="pass --stations and/or --images"):
        packaged.evaluate(pipeline.package, [], [], measure=False)


def test_all_skipped_dataset_is_an_error(pipeline, synthetic, tmp_path):
    # Two hourly records: no sample has a record 1..4 hours ahead AND a half-full window.
    csv = _station_csv(synthetic, tmp_path, rows=2)
    with pytest.raises(scores.EmptyDatasetError, match="nothing to score"):
        packaged.evaluate(pipeline.package, [csv], [], measure=False)


def test_quarantined_rows_are_counted_not_scored(pipeline, synthetic, tmp_path):
    csv = _station_csv(synthetic, tmp_path, rows=48)
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    frame.loc[10, "humidity_pct"] = "140"  # humidity_pct_in_range
    frame.loc[11, "timestamp"] = "2024-03-01 11:00"  # timestamp_has_offset
    frame.to_csv(csv, index=False)
    metrics = packaged.evaluate_model(pipeline.package, [csv], [], n_boot=10, measure=False)
    assert metrics["skipped"]["quarantined_input"] == 2
    assert metrics["data"]["quarantined_by_rule"] == {"humidity_pct_in_range": 1, "timestamp_has_offset": 1}
    assert metrics["data"]["station_samples"] == 46


# --- Real data (../shared) -----------------------------------------------------------------


def test_beijing_station_file(pipeline):
    beijing = shared_dataset("beijing")
    metrics = packaged.evaluate_model(pipeline.package, [beijing / "beijing-dongsi.csv"], [], n_boot=20, measure=False)
    assert "sky" not in metrics
    assert [entry["h"] for entry in metrics["horizons"]] == list(HORIZONS)
    assert metrics["horizons"][0]["n"] > 20000
    assert 0.01 < metrics["horizons"][0]["rain_base_rate"] < 0.08  # rain is rare in Beijing
    assert metrics["data"]["received"] == metrics["data"]["accepted"] + metrics["skipped"]["quarantined_input"]


def test_swimcat_photos(pipeline):
    swimcat = shared_dataset("swimcat")
    metrics = packaged.evaluate_model(pipeline.package, [], [swimcat], n_boot=20, measure=False)
    assert metrics["sky"]["n"] + metrics["skipped"]["quarantined_input"] == 642
    assert metrics["horizons"] == []
    low, high = metrics["ci"]["sky_accuracy"]
    assert low <= metrics["sky"]["accuracy"] <= high


@pytest.mark.slow
def test_whole_beijing_and_swimcat_folders_via_the_cli(pipeline, tmp_path):
    beijing, swimcat = shared_dataset("beijing"), shared_dataset("swimcat")
    result = skyedge("evaluate", pipeline.package, "--stations", beijing, "--images", swimcat,
                     "--out", tmp_path / "m.json", "--report", tmp_path / "r.html", *FAST)  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert len(metrics["data"]["stations"]) == 9 and metrics["sky"]["n"] > 600
    assert metrics["horizons"][0]["n"] > 200000

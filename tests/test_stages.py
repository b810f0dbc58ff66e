"""Each stage's outputs on the tiny profile (one in-process run per session, see conftest)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pandas as pd
import pytest
import torch

from skyedge.compress import selection
from skyedge.core import inference
from skyedge.core.contract import HORIZONS, OUTPUT_RAIN_PROB, OUTPUT_SKY_LOGITS, OUTPUT_TEMP_C, SKY_CLASSES
from skyedge.core.features import N_FEATURES
from skyedge.data.dataset import load_ingested, model_inputs
from skyedge.train import checkpoints


def test_ingest_accounts_for_every_item_and_splits_by_time(pipeline):
    report = json.loads((pipeline.ingest / "report.json").read_text())
    total = report["total"]
    assert total["received"] == total["accepted"] + total["quarantined"] > 0
    data = load_ingested(pipeline.ingest)
    holdout = set(pipeline.params.ingest.split.holdout_stations)
    assert holdout and holdout <= set(data.samples["station_id"])
    for station, rows in data.samples[data.samples["station_id"] != ""].groupby("station_id"):
        hours = {split: rows.loc[rows["split"] == split, "hour"] for split in ("train", "val", "test")}
        if station in holdout:  # never trained on: its later blocks are val and test
            assert hours["train"].empty and hours["val"].max() < hours["test"].min()
            assert (rows["station_in_train"] == 0).all()
        else:
            assert hours["train"].max() < hours["val"].min() < hours["val"].max() < hours["test"].min()
    assert data.windows.shape[1:] == (pipeline.params.data.window_hours, N_FEATURES)
    assert data.images.shape[1:] == (pipeline.params.data.image_size,) * 2 + (3,)


def test_embed_writes_a_whole_teacher_module_and_its_onnx(pipeline):
    teacher = checkpoints.load_module(pipeline.embed / "teacher.pt")
    data = load_ingested(pipeline.ingest)
    inputs = model_inputs(data, data.split("test")[:8])
    with torch.no_grad():
        expected = teacher(*(torch.from_numpy(inputs[k]) for k in ("image", "image_present", "sensors")))
    got = inference.predict(inference.session(pipeline.embed / "teacher.onnx"), inputs)
    assert np.allclose(got[OUTPUT_SKY_LOGITS], expected[0].numpy(), atol=1e-3)
    metrics = json.loads((pipeline.embed / "metrics.json").read_text())
    assert metrics["val_sky_accuracy"] > 1.5 / len(SKY_CLASSES)  # fine-tuned well above chance


def test_embed_gives_the_same_teacher_whatever_ran_before_it(pipeline, tmp_path):
    """Same params and ingest, same teacher: its heads are drawn from common.seed, not from
    whatever random state the process happened to be in (one head epoch on cached features)."""
    from stages import embed

    params = pipeline.params
    quick = params.embed.model_copy(update={"finetune_epochs": 0, "epochs": 1})
    teachers = []
    for earlier_draws in (123, 456):
        torch.manual_seed(earlier_draws)
        embed.run(quick, params.data, params.augment, params.common, pipeline.ingest, tmp_path / str(earlier_draws))
        teachers.append(checkpoints.load_module(tmp_path / str(earlier_draws) / "teacher.pt").state_dict())
    assert teachers[0].keys() == teachers[1].keys()
    for name in teachers[0]:
        assert torch.equal(teachers[0][name], teachers[1][name]), name


def test_distill_trains_the_student_with_and_without_the_teacher(pipeline):
    metrics = json.loads((pipeline.distill / "metrics.json").read_text())
    assert set(metrics) >= {"student", "student_alone", "kd_gain_val_sky_accuracy"}
    student = checkpoints.load_module(pipeline.distill / "student.pt")
    alone = checkpoints.load_module(pipeline.distill / "student_alone.pt")
    assert not torch.equal(next(student.backbone.parameters()), next(alone.backbone.parameters()))
    teacher_bytes = (pipeline.embed / "teacher.onnx").stat().st_size
    assert (pipeline.distill / "student.onnx").stat().st_size * 20 < teacher_bytes


def test_the_student_that_ships_is_the_one_the_grouped_validation_estimate_prefers(pipeline):
    from stages.distill import choose_student

    metrics = json.loads((pipeline.distill / "metrics.json").read_text())
    kept = {name: metrics[name] for name in ("student", "student_alone")}
    better = max(kept, key=lambda name: kept[name]["val_sky_accuracy"])
    if kept["student"]["val_sky_accuracy"] != kept["student_alone"]["val_sky_accuracy"]:
        assert metrics["chosen"] == better
    pruned = json.loads((pipeline.prune / "metrics.json").read_text())
    assert pruned["student"] == metrics["chosen"]
    for score in ("val_sky_accuracy", "val_loss"):  # the pruned student's scores before pruning are the chosen one's
        assert pruned["before"][score] == pytest.approx(kept[metrics["chosen"]][score], rel=1e-4)

    def kept_epoch(accuracy: float, loss: float) -> dict:
        return {"val_sky_accuracy": accuracy, "val_loss": loss}

    assert choose_student({"student": kept_epoch(0.80, 0.5), "student_alone": kept_epoch(0.90, 0.9)}) == "student_alone"
    assert choose_student({"student": kept_epoch(0.90, 0.5), "student_alone": kept_epoch(0.90, 0.4)}) == "student_alone"
    assert choose_student({"student": kept_epoch(0.90, 0.5), "student_alone": kept_epoch(0.90, 0.5)}) == "student"  # a tie keeps KD
    assert choose_student({"student": kept_epoch(float("nan"), 0.3), "student_alone": kept_epoch(float("nan"), 0.4)}) == "student"


def test_structured_pruning_really_lowers_macs_params_and_bytes(pipeline):
    metrics = json.loads((pipeline.prune / "metrics.json").read_text())
    before, after = metrics["before"], metrics["after"]
    assert after["macs"] < 0.8 * before["macs"]
    assert after["params"] < before["params"]
    assert after["onnx_bytes"] < before["onnx_bytes"]


@pytest.mark.parametrize("variant", ["pruned", "pruned_sparse", "pruned_lowrank"])
def test_the_pruned_module_reloads_in_a_fresh_process(pipeline, variant):
    script = (
        "import sys, torch; from skyedge.train import checkpoints, models;"
        f"m = checkpoints.load_module(sys.argv[1]); x = models.example_inputs({pipeline.params.data.image_size}, {pipeline.params.data.window_hours}, {N_FEATURES});"
        "sky, rain, temp = m(*x); print(tuple(sky.shape), tuple(rain.shape), tuple(temp.shape))"
    )
    out = subprocess.run([sys.executable, "-c", script, str(pipeline.prune / f"{variant}.pt")], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"(1, {len(SKY_CLASSES)}) (1, {len(HORIZONS)}) (1, {len(HORIZONS)})"


def test_quantize_measures_every_candidate_and_ships_the_fastest_within_budget(pipeline, tmp_path):
    report = json.loads((pipeline.quantize / "report.json").read_text())
    names = {c["name"]: c for c in report["candidates"]}
    assert list(names) == list(pipeline.params.quantize.candidates)
    failed = {name: c["error"] for name, c in names.items() if "error" in c}
    assert not failed, failed
    for c in names.values():
        assert c["latency_ms_p50"] > 0 and c["size_bytes"] > 0 and 0 <= c["val_sky_accuracy"] <= 1
    budget, fp32 = pipeline.params.quantize, names["fp32"]

    def errors_within_budget(c: dict, key: str) -> bool:  # over all horizons and at each one
        pairs = [(c[key], fp32[key]), *zip(c[f"{key}_by_horizon"], fp32[f"{key}_by_horizon"])]
        return len(pairs) == 1 + len(HORIZONS) and all(mine <= theirs * (1 + budget.max_error_increase) for mine, theirs in pairs)

    allowed = [
        c for c in names.values()
        if c["val_sky_accuracy"] >= fp32["val_sky_accuracy"] - budget.max_accuracy_drop
        and errors_within_budget(c, "val_rain_brier") and errors_within_budget(c, "val_temp_rmse")
    ]
    assert all(("over budget" in c["outcome"]) == (c not in allowed) for c in names.values())
    # anything but fp32 ships only when min_speedup faster: a few percent is timing noise
    fast_enough = [c for c in allowed if c is fp32 or fp32["latency_ms_p50"] / c["latency_ms_p50"] >= budget.min_speedup]
    fastest = min(fast_enough, key=lambda c: c["latency_ms_p50"])
    # among the allowed candidates as fast as that (within min_speedup), the fewest bytes over the air ships
    as_fast = [c for c in allowed if c["latency_ms_p50"] <= fastest["latency_ms_p50"] * budget.min_speedup]
    assert report["shipped"] == min(as_fast, key=lambda c: (c["ota_bytes"], c is not fastest))["name"]
    assert report["reason"].startswith(report["shipped"])
    if report["shipped"] == "fp32" and any(names[n]["latency_ms_p50"] >= names["fp32"]["latency_ms_p50"] for n in ("static", "qat")):
        assert "slower than fp32" in report["reason"]  # says why int8 did not ship
    # shipped.onnx is the chosen candidate with the persistence fallback of its heads set
    chosen = tmp_path / "chosen.onnx"
    chosen.write_bytes(open(names[report["shipped"]]["path"], "rb").read())
    selection.set_fallback(chosen, report["fallback"])
    assert (pipeline.quantize / "shipped.onnx").read_bytes() == chosen.read_bytes()
    # model_int8.onnx (evaluate's `quantized`) is the chosen int8 candidate, really int8
    assert report["int8"] in names and report["int8"] not in ("fp32", "fp16")
    graph = onnx.load(str(pipeline.quantize / "model_int8.onnx")).graph
    ops = {node.op_type for node in graph.node}
    assert ops & {"DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv"}
    assert (pipeline.quantize / "model_int8.onnx").stat().st_size < (pipeline.prune / "pruned.onnx").stat().st_size
    static = onnx.load(str(pipeline.quantize / "candidates" / "static.onnx")).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in static.node}  # QDQ format, really int8


def test_evaluate_scores_every_variant_against_persistence_and_climatology(pipeline):
    metrics = json.loads((pipeline.evaluate / "metrics.json").read_text())
    assert set(metrics["variants"]) == {"teacher", "student_alone", "student", "pruned", "quantized", "shared", "shipped"}
    assert [entry["h"] for entry in metrics["horizons"]] == list(HORIZONS)
    for entry in metrics["horizons"]:
        assert {"rain_bss_persistence", "rain_bss_climatology", "rain_csi", "temp_rmse", "temp_skill_persistence"} <= set(entry)
        assert entry["n"] > 0
    assert metrics["sky"]["n"] == sum(map(sum, metrics["sky"]["confusion"]))
    for name in ("pareto.png", "confusion_shipped.png", "confusion_teacher.png", "reliability.png", "skill.png", "report.md", "variants.csv"):
        assert (pipeline.evaluate / name).stat().st_size > 0
    rows = pd.read_csv(pipeline.evaluate / "variants.csv")
    assert (rows["latency_ms_p50"] > 0).all() and (rows["size_bytes"] > 0).all()


def test_the_packaged_model_runs_in_onnx_runtime_and_matches_its_canaries(pipeline):
    manifest = json.loads((pipeline.package / "manifest.json").read_text())
    canary = dict(np.load(pipeline.package / manifest["canary"]["file"]))
    outputs = inference.predict(inference.session(pipeline.package / "model.onnx"), canary)
    for name, expected in manifest["canary"]["expected"].items():
        np.testing.assert_allclose(outputs[name], np.asarray(expected), atol=manifest["canary"]["atol"])
    assert canary["image_present"][-1, 0] == 0.0  # one canary exercises the camera-down path
    assert [o["name"] for o in manifest["outputs"]] == [OUTPUT_SKY_LOGITS, OUTPUT_RAIN_PROB, OUTPUT_TEMP_C]
    assert manifest["preprocessing"]["image"]["size"] == pipeline.params.data.image_size
    assert set(manifest["lineage"]["params"]) >= {"ingest", "quantize", "package"}


def test_the_manifest_carries_the_training_statistics_stations_check_drift_against(pipeline):
    from skyedge.core import drift
    from skyedge.core.features import RAW_FEATURES
    from skyedge.data.dataset import load_ingested

    reference = json.loads((pipeline.package / "manifest.json").read_text())[drift.MANIFEST_KEY]
    data = load_ingested(pipeline.ingest)
    train_photos = data.samples.loc[(data.samples["split"] == "train") & (data.samples["image_idx"] >= 0), "image_idx"].nunique()
    assert reference["format"] == drift.FORMAT and reference["photos"]["n"] == train_photos > 0
    assert set(reference["sensors"]) == set(RAW_FEATURES)
    temperature = reference["sensors"]["temperature_c"]
    assert temperature["n"] > 0 and temperature["std"] > 0 and 0 <= temperature["missing_rate"] < 0.5
    # The training photos compared with the reference: no photo test fires.
    values = [drift.photo_features(data.images[i]) for i in np.unique(data.samples.loc[data.samples["split"] == "train", "image_idx"]) if i >= 0]
    assert not [name for name, test in drift.compare(reference, np.empty((0, len(RAW_FEATURES))), values)["photos"]["tests"].items() if test["drift"]]


@pytest.mark.parametrize("variant", ["pruned", "pruned_sparse", "pruned_lowrank", "student"])
def test_onnx_runtime_matches_pytorch_for_fp32_models(pipeline, variant):
    """Tolerance: 1e-4 absolute on logits, probabilities and °C (float32 reassociation only)."""
    folder = pipeline.prune if variant.startswith("pruned") else pipeline.distill
    module = checkpoints.load_module(folder / f"{variant}.pt")
    data = load_ingested(pipeline.ingest)
    inputs = model_inputs(data, data.split("test")[:16])
    with torch.no_grad():
        expected = [t.numpy() for t in module(*(torch.from_numpy(inputs[k]) for k in ("image", "image_present", "sensors")))]
    got = inference.predict(inference.session(folder / f"{variant}.onnx"), inputs)
    for name, reference in zip((OUTPUT_SKY_LOGITS, OUTPUT_RAIN_PROB, OUTPUT_TEMP_C), expected):
        np.testing.assert_allclose(got[name], reference, atol=1e-4)


@pytest.mark.parametrize("candidate", ["static", "static_s8s8_qdq", "static_u8s8_qoperator", "dynamic", "fp16", "qat"])
def test_int8_stays_close_to_its_fp32_model(pipeline, candidate):
    """Tolerance for int8 (and fp16) vs fp32: rain probabilities within 0.02 on average and 0.15 at worst,
    temperature within 0.3 °C on average (8-bit activations over a normalised input range)."""
    data = load_ingested(pipeline.ingest)
    inputs = model_inputs(data, data.split("test")[:64])
    fp32 = inference.predict(inference.session(pipeline.prune / "pruned.onnx"), inputs)
    int8 = inference.predict(inference.session(pipeline.quantize / "candidates" / f"{candidate}.onnx"), inputs)
    rain_error = np.abs(fp32[OUTPUT_RAIN_PROB] - int8[OUTPUT_RAIN_PROB])
    assert rain_error.mean() < 0.02 and rain_error.max() < 0.15
    assert np.abs(fp32[OUTPUT_TEMP_C] - int8[OUTPUT_TEMP_C]).mean() < 0.3


def test_a_head_without_validation_skill_ships_persistence_and_the_device_says_so(pipeline, tmp_path):
    """The quantize stage sets the fallback constants of heads whose val skill is below zero;
    here rain at h1 and temperature at h3 are forced, as the stage would set them."""
    from skyedge.core.features import RAIN_REFERENCE, TEMPERATURE_REFERENCE
    from skyedge.device import predict

    package = tmp_path / "package"
    shutil.copytree(pipeline.package, package)
    fallback = {"rain": [True, False, False, False], "temp": [False, False, True, False]}
    selection.set_fallback(package / "model.onnx", fallback)
    data = load_ingested(pipeline.ingest)
    inputs = model_inputs(data, data.split("test")[:64])
    out = inference.predict(inference.session(package / "model.onnx"), inputs)
    # the shipped model may compute in fp16 (fewest bytes at fp32's speed): persistence to its precision
    np.testing.assert_allclose(out[OUTPUT_RAIN_PROB][:, 0], inputs["sensors"][:, -1, RAIN_REFERENCE], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(out[OUTPUT_TEMP_C][:, 2], inputs["sensors"][:, -1, TEMPERATURE_REFERENCE], rtol=1e-3, atol=1e-4)
    assert not np.array_equal(out[OUTPUT_TEMP_C][:, 0], inputs["sensors"][:, -1, TEMPERATURE_REFERENCE])

    document = json.loads((package / "manifest.json").read_text())
    document["fallback"] = fallback
    (package / "manifest.json").write_text(json.dumps(document))
    state = tmp_path / "state"
    state.mkdir()
    (state / "active").symlink_to(package)
    station = pd.read_csv(sorted((pipeline.ingest / "raw").rglob("syn-00.csv"))[0]).tail(24)
    sensors = tmp_path / "records" / "station.csv"
    sensors.parent.mkdir()
    station.to_csv(sensors, index=False)
    result = predict.forecast(state, sensors)
    assert [row["rain_from"] for row in result["forecast"]] == ["persistence", "model", "model", "model"]
    assert [row["temp_from"] for row in result["forecast"]] == ["model", "model", "persistence", "model"]
    # fp16 (a 23.1 reads 23.09375) then rounded to hundredths for display
    assert result["forecast"][2]["temp_c"] == pytest.approx(station["temperature_c"].iloc[-1], abs=0.02)
    text = predict.format_forecast(result)
    assert "persistence: the model had no skill over persistence there on validation" in text
    assert result["coordinates"] == "missing: UTC fallback" and "no stations.csv beside the records" in text

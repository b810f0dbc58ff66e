"""The station journal (ARCHITECTURE §7): every reading kept and flagged by the ingest rules, the
forecast the active model made from it, field skill against persistence per version and horizon
(checked against numbers worked out by hand), and input drift against training statistics.

Forecasts come from real ONNX models run by `skyedge device predict`'s code: a constant model
(its outputs do not depend on the inputs, so every score can be worked out by hand) installed as
the state's active slot, as the agent installs one.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from skyedge.core import contract, drift, inputs
from skyedge.core.features import N_FEATURES, RAW_FEATURES, RELATIVE_FEATURES, raw_features
from skyedge.device import journal as jr
from skyedge.release import manifest as mf
from tests.sample_package import SENSOR_MEAN, SENSOR_STD

WINDOW = 3
IMAGE_SIZE = 16


# --- a constant model, installed as the active slot ------------------------------------------------


def constant_package(out_dir: Path, version: int, rain: list[float], temp: list[float]) -> Path:
    """A package whose model says rain_prob = `rain` and temp_c = `temp` whatever it is fed."""
    import onnx
    from onnx import TensorProto, helper

    out_dir.mkdir(parents=True)
    f = TensorProto.FLOAT

    def constant(name: str, values: list[float]) -> list:
        zeros = helper.make_tensor(f"zero_{name}", f, [N_FEATURES, len(values)], [0.0] * (N_FEATURES * len(values)))
        return [zeros, helper.make_tensor(f"value_{name}", f, [len(values)], values)]

    nodes = [helper.make_node("ReduceMean", ["sensors"], ["s"], axes=[1], keepdims=0)]
    for name, output in (("sky", contract.OUTPUT_SKY_LOGITS), ("rain", contract.OUTPUT_RAIN_PROB), ("temp", contract.OUTPUT_TEMP_C)):
        nodes += [helper.make_node("MatMul", ["s", f"zero_{name}"], [f"{name}_zero"]), helper.make_node("Add", [f"{name}_zero", f"value_{name}"], [output])]
    graph = helper.make_graph(
        nodes,
        "constant",
        [
            helper.make_tensor_value_info(contract.INPUT_IMAGE, f, ["B", 3, IMAGE_SIZE, IMAGE_SIZE]),
            helper.make_tensor_value_info(contract.INPUT_IMAGE_PRESENT, f, ["B", 1]),
            helper.make_tensor_value_info(contract.INPUT_SENSORS, f, ["B", WINDOW, N_FEATURES]),
        ],
        [helper.make_tensor_value_info(name, f, ["B", n]) for name, n in ((contract.OUTPUT_SKY_LOGITS, 5), (contract.OUTPUT_RAIN_PROB, 4), (contract.OUTPUT_TEMP_C, 4))],
        initializer=constant("sky", [0.0] * 5) + constant("rain", rain) + constant("temp", temp),
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(out_dir / mf.MODEL_FILE))
    np.savez(out_dir / mf.CANARY_FILE, sensors=np.zeros((1, WINDOW, N_FEATURES), np.float32))
    document = mf.build_manifest(
        out_dir,
        name="constant",
        version=version,
        version_label=f"0.1.0+{version}",
        created_at="2024-05-01T00:00:00+00:00",
        inputs=[],
        outputs=[],
        preprocessing={
            "image": inputs.image_spec(IMAGE_SIZE),
            "sensors": {
                "features": list(RAW_FEATURES),
                "relative": list(RELATIVE_FEATURES),
                "mean": SENSOR_MEAN,
                "std": SENSOR_STD,
                "window_hours": WINDOW,
                "n_features": N_FEATURES,
            },
        },
        climatology=None,
        metrics={},
        lineage={},
        canary_expected={},
        canary_atol=1e-4,
        latency_budget_ms=1000.0,
        min_agent_version="0.1.0",
    )
    mf.write_manifest(out_dir, document)
    return out_dir


def install(state: Path, package: Path, slot: str = "active") -> None:
    """Point state/active (or state/previous) at the package, as the agent's swap does."""
    link = state / slot
    tmp = state / f".{slot}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(package, tmp)
    os.replace(tmp, link)


def reading(hour: int, temperature_c: object = 15.0, precip_mm: object = 0.0, **overrides: object) -> dict:
    row = {
        "station_id": "st-1",
        "timestamp": f"2024-05-01T{hour:02d}:00:00Z",
        "temperature_c": temperature_c,
        "pressure_hpa": 1012,
        "humidity_pct": 60,
        "wind_speed_ms": 3,
        "wind_dir_deg": 180,
        "precip_mm": precip_mm,
    }
    return {**row, **overrides}


def photo(path: Path, rgb: tuple[int, int, int] = (90, 140, 220), size: int = 40) -> Path:
    from PIL import Image

    Image.new("RGB", (size, size), rgb).save(path)
    return path


@pytest.fixture()
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


def open_journal(state: Path, budget: int = 10_000_000) -> jr.Journal:
    return jr.Journal.open(state, "st-1", photo_budget_bytes=budget, latitude=47.4, longitude=8.5)


def horizon(section: dict, version: int, h: int) -> dict:
    (entry,) = [v for v in section["versions"] if v["version"] == version]
    return entry["horizons"][h - 1]


# --- scores ----------------------------------------------------------------------------------------


def test_scores_of_a_few_pairs_match_the_hand_computed_values():
    rain = jr.rain_scores(np.array([0.8, 0.2]), np.array([0.0, 0.0]), np.array([1.0, 0.0]))
    # model: ((0.8-1)^2 + 0.2^2) / 2 = 0.04; persistence: (1 + 0) / 2 = 0.5; skill 1 - 0.04/0.5
    assert rain == {"n": 2, "brier": pytest.approx(0.04), "brier_persistence": pytest.approx(0.5), "brier_skill": pytest.approx(0.92)}
    temp = jr.temp_scores(np.array([21.0, 19.0]), np.array([20.0, 20.0]), np.array([22.0, 19.0]))
    # model: sqrt((1 + 0) / 2); persistence: sqrt((4 + 1) / 2); skill 1 - sqrt(0.5)/sqrt(2.5)
    assert temp == {"n": 2, "rmse": pytest.approx(math.sqrt(0.5)), "rmse_persistence": pytest.approx(math.sqrt(2.5)), "skill": pytest.approx(1 - math.sqrt(0.2))}
    assert jr.skill(0.1, 0.0) is None  # a perfect persistence leaves no skill to measure
    assert jr.rain_scores(np.array([]), np.array([]), np.array([]))["brier"] is None


def test_matured_forecasts_are_scored_against_the_stations_own_later_readings(state, tmp_path):
    install(state, constant_package(tmp_path / "v1", 1, rain=[0.8, 0.6, 0.4, 0.2], temp=[20.0, 20.0, 20.0, 20.0]))
    with open_journal(state) as journal:
        # hour:         0     1     2     3
        # temperature: 20    22    21    21
        # rain (>0.1):  0     1     0     0
        for hour, temperature, precip in ((0, 20, 0.0), (1, 22, 0.5), (2, 21, 0.0), (3, 21, 0.05)):
            result = journal.observe(reading(hour, temperature, precip))
            assert result.forecast["model"]["version"] == 1 and result.forecast_skipped is None
        assert journal.forecasts(2)[0] == {"h": 1, "version": 1, "rain_prob": 0.8, "temp_c": 20.0, "rain_now": 1.0, "temp_now": 22.0}
        field = journal.field_skill()
    assert field["versions"][0]["version"] == 1 and field["versions"][0]["forecasts"] == 4
    h1 = horizon(field, 1, 1)
    # rain, from hours 0, 1, 2 to 1, 2, 3: model (0.8-1)^2, 0.8^2, 0.8^2 -> 1.32 / 3 = 0.44;
    # persistence (0-1)^2, (1-0)^2, 0 -> 2/3; skill 1 - 0.44 / (2/3) = 0.34
    assert h1["rain"] == {"n": 3, "brier": pytest.approx(0.44), "brier_persistence": pytest.approx(2 / 3), "brier_skill": pytest.approx(0.34)}
    # temperature: model 20 against 22, 21, 21 -> sqrt(6/3); persistence 20, 22, 21 -> sqrt(5/3)
    assert h1["temp"] == {"n": 3, "rmse": pytest.approx(math.sqrt(2)), "rmse_persistence": pytest.approx(math.sqrt(5 / 3)), "skill": pytest.approx(1 - math.sqrt(6 / 5))}
    h2 = horizon(field, 1, 2)
    # rain from hours 0, 1 to 2, 3: model 0.36, 0.36; persistence 0, 1 -> 0.5; skill 1 - 0.36/0.5
    assert h2["rain"] == {"n": 2, "brier": pytest.approx(0.36), "brier_persistence": pytest.approx(0.5), "brier_skill": pytest.approx(0.28)}
    assert h2["temp"] == {"n": 2, "rmse": pytest.approx(1.0), "rmse_persistence": pytest.approx(1.0), "skill": pytest.approx(0.0)}
    h3 = horizon(field, 1, 3)
    # hour 0 to 3: no rain either way, so persistence is perfect and skill is undefined
    assert h3["rain"] == {"n": 1, "brier": pytest.approx(0.16), "brier_persistence": 0.0, "brier_skill": None}
    assert horizon(field, 1, 4)["rain"]["n"] == 0 and horizon(field, 1, 4)["temp"]["rmse"] is None


def test_each_model_version_is_scored_on_its_own_forecasts(state, tmp_path):
    install(state, constant_package(tmp_path / "v1", 1, rain=[0.8] * 4, temp=[20.0] * 4))
    with open_journal(state) as journal:
        journal.observe(reading(0, 20, 0.0))
        install(state, constant_package(tmp_path / "v2", 2, rain=[0.3] * 4, temp=[25.0] * 4))
        journal.observe(reading(1, 22, 0.5))
        journal.observe(reading(2, 21, 0.0))
        field = journal.field_skill()
    assert [(v["version"], v["forecasts"]) for v in field["versions"]] == [(1, 1), (2, 2)]
    # v1 at hour 0 for hour 1: (0.8 - 1)^2 = 0.04, |20 - 22| = 2
    assert horizon(field, 1, 1)["rain"]["brier"] == pytest.approx(0.04) and horizon(field, 1, 1)["temp"]["rmse"] == pytest.approx(2.0)
    # v2 at hour 1 for hour 2: (0.3 - 0)^2 = 0.09, |25 - 21| = 4; persistence (1 - 0)^2, |22 - 21|
    assert horizon(field, 2, 1)["rain"] == {"n": 1, "brier": pytest.approx(0.09), "brier_persistence": 1.0, "brier_skill": pytest.approx(0.91)}
    assert horizon(field, 2, 1)["temp"] == {"n": 1, "rmse": pytest.approx(4.0), "rmse_persistence": pytest.approx(1.0), "skill": pytest.approx(-3.0)}


def test_the_previous_release_forecasts_in_the_shadow_on_the_same_reading_and_is_reported_apart(state, tmp_path):
    install(state, constant_package(tmp_path / "v2", 2, rain=[0.3] * 4, temp=[25.0] * 4))
    install(state, constant_package(tmp_path / "v1", 1, rain=[0.8] * 4, temp=[20.0] * 4), slot="previous")
    with open_journal(state) as journal:
        first = journal.observe(reading(0, 20, 0.0))
        journal.observe(reading(1, 22, 0.5))
        field, recent = journal.field_skill(), journal.recent_pairs()
    assert first.forecast["model"]["version"] == 2  # the station's forecast is the active release's
    assert [(v["version"], v["forecasts"]) for v in field["versions"]] == [(2, 2)]  # shadows score no release
    column = {name: i for i, name in enumerate(recent["columns"])}
    h1 = [row for row in recent["rows"] if row[column["h"]] == 1]
    # hour 0 for hour 1, both releases on the same reading: (version, shadow, rain_prob, temp_c, temp_now, temp_obs)
    assert [[row[column[k]] for k in ("version", "shadow", "rain_prob", "temp_c", "temp_now", "temp_obs")] for row in h1] == [
        [2, 0, 0.3, 25.0, 20.0, 22.0],
        [1, 1, 0.8, 20.0, 20.0, 22.0],
    ]


def test_no_shadow_forecast_without_a_previous_release_or_when_it_is_the_active_one(state, tmp_path):
    package = constant_package(tmp_path / "v1", 1, rain=[0.8] * 4, temp=[20.0] * 4)
    install(state, package)
    with open_journal(state) as journal:
        journal.observe(reading(0, 20, 0.0))
        install(state, package, slot="previous")  # a rollback that left previous = active
        journal.observe(reading(1, 22, 0.5))
        recent = journal.recent_pairs()
    assert {row[recent["columns"].index("shadow")] for row in recent["rows"]} == {0}


# --- the data contract on the station --------------------------------------------------------------


def test_a_reading_that_breaks_a_rule_is_kept_flagged_and_never_fed_to_the_model(state, tmp_path):
    install(state, constant_package(tmp_path / "v1", 1, rain=[0.5] * 4, temp=[20.0] * 4))
    with open_journal(state) as journal:
        first = journal.observe(reading(0, 20, 0.0))
        # One hour is not a window of three: the forecast says so by the window rule.
        assert {(f["field"], f["rule"]) for f in first.flags} == {("window", "gap_in_window")}
        kelvin = journal.observe(reading(1, "294.15", 0.0, humidity_pct=140))
        assert {(f["field"], f["rule"], f["value"]) for f in kelvin.flags} == {
            ("temperature_c", "temperature_c_unit_kelvin", "294.15"),
            ("humidity_pct", "humidity_pct_in_range", "140"),
        }
        # The model saw both values as missing (predict's own flags), and persistence has no temperature.
        assert {(f["column"], f["rule"], f["action"]) for f in kelvin.forecast["flags"]} >= {("temperature_c", "temperature_c_unit_kelvin", "treated as missing")}
        assert journal.forecasts(kelvin.seq)[0]["temp_now"] is None and journal.flags(kelvin.seq) == kelvin.flags
        journal.observe(reading(2, 21, 0.0))
        repeated = journal.observe(reading(2, 30, 0.0))
        no_offset = journal.observe(reading(3, 21, 0.0, timestamp="2024-05-01T03:00:00"))
        field = journal.field_skill()
    assert [f["rule"] for f in repeated.flags] == ["unique_station_timestamp"] and repeated.forecast is None
    assert repeated.forecast_skipped == "unique_station_timestamp" and repeated.hour is None
    assert [f["rule"] for f in no_offset.flags] == ["timestamp_has_offset"] and no_offset.forecast_skipped == "timestamp_has_offset"
    # Scored pairs at h=1: 0->1 and 1->2. The kelvin hour has no temperature, so neither pair
    # scores temperature; both score rain. The repeated hour 2 (30 degC) is never used.
    h1 = horizon(field, 1, 1)
    assert h1["rain"]["n"] == 2 and h1["temp"]["n"] == 0
    assert horizon(field, 1, 2)["temp"] == {"n": 1, "rmse": pytest.approx(1.0), "rmse_persistence": pytest.approx(1.0), "skill": pytest.approx(0.0)}


def test_a_broken_photo_is_kept_and_flagged_and_the_forecast_runs_without_it(state, tmp_path):
    install(state, constant_package(tmp_path / "v1", 1, rain=[0.5] * 4, temp=[20.0] * 4))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    with open_journal(state) as journal:
        result = journal.observe(reading(0), broken)
        missing = journal.observe(reading(1), tmp_path / "nowhere.png")
        good = journal.observe(reading(2), photo(tmp_path / "sky.png"))
        status = journal.uplink_status()
    assert ("image", "image_readable") in {(f["field"], f["rule"]) for f in result.flags}
    assert result.forecast is not None and not result.forecast["image_used"]
    assert ("image", "image_exists") in {(f["field"], f["rule"]) for f in missing.flags}
    assert good.forecast["image_used"]
    # The unreadable photo is kept for the fleet (it quarantines it by the same rule); the
    # missing one left nothing to keep.
    assert sorted(p.name for p in (state / jr.PHOTO_DIR).iterdir()) == ["0000000001.png", "0000000003.png"]
    assert status["photos_held"] == 2 and status["dropped_photos"] == 0


def test_without_an_active_model_the_reading_is_recorded_and_says_why_there_is_no_forecast(state):
    with open_journal(state) as journal:
        result = journal.observe(reading(0))
        assert result.forecast is None and result.forecast_skipped == jr.NO_MODEL
        assert journal.uplink_status()["readings"] == 1


def test_a_reading_from_another_station_or_without_a_contract_column_is_refused(state):
    with open_journal(state) as journal:
        with pytest.raises(ValueError, match="names station 'st-2'; this journal records station 'st-1'"):
            journal.observe(reading(0, station_id="st-2"))
        row = reading(0)
        del row["pressure_hpa"]
        with pytest.raises(ValueError, match="missing column.*pressure_hpa"):
            journal.observe(row)
        assert journal.uplink_status()["readings"] == 0


def test_the_journal_survives_reopening_and_keeps_numbering(state, tmp_path):
    with open_journal(state) as journal:
        assert journal.observe(reading(0)).seq == 1
    (state / jr.PHOTO_DIR / "0000000002.png").write_bytes(b"left by an insert a crash rolled back")
    with open_journal(state) as journal:
        assert journal.observe(reading(1)).seq == 2
        assert not (state / jr.PHOTO_DIR / "0000000002.png").exists()
    with jr.Journal.open(state, "st-1", 0) as journal:
        assert journal.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --- drift -----------------------------------------------------------------------------------------


def test_photo_features_are_luminance_mean_and_spread_on_the_grid():
    gray = np.full((40, 60, 3), 51, np.uint8)
    assert drift.photo_features(gray) == (pytest.approx(0.2), pytest.approx(0.0))
    for size in (32, 256):  # a half black, half white frame at two resolutions: the same numbers
        half = np.zeros((size, size, 3), np.uint8)
        half[:, size // 2 :] = 255
        assert drift.photo_features(half) == (pytest.approx(0.5), pytest.approx(0.5))
    with pytest.raises(ValueError, match="at least 16x16"):
        drift.photo_features(np.zeros((8, 8, 3), np.uint8))


def sensor_rows(rng: np.random.Generator, n: int, temperature_mean: float = 12.0, humidity_std: float = 15.0) -> dict[str, np.ndarray]:
    return {
        "temperature_c": rng.normal(temperature_mean, 6.0, n),
        "pressure_hpa": rng.normal(1010, 8, n),
        "humidity_pct": np.clip(rng.normal(60, humidity_std, n), 0, 100),
        "wind_speed_ms": rng.gamma(2.0, 1.5, n),
        "wind_dir_deg": rng.uniform(0, 360, n),
        "precip_mm": rng.exponential(0.3, n) * (rng.random(n) < 0.2),
    }


def sky_photos(rng: np.random.Generator, n: int, night_share: float, size: int = 32) -> np.ndarray:
    """Frames of random brightness, the top half darker (some contrast); `night_share` of them dark."""
    frames = np.stack([np.full((size, size, 3), value, np.uint8) for value in rng.integers(60, 200, n)])
    frames[: round(n * night_share)] = 6
    frames[:, : size // 2] //= 2
    return frames


def training_reference(rng: np.random.Generator) -> dict:
    return drift.training_statistics(raw_features(sensor_rows(rng, 2000)), sky_photos(rng, 200, night_share=0.1))


def recent_photo_values(rng: np.random.Generator, n: int, night_share: float) -> np.ndarray:
    # The station's photos are bigger than training's: the grid makes them comparable.
    return np.array([drift.photo_features(frame) for frame in sky_photos(rng, n, night_share, size=96)])


def test_inputs_like_training_raise_no_drift_and_every_test_names_its_threshold():
    rng = np.random.default_rng(0)
    reference = training_reference(rng)
    assert json.loads(json.dumps(reference)) == reference  # it travels in manifest.json
    assert reference["sensors"]["temperature_c"]["mean"] == pytest.approx(12.0, abs=0.5)
    assert reference["photos"]["dark_share"] == pytest.approx(0.1)
    result = drift.compare(reference, raw_features(sensor_rows(rng, 168)), recent_photo_values(rng, 100, night_share=0.1))
    tests = result["sensors"]["temperature_c"]["tests"]
    assert tests["standardized_mean_shift"]["threshold"] == 0.5 and tests["std_ratio"]["threshold"] == [0.5, 2.0]
    assert tests["missing_rate_increase"]["threshold"] == 0.2
    assert result["photos"]["tests"]["dark_share_change"]["value"] == pytest.approx(0.0)
    assert result["drifted"] == []
    every = [test for entry in result["sensors"].values() for test in entry["tests"].values()] + list(result["photos"]["tests"].values())
    assert len(every) == 7 * 3 + 5 and all(test["drift"] is False for test in every)


def test_ingest_streams_the_same_sensor_reference_as_the_whole_array():
    """Ingest sums the training rows block by block (FeatureMoments); the station compares with it."""
    from skyedge.data.samples import FeatureMoments

    rng = np.random.default_rng(4)
    raw = raw_features(sensor_rows(rng, 3000))
    raw[rng.random(raw.shape) < 0.07] = np.nan  # gaps, as real stations have
    moments = FeatureMoments()
    for block in np.array_split(raw, 7):
        moments.add(block)
    whole = drift.training_statistics(raw, sky_photos(rng, 30, night_share=0.2))
    streamed = drift.reference(moments.drift_sensors(), [drift.photo_features(p) for p in sky_photos(np.random.default_rng(5), 30, night_share=0.2)])
    for name in RAW_FEATURES:
        assert streamed["sensors"][name]["n"] == whole["sensors"][name]["n"]
        for key in ("mean", "std", "missing_rate"):
            assert streamed["sensors"][name][key] == pytest.approx(whole["sensors"][name][key], abs=1e-5), (name, key)
    assert streamed["photos"]["n"] == 30 and streamed["format"] == drift.FORMAT


def test_shifted_stuck_missing_and_dark_inputs_are_each_named_by_their_test():
    rng = np.random.default_rng(1)
    reference = training_reference(rng)
    columns = sensor_rows(rng, 168, temperature_mean=18.0, humidity_std=0.5)  # +1 std warmer, humidity stuck
    columns["pressure_hpa"][::2] = np.nan  # half the pressure readings missing
    result = drift.compare(reference, raw_features(columns), recent_photo_values(rng, 100, night_share=0.6))
    sensors = result["sensors"]
    assert sensors["temperature_c"]["tests"]["standardized_mean_shift"]["value"] == pytest.approx(1.0, abs=0.25)
    assert sensors["humidity_pct"]["tests"]["std_ratio"]["value"] < 0.5
    assert sensors["pressure_hpa"]["tests"]["missing_rate_increase"]["value"] == pytest.approx(0.5, abs=0.02)
    assert result["photos"]["tests"]["dark_share_change"]["value"] == pytest.approx(0.5)
    assert {"temperature_c.standardized_mean_shift", "humidity_pct.std_ratio", "pressure_hpa.missing_rate_increase", "photos.dark_share_change"} <= set(result["drifted"])
    assert not [name for name in result["drifted"] if name.startswith(("wind", "log1p"))]


def test_too_few_readings_skip_the_tests_and_say_why():
    rng = np.random.default_rng(2)
    result = drift.compare(training_reference(rng), raw_features(sensor_rows(rng, 10)), np.zeros((0, 2)))
    shift = result["sensors"]["temperature_c"]["tests"]["standardized_mean_shift"]
    assert shift == {"value": None, "threshold": 0.5, "drift": None, "skipped": "10 values, fewer than 24"}
    assert result["photos"]["tests"]["dark_share_change"]["skipped"] == "0 photos, fewer than 24"
    assert result["drifted"] == []


def test_status_sections_carry_field_skill_drift_and_the_uplink(state, tmp_path):
    install(state, constant_package(tmp_path / "v1", 1, rain=[0.5] * 4, temp=[20.0] * 4))
    rng = np.random.default_rng(3)
    reference = training_reference(rng)
    with open_journal(state) as journal:
        for hour in range(30):
            # A humidity sensor in the wrong unit (fraction, not %) from the start: 0.6 is in range but far off.
            row = reading(hour % 24, 15 + hour % 5, 0.0, humidity_pct=0.6, timestamp=f"2024-05-{1 + hour // 24:02d}T{hour % 24:02d}:00:00Z")
            journal.observe(row, photo(tmp_path / f"p{hour}.png", (20, 20, 20)) if hour % 2 else None)
        sections = jr.status_sections(journal, reference, window_readings=24)
        without = jr.status_sections(journal, None)
    json.dumps(sections, allow_nan=False)  # status.json is strict JSON: no NaN anywhere
    assert set(sections) == {"field", "drift", "uplink"}
    assert horizon(sections["field"], 1, 1)["rain"]["n"] == 29
    assert sections["drift"]["readings"] == 24 and sections["drift"]["seq_range"] == [7, 30]
    assert "humidity_pct.standardized_mean_shift" in sections["drift"]["drifted"]
    assert sections["drift"]["photos"]["n"] == 12  # half the last 24 readings came with a photo
    assert sections["uplink"]["pending"] == 30 and sections["uplink"]["photos_held"] == 15
    assert without["drift"] == {"reference": None, "reason": "the active manifest carries no training_statistics"}

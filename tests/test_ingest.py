"""ingest: every item accepted or quarantined by a named rule; labels from the future; time splits."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skyedge import features
from skyedge.config import Data, FolderSource, Ingest
from skyedge.contract import STATION_COLUMNS
from skyedge.splits import station_split
from stages import ingest

NOW = pd.Timestamp("2025-01-01T00:00:00Z")
GOOD = {"temperature_c": "10.0", "pressure_hpa": "1010.0", "humidity_pct": "50", "wind_speed_ms": "3", "wind_dir_deg": "90", "precip_mm": "0.0", "image": ""}


def station_rows(hours: int, start: str = "2024-06-01T00:00:00Z", station: str = "st-1") -> list[dict]:
    times = pd.date_range(start, periods=hours, freq="h", tz="UTC")
    return [{"station_id": station, "timestamp": t.strftime("%Y-%m-%dT%H:%M:%SZ"), **GOOD} for t in times]


def write_csv(path: Path, rows: list[dict], columns=STATION_COLUMNS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


def run_ingest(folder: Path, out: Path, **overrides):
    # The GE suites themselves run in test_ingest_sources.py; the quarantine uses their masks either way.
    overrides.setdefault("great_expectations", False)
    params = Ingest(sources=[FolderSource(path=str(folder))], max_quarantine_fraction=1.0, **overrides)
    return ingest.run(params, Data(image_size=32, window_hours=3), out, now=NOW)


def quarantine(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "quarantine.csv", dtype=str, keep_default_na=False)


@pytest.mark.parametrize(
    ("column", "value", "rule"),
    [
        ("temperature_c", "-95", "temperature_c_in_range"),
        ("temperature_c", "295.1", "temperature_c_unit_kelvin"),
        ("temperature_c", "95", "temperature_c_unit_fahrenheit"),
        ("pressure_hpa", "101300", "pressure_hpa_unit_pa"),
        ("pressure_hpa", "29.9", "pressure_hpa_unit_inhg"),
        ("pressure_hpa", "2000", "pressure_hpa_in_range"),
        ("wind_dir_deg", "400", "wind_dir_deg_in_range"),
        ("temperature_c", "1O.5", "temperature_c_numeric"),
        ("timestamp", "", "timestamp_present"),
        ("humidity_pct", "-3", "humidity_pct_in_range"),
        ("wind_speed_ms", "abc", "wind_speed_ms_numeric"),
        ("precip_mm", "-1", "precip_mm_in_range"),
        ("timestamp", "yesterday", "timestamp_has_offset"),
        ("timestamp", "2024-13-45T00:00:00Z", "timestamp_parseable"),
        ("timestamp", "2030-01-01T00:00:00Z", "timestamp_not_future"),
        ("station_id", "", "station_id_present"),
    ],
)
def test_a_bad_row_is_quarantined_by_its_rule_and_the_good_rows_are_kept(tmp_path, column, value, rule):
    rows = station_rows(12)
    rows[5][column] = value
    write_csv(tmp_path / "src" / "st.csv", rows)
    report = run_ingest(tmp_path / "src", tmp_path / "out")
    bad = quarantine(tmp_path / "out")
    assert bad["rule"].tolist() == [rule]
    assert bad["row"].tolist() == ["7"]  # header is line 1, rows[0] is line 2
    assert report["total"] == {"received": 12, "accepted": 11, "quarantined": 1, "by_rule": {rule: 1}}


def test_a_duplicate_station_hour_keeps_the_first_row(tmp_path):
    rows = station_rows(6)
    rows.append(dict(rows[2]))
    write_csv(tmp_path / "src" / "st.csv", rows)
    report = run_ingest(tmp_path / "src", tmp_path / "out")
    assert quarantine(tmp_path / "out")["rule"].tolist() == ["unique_station_timestamp"]
    assert report["total"]["accepted"] == 6


def test_a_file_missing_a_required_column_is_quarantined_whole_under_one_rule(tmp_path):
    columns = [c for c in STATION_COLUMNS if c != "pressure_hpa"]
    write_csv(tmp_path / "src" / "a.csv", [{k: v for k, v in r.items() if k != "pressure_hpa"} for r in station_rows(4)], columns)
    write_csv(tmp_path / "src" / "b.csv", station_rows(5, station="st-2"))
    report = run_ingest(tmp_path / "src", tmp_path / "out")
    assert set(quarantine(tmp_path / "out")["rule"]) == {"missing_column:pressure_hpa"}
    assert report["total"]["received"] == 9 and report["total"]["accepted"] == 5


def test_an_empty_sensor_value_is_a_gap_not_a_rejection(tmp_path):
    rows = station_rows(10)
    rows[4]["humidity_pct"] = ""
    write_csv(tmp_path / "src" / "st.csv", rows)
    report = run_ingest(tmp_path / "src", tmp_path / "out")
    assert report["total"]["quarantined"] == 0
    windows = np.load(tmp_path / "out" / "windows.npy")
    samples = pd.read_csv(tmp_path / "out" / "samples.csv")
    row = samples.index[samples["timestamp"] == rows[4]["timestamp"]][0]
    humidity = features.RAW_FEATURES.index("humidity_pct")
    assert windows[row, -1, features.N_RAW + humidity] == 1.0  # flagged missing
    assert windows[row, -1, humidity] == 0.0


def test_a_bad_photo_is_quarantined_and_its_row_keeps_its_sensors(tmp_path):
    src = tmp_path / "src"
    rows = station_rows(4)
    (src / "img").mkdir(parents=True)
    Image.new("RGB", (40, 40), (10, 20, 200)).save(src / "img" / "ok.png")
    (src / "img" / "empty.png").write_bytes(b"")
    (src / "img" / "junk.png").write_bytes(b"not a png at all")
    for row, name in zip(rows, ["img/ok.png", "img/empty.png", "img/junk.png", "img/missing.png"]):
        row["image"] = name
    write_csv(src / "st.csv", rows)
    report = run_ingest(src, tmp_path / "out")
    rules = sorted(quarantine(tmp_path / "out")["rule"])
    assert rules == ["image_exists", "image_not_empty", "image_readable"]
    assert report["total"] == {"received": 8, "accepted": 5, "quarantined": 3, "by_rule": {r: 1 for r in rules}}
    samples = pd.read_csv(tmp_path / "out" / "samples.csv")
    assert len(samples) == 4  # all four rows kept their sensors
    assert (samples["image_idx"] >= 0).sum() == 1


def test_labels_come_from_the_same_stations_future_and_gaps_are_masked():
    hours = np.array([0, 1, 2, 4, 5])  # hour 3 is missing
    temperature = np.array([10.0, 11.0, 12.0, 14.0, 15.0])
    precip = np.array([0.0, 0.5, 0.0, 1.0, 0.0])
    labels = features.horizon_labels(hours, temperature, precip)
    assert labels["temp_h1"].tolist()[:2] == [11.0, 12.0]
    assert np.isnan(labels["temp_h1"][2])  # t=2 -> t+1=3 is a gap: masked, never invented
    assert labels["rain_h1"][0] == 1.0 and labels["rain_h2"][0] == 0.0
    assert labels["rain_h2"][2] == 1.0  # t=2 -> t+2=4 had 1.0 mm
    assert np.isnan(labels["rain_h4"][4])  # past the end of the record


def test_no_test_window_or_horizon_overlaps_the_training_block():
    hours = np.arange(1000)
    window = 6
    split = station_split(hours, window, (0.6, 0.2, 0.2))
    train_span_end = (hours[split == "train"] + 4).max()
    val_window_start = (hours[split == "val"] - window + 1).min()
    test_window_start = (hours[split == "test"] - window + 1).min()
    val_span_end = (hours[split == "val"] + 4).max()
    assert train_span_end < val_window_start
    assert val_span_end < test_window_start
    assert hours[split == "val"].min() - hours[split == "train"].max() >= window + 4
    assert {"train", "val", "test", "buffer"} == set(split)


def test_the_split_report_counts_every_sample(tmp_path):
    write_csv(tmp_path / "src" / "st.csv", station_rows(200))
    report = run_ingest(tmp_path / "src", tmp_path / "out")
    assert sum(entry["samples"] for entry in report["splits"].values()) == 200


def test_too_many_quarantined_items_fail_with_the_threshold_named(tmp_path):
    rows = station_rows(10)
    for row in rows[:5]:
        row["temperature_c"] = "999"
    write_csv(tmp_path / "src" / "st.csv", rows)
    params = Ingest(sources=[FolderSource(path=str(tmp_path / "src"))], max_quarantine_fraction=0.2)
    with pytest.raises(ValueError, match=r"5 of 10 items quarantined.*max_quarantine_fraction=0\.2"):
        ingest.run(params, Data(image_size=32, window_hours=3), tmp_path / "out", now=NOW)


def test_a_missing_source_folder_is_a_clear_error(tmp_path):
    params = Ingest(sources=[FolderSource(path=str(tmp_path / "nowhere"))])
    with pytest.raises(FileNotFoundError, match=r"nowhere.*folder not found; check ingest\.sources"):
        ingest.run(params, Data(), tmp_path / "out", now=NOW)

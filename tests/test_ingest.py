"""ingest: every item accepted or quarantined by a named rule; labels from the future; time splits."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skyedge.core import features
from skyedge.core.contract import STATION_COLUMNS
from skyedge.data import read
from skyedge.data.samples import content_hash
from skyedge.data.splits import station_split
from stages import ingest
from tests.conftest import data_params, folder_source, ingest_params

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
    params = ingest_params([folder_source(folder)], max_quarantine_fraction=1.0, **overrides)
    return ingest.run(params, data_params(image_size=32, window_hours=3), out, now=NOW)


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
    params = ingest_params([folder_source(tmp_path / "src")], max_quarantine_fraction=0.2)
    with pytest.raises(ValueError, match=r"5 of 10 items quarantined.*max_quarantine_fraction=0\.2"):
        ingest.run(params, data_params(image_size=32, window_hours=3), tmp_path / "out", now=NOW)


def test_a_missing_source_folder_is_a_clear_error(tmp_path):
    params = ingest_params([folder_source(tmp_path / "nowhere")])
    with pytest.raises(FileNotFoundError, match=r"nowhere.*folder not found; check ingest\.sources"):
        ingest.run(params, data_params(), tmp_path / "out", now=NOW)


# --- parse-level rules: one bad line is quarantined, the rest of the file is kept -----------------


def write_text(path: Path, lines: list[str], encoding_errors: dict[int, bytes] | None = None) -> Path:
    """A CSV from text lines; encoding_errors replaces line i by raw bytes (bad UTF-8)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = [line.encode() for line in lines]
    for index, raw in (encoding_errors or {}).items():
        data[index] = raw
    path.write_bytes(b"\n".join(data) + b"\n")
    return path


def csv_lines(rows: list[dict]) -> list[str]:
    return [",".join(STATION_COLUMNS), *(",".join(str(r[c]) for c in STATION_COLUMNS) for r in rows)]


@pytest.mark.parametrize(
    ("mutate", "rule"),
    [
        (lambda line: line + ",extra", "row_column_count"),
        (lambda line: ",".join(line.split(",")[:4]), "row_column_count"),
        (lambda line: line.replace("st-1", "st-\xe9").encode("latin-1"), "row_utf8"),
    ],
    ids=["too-many-fields", "too-few-fields", "latin-1-bytes"],
)
def test_a_line_that_does_not_parse_is_quarantined_and_the_others_kept(tmp_path, mutate, rule):
    lines = csv_lines(station_rows(10))
    bad = mutate(lines[4])
    errors = {4: bad} if isinstance(bad, bytes) else None
    if not errors:
        lines[4] = bad
    write_text(tmp_path / "src" / "st.csv", lines, errors)
    report = run_ingest(tmp_path / "src", tmp_path / "out")
    bad_rows = quarantine(tmp_path / "out")
    assert bad_rows["rule"].tolist() == [rule]
    assert bad_rows["row"].tolist() == ["5"]  # line 5 of the file
    assert report["total"] == {"received": 10, "accepted": 9, "quarantined": 1, "by_rule": {rule: 1}}
    assert len(pd.read_csv(tmp_path / "out" / "samples.csv")) == 9


def test_an_empty_file_is_one_item_quarantined_whole(tmp_path):
    write_csv(tmp_path / "src" / "good.csv", station_rows(6))
    (tmp_path / "src" / "empty.csv").write_bytes(b"")
    report = run_ingest(tmp_path / "src", tmp_path / "out")
    bad = quarantine(tmp_path / "out")
    assert bad["rule"].tolist() == ["file_parseable"] and bad["row"].tolist() == [""]
    assert report["total"]["received"] == 7 and report["total"]["accepted"] == 6


def test_a_header_only_file_missing_a_column_is_one_item(tmp_path):
    write_text(tmp_path / "src" / "a.csv", ["station_id,timestamp"])
    report = run_ingest(tmp_path / "src", tmp_path / "out")
    assert quarantine(tmp_path / "out")["rule"].tolist() == ["missing_column:temperature_c"]
    assert report["total"]["received"] == 1 and report["total"]["quarantined"] == 1


def test_a_duplicate_across_two_files_of_one_source_is_caught(tmp_path):
    write_csv(tmp_path / "src" / "a.csv", station_rows(6))
    write_csv(tmp_path / "src" / "b.csv", station_rows(2, start="2024-06-01T05:00:00Z"))
    report = run_ingest(tmp_path / "src", tmp_path / "out")
    bad = quarantine(tmp_path / "out")
    assert bad["rule"].tolist() == ["unique_station_timestamp"] and bad["file"].str.endswith("b.csv").all()
    assert report["total"]["accepted"] == 7


def test_a_broken_row_never_makes_the_good_row_it_collides_with_a_duplicate(tmp_path):
    rows = station_rows(6)
    broken = dict(rows[2], temperature_c="-200")
    write_csv(tmp_path / "src" / "st.csv", [broken, *rows])
    run_ingest(tmp_path / "src", tmp_path / "out")
    assert quarantine(tmp_path / "out")["rule"].tolist() == ["temperature_c_in_range"]


@pytest.mark.parametrize(
    ("column", "convert", "rule"),
    [
        ("temperature_c", lambda c: c + 273.15, "temperature_c_unit_kelvin"),
        ("temperature_c", lambda c: c * 9 / 5 + 32, "temperature_c_unit_fahrenheit"),
        ("pressure_hpa", lambda p: p * 100, "pressure_hpa_unit_pa"),
        ("pressure_hpa", lambda p: p * 0.02953, "pressure_hpa_unit_inhg"),
    ],
)
def test_a_file_in_the_wrong_unit_is_quarantined_whole_under_its_unit_rule(tmp_path, column, convert, rule):
    """Per file: 50 °F looks like a valid °C value, but a file whose readings run 40..104 °F is °F."""
    good = station_rows(48, station="st-2")
    write_csv(tmp_path / "src" / "good.csv", good)
    rows = station_rows(48)
    base = {"temperature_c": np.linspace(5, 40, 48), "pressure_hpa": np.linspace(990, 1030, 48)}[column]
    for row, value in zip(rows, base):
        row[column] = f"{convert(value):.2f}"
    write_csv(tmp_path / "src" / "wrong.csv", rows)
    report = run_ingest(tmp_path / "src", tmp_path / "out")
    bad = quarantine(tmp_path / "out")
    assert set(bad["rule"]) == {rule} and len(bad) == 48 and bad["file"].str.endswith("wrong.csv").all()
    assert report["total"]["accepted"] == 48


# --- images ------------------------------------------------------------------------------------


def test_truncated_unusable_mode_and_tiny_photos_are_quarantined_by_their_rules(tmp_path):
    src = tmp_path / "src"
    (src / "img").mkdir(parents=True)
    noise = np.random.default_rng(0).integers(0, 255, (60, 60, 3), dtype=np.uint8)
    Image.fromarray(noise).save(src / "img" / "ok.png")
    Image.fromarray(noise).convert("P").save(src / "img" / "palette.png")  # converted, kept
    data = (src / "img" / "ok.png").read_bytes()
    (src / "img" / "cut.png").write_bytes(data[: len(data) // 2])
    Image.new("I;16", (40, 40)).save(src / "img" / "deep.png")
    Image.new("RGB", (8, 8)).save(src / "img" / "tiny.png")
    names = ["img/ok.png", "img/palette.png", "img/cut.png", "img/deep.png", "img/tiny.png"]
    rows = station_rows(len(names))
    for row, name in zip(rows, names):
        row["image"] = name
    write_csv(src / "st.csv", rows)
    report = run_ingest(src, tmp_path / "out")
    bad = quarantine(tmp_path / "out").sort_values("rule")
    assert bad["rule"].tolist() == ["image_mode_usable", "image_not_truncated", "image_size_usable"]
    assert bad["row"].tolist() == ["", "", ""]  # whole-file rules
    assert report["total"] == {"received": 10, "accepted": 7, "quarantined": 3, "by_rule": {r: 1 for r in bad["rule"]}}
    assert np.load(tmp_path / "out" / "images.npy").shape == (2, 32, 32, 3)  # resized to data.image_size


def labelled_folder(folder: Path, labels: list[str], days: list[str] | None = None, metadata: bool = False) -> Path:
    """index.csv + distinct 40x40 photos; capture times in metadata.csv (SWIMCAT's layout) or index.csv."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, label in enumerate(labels):
        Image.new("RGB", (40, 40), (i % 256, (i * 7) % 256, 100)).save(folder / "images" / f"{i}.png")
        rows.append({"path": f"images/{i}.png", "label": label, "timestamp_local_sgt": f"{(days or ['2014-01-01'])[i % len(days or [1])]}T09:00:00+08:00"})
    frame = pd.DataFrame(rows)
    if metadata:
        frame[["path", "label"]].to_csv(folder / "index.csv", index=False)
        frame.to_csv(folder / "metadata.csv", index=False)
    else:
        frame.rename(columns={"timestamp_local_sgt": "timestamp"}).to_csv(folder / "index.csv", index=False)
    return folder


def test_a_bad_label_is_quarantined_under_the_index_row(tmp_path):
    folder = labelled_folder(tmp_path / "src", ["clear_sky", "rainbow", "veil_clouds"])
    report = run_ingest(folder, tmp_path / "out")
    bad = quarantine(tmp_path / "out")
    assert bad[["row", "rule", "value"]].values.tolist() == [["3", "label_in_classes", "rainbow"]]
    assert report["total"] == {"received": 3, "accepted": 2, "quarantined": 1, "by_rule": {"label_in_classes": 1}}


def test_photos_take_their_capture_day_from_metadata_csv_and_no_day_or_md5_spans_two_splits(tmp_path):
    days = [f"2014-01-{d:02d}" for d in range(1, 11)]
    labels = [c for c in ["clear_sky", "veil_clouds"] for _ in range(20)]
    folder = labelled_folder(tmp_path / "src", labels, days, metadata=True)
    # An exact copy of photo 0 under another name: deduplicated before splitting.
    (folder / "images" / "copy.png").write_bytes((folder / "images" / "0.png").read_bytes())
    index = pd.read_csv(folder / "index.csv")
    pd.concat([index, pd.DataFrame([{"path": "images/copy.png", "label": "clear_sky"}])]).to_csv(folder / "index.csv", index=False)
    report = run_ingest(folder, tmp_path / "out")
    samples = pd.read_csv(tmp_path / "out" / "samples.csv")
    assert not samples["day"].str.startswith("unknown").any()
    assert samples.groupby("day")["split"].nunique().max() == 1
    images = np.load(tmp_path / "out" / "images.npy")
    digests = samples.assign(md5=[content_hash(images[i]) for i in samples["image_idx"]])
    assert digests.groupby("md5")["split"].nunique().max() == 1
    assert len(samples) == 40 and report["split_checks"]["photo_duplicates_dropped"] == 1
    assert set(samples["split"]) == {"train", "val", "test"}


# --- streaming: a file read in chunks is judged as a whole ---------------------------------------


def test_files_read_in_many_small_chunks_give_the_same_outputs(tmp_path, monkeypatch):
    """Whole-file rules hold across chunks: a file in °F is quarantined whole, a repeat in a later
    chunk is a duplicate; the outputs equal one-chunk reading's."""
    src = tmp_path / "src"
    wrong = station_rows(48)
    for row, celsius in zip(wrong, np.linspace(5, 40, 48)):
        row["temperature_c"] = f"{celsius * 9 / 5 + 32:.2f}"
    write_csv(src / "wrong.csv", wrong)
    good = station_rows(40, station="st-2")
    good[7]["pressure_hpa"] = "2000"
    good.append(dict(good[3]))  # the repeat lands in the last chunk
    write_csv(src / "good.csv", good)
    whole = run_ingest(src, tmp_path / "whole")
    monkeypatch.setattr(read, "CHUNK_ROWS", 7)
    chunked = run_ingest(src, tmp_path / "chunked")
    assert chunked == whole
    assert whole["total"]["by_rule"] == {"pressure_hpa_in_range": 1, "temperature_c_unit_fahrenheit": 48, "unique_station_timestamp": 1}
    assert sorted(map(tuple, quarantine(tmp_path / "chunked").values.tolist())) == sorted(map(tuple, quarantine(tmp_path / "whole").values.tolist()))
    assert (tmp_path / "chunked" / "samples.csv").read_text() == (tmp_path / "whole" / "samples.csv").read_text()
    assert np.array_equal(np.load(tmp_path / "chunked" / "windows.npy"), np.load(tmp_path / "whole" / "windows.npy"))

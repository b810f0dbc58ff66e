"""The four-hour forecast from the device's active model (`skyedge device predict`).

Inputs follow the data contract (ARCHITECTURE §2): a station CSV (station_id, timestamp and the
six sensor columns; empty cells are gaps) and optionally a sky photo. Everything is preprocessed
with the active manifest's recorded image size/mean/std and sensor normalisation/window, never
code defaults. No photo (or a broken camera) runs the model's no-image path.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from skyedge.core import contract, crop, features, files, inference, inputs, readings
from skyedge.core.tables import Column, text_table
from skyedge.release import manifest as mf


class PredictError(ValueError):
    """Inputs that cannot be turned into a forecast; the message names the file and the rule."""


def active_slot(state_dir: Path) -> Path:
    link = Path(state_dir) / "active"
    if not link.is_symlink() or not link.resolve().is_dir():
        raise PredictError(f"{state_dir}: no active model yet: run `skyedge device pull` first")
    return link.resolve()  # resolved once: an update swapping `active` now does not affect us


def previous_slot(state_dir: Path) -> Path | None:
    """The release the agent keeps for rollback (its `previous` link), or None."""
    link = Path(state_dir) / "previous"
    return link.resolve() if link.is_symlink() and link.resolve().is_dir() else None


def _parse_time(text: str, where: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise PredictError(f"{where}: timestamp {text!r} is not ISO 8601") from exc
    if moment.tzinfo is None:
        raise PredictError(f"{where}: timestamp {text!r} has no UTC offset")
    return moment.astimezone(timezone.utc)


def read_station(csv_path: Path, station: str | None = None) -> tuple[str, np.ndarray, dict[str, np.ndarray], list[dict[str, Any]]]:
    """(station_id, epoch hours, sensor columns, flags) of one station's records, oldest first.

    Each reading passes the ingest rules (skyedge.core.readings); one that breaks a rule (a
    temperature in kelvin, a humidity of 140 %) is treated as missing and listed in `flags` with
    the rule's name, never fed to the model as it was."""
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in contract.REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise PredictError(f"{csv_path}: missing column(s) {', '.join(missing)} (data contract: {', '.join(contract.REQUIRED_COLUMNS)})")
        rows = list(reader)
    if not rows:
        raise PredictError(f"{csv_path}: no records")
    station = station or rows[-1][contract.STATION_ID]
    by_hour: dict[int, dict[str, str]] = {}
    for i, row in enumerate(rows, start=2):
        if row[contract.STATION_ID] != station:
            continue
        moment = _parse_time(row[contract.TIMESTAMP], f"{csv_path}:{i}")
        by_hour[int(moment.timestamp() // 3600)] = row
    if not by_hour:
        raise PredictError(f"{csv_path}: no records for station {station!r}")
    hours = np.array(sorted(by_hour), dtype=np.int64)
    columns: dict[str, np.ndarray] = {}
    flags: list[dict[str, Any]] = []
    for name in contract.SENSOR_COLUMNS:
        values = []
        for h in hours:
            text = by_hour[int(h)].get(name)
            value, rule = readings.check(name, text)
            if rule:
                flags.append({"time": datetime.fromtimestamp(int(h) * 3600, timezone.utc).isoformat(), "column": name, "rule": rule, "value": text, "action": "treated as missing"})
            values.append(value)
        columns[name] = np.array(values, dtype=np.float64)
    return station, hours, columns, flags


def station_coordinates(csv_path: Path, station: str, latitude: float | None = None, longitude: float | None = None) -> tuple[float | None, float | None, str]:
    """(latitude, longitude, where from): given on the command line, else the station's row in
    stations.csv beside the records, else (None, None, the UTC fallback), which the forecast names."""
    if latitude is not None and longitude is not None:
        return latitude, longitude, "given"
    metadata = Path(csv_path).parent / contract.STATION_METADATA_FILE
    if metadata.is_file():
        with open(metadata, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if (row.get(contract.STATION_ID) or "").strip() == station:
                    try:
                        lat, lon = float(row["latitude"]), float(row["longitude"])
                    except (KeyError, TypeError, ValueError) as exc:
                        raise PredictError(f"{metadata}: station {station!r} has no readable latitude/longitude ({exc})") from exc
                    for name, value in (("latitude", lat), ("longitude", lon)):
                        low, high = contract.STATION_METADATA_RANGES[name]
                        if not low <= value <= high:
                            raise PredictError(f"{metadata}: {name} {value} of station {station!r} is outside {low}..{high}")
                    return lat, lon, str(metadata)
    return None, None, features.UTC_FALLBACK


def load_image(path: Path, size: int) -> np.ndarray:
    """The photo as size x size x 3 uint8 RGB, or a PredictError naming the file."""
    try:
        return inputs.read_photo(path, size)
    except (OSError, ValueError) as exc:  # Pillow: not an image, truncated, unreadable
        raise PredictError(f"{path}: not a readable image ({exc})") from exc


# The box a fixed camera found, per release: state_dir/attention_boxes/<name>-v<version>.json
# (manifest attention.refresh_hours; skyedge.core.crop.reused_boxes is the same rule in training).
ATTENTION_BOXES_DIR = "attention_boxes"


def kept_box_file(state_dir: Path, document: dict) -> Path:
    return Path(state_dir) / ATTENTION_BOXES_DIR / f"{document['name']}-v{document['version']}.json"


def attended_photo(slot: Path, attention: dict, image: Path, size: int, kept_box: Path | None = None, hour: int = 0) -> tuple[np.ndarray, bool]:
    """([1, size, size, 3] uint8, did attention run): the photo read at the frame size attention
    was trained at, cut to its box, the crop the model was trained on. With `kept_box` (a file
    this station keeps) and the manifest's refresh_hours, the box found at most refresh_hours
    before `hour` (epoch hours) is reused and attention does not run; a newly found box is kept
    unless it is the whole-frame fallback (crop.reused_boxes, the rule training followed)."""
    frame = load_image(image, int(attention["frame_size"]))
    refresh_hours = int(attention.get("refresh_hours", 0))
    kept = json.loads(kept_box.read_text()) if kept_box is not None and refresh_hours and kept_box.is_file() else None
    if kept is not None and crop.box_is_fresh(int(kept["hour"]), hour, refresh_hours):
        return crop.crop_photo(frame, np.asarray(kept["box"], dtype=np.float32), size)[None], False
    box = crop.attention_boxes(inference.session(slot / attention["file"]), frame[None], attention)[0]
    if kept_box is not None and refresh_hours and not crop.is_whole_frame(box):
        files.write_json(kept_box, {"hour": hour, "box": [float(v) for v in box]})
    return crop.crop_photo(frame, box, size)[None], True


def forecast(
    state_dir: Path, sensors_csv: Path, image: Path | None = None, station: str | None = None, session: Any = None, latitude: float | None = None, longitude: float | None = None,
    slot: Path | None = None,
) -> dict[str, Any]:
    """The forecast at the time of the station's latest record, from the active model (or the
    model in `slot`: the journal's shadow forecast runs the previous release)."""
    slot = slot or active_slot(state_dir)
    document = json.loads((slot / mf.MANIFEST_FILE).read_text())
    prep = document["preprocessing"]
    window = int(prep["sensors"]["window_hours"])
    station_id, hours, columns, flags = read_station(Path(sensors_csv), station)
    lat, lon, coordinates = station_coordinates(Path(sensors_csv), station_id, latitude, longitude)
    windows, missing_hours = features.build_windows(hours, features.raw_features(columns), prep["sensors"], window, lat, lon)
    spec = prep["image"]
    attention = document.get("attention")  # absent in packages trained on whole frames (and older releases)
    attention_ran = False
    if image is not None and attention is not None:
        kept_box = kept_box_file(state_dir, document)
        kept_box.parent.mkdir(parents=True, exist_ok=True)
        crops, attention_ran = attended_photo(slot, attention, Path(image), int(spec["size"]), kept_box, int(hours[-1]))
        photos, image_idx = crops, np.array([0])
    elif image is not None:
        photos, image_idx = load_image(Path(image), int(spec["size"]))[None], np.array([0])
    else:  # camera down: no photo, no attention; the model's no-image path
        photos, image_idx = np.zeros((0, 1, 1, 3), np.uint8), np.array([-1])
    feed = inputs.model_inputs(photos, image_idx, windows[-1:], spec)
    model = session or inference.session(slot / mf.MODEL_FILE)
    out = inference.predict(model, feed)
    logits = out[contract.OUTPUT_SKY_LOGITS][0].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    classes = document.get("classes", list(contract.SKY_CLASSES))
    # Heads whose validation skill was below zero ship persistence (skyedge.compress.selection).
    fallback = document.get("fallback") or {"rain": [False] * len(contract.HORIZONS), "temp": [False] * len(contract.HORIZONS)}
    at = datetime.fromtimestamp(int(hours[-1]) * 3600, timezone.utc)
    return {
        "model": {"name": document["name"], "version": document["version"], "version_label": document.get("version_label")},
        "station_id": station_id,
        "time": at.isoformat(),
        "image_used": image is not None,
        "attention_used": image is not None and attention is not None,
        "attention_ran": attention_ran,  # False: the box this station found within the manifest's refresh_hours was reused
        "window_hours": window,
        "window_missing_hours": int(missing_hours[-1]),
        "window_rule": readings.window_gaps(window - int(missing_hours[-1]), window)[1],
        "flags": flags,
        "sky": {"class": classes[int(np.argmax(probs))], "probabilities": {c: round(float(p), 4) for c, p in zip(classes, probs)}},
        "coordinates": coordinates,
        "forecast": [
            {
                "h": h,
                "time": (at + timedelta(hours=h)).isoformat(),
                "rain_prob": round(float(out[contract.OUTPUT_RAIN_PROB][0, i]), 4),
                "temp_c": round(float(out[contract.OUTPUT_TEMP_C][0, i]), 2),
                "rain_from": "persistence" if fallback["rain"][i] else "model",
                "temp_from": "persistence" if fallback["temp"][i] else "model",
            }
            for i, h in enumerate(document.get("horizons", contract.HORIZONS))
        ],
    }


FORECAST_COLUMNS = [
    Column("h", format="d"),
    Column("time", align="left"),
    Column("rain_prob", format=".2f"),
    Column("rain_from", "", align="left"),
    Column("temp_c", format=".1f"),
    Column("temp_from", "", align="left"),
]


def format_forecast(result: dict[str, Any]) -> str:
    lines = [
        f"station {result['station_id']} at {result['time']} — model {result['model']['name']} v{result['model']['version']}"
        f" ({'with' if result['image_used'] else 'no'} photo, {result['window_missing_hours']} missing window hours)",
        f"sky now: {result['sky']['class']} ({result['sky']['probabilities'][result['sky']['class']]:.0%})",
        text_table(result["forecast"], FORECAST_COLUMNS),
        "rain_prob: probability of more than 0.1 mm of rain in the hour ending at `time`; temp_c: the temperature then.",
    ]
    if any(row["rain_from"] == "persistence" or row["temp_from"] == "persistence" for row in result["forecast"]):
        lines.append("persistence: the model had no skill over persistence there on validation, so it forecasts the current reading")
    for flag in result["flags"]:
        lines.append(f"{flag['rule']}: {flag['column']} = {flag['value']!r} at {flag['time']} breaks the data contract: {flag['action']}")
    if result["window_rule"]:
        lines.append(f"{result['window_rule']}: {result['window_missing_hours']} of the model's {result['window_hours']} window hours have no record: the forecast rests on little history")
    if result["coordinates"] == features.UTC_FALLBACK:
        lines.append(f"coordinates {features.UTC_FALLBACK}: no stations.csv beside the records and no --latitude/--longitude; the time of day is UTC's")
    return "\n".join(lines)

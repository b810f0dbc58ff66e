"""Reading and validating sources into accepted records + a quarantine with reasons.

Every received item (a CSV row, an image file) gets exactly one outcome: accepted, or one row in
the quarantine naming the rule that rejected it. Rules are checked in order; the first failure wins.
An empty sensor value is not a reason to drop a row (gaps are real and handled as missing), and a
bad image never costs a row its sensors, nor the reverse.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from skyedge.contract import IMAGE, REQUIRED_COLUMNS, SENSOR_RANGES, SKY_CLASSES, STATION_ID, TIMESTAMP

QUARANTINE_COLUMNS = ["source", "file", "row", "rule", "value"]
INDEX_FILE = "index.csv"
MIN_IMAGE_SIDE = 16  # smaller photos carry too little to resize up from: quarantined
OFFSET_PATTERN = re.compile(r"(Z|[+-]\d{2}:?\d{2})$")
EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


@dataclass
class Outcome:
    """What one source produced: accepted station rows, accepted images and the quarantine."""

    source: str
    records: pd.DataFrame = field(default_factory=pd.DataFrame)
    images: dict[str, np.ndarray] = field(default_factory=dict)  # resolved path -> HxWx3 uint8
    labels: dict[str, str] = field(default_factory=dict)  # resolved path -> sky class
    timestamps: dict[str, str] = field(default_factory=dict)  # resolved path -> capture time
    quarantine: list[dict] = field(default_factory=list)
    received: int = 0

    def reject(self, file: Path | str, row: int | None, rule: str, value: object) -> None:
        self.quarantine.append(
            {"source": self.source, "file": str(file), "row": "" if row is None else row, "rule": rule, "value": str(value)[:200]}
        )


def station_files(folder: Path) -> list[Path]:
    """Station CSVs under a folder: every *.csv except the labelled-image index."""
    return sorted(p for p in folder.rglob("*.csv") if p.name != INDEX_FILE)


def read_station_csv(path: Path, outcome: Outcome, now: pd.Timestamp) -> pd.DataFrame:
    """Validated rows of one station CSV; rejected rows go to the quarantine."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        outcome.received += 1
        outcome.reject(path, None, "file_parseable", error)
        return pd.DataFrame()
    outcome.received += len(frame)
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        for row in range(len(frame)):
            outcome.reject(path, row + 2, f"missing_column:{missing[0]}", missing[0])
        if frame.empty:  # a header-only file is still one received item with one outcome
            outcome.received += 1
            outcome.reject(path, None, f"missing_column:{missing[0]}", missing[0])
        return pd.DataFrame()
    frame["_row"] = np.arange(len(frame)) + 2  # 1-based, after the header line
    frame["_file"] = str(path)
    failed = pd.Series("", index=frame.index)
    values = pd.Series("", index=frame.index)

    def flag(mask: pd.Series, rule: str, shown: pd.Series) -> None:
        new = mask & (failed == "")
        failed[new] = rule
        values[new] = shown[new].astype(str)

    stamps = frame[TIMESTAMP].str.strip()
    flag(frame[STATION_ID].str.strip() == "", "station_id_present", frame[STATION_ID])
    flag(stamps == "", "timestamp_present", stamps)
    flag(~stamps.str.contains(OFFSET_PATTERN), "timestamp_has_offset", stamps)
    parsed = pd.to_datetime(stamps, utc=True, errors="coerce", format="ISO8601")
    flag(parsed.isna(), "timestamp_parseable", stamps)
    flag(parsed > now, "timestamp_not_future", stamps)
    numeric = {}
    for column, (low, high) in SENSOR_RANGES.items():
        text = frame[column].str.strip()
        number = pd.to_numeric(text, errors="coerce")
        flag((text != "") & number.isna(), f"{column}_numeric", text)
        out_of_range = pd.Series(False, index=frame.index)
        if low is not None:
            out_of_range |= number < low
        if high is not None:
            out_of_range |= number > high
        flag(out_of_range, f"{column}_in_range", text)
        numeric[column] = number
    hours = (parsed.dt.floor("h") - EPOCH) // pd.Timedelta(hours=1)
    key = frame[STATION_ID].str.strip() + "|" + hours.astype("Int64").astype(str)
    duplicated = key.duplicated(keep="first") & (failed == "")
    flag(duplicated, "unique_station_timestamp", stamps)
    for index in np.flatnonzero(failed != ""):
        outcome.reject(path, int(frame["_row"].iat[index]), failed.iat[index], values.iat[index])
    keep = failed == ""
    accepted = pd.DataFrame({STATION_ID: frame[STATION_ID].str.strip(), "hour": hours, TIMESTAMP: parsed})
    for column, number in numeric.items():
        accepted[column] = number
    image_text = frame[IMAGE].str.strip() if IMAGE in frame.columns else pd.Series("", index=frame.index)
    accepted["image_path"] = [str((path.parent / name).resolve()) if name else "" for name in image_text]
    accepted["_file"] = frame["_file"]
    accepted["_row"] = frame["_row"]
    return accepted[keep].reset_index(drop=True)


def load_image(path: Path, image_size: int) -> tuple[np.ndarray | None, str, str]:
    """An RGB array resized to image_size, or (None, rule, detail) saying why not.

    Any mode Pillow can convert (L, P, RGBA, CMYK...) is converted to RGB and any side of at least
    MIN_IMAGE_SIDE is resized: photos from other cameras stay usable. Smaller ones are quarantined.
    """
    if not path.exists():
        return None, "image_exists", str(path)
    if path.stat().st_size == 0:
        return None, "image_not_empty", "0 bytes"
    try:
        with Image.open(path) as image:
            image.load()
            if min(image.size) < MIN_IMAGE_SIDE:
                return None, "image_size_usable", f"{image.size[0]}x{image.size[1]}"
            rgb = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8), "", ""
    except (UnidentifiedImageError, OSError, ValueError) as error:
        return None, "image_readable", error


def read_index(folder: Path, outcome: Outcome) -> list[tuple[int, str, str, str]]:
    """Rows of a labelled-image index.csv as (row, resolved path, label, timestamp); bad rows quarantined."""
    path = folder / INDEX_FILE
    if not path.exists():
        return []
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "path" not in frame.columns or "label" not in frame.columns:
        missing = "path" if "path" not in frame.columns else "label"
        outcome.received += max(len(frame), 1)
        for row in range(max(len(frame), 1)):
            outcome.reject(path, row + 2 if len(frame) else None, f"missing_column:{missing}", missing)
        return []
    stamps = frame["timestamp"] if "timestamp" in frame.columns else pd.Series("", index=frame.index)
    rows = []
    for row, (name, label, stamp) in enumerate(zip(frame["path"], frame["label"], stamps), start=2):
        rows.append((row, str((folder / name.strip()).resolve()), label.strip(), stamp.strip()))
    return rows


def read_folder(folder: Path, source: str, image_size: int, now: pd.Timestamp) -> Outcome:
    """Station CSVs (with their images) and a labelled index.csv under one folder."""
    outcome = Outcome(source=source)
    frames = [read_station_csv(path, outcome, now) for path in station_files(folder)]
    frames = [frame for frame in frames if not frame.empty]
    records = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if not records.empty:
        # The same (station, hour) in two files of one source is a duplicate too.
        duplicate = records.duplicated([STATION_ID, "hour"], keep="first")
        for _, row in records[duplicate].iterrows():
            outcome.reject(row["_file"], int(row["_row"]), "unique_station_timestamp", row[TIMESTAMP])
        records = records[~duplicate].reset_index(drop=True)

    labelled = read_index(folder, outcome)
    referenced = set(records["image_path"]) - {""} if not records.empty else set()
    index_paths = {path for _, path, _, _ in labelled}
    images_to_read = sorted(referenced | index_paths)
    outcome.received += len(images_to_read)
    bad_labels = {path: (row, label) for row, path, label, _ in labelled if label not in SKY_CLASSES}
    for path in images_to_read:
        if path in bad_labels:
            row, label = bad_labels[path]
            outcome.reject(folder / INDEX_FILE, row, "label_in_classes", label)
            continue
        array, rule, detail = load_image(Path(path), image_size)
        if array is None:
            outcome.reject(path, None, rule, detail)
        else:
            outcome.images[path] = array
    for _, path, label, stamp in labelled:
        if path in outcome.images:
            outcome.labels[path] = label
            outcome.timestamps[path] = stamp
    if not records.empty:
        # The row keeps its sensors when its photo was rejected; it just has no image.
        records.loc[~records["image_path"].isin(list(outcome.images)), "image_path"] = ""
    outcome.records = records
    return outcome


def content_hash(pixels: np.ndarray) -> str:
    """md5 of the decoded pixels: finds duplicate photos whatever their file names."""
    return hashlib.md5(pixels.tobytes()).hexdigest()

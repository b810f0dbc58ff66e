"""Reading and validating sources into accepted records + a quarantine with reasons.

Every received item (a CSV row, an image file) gets exactly one outcome: accepted, or one row in
the quarantine naming the rule that rejected it. Rules are checked in order; the first failure wins.
An empty sensor value is not a reason to drop a row (gaps are real and handled as missing), and a
bad image never costs a row its sensors, nor the reverse.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from skyedge.core.contract import (
    IMAGE,
    REQUIRED_COLUMNS,
    SENSOR_RANGES,
    SKY_CLASSES,
    STATION_ID,
    STATION_METADATA_COLUMNS,
    STATION_METADATA_FILE,
    STATION_METADATA_RANGES,
    TIMESTAMP,
    UNIT_BANDS,
)
from skyedge.data import validation

QUARANTINE_COLUMNS = ["source", "file", "row", "rule", "value"]
INDEX_FILE = "index.csv"
METADATA_FILE = "metadata.csv"  # optional per-image metadata beside index.csv (SWIMCAT's)
MIN_IMAGE_SIDE = validation.MIN_IMAGE_SIDE  # smaller photos carry too little to resize up from
SURROGATES = re.compile("[\udc80-\udcff]")  # undecodable bytes kept by errors="surrogateescape"
IMAGE_META_COLUMNS = ["path", "label", "exists", "bytes", "width", "height", "mode", "decode"]
# The quarantine shows the text the row had, not the parsed value, for these rules.
SHOWN_COLUMNS = {
    "timestamp_parseable": TIMESTAMP,
    "timestamp_not_future": TIMESTAMP,
    "unique_station_timestamp": TIMESTAMP,
    **{f"{c}_in_range": f"{c}_text" for c in SENSOR_RANGES},
    **{f"{c}_unit_{u}": f"{c}_text" for c, units in UNIT_BANDS.items() for u in units},
}


@dataclass
class Outcome:
    """What one source produced: accepted station rows, accepted images and the quarantine."""

    source: str
    records: pd.DataFrame = field(default_factory=pd.DataFrame)
    images: dict[str, np.ndarray] = field(default_factory=dict)  # resolved path -> HxWx3 uint8
    labels: dict[str, str] = field(default_factory=dict)  # resolved path -> sky class
    unlabelled: list[str] = field(default_factory=list)  # index rows whose class nobody wrote down
    timestamps: dict[str, str] = field(default_factory=dict)  # resolved path -> capture time
    coordinates: dict[str, dict[str, float]] = field(default_factory=dict)  # station_id -> latitude, longitude, elevation_m
    quarantine: list[dict] = field(default_factory=list)
    received: int = 0
    ignored_files: list[str] = field(default_factory=list)  # CSVs that are not station data

    def reject(self, file: Path | str, row: int | None, rule: str, value: object) -> None:
        self.quarantine.append(
            {"source": self.source, "file": str(file), "row": "" if row is None else row, "rule": rule, "value": str(value)[:200]}
        )


def station_files(folder: Path) -> list[Path]:
    """Station CSVs under a folder: every *.csv except the labelled-image index, its metadata and
    the station metadata (stations.csv).

    Whether a CSV holds station records at all is decided from its header (`is_station_header`).
    """
    return sorted(p for p in folder.rglob("*.csv") if p.name not in (INDEX_FILE, METADATA_FILE, STATION_METADATA_FILE))


def is_station_header(path: Path) -> bool:
    """A CSV whose header names at least one contract column is station data (and is validated,
    missing columns included); others (SWIMCAT's *_info.csv camera logs) are listed as ignored."""
    try:
        with path.open("rb") as handle:
            first = handle.readline().decode("utf-8", errors="replace").lstrip("\ufeff")
    except OSError:
        return True  # unreadable: let read_station_csv quarantine it by name
    if not first.strip():
        return True
    header = {name.strip() for name in next(csv.reader([first]))}
    return bool(header & set(REQUIRED_COLUMNS))


def parse_station_file(path: Path, outcome: Outcome, required: tuple[str, ...] = REQUIRED_COLUMNS) -> pd.DataFrame:
    """The rows of one station CSV (or stations.csv, with its `required` columns) as text, with
    `_file` and `_row` (line number, header = 1).

    Parse-level rules, checked before any validation: `file_parseable` (empty or unreadable file:
    one item, row empty), `row_utf8` (a line that is not UTF-8: that row only), `row_column_count`
    (a ragged row), `missing_column:<name>` (every row of the file, under the first missing
    required column). Blank lines are not records and are not counted.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        outcome.received += 1
        outcome.reject(path, None, "file_parseable", error)
        return pd.DataFrame()
    try:
        text, checked = data.decode("utf-8"), False
    except UnicodeDecodeError:
        # Keep the undecodable bytes as surrogates so each bad line can be found and quarantined.
        text, checked = data.decode("utf-8", errors="surrogateescape"), True
    text = text.lstrip("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as error:
        outcome.received += 1
        outcome.reject(path, None, "file_parseable", error or "empty file")
        return pd.DataFrame()
    header = [name.strip() for name in header]
    if checked and SURROGATES.search(",".join(header)):
        outcome.received += 1
        outcome.reject(path, None, "file_parseable", "header is not UTF-8")
        return pd.DataFrame()
    rows, numbers = [], []
    width = len(header)
    line = reader.line_num
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as error:  # e.g. a NUL byte: that line only
            outcome.received += 1
            outcome.reject(path, reader.line_num, "row_column_count", error)
            continue
        start, line = line + 1, reader.line_num
        if not fields:
            continue
        outcome.received += 1
        if checked and SURROGATES.search("".join(fields)):
            shown = ",".join(fields).encode("utf-8", errors="surrogateescape").decode("utf-8", errors="backslashreplace")
            outcome.reject(path, start, "row_utf8", shown)
        elif len(fields) != width:
            outcome.reject(path, start, "row_column_count", f"{len(fields)} fields, header has {width}")
        else:
            rows.append(fields)
            numbers.append(start)
    missing = [column for column in required if column not in header]
    if missing:
        for row in numbers:
            outcome.reject(path, row, f"missing_column:{missing[0]}", missing[0])
        if not numbers:  # a header-only file is still one received item with one outcome
            outcome.received += 1
            outcome.reject(path, None, f"missing_column:{missing[0]}", missing[0])
        return pd.DataFrame()
    frame = pd.DataFrame(rows, columns=header, dtype=str) if rows else pd.DataFrame(columns=header, dtype=str)
    frame = frame.loc[:, ~frame.columns.duplicated()]
    frame["_row"] = np.asarray(numbers, dtype=np.int64)
    frame["_file"] = str(path)
    return frame


def validate_stations(
    raw: pd.DataFrame, outcome: Outcome, now: pd.Timestamp, rules: list | None = None, runner: validation.SuiteRunner | None = None
) -> pd.DataFrame:
    """Accepted rows of parsed station text (one or many files); the others go to the quarantine.

    Rules come from skyedge.data.validation's table (the GE station suite), first failure wins; with a
    runner, the same chunk is also validated by Great Expectations for the Data Docs.
    """
    if raw.empty:
        return pd.DataFrame()
    rules = rules if rules is not None else validation.station_rules(now)
    prepared = validation.prepare_stations(raw, now)
    if runner is not None:
        runner.check("station_records", rules, prepared.drop(columns=["_file", "_row", "timestamp_utc"]))
    failed, values = validation.first_failures(rules, prepared, SHOWN_COLUMNS)
    for index in np.flatnonzero(failed != ""):
        outcome.reject(prepared["_file"].iat[index], int(prepared["_row"].iat[index]), failed[index], values[index])
    keep = failed == ""
    accepted = pd.DataFrame(
        {
            STATION_ID: prepared[STATION_ID],
            "hour": prepared["hour"],
            TIMESTAMP: prepared["timestamp_utc"],
        }
    )
    for column in SENSOR_RANGES:
        accepted[column] = prepared[column]
    image_text = raw[IMAGE].fillna("").str.strip().to_numpy() if IMAGE in raw.columns else np.full(len(raw), "")
    folders = {name: Path(name).parent for name in raw["_file"].unique()}
    accepted["image_path"] = [
        str((folders[file] / name).resolve()) if name and ok else "" for file, name, ok in zip(raw["_file"], image_text, keep)
    ]
    accepted["_file"] = prepared["_file"]
    accepted["_row"] = prepared["_row"]
    accepted = accepted[keep].reset_index(drop=True)
    accepted["hour"] = accepted["hour"].astype(np.int64)
    return accepted


def drop_repeated_records(frames: list[pd.DataFrame], outcome: Outcome) -> pd.DataFrame:
    """Accepted rows of several files as one frame; a (station, hour) already seen in an earlier
    file is a duplicate too (`unique_station_timestamp`, the first one is kept)."""
    records = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if records.empty:
        return records
    repeated = records.duplicated([STATION_ID, "hour"], keep="first")
    for file, row, stamp in records.loc[repeated, ["_file", "_row", TIMESTAMP]].itertuples(index=False):
        outcome.reject(file, int(row), "unique_station_timestamp", stamp)
    return records[~repeated].reset_index(drop=True)


def read_station_csv(path: Path, outcome: Outcome, now: pd.Timestamp) -> pd.DataFrame:
    """Validated rows of one station CSV; rejected rows go to the quarantine."""
    return validate_stations(parse_station_file(Path(path), outcome), outcome, now)


def inspect_image(path: Path, image_size: int) -> tuple[np.ndarray | None, dict]:
    """Decode one photo; return the RGB array (or None) and its metadata row for the image suite."""
    meta = {"exists": path.exists(), "bytes": None, "width": None, "height": None, "mode": None, "decode": None}
    if not meta["exists"]:
        return None, meta
    meta["bytes"] = path.stat().st_size
    if meta["bytes"] == 0:
        return None, meta
    try:
        with Image.open(path) as image:
            meta.update(width=image.size[0], height=image.size[1], mode=image.mode)
            if image.mode not in validation.USABLE_MODES or min(image.size) < MIN_IMAGE_SIDE:
                meta["decode"] = "skipped"
                return None, meta
            image.load()
            rgb = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
            meta["decode"] = "ok"
            return np.asarray(rgb, dtype=np.uint8), meta
    except UnidentifiedImageError as error:
        meta.update(decode="not_an_image", error=str(error))
    except (OSError, ValueError, SyntaxError) as error:
        # Pillow says "image file is truncated" / "broken data stream" for cut-off files.
        text = str(error)
        meta.update(decode="truncated" if "truncat" in text or "broken" in text else "not_an_image", error=text)
    return None, meta


def image_failure(meta: dict, rules: list | None = None) -> tuple[str, str]:
    """(rule, detail) for one image's metadata by the image suite's table; ("", "") when usable."""
    rules = rules if rules is not None else validation.image_rules()
    frame = pd.DataFrame([{**meta}]).reindex(columns=sorted({e.column for r in rules for e in r.expectations} | set(meta)))
    failed, values = validation.first_failures(rules, frame)
    if not failed[0]:
        return "", ""
    details = {
        "image_exists": lambda: str(meta.get("path", "")),
        "image_not_empty": lambda: "0 bytes",
        "image_size_usable": lambda: f"{meta['width']}x{meta['height']}",
        "image_readable": lambda: meta.get("error", "not an image"),
        "image_not_truncated": lambda: meta.get("error", "truncated"),
        "image_mode_usable": lambda: f"mode {meta['mode']}",
    }
    return failed[0], details.get(failed[0], lambda: str(values[0]))()


def load_image(path: Path, image_size: int) -> tuple[np.ndarray | None, str, str]:
    """An RGB array resized to image_size, or (None, rule, detail) saying why not.

    Any mode in validation.USABLE_MODES (L, P, RGBA, CMYK...) is converted to RGB and any side of at
    least MIN_IMAGE_SIDE is resized, up or down: photos from other cameras stay usable. Smaller
    ones, 16-bit/float modes, truncated and non-image files are quarantined.
    """
    path = Path(path)
    array, meta = inspect_image(path, image_size)
    rule, detail = image_failure({**meta, "path": str(path)})
    if rule:
        return None, rule, detail
    return array, "", ""


def read_index(folder: Path, outcome: Outcome) -> list[tuple[int, str, str, str]]:
    """Rows of a labelled-image index.csv as (row, resolved path, label, timestamp); bad rows quarantined.

    When index.csv has no `timestamp`, a sibling metadata.csv (SWIMCAT's) is joined by `path` and
    its `timestamp` or `timestamp_local_sgt` column gives the capture time.
    """
    path = folder / INDEX_FILE
    if not path.exists():
        return []
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8", on_bad_lines="skip", engine="python")
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        outcome.received += 1
        outcome.reject(path, None, "file_parseable", error)
        return []
    frame.columns = [c.strip() for c in frame.columns]
    if "path" not in frame.columns or "label" not in frame.columns:
        missing = "path" if "path" not in frame.columns else "label"
        outcome.received += max(len(frame), 1)
        for row in range(max(len(frame), 1)):
            outcome.reject(path, row + 2 if len(frame) else None, f"missing_column:{missing}", missing)
        return []
    stamps = frame["timestamp"] if "timestamp" in frame.columns else pd.Series("", index=frame.index)
    metadata = folder / METADATA_FILE
    if "timestamp" not in frame.columns and metadata.exists():
        meta = pd.read_csv(metadata, dtype=str, keep_default_na=False)
        column = next((c for c in ("timestamp", "timestamp_local_sgt", "timestamp_utc") if c in meta.columns), None)
        if column and "path" in meta.columns:
            lookup = dict(zip(meta["path"].str.strip(), meta[column].str.strip()))
            stamps = frame["path"].str.strip().map(lookup).fillna("")
    rows = []
    for row, (name, label, stamp) in enumerate(zip(frame["path"], frame["label"], stamps), start=2):
        rows.append((row, str((folder / name.strip()).resolve()), label.strip(), stamp.strip()))
    return rows


def read_station_metadata(folder: Path, outcome: Outcome, runner: validation.SuiteRunner | None = None) -> None:
    """Coordinates of the stations in folder's stations.csv files into outcome.coordinates.

    Each row is one received item, accepted or quarantined by the station-metadata rules; the
    first file (in path order) that names a station wins.
    """
    for path in sorted(folder.rglob(STATION_METADATA_FILE)):
        raw = parse_station_file(path, outcome, required=STATION_METADATA_COLUMNS)
        if raw.empty:
            continue
        frame = validation.prepare_station_metadata(raw.fillna(""))
        rules = validation.station_metadata_rules()
        if runner is not None:
            runner.check("station_metadata", rules, frame.drop(columns=["_file", "_row"]))
        failed, values = validation.first_failures(rules, frame, {f"{c}_in_range": f"{c}_text" for c in STATION_METADATA_RANGES})
        for index in np.flatnonzero(failed != ""):
            outcome.reject(frame["_file"].iat[index], int(frame["_row"].iat[index]), failed[index], values[index])
        for row in frame[failed == ""].itertuples(index=False):
            station = getattr(row, STATION_ID)
            if station not in outcome.coordinates:
                outcome.coordinates[station] = {column: float(getattr(row, column)) for column in STATION_METADATA_RANGES}


def read_folder(folder: Path, source: str, image_size: int, now: pd.Timestamp, runner: validation.SuiteRunner | None = None) -> Outcome:
    """Station CSVs (with their images) and a labelled index.csv under one folder.

    Station files are parsed and validated one at a time and only their accepted rows (numbers)
    are kept, so memory follows the largest file, not the source. A (station, hour) seen in an
    earlier file of the same source is a duplicate too (caught after the per-file pass).
    """
    outcome = Outcome(source=source)
    read_station_metadata(folder, outcome, runner)
    rules = validation.station_rules(now)
    accepted = []
    for path in tqdm(station_files(folder), desc=f"read {Path(source).name or source}", unit="file", disable=None, leave=False):
        if not is_station_header(path):
            outcome.ignored_files.append(str(path))
            continue
        raw = parse_station_file(path, outcome)
        if raw.empty:
            continue
        raw = raw.fillna("")
        for column in REQUIRED_COLUMNS:
            if column not in raw.columns:
                raw[column] = ""
        accepted.append(validate_stations(raw, outcome, now, rules, runner))
        del raw
    records = drop_repeated_records([frame for frame in accepted if not frame.empty], outcome)

    labelled = read_index(folder, outcome)
    referenced = set(records["image_path"]) - {""} if not records.empty else set()
    label_of = {path: label or None for _, path, label, _ in labelled}  # empty: an unlabelled photo
    index_row = {path: row for row, path, _, _ in labelled}
    images_to_read = sorted(referenced | set(label_of))
    outcome.received += len(images_to_read)
    metas, arrays = [], {}
    for path in tqdm(images_to_read, desc=f"images {Path(source).name or source}", unit="img", disable=None, leave=False):
        label = label_of.get(path)
        if label is not None and label not in SKY_CLASSES:
            # A bad label is the index row's fault: no need to decode, quarantined under the index.
            meta = {"exists": None, "bytes": None, "width": None, "height": None, "mode": None, "decode": None}
        else:
            arrays[path], meta = inspect_image(Path(path), image_size)
        metas.append({"path": path, "label": label, **meta})
    image_frame = pd.DataFrame(metas, columns=IMAGE_META_COLUMNS)
    if runner is not None:
        runner.check("image_metadata", validation.image_rules(), image_frame)
    failed, _ = validation.first_failures(validation.image_rules(), image_frame)
    for meta, rule in zip(metas, failed):
        path = meta["path"]
        if rule == "label_in_classes":
            outcome.reject(folder / INDEX_FILE, index_row[path], rule, meta["label"])
        elif rule:
            outcome.reject(path, None, rule, image_failure(meta)[1] if rule != "image_exists" else path)
        else:
            outcome.images[path] = arrays[path]
    for _, path, label, stamp in labelled:
        if path in outcome.images:
            if label:
                outcome.labels[path] = label
            else:
                outcome.unlabelled.append(path)
            outcome.timestamps[path] = stamp
    if not records.empty:
        # The row keeps its sensors when its photo was rejected; it just has no image.
        records.loc[~records["image_path"].isin(list(outcome.images)), "image_path"] = ""
    outcome.records = records
    return outcome

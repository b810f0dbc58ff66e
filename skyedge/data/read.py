"""Reading and validating sources into accepted records + a quarantine with reasons, in chunks.

Every received item (a CSV row, an image file) gets exactly one outcome: accepted, or one row in
the quarantine naming the rule that rejected it. Rules are checked in order; the first failure wins.
An empty sensor value is not a reason to drop a row (gaps are real and handled as missing), and a
bad image never costs a row its sensors, nor the reverse.

Streaming: a station CSV is parsed CHUNK_ROWS rows at a time (`iter_station_chunks`), each chunk
validated and handed to the ingest's `Intake` (skyedge.data.spool), which keeps only what later
passes need, on disk; rejections go straight to quarantine.csv (`QuarantineFile`). One rule is a
property of a whole file (a file in the wrong unit, skyedge.data.validation), so a file longer than
one chunk is scanned once for it first (`scan_units`). Photos are decoded as the first accepted
row (or index.csv row) names them, once per path.

The whole-file helpers (`parse_station_file`, `read_station_csv`, `drop_repeated_records`,
`read_index`, `load_image`) serve `skyedge evaluate`, which scores what it is given in memory.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from skyedge.core.contract import (
    IMAGE,
    REQUIRED_COLUMNS,
    SENSOR_RANGES,
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
# Rows parsed and validated at a time: the text of a chunk and its prepared columns cost about
# 2 kB a row while it is worked on, so this bounds a station file's share of ingest's memory. A
# few years of hourly records (Beijing's 26k rows) fit in one chunk: a longer file costs a second
# read for its whole-file unit tally (`scan_units`).
CHUNK_ROWS = 40_000
# The quarantine shows the text the row had, not the parsed value, for these rules.
SHOWN_COLUMNS = {
    "timestamp_parseable": TIMESTAMP,
    "timestamp_not_future": TIMESTAMP,
    "unique_station_timestamp": TIMESTAMP,
    **{f"{c}_in_range": f"{c}_text" for c in SENSOR_RANGES},
    **{f"{c}_unit_{u}": f"{c}_text" for c, units in UNIT_BANDS.items() for u in units},
}


class QuarantineFile:
    """quarantine.csv, written row by row as rejections come (nothing is held in memory)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._handle = self.path.open("w", newline="", encoding="utf-8", errors="backslashreplace")
        self._writer = csv.writer(self._handle)
        self._writer.writerow(QUARANTINE_COLUMNS)

    def write(self, entry: dict) -> None:
        self._writer.writerow([entry[column] for column in QUARANTINE_COLUMNS])

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Outcome:
    """What one source produced: counts, the quarantine and what the in-memory readers keep.

    With a `sink` (ingest), each rejection is written to quarantine.csv and only counted here;
    without one (`skyedge evaluate`), rejections are kept in `quarantine`.
    """

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
    sink: QuarantineFile | None = None
    by_rule: dict[str, int] = field(default_factory=dict)
    details: dict = field(default_factory=dict)  # source-specific report entries (the fleet's batches)

    def reject(self, file: Path | str, row: int | None, rule: str, value: object) -> None:
        entry = {"source": self.source, "file": str(file), "row": "" if row is None else row, "rule": rule, "value": str(value)[:200]}
        self.by_rule[rule] = self.by_rule.get(rule, 0) + 1
        if self.sink is not None:
            self.sink.write(entry)
        else:
            self.quarantine.append(entry)

    @property
    def quarantined(self) -> int:
        return sum(self.by_rule.values())


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


def _text_lines(handle) -> Iterator[str]:
    """The file's lines, the byte-order mark dropped from the first."""
    first = next(handle, None)
    if first is None:
        return
    yield first.lstrip("\ufeff")
    yield from handle


def iter_station_chunks(
    path: Path, outcome: Outcome, required: tuple[str, ...] = REQUIRED_COLUMNS, chunk_rows: int | None = None, name: str | None = None
) -> Iterator[pd.DataFrame]:
    """The rows of one station CSV (or stations.csv, with its `required` columns) as text, up to
    chunk_rows at a time, with `_file` (`name`, default the path) and `_row` (line number,
    header = 1); empty cells are "".

    Parse-level rules, checked before any validation: `file_parseable` (empty or unreadable file:
    one item, row empty), `row_utf8` (a line that is not UTF-8: that row only), `row_column_count`
    (a ragged row), `missing_column:<name>` (every row of the file, under the first missing
    required column). Blank lines are not records and are not counted.
    """
    path = Path(path)
    name = str(path) if name is None else name
    chunk_rows = chunk_rows or CHUNK_ROWS
    try:
        # Undecodable bytes become surrogates, so each bad line can be found and quarantined.
        handle = path.open("r", encoding="utf-8", errors="surrogateescape", newline="")
    except OSError as error:
        outcome.received += 1
        outcome.reject(name, None, "file_parseable", error)
        return
    with handle:
        reader = csv.reader(_text_lines(handle))
        try:
            header = next(reader)
        except (StopIteration, csv.Error, OSError) as error:
            outcome.received += 1
            outcome.reject(name, None, "file_parseable", error or "empty file")
            return
        header = [column.strip() for column in header]
        if SURROGATES.search(",".join(header)):
            outcome.received += 1
            outcome.reject(name, None, "file_parseable", "header is not UTF-8")
            return
        missing = [column for column in required if column not in header]
        width = len(header)
        keep = [i for i, column in enumerate(header) if column not in header[:i]]  # a repeated column: the first
        columns = [header[i] for i in keep]
        rows: list[list[str]] = []
        numbers: list[int] = []
        line = reader.line_num
        parsed = 0
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as error:  # e.g. a NUL byte: that line only
                outcome.received += 1
                outcome.reject(name, reader.line_num, "row_column_count", error)
                continue
            start, line = line + 1, reader.line_num
            if not fields:
                continue
            outcome.received += 1
            if SURROGATES.search("".join(fields)):
                shown = ",".join(fields).encode("utf-8", errors="surrogateescape").decode("utf-8", errors="backslashreplace")
                outcome.reject(name, start, "row_utf8", shown)
            elif len(fields) != width:
                outcome.reject(name, start, "row_column_count", f"{len(fields)} fields, header has {width}")
            elif missing:
                parsed += 1
                outcome.reject(name, start, f"missing_column:{missing[0]}", missing[0])
            else:
                rows.append(fields if len(keep) == width else [fields[i] for i in keep])
                numbers.append(start)
                if len(rows) >= chunk_rows:
                    yield _text_frame(rows, numbers, columns, name)
                    rows, numbers = [], []
        if missing and not parsed:  # a header-only file is still one received item with one outcome
            outcome.received += 1
            outcome.reject(name, None, f"missing_column:{missing[0]}", missing[0])
        if rows:
            yield _text_frame(rows, numbers, columns, name)


def _text_frame(rows: list[list[str]], numbers: list[int], columns: list[str], name: str) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns, dtype=str)
    frame["_row"] = np.asarray(numbers, dtype=np.int64)
    frame["_file"] = name
    return frame


def parse_station_file(path: Path, outcome: Outcome, required: tuple[str, ...] = REQUIRED_COLUMNS) -> pd.DataFrame:
    """All rows of one CSV as text (`iter_station_chunks` in one frame: for small files)."""
    chunks = list(iter_station_chunks(path, outcome, required))
    return pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame()


def scan_units(path: Path, chunk_rows: int | None = None, name: str | None = None) -> validation.UnitTally:
    """The whole-file unit tally of a station CSV (a first, read-only pass over a long file)."""
    tally = validation.UnitTally()
    for raw in iter_station_chunks(path, Outcome(source="scan"), chunk_rows=chunk_rows, name=name):
        files = raw["_file"]
        for column in UNIT_BANDS:
            tally.add(column, validation.numeric_text(raw[column])[1], files)
    return tally


def validate_stations(
    raw: pd.DataFrame,
    outcome: Outcome,
    now: pd.Timestamp,
    rules: list | None = None,
    runner: validation.SuiteRunner | None = None,
    units: validation.UnitTally | None = None,
) -> pd.DataFrame:
    """Accepted rows of parsed station text (one or many files, or a chunk of one file with its
    file's `units` tally); the others go to the quarantine.

    Rules come from skyedge.data.validation's table (the GE station suite), first failure wins; with a
    runner, the same rows are also validated by Great Expectations for the Data Docs. Returns
    station_id, hour, timestamp (UTC), the sensors, image_path (resolved against the CSV's folder,
    or the text as given for a URL), _file, _row and _text (the timestamp as the row wrote it).
    """
    if raw.empty:
        return pd.DataFrame()
    raw = raw.fillna("")
    for column in REQUIRED_COLUMNS:
        if column not in raw.columns:
            raw[column] = ""
    rules = rules if rules is not None else validation.station_rules(now)
    prepared = validation.prepare_stations(raw, now, units)
    if runner is not None:
        runner.check("station_records", rules, prepared)
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
    image_text = raw[IMAGE].str.strip().to_numpy() if IMAGE in raw.columns else np.full(len(raw), "")
    accepted["image_path"] = [_image_path(file, name) if name and ok else "" for file, name, ok in zip(raw["_file"], image_text, keep)]
    accepted["_file"] = prepared["_file"]
    accepted["_row"] = prepared["_row"]
    accepted["_text"] = prepared[TIMESTAMP]  # the row's own timestamp text, what the quarantine shows
    accepted = accepted[keep].reset_index(drop=True)
    accepted["hour"] = accepted["hour"].astype(np.int64)
    return accepted


def _image_path(file: str, name: str) -> str:
    """A row's photo: a URL as it is (fleet batches name their objects), a path relative to its CSV."""
    if "://" in name:
        return name
    return str((Path(file).parent / name).resolve())


def drop_repeated_records(frames: list[pd.DataFrame], outcome: Outcome) -> pd.DataFrame:
    """Accepted rows of several files as one frame; a (station, hour) already seen in an earlier
    file is a duplicate too (`unique_station_timestamp`, the first one is kept)."""
    records = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if records.empty:
        return records
    repeated = records.duplicated([STATION_ID, "hour"], keep="first")
    for file, row, stamp in records.loc[repeated, ["_file", "_row", "_text"]].itertuples(index=False):
        outcome.reject(file, int(row), "unique_station_timestamp", stamp)
    return records[~repeated].reset_index(drop=True)


def read_station_csv(path: Path, outcome: Outcome, now: pd.Timestamp) -> pd.DataFrame:
    """Validated rows of one station CSV; rejected rows go to the quarantine."""
    return validate_stations(parse_station_file(Path(path), outcome), outcome, now)


def read_station_file(
    path: Path,
    outcome: Outcome,
    now: pd.Timestamp,
    rules: list,
    runner: validation.SuiteRunner | None = None,
    chunk_rows: int | None = None,
    name: str | None = None,
) -> Iterator[pd.DataFrame]:
    """Validated rows of one station CSV, chunk by chunk; a file of more than one chunk is first
    scanned for its whole-file unit tally."""
    chunks = iter_station_chunks(path, outcome, chunk_rows=chunk_rows, name=name)
    first = next(chunks, None)
    if first is None:
        return
    second = next(chunks, None)
    units = None if second is None else scan_units(path, chunk_rows, name)
    for raw in itertools.chain([first], [] if second is None else [second], chunks):
        yield validate_stations(raw, outcome, now, rules, runner, units)


# --- photos ------------------------------------------------------------------------------------

EMPTY_META = {"exists": None, "bytes": None, "width": None, "height": None, "mode": None, "decode": None}


def inspect_image(path: Path, image_size: int) -> tuple[np.ndarray | None, dict]:
    """Decode one photo; return the RGB array (or None) and its metadata row for the image suite."""
    meta = {**EMPTY_META, "exists": path.exists()}
    if not meta["exists"]:
        return None, meta
    return inspect_image_bytes(path, path.stat().st_size, image_size, meta)


def inspect_image_bytes(source: Path | bytes, size: int, image_size: int, meta: dict | None = None) -> tuple[np.ndarray | None, dict]:
    """Decode a photo from a file or from bytes (fleet photos fetched from the store)."""
    meta = {**EMPTY_META, "exists": True} if meta is None else meta
    meta["bytes"] = size
    if size == 0:
        return None, meta
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
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


def image_detail(rule: str, meta: dict) -> str:
    """What the quarantine shows for a photo rejected by one image rule."""
    details = {
        "image_exists": lambda: str(meta.get("path", "")),
        "image_not_empty": lambda: "0 bytes",
        "image_size_usable": lambda: f"{meta['width']}x{meta['height']}",
        "image_readable": lambda: meta.get("error", "not an image"),
        "image_not_truncated": lambda: meta.get("error", "truncated"),
        "image_mode_usable": lambda: f"mode {meta['mode']}",
    }
    return details.get(rule, lambda: str(meta.get(rule, "")))()


def image_failure(meta: dict, rules: list | None = None) -> tuple[str, str]:
    """(rule, detail) for one image's metadata by the image suite's table; ("", "") when usable."""
    rules = rules if rules is not None else validation.image_rules()
    frame = pd.DataFrame([{**meta}]).reindex(columns=sorted({e.column for r in rules for e in r.expectations} | set(meta)))
    failed, _ = validation.first_failures(rules, frame)
    if not failed[0]:
        return "", ""
    return failed[0], image_detail(failed[0], meta)


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


@dataclass(frozen=True)
class IndexRow:
    """One labelled-photo index row: where it is, its class ("" when nobody wrote it down), its
    capture time, and its place in the source's index (photo samples keep that order)."""

    file: str
    row: int
    label: str
    timestamp: str
    position: int


# A photo loader: the pixels (or None) and metadata of one photo, or a rule that rejects it
# before the image suite (a fleet photo whose hash does not match, an object never downloaded)
# as (rule, value, file shown in the quarantine).
Loader = Callable[[str], tuple[np.ndarray | None, dict, tuple[str, str, str] | None]]


def file_loader(image_size: int) -> Loader:
    def load(path: str):
        array, meta = inspect_image(Path(path), image_size)
        return array, meta, None

    return load


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


def index_rows(folder: Path, outcome: Outcome) -> dict[str, IndexRow]:
    """A folder's index.csv by resolved photo path (a path listed twice: its last row)."""
    file = str(folder / INDEX_FILE)
    rows: dict[str, IndexRow] = {}
    for position, (row, path, label, stamp) in enumerate(read_index(folder, outcome)):
        rows[path] = IndexRow(file, row, label, stamp, rows[path].position if path in rows else position)
    return rows


def read_station_metadata(folder: Path, outcome: Outcome, runner: validation.SuiteRunner | None = None) -> None:
    """Coordinates of the stations in folder's stations.csv files into outcome.coordinates.

    Each row is one received item, accepted or quarantined by the station-metadata rules; the
    first file (in path order) that names a station wins.
    """
    for path in sorted(folder.rglob(STATION_METADATA_FILE)):
        read_station_metadata_file(path, outcome, runner)


def read_station_metadata_file(path: Path, outcome: Outcome, runner: validation.SuiteRunner | None = None, name: str | None = None) -> None:
    rules = validation.station_metadata_rules()
    for raw in iter_station_chunks(path, outcome, required=STATION_METADATA_COLUMNS, name=name):
        frame = validation.prepare_station_metadata(raw.fillna(""))
        if runner is not None:
            runner.check("station_metadata", rules, frame)
        failed, values = validation.first_failures(rules, frame, {f"{c}_in_range": f"{c}_text" for c in STATION_METADATA_RANGES})
        for index in np.flatnonzero(failed != ""):
            outcome.reject(frame["_file"].iat[index], int(frame["_row"].iat[index]), failed[index], values[index])
        for row in frame[failed == ""].itertuples(index=False):
            station = getattr(row, STATION_ID)
            if station not in outcome.coordinates:
                outcome.coordinates[station] = {column: float(getattr(row, column)) for column in STATION_METADATA_RANGES}


def read_folder(folder: Path, outcome: Outcome, intake, now: pd.Timestamp, runner: validation.SuiteRunner | None = None, loader: Loader | None = None) -> Outcome:
    """Station CSVs (with their images) and a labelled index.csv under one folder, into the
    ingest's intake (skyedge.data.spool.Intake), chunk by chunk.

    index.csv is read first, so a photo that a station row names gets its label when the row
    brings it in; the photos only index.csv names come after the station files. Memory follows
    one chunk, whatever the folder holds.
    """
    read_station_metadata(folder, outcome, runner)
    loader = loader or file_loader(intake.image_size)
    index = index_rows(folder, outcome)
    rules = validation.station_rules(now)
    name = Path(outcome.source).name or outcome.source
    for path in tqdm(station_files(folder), desc=f"read {name}", unit="file", disable=None, leave=False):
        if not is_station_header(path):
            outcome.ignored_files.append(str(path))
            continue
        for accepted in read_station_file(path, outcome, now, rules, runner):
            intake.add_records(accepted, outcome, loader, index)
    intake.add_index_photos(index, outcome, loader)
    return outcome

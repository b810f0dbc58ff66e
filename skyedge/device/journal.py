"""The station journal: every reading, the forecast made from it, and its score once the hour came.

One SQLite file in WAL mode, `<state>/journal.sqlite`, and the photos beside it in
`<state>/photos/<seq><ext>`. Stdlib sqlite3: a station installs nothing for it, a reader never
blocks the writer, and a transaction survives SIGKILL and (synchronous=FULL) a power cut.

  readings   one row per reading, in arrival order. `seq` (1, 2, 3, ...) is the upload's sequence
             number: assigned inside the insert's transaction, never reused, never skipped, and
             rows are never deleted (only their photos may be), so the uplink can promise every
             reading exactly once (skyedge.device.uplink). The contract columns are kept as
             received, as text: a value that breaks a rule is kept (the fleet ingest quarantines it
             by the same rule) and flagged here. `hour` is the reading's epoch hour, NULL when its
             timestamp breaks a rule or repeats an earlier reading's hour (ingest keeps the first),
             so every hour has at most one reading the forecasts and scores use. `temp_obs` and
             `rain_obs` are the values a forecast is scored against (NULL: missing or flagged).
  flags      (seq, field, rule, value): each rule a reading broke, named as ingest names it
             (skyedge.core.readings, skyedge.data.validation): `temperature_c_unit_kelvin`,
             `image_readable`, `unique_station_timestamp`, `gap_in_window`, ...
  forecasts  (seq, h): what the active model said at the reading's hour for hour + h, its
             version, and the persistence references of that hour (rain now, temperature now).
  shadow_forecasts (seq, h): the same for the previous release (the agent's `previous` slot,
             kept for rollback), run beside the active one on the same window and photo. A
             rollout compares the two on the same station, hour and reading
             (skyedge.evaluation.rollout): the station's weather cancels out, only the release
             differs. Never used as the station's forecast.
  uplink     one row: the upload cursor and the batch in flight (see skyedge.device.uplink).

The forecast is `skyedge device predict`'s own (skyedge.device.predict.forecast), fed the window
of journal rows as the station CSV it reads: the same ingest rules, the same preprocessing from
the active manifest, so `skyedge device predict --sensors` on those rows says what the journal
recorded.

Scores are not stored: a forecast is scored when the reading of its target hour is in the
journal (a join on hour + h), so a late reading scores it late and nothing is kept twice. A pair
counts when the observation and the persistence reference both exist, so the model and
persistence are always judged on the same hours.

Photos of readings not yet in the store count against a byte budget. Past it the oldest go first
(the row stays, with `photo_state` 'dropped'); the count is in the status and each batch names the
readings whose photo it lost (`dropped_photos`). Nothing disappears without a trace.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import numpy as np

from skyedge.core import batches, contract, drift, features, inference, readings
from skyedge.core.files import atomic_write
from skyedge.device import predict
from skyedge.release import manifest as mf

DB_FILE = "journal.sqlite"
PHOTO_DIR = "photos"
SCHEMA_VERSION = 1
DRIFT_READINGS = 168  # a week of hourly readings: the station's recent inputs for the drift tests
RECENT_HOURS = 72  # matured forecasts reported one by one (status.json field.recent): what rollouts pair by hour
RECENT_COLUMNS = ("hour", "version", "h", "rain_prob", "temp_c", "rain_now", "temp_now", "rain_obs", "temp_obs", "shadow")
NO_MODEL = "no-active-model"
WINDOW_FIELD = "window"  # the flags' field for a rule about the window, not one column
# Ingest's photo rules (skyedge.data.validation's image suite), for a station without pandas.
MIN_PHOTO_SIDE = 16
USABLE_PHOTO_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
_OFFSET = re.compile(r"(?:Z|[+-]\d{2}:?\d{2})$")  # ingest's timestamp_has_offset
_SENSORS = contract.SENSOR_COLUMNS



def _forecast_table(name: str) -> str:
    """The active release's forecasts and the previous release's shadow forecasts: one shape."""
    return f"""CREATE TABLE IF NOT EXISTS {name} (
    seq INTEGER NOT NULL REFERENCES readings (seq),
    hour INTEGER NOT NULL,
    version INTEGER NOT NULL,
    h INTEGER NOT NULL,
    rain_prob REAL NOT NULL,
    temp_c REAL NOT NULL,
    rain_now REAL,
    temp_now REAL,
    PRIMARY KEY (seq, h)
);"""


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS readings (
    seq INTEGER PRIMARY KEY,
    received_at TEXT NOT NULL,
    station_id TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    {", ".join(f"{name} TEXT NOT NULL" for name in _SENSORS)},
    hour INTEGER UNIQUE,
    temp_obs REAL,
    rain_obs REAL,
    photo_file TEXT,
    photo_sha256 TEXT,
    photo_bytes INTEGER,
    photo_state TEXT NOT NULL CHECK (photo_state IN ('none', 'held', 'uploaded', 'dropped')),
    brightness REAL,
    contrast REAL,
    forecast_skipped TEXT,
    source TEXT UNIQUE
);
CREATE TABLE IF NOT EXISTS flags (
    seq INTEGER NOT NULL REFERENCES readings (seq),
    field TEXT NOT NULL,
    rule TEXT NOT NULL,
    value TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS flags_seq ON flags (seq);
{_forecast_table("forecasts")}
{_forecast_table("shadow_forecasts")}
CREATE TABLE IF NOT EXISTS uplink (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    uploaded_through INTEGER NOT NULL,
    batch_first INTEGER,
    batch_last INTEGER,
    last_attempt TEXT,
    last_success TEXT,
    reason TEXT,
    last_error TEXT,
    failures INTEGER NOT NULL
);
INSERT OR IGNORE INTO uplink (id, uploaded_through, failures) VALUES (1, 0, 0);
"""


@dataclass(frozen=True)
class ObservationResult:
    """What `observe` did with one reading."""

    seq: int
    hour: int | None  # epoch hour; None when the reading cannot be placed in time
    flags: list[dict[str, str]]  # {field, rule, value} of every rule it broke
    forecast: dict[str, Any] | None  # skyedge.device.predict.forecast's result
    forecast_skipped: str | None  # why there is no forecast (no active model, a timestamp rule, ...)
    dropped_photos: list[int]  # readings whose photo the budget gave up just now


@dataclass(frozen=True)
class HeldPhoto:
    """A photo in the journal's buffer, waiting for upload."""

    seq: int
    path: Path
    suffix: str


@dataclass(frozen=True)
class BatchContents:
    """The readings seq first..last as the uplink sends them."""

    rows: list[dict[str, Any]]  # {seq, contract columns; image: the photo's key relative to the batch, or ""}
    photos: list[dict[str, Any]]  # {seq, suffix, sha256, bytes} of photos already in the store
    dropped_photos: list[int]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- the ingest rules for one reading ------------------------------------------------------------


def check_timestamp(text: str) -> tuple[int | None, str]:
    """(epoch hour, "") of a contract timestamp, or (None, the first ingest rule it breaks)."""
    text = text.strip()
    if not text:
        return None, "timestamp_present"
    if not _OFFSET.search(text):
        return None, "timestamp_has_offset"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None, "timestamp_parseable"
    return int(moment.timestamp() // 3600), ""


def inspect_photo(path: Path) -> tuple[np.ndarray | None, str, str]:
    """(RGB pixels, "", "") of a usable photo, else (None, the ingest rule it breaks, detail)."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        return None, "image_exists", str(path)
    if path.stat().st_size == 0:
        return None, "image_not_empty", "0 bytes"
    try:
        with Image.open(path) as image:
            if image.mode not in USABLE_PHOTO_MODES:
                return None, "image_mode_usable", f"mode {image.mode}"
            if min(image.size) < MIN_PHOTO_SIDE:
                return None, "image_size_usable", f"{image.size[0]}x{image.size[1]}"
            image.load()
            return np.asarray(image.convert("RGB"), dtype=np.uint8), "", ""
    except UnidentifiedImageError as exc:
        return None, "image_readable", str(exc)
    except (OSError, ValueError, SyntaxError) as exc:
        # Pillow says "image file is truncated" / "broken data stream" for cut-off files.
        text = str(exc)
        return None, ("image_not_truncated" if "truncat" in text or "broken" in text else "image_readable"), text


def contract_text(row: Mapping[str, Any], station_id: str) -> dict[str, str]:
    """The reading's contract columns as CSV text (None is a gap: ""); ValueError naming a
    missing column, or a station other than the journal's (its batch would be refused whole)."""
    missing = [name for name in contract.REQUIRED_COLUMNS if name not in row]
    if missing:
        raise ValueError(f"reading {dict(row)}: missing column(s) {', '.join(missing)} (data contract: {', '.join(contract.REQUIRED_COLUMNS)})")
    text = {name: "" if row[name] is None else str(row[name]) for name in contract.REQUIRED_COLUMNS}
    if text[contract.STATION_ID] != station_id:
        raise ValueError(f"reading at {text[contract.TIMESTAMP]!r} names station {text[contract.STATION_ID]!r}; this journal records station {station_id!r}")
    return text


def sensor_flags(text: Mapping[str, str]) -> tuple[dict[str, float], list[dict[str, str]]]:
    """Checked sensor values (NaN: a gap or a broken rule) and the flags of the rules broken."""
    values, flags = {}, []
    for name in _SENSORS:
        values[name], rule = readings.check(name, text[name])
        if rule:
            flags.append({"field": name, "rule": rule, "value": text[name]})
    return values, flags


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _rain(precip_mm: float) -> float | None:
    return float(precip_mm > contract.RAIN_THRESHOLD_MM) if math.isfinite(precip_mm) else None


# --- scores ---------------------------------------------------------------------------------------


def skill(score: float, reference: float) -> float | None:
    """1 - score / reference; None where the reference is perfect (skill is undefined there)."""
    return 1.0 - score / reference if reference > 0 else None


def rain_scores(prob: np.ndarray, rain_now: np.ndarray, observed: np.ndarray) -> dict[str, Any]:
    """Brier score of the model and of persistence (rain now) on the same hours, and the skill."""
    if prob.size == 0:
        return {"n": 0, "brier": None, "brier_persistence": None, "brier_skill": None}
    brier = float(np.mean((prob - observed) ** 2))
    persistence = float(np.mean((rain_now - observed) ** 2))
    return {"n": int(prob.size), "brier": brier, "brier_persistence": persistence, "brier_skill": skill(brier, persistence)}


def temp_scores(temp: np.ndarray, temp_now: np.ndarray, observed: np.ndarray) -> dict[str, Any]:
    """RMSE of the model and of persistence (temperature now) on the same hours, and the skill."""
    if temp.size == 0:
        return {"n": 0, "rmse": None, "rmse_persistence": None, "skill": None}
    rmse = float(np.sqrt(np.mean((temp - observed) ** 2)))
    persistence = float(np.sqrt(np.mean((temp_now - observed) ** 2)))
    return {"n": int(temp.size), "rmse": rmse, "rmse_persistence": persistence, "skill": skill(rmse, persistence)}


def field_section(pairs: np.ndarray, forecasts_per_version: Mapping[int, int]) -> dict[str, Any]:
    """status.json's `field`: scores per model version and horizon.

    pairs: [P, 8] float rows (version, h, rain_prob, temp_c, rain_now, temp_now, rain_obs,
    temp_obs) of every matured forecast, NaN where a value is missing.
    """
    versions = []
    for version, count in sorted(forecasts_per_version.items()):
        horizons = []
        for h in contract.HORIZONS:
            mine = pairs[(pairs[:, 0] == version) & (pairs[:, 1] == h)]
            rain = mine[np.isfinite(mine[:, 4]) & np.isfinite(mine[:, 6])]
            temp = mine[np.isfinite(mine[:, 5]) & np.isfinite(mine[:, 7])]
            horizons.append({"h": h, "rain": rain_scores(rain[:, 2], rain[:, 4], rain[:, 6]), "temp": temp_scores(temp[:, 3], temp[:, 5], temp[:, 7])})
        versions.append({"version": version, "forecasts": count, "horizons": horizons})
    return {
        "definitions": {
            "brier_skill": "1 - brier / brier_persistence (persistence: rain now, 0/1)",
            "temp.skill": "1 - rmse / rmse_persistence (persistence: temperature now)",
            "n": "matured forecasts whose observation and persistence reference both exist",
        },
        "versions": versions,
    }


# --- the journal ----------------------------------------------------------------------------------


class Journal:
    """One station's journal in its agent's state directory (module doc); `Journal.open` makes one."""

    def __init__(self, state_dir: Path, connection: sqlite3.Connection, station_id: str, photo_budget_bytes: int, latitude: float | None, longitude: float | None) -> None:
        self.dir = Path(state_dir)
        self.photos = self.dir / PHOTO_DIR
        self.db = connection
        self.station_id = station_id
        self.photo_budget_bytes = photo_budget_bytes
        self.latitude = latitude
        self.longitude = longitude

    @classmethod
    def open(cls, state_dir: Path, station_id: str, photo_budget_bytes: int, latitude: float | None = None, longitude: float | None = None) -> Journal:
        """Open (or create) `<state_dir>/journal.sqlite`. Coordinates give the forecast its local
        solar time; without them it runs on UTC and says so, as `skyedge device predict` does."""
        if photo_budget_bytes < 0:
            raise ValueError(f"photo budget {photo_budget_bytes} bytes: must be >= 0")
        state_dir = Path(state_dir)
        (state_dir / PHOTO_DIR).mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(state_dir / DB_FILE, timeout=30, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")  # a committed cursor survives a power cut
        found = connection.execute("PRAGMA user_version").fetchone()[0]
        if found > SCHEMA_VERSION:
            connection.close()
            raise ValueError(f"{state_dir / DB_FILE}: journal schema {found} is newer than this agent's ({SCHEMA_VERSION})")
        journal = cls(state_dir, connection, station_id, photo_budget_bytes, latitude, longitude)
        with journal._write():
            # One statement at a time: executescript would commit the transaction first.
            for statement in filter(str.strip, _SCHEMA.split(";")):
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            journal._remove_stray_photos()
        return journal

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front (BEGIN IMMEDIATE): readers go on, writers queue."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _remove_stray_photos(self) -> None:
        """Photo files no held reading names: written by an insert a crash rolled back, or dropped
        / uploaded just before a crash removed the file. Runs inside a write transaction, so no
        insert is half-way."""
        held = {name for (name,) in self.db.execute("SELECT photo_file FROM readings WHERE photo_state = 'held'")}
        for path in self.photos.iterdir():
            if path.name not in held:
                path.unlink(missing_ok=True)

    # --- recording -------------------------------------------------------------------------------

    def recorded(self, source: str) -> bool:
        """Whether the reading from `source` (the logger's file and row) is in the journal already."""
        return self.db.execute("SELECT 1 FROM readings WHERE source = ?", (source,)).fetchone() is not None

    def observe(self, row: Mapping[str, Any], photo: Path | None = None, source: str | None = None) -> ObservationResult:
        """Record one reading (+ its photo), forecast from it with the active model, keep the
        photo budget. The contract row maps station_id, timestamp and the six sensor columns to
        values (None or "" is a gap); `photo` is the sky photo taken with it, copied in. `source`
        names where the reading came from (the logger's file and row): recorded with it in one
        transaction, so a station killed before it moved the file on does not record it twice."""
        text = contract_text(row, self.station_id)
        values, flags = sensor_flags(text)
        hour, rule = check_timestamp(text[contract.TIMESTAMP])
        if rule:
            flags.append({"field": contract.TIMESTAMP, "rule": rule, "value": text[contract.TIMESTAMP]})
        pixels, photo_rule = None, ""
        if photo is not None:
            pixels, photo_rule, detail = inspect_photo(Path(photo))
            if photo_rule:
                flags.append({"field": contract.IMAGE, "rule": photo_rule, "value": detail})
        # An unreadable photo is kept and sent (the fleet ingest quarantines it by the same rule);
        # only one that is not there, or empty, leaves nothing to keep.
        kept_photo = photo is not None and photo_rule not in ("image_exists", "image_not_empty")
        brightness, contrast = drift.photo_features(pixels) if pixels is not None else (None, None)

        with self._write() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM readings").fetchone()[0]
            if hour is not None and db.execute("SELECT 1 FROM readings WHERE hour = ?", (hour,)).fetchone():
                flags.append({"field": contract.TIMESTAMP, "rule": "unique_station_timestamp", "value": text[contract.TIMESTAMP]})
                hour = None  # ingest keeps the first reading of an hour; this one is kept, unused
            photo_file, sha, size = None, None, None
            if kept_photo:
                data = Path(photo).read_bytes()
                photo_file, sha, size = f"{seq:010d}{Path(photo).suffix.lower() or '.bin'}", hashlib.sha256(data).hexdigest(), len(data)
                atomic_write(self.photos / photo_file, lambda handle: handle.write(data))
            record = {
                "seq": seq,
                "received_at": _now(),
                **text,
                "hour": hour,
                "temp_obs": _finite(values["temperature_c"]),
                "rain_obs": _rain(values["precip_mm"]),
                "photo_file": photo_file,
                "photo_sha256": sha,
                "photo_bytes": size,
                "photo_state": "held" if photo_file else "none",
                "brightness": brightness,
                "contrast": contrast,
                "source": source,
            }
            db.execute(f"INSERT INTO readings ({', '.join(record)}) VALUES ({', '.join('?' * len(record))})", tuple(record.values()))
            db.executemany("INSERT INTO flags (seq, field, rule, value) VALUES (?, ?, ?, ?)", [(seq, f["field"], f["rule"], f["value"]) for f in flags])

        shadow = None
        if hour is None:  # a timestamp rule, or a repeated hour: no place in time to forecast from
            forecast, skipped = None, rule or "unique_station_timestamp"
        else:
            used_photo = Path(photo) if pixels is not None else None
            forecast, skipped = self._forecast(hour, used_photo)
            shadow = self._shadow_forecast(hour, used_photo, forecast)
        with self._write() as db:
            if forecast is not None:
                self._record_forecast(db, seq, hour, forecast, values, flags)
                if shadow is not None:
                    self._record_forecast(db, seq, hour, shadow, values, [], table="shadow_forecasts")
            else:
                db.execute("UPDATE readings SET forecast_skipped = ? WHERE seq = ?", (skipped, seq))
        return ObservationResult(seq, hour, flags, forecast, skipped, self.enforce_photo_budget())

    def _forecast(self, hour: int, photo: Path | None, slot: Path | None = None) -> tuple[dict[str, Any] | None, str | None]:
        """`skyedge device predict` on the window of readings ending at `hour` with the active model
        (or the one in `slot`), or why not."""
        try:
            slot = slot or predict.active_slot(self.dir)
        except predict.PredictError:
            return None, NO_MODEL
        window = int(json.loads((slot / mf.MANIFEST_FILE).read_text())["preprocessing"]["sensors"]["window_hours"])
        rows = self.db.execute(f"SELECT station_id, timestamp, {', '.join(_SENSORS)} FROM readings WHERE hour BETWEEN ? AND ? ORDER BY hour", (hour - window + 1, hour)).fetchall()
        with tempfile.TemporaryDirectory(prefix="skyedge-window-") as tmp:
            sensors_csv = Path(tmp) / "window.csv"
            with open(sensors_csv, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(contract.REQUIRED_COLUMNS)
                writer.writerows(rows)
            try:
                return predict.forecast(self.dir, sensors_csv, photo, station=self.station_id, latitude=self.latitude, longitude=self.longitude, slot=slot), None
            except (predict.PredictError, inference.ModelFileError, OSError) as exc:
                return None, f"forecast-failed: {exc}"

    def _shadow_forecast(self, hour: int, photo: Path | None, active: dict[str, Any] | None) -> dict[str, Any] | None:
        """The previous release's forecast from the same window and photo (module doc), when the
        agent keeps one that differs from the active release; None otherwise or if it fails (a
        shadow forecast is evidence for rollouts, never the station's forecast)."""
        previous = predict.previous_slot(self.dir)
        if active is None or previous is None:
            return None
        shadow, _ = self._forecast(hour, photo, previous)
        if shadow is None or int(shadow["model"]["version"]) == int(active["model"]["version"]):
            return None
        return shadow

    def _record_forecast(
        self, db: sqlite3.Connection, seq: int, hour: int, forecast: dict[str, Any], values: dict[str, float], flags: list[dict[str, str]], table: str = "forecasts"
    ) -> None:
        version = int(forecast["model"]["version"])
        temp_now, rain_now = _finite(values["temperature_c"]), _rain(values["precip_mm"])
        db.executemany(
            f"INSERT INTO {table} (seq, hour, version, h, rain_prob, temp_c, rain_now, temp_now) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(seq, hour, version, row["h"], row["rain_prob"], row["temp_c"], rain_now, temp_now) for row in forecast["forecast"]],
        )
        if forecast["window_rule"] and table == "forecasts":
            gap = {"field": WINDOW_FIELD, "rule": forecast["window_rule"], "value": f"{forecast['window_missing_hours']} of {forecast['window_hours']} hours without a reading"}
            flags.append(gap)
            db.execute("INSERT INTO flags (seq, field, rule, value) VALUES (?, ?, ?, ?)", (seq, gap["field"], gap["rule"], gap["value"]))

    def enforce_photo_budget(self) -> list[int]:
        """Drop the oldest held photos until the held bytes fit the budget; the dropped seqs."""
        with self._write() as db:
            held = db.execute("SELECT seq, photo_file, photo_bytes FROM readings WHERE photo_state = 'held' ORDER BY seq").fetchall()
            excess = sum(size for _, _, size in held) - self.photo_budget_bytes
            dropped = []
            for seq, name, size in held:
                if excess <= 0:
                    break
                dropped.append((seq, name))
                excess -= size
            db.executemany("UPDATE readings SET photo_state = 'dropped' WHERE seq = ?", [(seq,) for seq, _ in dropped])
        for _, name in dropped:  # after the commit: a crash in between leaves a stray file, removed at open
            (self.photos / name).unlink(missing_ok=True)
        return [seq for seq, _ in dropped]

    # --- reading back -----------------------------------------------------------------------------

    def flags(self, seq: int) -> list[dict[str, str]]:
        return [{"field": f, "rule": r, "value": v} for f, r, v in self.db.execute("SELECT field, rule, value FROM flags WHERE seq = ? ORDER BY rowid", (seq,))]

    def forecasts(self, seq: int) -> list[dict[str, Any]]:
        columns = ("h", "version", "rain_prob", "temp_c", "rain_now", "temp_now")
        return [dict(zip(columns, row)) for row in self.db.execute(f"SELECT {', '.join(columns)} FROM forecasts WHERE seq = ? ORDER BY h", (seq,))]

    def field_skill(self) -> dict[str, Any]:
        """status.json's `field` section: every matured forecast scored, per version and horizon."""
        pairs = self.db.execute(
            "SELECT f.version, f.h, f.rain_prob, f.temp_c, f.rain_now, f.temp_now, o.rain_obs, o.temp_obs FROM forecasts f JOIN readings o ON o.hour = f.hour + f.h"
        ).fetchall()
        counts = dict(self.db.execute("SELECT version, COUNT(DISTINCT seq) FROM forecasts GROUP BY version").fetchall())
        return field_section(np.array(pairs, dtype=np.float64).reshape(-1, 8), counts)

    def recent_pairs(self, hours: int = RECENT_HOURS) -> dict[str, Any]:
        """Every matured forecast issued in the last `hours` hours of readings, one row each, the
        shadow forecasts of the previous release beside them (shadow = 1), for the rollout's
        comparison (skyedge.evaluation.rollout)."""
        newest = self.db.execute("SELECT MAX(hour) FROM readings").fetchone()[0]
        matured = (
            "SELECT f.hour, f.version, f.h, f.rain_prob, f.temp_c, f.rain_now, f.temp_now, o.rain_obs, o.temp_obs, {shadow}"
            " FROM {table} f JOIN readings o ON o.hour = f.hour + f.h WHERE f.hour > :since"
        )
        rows = self.db.execute(
            f"{matured.format(table='forecasts', shadow=0)} UNION ALL {matured.format(table='shadow_forecasts', shadow=1)} ORDER BY 1, 10, 3",
            {"since": (newest or 0) - hours},
        ).fetchall()
        return {"hours": hours, "columns": list(RECENT_COLUMNS), "rows": [list(row) for row in rows]}

    def drift(self, reference: dict | None, window_readings: int = DRIFT_READINGS) -> dict[str, Any]:
        """status.json's `drift` section: the last `window_readings` readings against the training
        statistics of the active manifest (skyedge.core.drift), or why there is no comparison."""
        if reference is None:
            return {"reference": None, "reason": f"the active manifest carries no {drift.MANIFEST_KEY}"}
        rows = self.db.execute(f"SELECT seq, {', '.join(_SENSORS)}, brightness, contrast FROM readings ORDER BY seq DESC LIMIT ?", (window_readings,)).fetchall()
        checked = [sensor_flags(dict(zip(_SENSORS, row[1:-2])))[0] for row in rows]
        columns = {name: np.array([values[name] for values in checked], dtype=np.float64) for name in _SENSORS}
        photo_values = np.array([row[-2:] for row in rows if row[-2] is not None], dtype=np.float64)
        seqs = [row[0] for row in rows]
        return {
            "reference": drift.MANIFEST_KEY,
            "window_readings": window_readings,
            "seq_range": [min(seqs), max(seqs)] if seqs else None,
            **drift.compare(reference, features.raw_features(columns), photo_values),
        }

    def uplink_status(self) -> dict[str, Any]:
        """status.json's `uplink` section: what is waiting, what the buffer holds and gave up, and
        how the last upload went."""
        total = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM readings").fetchone()[0]
        held_count, held_bytes = self.db.execute("SELECT COUNT(*), COALESCE(SUM(photo_bytes), 0) FROM readings WHERE photo_state = 'held'").fetchone()
        dropped = self.db.execute("SELECT COUNT(*) FROM readings WHERE photo_state = 'dropped'").fetchone()[0]
        through, first, last, attempt, success, reason, error, failures = self.db.execute(
            "SELECT uploaded_through, batch_first, batch_last, last_attempt, last_success, reason, last_error, failures FROM uplink"
        ).fetchone()
        return {
            "readings": total,
            "uploaded_through": through,
            "pending": total - through,
            "batch_in_flight": [first, last] if first is not None else None,
            "photos_held": held_count,
            "photo_bytes_held": held_bytes,
            "photo_budget_bytes": self.photo_budget_bytes,
            "dropped_photos": dropped,
            "last_attempt": attempt,
            "last_success": success,
            "reason": reason,
            "last_error": error,
            "failures": failures,
        }

    # --- the uplink's side (skyedge.device.uplink) --------------------------------------------------

    def plan_batch(self, max_batch: int) -> tuple[int, int] | None:
        """(first, last) seq of the batch to upload: the one in flight if a run was cut short (its
        key must not change, or a reading would reach the store twice under two keys), else the
        next up to `max_batch` readings after the cursor, persisted before any PUT. None: all sent."""
        if max_batch < 1:
            raise ValueError(f"max_batch {max_batch}: a batch holds at least one reading")
        with self._write() as db:
            through, first, last = db.execute("SELECT uploaded_through, batch_first, batch_last FROM uplink").fetchone()
            if first is not None:
                return first, last
            newest = db.execute("SELECT COALESCE(MAX(seq), 0) FROM readings").fetchone()[0]
            if newest <= through:
                return None
            first, last = through + 1, min(newest, through + max_batch)
            db.execute("UPDATE uplink SET batch_first = ?, batch_last = ?", (first, last))
            return first, last

    def photos_to_upload(self, first: int, last: int) -> list[HeldPhoto]:
        rows = self.db.execute("SELECT seq, photo_file FROM readings WHERE seq BETWEEN ? AND ? AND photo_state = 'held' ORDER BY seq", (first, last))
        return [HeldPhoto(seq, self.photos / name, Path(name).suffix) for seq, name in rows]

    def photo_uploaded(self, seq: int) -> None:
        """The photo is in the store: it leaves the buffer (unless the budget dropped it meanwhile)."""
        with self._write() as db:
            name = db.execute("SELECT photo_file FROM readings WHERE seq = ? AND photo_state = 'held'", (seq,)).fetchone()
            db.execute("UPDATE readings SET photo_state = 'uploaded' WHERE seq = ? AND photo_state = 'held'", (seq,))
        if name:
            (self.photos / name[0]).unlink(missing_ok=True)

    def photo_lost(self, seq: int) -> None:
        """A held photo whose file is gone (disk fault, someone's cleanup): counted as dropped."""
        with self._write() as db:
            db.execute("UPDATE readings SET photo_state = 'dropped' WHERE seq = ? AND photo_state = 'held'", (seq,))

    def batch_contents(self, first: int, last: int) -> BatchContents:
        rows, photos, dropped = [], [], []
        query = f"SELECT seq, station_id, timestamp, {', '.join(_SENSORS)}, photo_file, photo_sha256, photo_bytes, photo_state FROM readings WHERE seq BETWEEN ? AND ? ORDER BY seq"
        for seq, station_id, timestamp, *rest in self.db.execute(query, (first, last)):
            sensors, (name, sha, size, state) = rest[: len(_SENSORS)], rest[len(_SENSORS) :]
            if state == "held":
                raise ValueError(f"reading {seq}: its photo is not in the store yet; upload photos before the batch")
            suffix = Path(name).suffix if state == "uploaded" else ""
            image = batches.photo_name(seq, suffix) if state == "uploaded" else ""
            rows.append({"seq": seq, contract.STATION_ID: station_id, contract.TIMESTAMP: timestamp, **dict(zip(_SENSORS, sensors)), contract.IMAGE: image})
            if state == "uploaded":
                photos.append({"seq": seq, "suffix": suffix, "sha256": sha, "bytes": size})
            elif state == "dropped":
                dropped.append(seq)
        return BatchContents(rows, photos, dropped)

    def commit_batch(self, first: int, last: int) -> None:
        """The batch object is in the store: advance the cursor past it, in one transaction."""
        with self._write() as db:
            planned = db.execute("SELECT batch_first, batch_last FROM uplink").fetchone()
            if tuple(planned) != (first, last):
                raise ValueError(f"batch {first}-{last} is not the one in flight ({planned[0]}-{planned[1]})")
            now = _now()
            db.execute(
                "UPDATE uplink SET uploaded_through = ?, batch_first = NULL, batch_last = NULL, last_attempt = ?, last_success = ?, reason = NULL, last_error = NULL, failures = 0",
                (last, now, now),
            )

    def upload_failed(self, reason: str, error: str) -> None:
        """The store did not take a PUT: the batch stays in flight, the reason goes to the status."""
        with self._write() as db:
            db.execute("UPDATE uplink SET last_attempt = ?, reason = ?, last_error = ?, failures = failures + 1", (_now(), reason, error))


def status_sections(journal: Journal, reference: dict | None, window_readings: int = DRIFT_READINGS) -> dict[str, Any]:
    """The sections the journal adds to status.json: `field`, `drift` and `uplink`.

    `reference` is the active manifest's training statistics (manifest.json[drift.MANIFEST_KEY]),
    None for a release without them."""
    return {"field": {**journal.field_skill(), "recent": journal.recent_pairs()}, "drift": journal.drift(reference, window_readings), "uplink": journal.uplink_status()}

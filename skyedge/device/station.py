"""A station's cycle: record what the logger wrote, forecast, upload, pull updates, report.

    skyedge device provision   once: the device's upload key, its registration, station.json
    skyedge device observe     one reading (+ photo) into the journal, forecast and scored
    skyedge device run --feed  every cycle: the feed folder's new readings -> journal; upload the
                               readings not yet in the store; pull (install a newer release); report

`<state>/station.json` (written at provisioning from params.yaml's `station` section, so a station
needs no params file) holds the station id, its coordinates, the photo budget and the batch size.

The feed folder is where the station's logger writes: CSV files of data-contract rows (one or
more readings each), with the photo of a reading named in its `image` column, relative to the CSV.
Files are read in name order; each reading is recorded with its source (file name and row), in the
same transaction, so a station killed before it moved the file to `done/` does not record it twice.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from skyedge.core import contract, drift, s3
from skyedge.core.files import atomic_write
from skyedge.core.tables import Column, text_table
from skyedge.device import uplink
from skyedge.device.agent import Agent
from skyedge.device.journal import Journal, ObservationResult, status_sections

CONFIG_FILE = "station.json"
DONE = "done"


@dataclass(frozen=True)
class StationConfig:
    """What a station needs to record and upload its readings (from params.yaml `station` at provisioning)."""

    device_id: str
    station_id: str
    photo_budget_bytes: int
    batch_readings: int
    latitude: float | None
    longitude: float | None


def provision(state_dir: Path, config: StationConfig) -> bytes:
    """Make the device's upload key and registration (skyedge.device.uplink.provision) and write
    station.json; the registration bytes, which the operator uploads with `skyedge fleet register`."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    registration = uplink.provision(state_dir, config.device_id, config.station_id)
    data = (json.dumps(asdict(config), indent=2) + "\n").encode()
    atomic_write(state_dir / CONFIG_FILE, lambda handle: handle.write(data))
    return registration


def load_config(state_dir: Path) -> StationConfig:
    path = Path(state_dir) / CONFIG_FILE
    try:
        return StationConfig(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: this state is not a provisioned station ({exc}); run `skyedge device provision` first") from exc


def open_journal(state_dir: Path, config: StationConfig) -> Journal:
    return Journal.open(state_dir, config.station_id, config.photo_budget_bytes, config.latitude, config.longitude)


def feed_readings(csv_path: Path) -> list[tuple[dict[str, str], Path | None, str]]:
    """(row, photo or None, source) of every reading in one logger file."""
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    readings = []
    for index, row in enumerate(rows, start=2):  # row 1 is the header, as ingest counts
        image = (row.get(contract.IMAGE) or "").strip()
        readings.append((row, csv_path.parent / image if image else None, f"{csv_path.name}:{index}"))
    return readings


def observe_feed(journal: Journal, feed_dir: Path) -> list[ObservationResult]:
    """Record every reading the logger left in `feed_dir`, then move its files to feed_dir/done/."""
    results = []
    done = Path(feed_dir) / DONE
    for csv_path in sorted(Path(feed_dir).glob("*.csv")):
        readings = feed_readings(csv_path)
        for row, photo, source in readings:
            if not journal.recorded(source):
                results.append(journal.observe(row, photo, source=source))
        done.mkdir(exist_ok=True)
        for _, photo, _ in readings:
            if photo is not None and photo.exists():
                shutil.move(str(photo), str(done / photo.name))
        shutil.move(str(csv_path), str(done / csv_path.name))
    return results


class Station:
    """One station: its agent (updates), its journal (readings, forecasts, scores) and its uplink."""

    def __init__(self, agent: Agent, journal: Journal, config: StationConfig, store_url: str | None, endpoint_url: str | None = None, client: Any = None) -> None:
        self.agent, self.journal, self.config = agent, journal, config
        self.store_url, self.endpoint_url = store_url, endpoint_url
        self._client = client
        self.last_upload: uplink.UploadResult | None = None
        agent.status_sections = self.status_sections

    def status_sections(self) -> dict[str, Any]:
        manifest = self.agent.active_manifest() if self.agent.slot("active") else None
        sections = status_sections(self.journal, (manifest or {}).get(drift.MANIFEST_KEY))
        if self.last_upload is not None and self.last_upload.reason is not None:
            sections["uplink"]["advice"] = self.last_upload.error
        return sections

    def upload(self) -> uplink.UploadResult | None:
        """Send the readings the store does not have yet (None without an s3:// store)."""
        if not (self.store_url or "").startswith("s3://"):
            return None
        if self._client is None:
            self._client = s3.make_client(self.endpoint_url, attempts=1)
        bucket, prefix = s3.split_url(self.store_url)
        self.last_upload = uplink.upload_pending(self.journal, self._client, bucket, prefix, uplink.load_identity(self.agent.dir), self.config.batch_readings)
        return self.last_upload

    def cycle(self, feed_dir: Path | None = None) -> dict[str, Any]:
        """One turn of the station: readings in, uploads out, updates pulled, status reported."""
        if feed_dir is not None:
            observe_feed(self.journal, feed_dir)
        self.upload()
        return self.agent.pull()


def field_rows(field: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model version and horizon: the station's own scores (status.json `field`)."""
    rows = []
    for version in field.get("versions", []):
        for entry in version["horizons"]:
            rain, temp = entry["rain"], entry["temp"]
            rows.append({
                "version": version["version"], "h": entry["h"], "n": rain["n"], "brier": rain["brier"], "brier_persistence": rain["brier_persistence"],
                "brier_skill": rain["brier_skill"], "temp_rmse": temp["rmse"], "temp_rmse_persistence": temp["rmse_persistence"], "temp_skill": temp["skill"],
            })
    return rows


FIELD_COLUMNS = [
    Column("version"), Column("h", format="d"), Column("n"),
    Column("brier", "rain Brier"), Column("brier_persistence", "persistence"), Column("brier_skill", "BSS"),
    Column("temp_rmse", "temp RMSE"), Column("temp_rmse_persistence", "persistence"), Column("temp_skill", "skill"),
]


def format_status(config: StationConfig, status: dict[str, Any]) -> str:
    """`skyedge device status`: what the station runs, how its forecasts scored, what drifted, what waits."""
    uplink_status = status.get("uplink") or {}
    drift_status = status.get("drift") or {}
    lines = [
        f"station {config.station_id}, device {config.device_id}: version {status.get('version')} ({status.get('health', 'no report yet')}), "
        f"last pull {status.get('state', '-')}{' (' + status['reason'] + ')' if status.get('reason') else ''} at {status.get('time', '-')}",
        "",
        "field skill (forecasts scored against this station's own later readings; skill vs persistence):",
        text_table(field_rows(status.get("field") or {}), FIELD_COLUMNS) if field_rows(status.get("field") or {}) else "  no forecast has matured yet",
        "",
    ]
    if drift_status.get("reference") is None:
        lines.append(f"drift: not checked: {drift_status.get('reason', 'no reference statistics')}")
    else:
        drifted = drift_status.get("drifted") or []
        lines.append(f"drift (last {drift_status.get('window_readings')} readings vs training statistics): {', '.join(drifted) if drifted else 'none'}")
    lines.append(
        f"uplink: {uplink_status.get('readings', 0)} readings, {uplink_status.get('pending', 0)} waiting, {uplink_status.get('photos_held', 0)} photos held "
        f"({uplink_status.get('photo_bytes_held', 0)} of {uplink_status.get('photo_budget_bytes', 0)} bytes), {uplink_status.get('dropped_photos', 0)} photos dropped"
        + (f"; last failure: {uplink_status['reason']}: {uplink_status.get('last_error')}" if uplink_status.get("reason") else "")
    )
    return "\n".join(lines)

"""Samples, built one way for the ingest stage and for `skyedge evaluate`.

A sample is either one accepted station record at hour t (its sensor window ending at t, the
readings at t that persistence forecasts from, and the labels at t+1..t+4 from the same
station's later records) or one labelled photo with no station record (a sky label only).
Photos are deduplicated by their decoded pixels, so the same sky is never counted twice nor
seen on two sides of a split. What a sample is scored or split by is its capture `day`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from skyedge.core import features
from skyedge.core.contract import SENSOR_COLUMNS, STATION_ID

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def content_hash(pixels: np.ndarray) -> str:
    """md5 of the decoded pixels: finds duplicate photos whatever their file names."""
    return hashlib.md5(pixels.tobytes()).hexdigest()


def station_samples(records: pd.DataFrame, coordinates: dict[str, dict[str, float]]) -> tuple[pd.DataFrame, np.ndarray]:
    """One sample per accepted record, station by station in time order, and its raw features.

    records: accepted rows (skyedge.data.read) with a `source` column; coordinates: station_id ->
    latitude, longitude, elevation_m (stations.csv). Returns the samples (source, station_id,
    latitude, longitude, timestamp, day, hour, hour_of_day, image_path, temp_now, rain_now,
    temp_h*/rain_h* with NaN where the future record is missing; latitude/longitude NaN for a
    station without coordinates) and raw features [N, 7] in the same order.
    """
    parts, raw_parts = [], []
    for station, group in (records.groupby(STATION_ID, sort=True) if not records.empty else []):
        group = group.sort_values("hour").reset_index(drop=True)
        hours = group["hour"].to_numpy(dtype=np.int64)
        labels = features.horizon_labels(hours, group["temperature_c"].to_numpy(float), group["precip_mm"].to_numpy(float))
        stamp = group["timestamp"].dt.strftime(TIMESTAMP_FORMAT)
        parts.append(
            pd.DataFrame(
                {
                    "source": group["source"],
                    STATION_ID: station,
                    "latitude": coordinates.get(station, {}).get("latitude", np.nan),
                    "longitude": coordinates.get(station, {}).get("longitude", np.nan),
                    "timestamp": stamp,
                    "day": stamp.str[:10],
                    "hour": hours,
                    "hour_of_day": hours % 24,
                    "image_path": group["image_path"],
                    **labels,
                }
            )
        )
        raw_parts.append(features.raw_features({column: group[column].to_numpy() for column in SENSOR_COLUMNS}))
    if not parts:
        return pd.DataFrame(columns=["source", STATION_ID, "latitude", "longitude", "timestamp", "day", "hour", "hour_of_day", "image_path"]), np.zeros((0, features.N_RAW))
    return pd.concat(parts, ignore_index=True), np.concatenate(raw_parts)


def sensor_windows(samples: pd.DataFrame, raw: np.ndarray, normalisation: dict, window_hours: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows [N, W, F] and their count of missing hours, for station samples grouped by station
    (each station's time channels from its own coordinates, or the UTC fallback)."""
    if samples.empty:
        return np.zeros((0, window_hours, features.N_FEATURES), np.float32), np.zeros(0, np.int32)
    windows, missing = [], []
    hours = samples["hour"].to_numpy(np.int64)
    for _, rows in samples.groupby(STATION_ID, sort=False).indices.items():
        latitude, longitude = samples["latitude"].iat[rows[0]], samples["longitude"].iat[rows[0]]
        known = bool(np.isfinite(latitude) and np.isfinite(longitude))
        station_windows, station_missing = features.build_windows(
            hours[rows], raw[rows], normalisation, window_hours, float(latitude) if known else None, float(longitude) if known else None
        )
        windows.append(station_windows)
        missing.append(station_missing)
    return np.concatenate(windows), np.concatenate(missing)


@dataclass(frozen=True)
class Photo:
    """A photo as read: where from, its class (None: nobody wrote it down), its capture time (may
    be empty), its pixels."""

    source: str
    path: str
    label: str | None
    timestamp: str
    pixels: np.ndarray


def photo_samples(photos: Iterable[Photo], exclude: set[str] = frozenset(), dedupe: bool = True) -> pd.DataFrame:
    """One sample per photo not in `exclude` (photos that belong to a station record).

    With `dedupe` (training data: a copy would leak across splits) the first of several photos
    with the same pixels is kept; evaluation scores every photo it is given. `day` is the capture day as the
    camera saw it (local time when the stamp has an offset); a photo without a readable time is a
    group of its own (`photo:<md5>`): nothing ties it to a day.
    """
    rows, seen = [], set()
    for photo in photos:
        if photo.path in exclude:
            continue
        digest = content_hash(photo.pixels)
        if dedupe and digest in seen:
            continue
        seen.add(digest)
        stamp = pd.to_datetime(photo.timestamp or None, errors="coerce", format="ISO8601")
        day = stamp.strftime("%Y-%m-%d") if pd.notna(stamp) else f"photo:{digest[:12]}"
        rows.append({"source": photo.source, "image_path": photo.path, "timestamp": photo.timestamp, "day": day, "label": photo.label, "md5": digest})
    return pd.DataFrame(rows, columns=["source", "image_path", "timestamp", "day", "label", "md5"])


def climatology(samples: pd.DataFrame) -> dict:
    """Training base rate of rain and hour-of-day mean temperature: the climatology baselines."""
    train = samples[(samples["split"] == "train") & samples[STATION_ID].ne("")]
    if "rain_now" not in train or train.empty:  # no station records at all (photos only)
        return {"rain_base_rate": 0.0, "temp_by_hour_c": [0.0] * 24}
    rain = train["rain_now"].dropna()
    by_hour = train.groupby("hour_of_day")["temp_now"].mean()
    overall = float(train["temp_now"].mean()) if train["temp_now"].notna().any() else 0.0
    return {
        "rain_base_rate": float(rain.mean()) if len(rain) else 0.0,
        "temp_by_hour_c": [float(by_hour.get(hour, overall)) if pd.notna(by_hour.get(hour, np.nan)) else overall for hour in range(24)],
    }


def coordinates_report(samples: pd.DataFrame) -> dict[str, str]:
    """Per station: its coordinates, or the UTC fallback its time channels used (named, never silent)."""
    stations = samples[samples[STATION_ID].ne("")].drop_duplicates(STATION_ID)
    return {
        row[STATION_ID]: f"{row['latitude']:.3f}, {row['longitude']:.3f}" if np.isfinite(row["latitude"]) and np.isfinite(row["longitude"]) else features.UTC_FALLBACK
        for _, row in stations.iterrows()
    }

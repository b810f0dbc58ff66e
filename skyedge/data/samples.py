"""Samples, built one way for the ingest stage and for `skyedge evaluate`.

A sample is either one accepted station record at hour t (its sensor window ending at t, the
readings at t that persistence forecasts from, and the labels at t+1..t+4 from the same
station's later records) or one labelled photo with no station record (a sky label only).
Photos are deduplicated by their decoded pixels, so the same sky is never counted twice nor
seen on two sides of a split. What a sample is scored or split by is its capture `day`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from skyedge.core import drift, features
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
    for rows in samples.groupby(STATION_ID, sort=False).indices.values():
        latitude, longitude = samples["latitude"].iat[rows[0]], samples["longitude"].iat[rows[0]]
        for station_windows, station_missing in window_blocks(hours[rows], raw[rows], normalisation, window_hours, latitude, longitude):
            windows.append(station_windows)
            missing.append(station_missing)
    return np.concatenate(windows), np.concatenate(missing)


WINDOW_BLOCK = 4096  # samples per block: [4096, W, 19] float32 and its float64 intermediates stay a few MB


def window_blocks(
    hours: np.ndarray, raw: np.ndarray, normalisation: dict, window_hours: int, latitude: float, longitude: float, block: int = WINDOW_BLOCK
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """ONE station's windows and missing-hour counts (features.build_windows), `block` samples at a
    time, hours in ascending order. Each block is built with the records of the W-1 hours before
    it, so the blocks are exactly one call's result; memory follows the block, not the station.
    A station without finite coordinates takes the UTC fallback."""
    known = bool(np.isfinite(latitude) and np.isfinite(longitude))
    for start in range(0, len(hours), block):
        stop = min(start + block, len(hours))
        first = int(np.searchsorted(hours, hours[start] - window_hours + 1, side="left"))
        windows, missing = features.build_windows(
            hours[first:stop], raw[first:stop], normalisation, window_hours, float(latitude) if known else None, float(longitude) if known else None
        )
        yield windows[start - first :], missing[start - first :]


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
    fit = Climatology()
    fit.add(samples[(samples["split"] == "train") & samples[STATION_ID].ne("")])
    return fit.result()


class Climatology:
    """The climatology baselines summed block by block over training station samples."""

    def __init__(self) -> None:
        self.rows = 0
        self.rain = np.zeros(2)  # rainy hours, hours with a rain reading
        self.temp = np.zeros((24, 2))  # per hour of day: sum of temperatures, readings

    def add(self, train: pd.DataFrame) -> None:
        """Training station samples (split train, a station id): temp_now, rain_now, hour_of_day."""
        if "rain_now" not in train or train.empty:
            return
        self.rows += len(train)
        rain = train["rain_now"].to_numpy(float)
        self.rain += [np.nansum(rain), np.isfinite(rain).sum()]
        temp = train["temp_now"].to_numpy(float)
        known = np.isfinite(temp)
        hours = train["hour_of_day"].to_numpy(np.int64)[known]
        self.temp[:, 0] += np.bincount(hours, weights=temp[known], minlength=24)[:24]
        self.temp[:, 1] += np.bincount(hours, minlength=24)[:24]

    def result(self) -> dict:
        if not self.rows:  # no station records at all (photos only)
            return {"rain_base_rate": 0.0, "temp_by_hour_c": [0.0] * 24}
        total, count = self.temp.sum(axis=0)
        overall = float(total / count) if count else 0.0
        return {
            "rain_base_rate": float(self.rain[0] / self.rain[1]) if self.rain[1] else 0.0,
            "temp_by_hour_c": [float(s / n) if n else overall for s, n in self.temp],
        }


class FeatureMoments:
    """Per-feature mean and std of raw features, missing values ignored, summed block by block
    (Chan et al.'s pairwise update): features.fit_normalisation's result without holding the rows."""

    def __init__(self) -> None:
        self.rows = 0
        self.count = np.zeros(features.N_RAW)
        self.mean = np.zeros(features.N_RAW)
        self.m2 = np.zeros(features.N_RAW)

    def add(self, raw: np.ndarray) -> None:
        if not len(raw):
            return
        self.rows += len(raw)
        known = np.isfinite(raw)
        count = known.sum(axis=0)
        mean = np.where(count > 0, np.where(known, raw, 0.0).sum(axis=0) / np.maximum(count, 1), 0.0)
        m2 = np.where(known, (raw - mean) ** 2, 0.0).sum(axis=0)
        total = self.count + count
        delta = mean - self.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            self.mean = np.where(total > 0, self.mean + delta * count / np.maximum(total, 1), 0.0)
            self.m2 = self.m2 + m2 + delta**2 * self.count * count / np.maximum(total, 1)
        self.count = total

    def drift_sensors(self) -> dict[str, dict]:
        """Per feature: values present, mean, std and missing rate, as the station's drift tests
        read them (skyedge.core.drift.sensor_reference)."""
        std = np.sqrt(self.m2 / np.maximum(self.count, 1))
        return {name: drift.sensor_reference(self.count[i], self.mean[i], std[i], self.rows) for i, name in enumerate(features.RAW_FEATURES)}

    def normalisation(self) -> dict[str, list[float]]:
        """The same dict as features.fit_normalisation: 0 mean and 1 std where a feature has no
        (or constant) values."""
        std = np.sqrt(self.m2 / np.maximum(self.count, 1))
        mean = np.where(self.count > 0, self.mean, 0.0)
        std = np.where((self.count > 0) & np.isfinite(std) & (std > 1e-6), std, 1.0)
        return {"features": list(features.RAW_FEATURES), "relative": list(features.RELATIVE_FEATURES), "mean": mean.tolist(), "std": std.tolist()}


def coordinates_report(samples: pd.DataFrame) -> dict[str, str]:
    """Per station: its coordinates, or the UTC fallback its time channels used (named, never silent)."""
    stations = samples[samples[STATION_ID].ne("")].drop_duplicates(STATION_ID)
    return {
        row[STATION_ID]: f"{row['latitude']:.3f}, {row['longitude']:.3f}" if np.isfinite(row["latitude"]) and np.isfinite(row["longitude"]) else features.UTC_FALLBACK
        for _, row in stations.iterrows()
    }

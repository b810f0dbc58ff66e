"""Sensor windows and forecast labels from hourly station records, in numpy only.

Used by ingest (training data) and by devices and `skyedge evaluate` (inference), so the model
sees the same features everywhere; the normalisation travels in the manifest.

Window layout, per hour step (oldest first, the last step is time t), F = 19 channels:
  0..6   temperature, pressure, humidity, wind speed, wind sin, wind cos, log1p(precip), scaled by
         the training std. Temperature and pressure are taken relative to the window's latest
         reading: their level belongs to the station (its climate, its elevation) and does not
         transfer, their change does. The others are levels, centred on the training mean (they
         are bounded and mean the same anywhere). A missing value is 0.
  7..13  missing flags for those 7 values (1 = missing); a whole missing hour sets all seven
  14,15  sin/cos of the station's local solar time at that step
  16     sine of the sun's elevation at that step (night is negative; season and latitude in one)
  17,18  references, not encoded: the temperature in degC and rain (1 when more than 0.1 mm fell
         in the hour) at that step, 0 when missing. The model forecasts temperature as the latest
         reading plus a learned change and rain from the latest rain (persistence plus a learned
         correction), and falls back to exactly these where a head has no skill.
Time channels need the station's coordinates (stations.csv); without them the station's time is
taken to be UTC at latitude 0 (`coordinates: "missing: UTC fallback"` in the reports), never
silently. Gaps are explicit to the model (flags) and counted (`window_missing_hours`).
"""

from __future__ import annotations

import warnings

import numpy as np

from skyedge.core.contract import HORIZONS, RAIN_THRESHOLD_MM
from skyedge.core.solar import sun_position

RAW_FEATURES: tuple[str, ...] = (
    "temperature_c",
    "pressure_hpa",
    "humidity_pct",
    "wind_speed_ms",
    "wind_sin",
    "wind_cos",
    "log1p_precip_mm",
)
RELATIVE_FEATURES: tuple[str, ...] = ("temperature_c", "pressure_hpa")
N_RAW = len(RAW_FEATURES)
TIME_CHANNELS = 3
N_ENCODED = 2 * N_RAW + TIME_CHANNELS  # what the sensor encoder reads
TEMPERATURE_REFERENCE = N_ENCODED  # channel of the absolute temperature (degC)
RAIN_REFERENCE = N_ENCODED + 1  # channel of rain now (0/1)
N_FEATURES = N_ENCODED + 2
UTC_FALLBACK = "missing: UTC fallback"


def raw_features(columns: dict[str, np.ndarray]) -> np.ndarray:
    """[T, 7] float64 model features from contract columns (NaN where the sensor gave nothing)."""
    wind_rad = np.deg2rad(columns["wind_dir_deg"].astype(float))
    return np.stack(
        [
            columns["temperature_c"].astype(float),
            columns["pressure_hpa"].astype(float),
            columns["humidity_pct"].astype(float),
            columns["wind_speed_ms"].astype(float),
            np.sin(wind_rad),
            np.cos(wind_rad),
            np.log1p(columns["precip_mm"].astype(float)),
        ],
        axis=1,
    )


def fit_normalisation(features: np.ndarray) -> dict[str, list[float]]:
    """Per-feature mean and std over the (training) rows, ignoring missing values."""
    with warnings.catch_warnings():  # an all-missing column is handled just below
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(features, axis=0)
        std = np.nanstd(features, axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > 1e-6), std, 1.0)
    return {"features": list(RAW_FEATURES), "relative": list(RELATIVE_FEATURES), "mean": mean.tolist(), "std": std.tolist()}


def _dense(hours: np.ndarray, values: np.ndarray) -> tuple[int, np.ndarray]:
    """Place rows on a dense hourly grid (NaN rows for hours with no record)."""
    start = int(hours.min())
    grid = np.full((int(hours.max()) - start + 1, values.shape[1]), np.nan)
    grid[hours - start] = values
    return start, grid


def build_windows(
    hours: np.ndarray, features: np.ndarray, normalisation: dict, window_hours: int, latitude: float | None, longitude: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Sensor windows ending at each record of ONE station (layout in the module doc).

    hours: int epoch hours of the records (unique); features: [T, 7] from `raw_features`;
    latitude/longitude: the station's, None when unknown (UTC fallback). Returns windows
    [T, W, 19] float32 and the count of missing hours in each window.
    """
    start, grid = _dense(hours, features)
    mean = np.asarray(normalisation["mean"])
    std = np.asarray(normalisation["std"])
    relative = np.isin(RAW_FEATURES, normalisation["relative"])
    offsets = np.arange(-window_hours + 1, 1)
    positions = (hours - start)[:, None] + offsets[None, :]  # [T, W]
    inside = positions >= 0
    steps = grid[np.clip(positions, 0, None)]  # [T, W, 7]
    steps[~inside] = np.nan
    missing = np.isnan(steps)
    latest = _latest_observed(steps)  # [T, 7]
    centre = np.where(relative, latest[:, None, :], mean)
    scaled = np.where(missing, 0.0, (steps - centre) / std)
    step_hours = hours[:, None] + offsets[None, :]
    sun = sun_position(step_hours, latitude if latitude is not None else 0.0, longitude if longitude is not None else 0.0)
    angle = 2 * np.pi * sun.solar_hour / 24
    temperature = np.where(missing[..., 0], 0.0, steps[..., 0])
    rain = np.where(missing[..., 6], 0.0, (np.expm1(np.nan_to_num(steps[..., 6])) > RAIN_THRESHOLD_MM).astype(float))
    windows = np.concatenate(
        [scaled, missing.astype(float), np.sin(angle)[..., None], np.cos(angle)[..., None], np.sin(np.deg2rad(sun.elevation_deg))[..., None], temperature[..., None], rain[..., None]],
        axis=2,
    )
    missing_hours = missing.all(axis=2).sum(axis=1)
    return windows.astype(np.float32), missing_hours.astype(np.int32)


def _latest_observed(steps: np.ndarray) -> np.ndarray:
    """[T, 7]: each feature's last non-missing value in its window (NaN if none)."""
    observed = ~np.isnan(steps)
    last = np.where(observed, np.arange(steps.shape[1])[None, :, None], -1).max(axis=1)  # [T, 7]
    picked = np.take_along_axis(steps, np.clip(last, 0, None)[:, None, :], axis=1)[:, 0, :]
    return np.where(last >= 0, picked, np.nan)


def horizon_labels(hours: np.ndarray, temperature: np.ndarray, precip: np.ndarray) -> dict[str, np.ndarray]:
    """Persistence inputs and labels at t+h for ONE station; NaN where the future record is missing.

    rain_h = 1.0 when more than RAIN_THRESHOLD_MM fell in the hour ending t+h (§3).
    """
    start, grid = _dense(hours, np.stack([temperature, precip], axis=1).astype(float))
    position = hours - start
    labels: dict[str, np.ndarray] = {
        "temp_now": temperature.astype(float),
        "rain_now": _rain(precip.astype(float)),
    }
    for h in HORIZONS:
        future = position + h
        valid = future < len(grid)
        ahead = np.full((len(hours), 2), np.nan)
        ahead[valid] = grid[future[valid]]
        labels[f"temp_h{h}"] = ahead[:, 0]
        labels[f"rain_h{h}"] = _rain(ahead[:, 1])
    return labels


def _rain(precip: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(precip), np.nan, (precip > RAIN_THRESHOLD_MM).astype(float))


def empty_window(window_hours: int) -> np.ndarray:
    """The window for a sample with no sensors at all (a labelled photo): every value missing."""
    window = np.zeros((window_hours, N_FEATURES), dtype=np.float32)
    window[:, N_RAW : 2 * N_RAW] = 1.0
    return window

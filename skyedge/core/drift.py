"""Input drift: does a station feed the model what training fed it? (numpy only: stations use it.)

Two halves, one vocabulary:

- `training_statistics(raw, photos)` (or `reference` from streamed moments, as ingest and the
  package stage build it) runs once, where the training data is, and its dict travels in
  manifest.json under `MANIFEST_KEY` ("training_statistics").
- `compare(reference, raw, photo_values)` runs on the station over its most recent readings and
  names, for every test, the statistic, its threshold and whether it fired.

Sensors are the model's seven raw features (skyedge.core.features.RAW_FEATURES), not the six
contract columns: wind direction is circular (359° and 1° are neighbours, their mean is not 180°),
so it is compared through its sine and cosine, and rain through log1p(precip_mm), as the model
reads them. A value that breaks an ingest rule on the station counts as missing, as it does for
the model. Temperature and pressure levels belong to the station's climate and elevation and the
model only reads their change within the window: a shift in their mean is reported as what it is
(this station's level differs from training's), not as a broken input.

Photos are summarised by two numbers, measured on a GRID x GRID luminance grid (area means, so a
1920 px station photo and a 32 px training photo are compared at the same scale): brightness (mean
luminance, 0..1) and contrast (std of the grid's luminance). A frame darker than DARK_LUMINANCE is
dark (night, a covered lens).

Tests, each skipped (drift: null, and why) with fewer than MIN_VALUES (24) readings, values or photos:

  input        test                      statistic                                 fires when
  each sensor  missing_rate_increase     missing_rate_recent - missing_rate_ref    > 0.2
  each sensor  standardized_mean_shift   (mean_recent - mean_ref) / std_ref        |.| > 0.5
  each sensor  std_ratio                 std_recent / std_ref                      outside [0.5, 2]
  photos       brightness.standardized_mean_shift, contrast.standardized_mean_shift (as above)
  photos       brightness.std_ratio, contrast.std_ratio                            (as above)
  photos       dark_share_change         dark_share_recent - dark_share_ref        |.| > 0.2

Why these: they are conventional starting points, not yet calibrated on fleet data. A mean shift
of half a standard deviation is Cohen's "medium" effect; a week of readings will cross it with
the season (drift worth seeing: the model meets weather training saw little of). A spread ratio of
2 either way catches a stuck sensor (spread collapses) and a noisy one (spread doubles). Twenty
points more missing values, or twenty points more or fewer dark frames, is a sensor or a camera
failing rather than weather. The thresholds are module constants, reported in every result.
"""

from __future__ import annotations

import math

import numpy as np

from skyedge.core.features import RAW_FEATURES

MANIFEST_KEY = "training_statistics"
FORMAT = "skyedge-training-statistics/1"
GRID = 16  # the smallest photo side ingest accepts (image_size_usable), so no photo is upsampled
DARK_LUMINANCE = 0.1
MIN_VALUES = 24  # a day of hourly readings: fewer says more about chance than about drift
MISSING_RATE_INCREASE_MAX = 0.2
MEAN_SHIFT_MAX = 0.5
STD_RATIO_RANGE = (0.5, 2.0)
DARK_SHARE_CHANGE_MAX = 0.2
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, what Pillow's convert("L") uses


def photo_features(photo: np.ndarray) -> tuple[float, float]:
    """(brightness, contrast) of one HxWx3 uint8 RGB photo (H, W >= GRID), on the luminance grid."""
    luminance = photo[..., :3].astype(np.float64) @ _LUMA / 255.0
    height, width = luminance.shape
    if min(height, width) < GRID:
        raise ValueError(f"photo is {width}x{height}: drift statistics need at least {GRID}x{GRID}")
    rows = np.linspace(0, height, GRID + 1).astype(int)
    cols = np.linspace(0, width, GRID + 1).astype(int)
    sums = np.add.reduceat(np.add.reduceat(luminance, rows[:-1], axis=0), cols[:-1], axis=1)
    grid = sums / np.outer(np.diff(rows), np.diff(cols))
    return float(grid.mean()), float(grid.std())


def training_statistics(raw: np.ndarray, photos: np.ndarray) -> dict:
    """The reference a station compares itself against, for manifest.json[MANIFEST_KEY].

    raw: [N, 7] raw features of the training records (skyedge.core.features.raw_features; NaN
    where the sensor gave nothing); photos: [M, H, W, 3] uint8 training photos.
    """
    raw = np.asarray(raw, dtype=np.float64).reshape(-1, len(RAW_FEATURES))
    values = np.array([photo_features(photo) for photo in photos]).reshape(-1, 2)
    return reference({name: _sensor_summary(raw[:, i]) for i, name in enumerate(RAW_FEATURES)}, values)


def sensor_reference(n: int, mean: float, std: float, rows: int) -> dict:
    """One sensor's training summary from streamed moments (ingest never holds all rows):
    n values present of `rows` readings, their mean and std."""
    return {
        "n": int(n),
        "mean": _number(mean) if n else None,
        "std": _number(std) if n else None,
        "missing_rate": _number(1 - n / rows) if rows else None,
    }


def reference(sensors: dict[str, dict], photo_values: np.ndarray) -> dict:
    """The reference document from per-sensor summaries (`sensor_reference`) and the training
    photos' [M, 2] (brightness, contrast) from `photo_features`."""
    values = np.asarray(photo_values, dtype=np.float64).reshape(-1, 2)
    return {
        "format": FORMAT,
        "sensors": {name: sensors[name] for name in RAW_FEATURES},
        "photos": {
            "n": len(values),
            "grid": GRID,
            "dark_luminance": DARK_LUMINANCE,
            "brightness": _moments(values[:, 0]),
            "contrast": _moments(values[:, 1]),
            "dark_share": _share(values[:, 0] < DARK_LUMINANCE),
        },
    }


def compare(reference: dict, raw: np.ndarray, photo_values: np.ndarray) -> dict:
    """Recent station inputs against the training reference, every test named with its threshold.

    raw: [n, 7] raw features of the station's last n readings (NaN: missing or broke a rule);
    photo_values: [k, 2] (brightness, contrast) of their photos. `drifted` lists
    "<input>.<test>" for every test that fired.
    """
    if reference.get("format") != FORMAT:
        raise ValueError(f"training statistics in format {reference.get('format')!r}; this station reads {FORMAT!r}")
    raw = np.asarray(raw, dtype=np.float64).reshape(-1, len(RAW_FEATURES))
    photo_values = np.asarray(photo_values, dtype=np.float64).reshape(-1, 2)
    sensors = {}
    for i, name in enumerate(RAW_FEATURES):
        ref = reference["sensors"][name]
        recent = _sensor_summary(raw[:, i])
        tests = {
            "missing_rate_increase": _missing_test(recent, ref, len(raw)),
            "standardized_mean_shift": _mean_shift_test(recent, ref),
            "std_ratio": _std_ratio_test(recent, ref),
        }
        sensors[name] = {**recent, "tests": tests}
    ref_photos = reference["photos"]
    brightness, contrast = _moments(photo_values[:, 0]), _moments(photo_values[:, 1])
    dark_share = _share(photo_values[:, 0] < ref_photos["dark_luminance"])
    photos = {
        "n": len(photo_values),
        "brightness": brightness,
        "contrast": contrast,
        "dark_share": dark_share,
        "tests": {
            "brightness.standardized_mean_shift": _mean_shift_test(brightness, ref_photos["brightness"]),
            "brightness.std_ratio": _std_ratio_test(brightness, ref_photos["brightness"]),
            "contrast.standardized_mean_shift": _mean_shift_test(contrast, ref_photos["contrast"]),
            "contrast.std_ratio": _std_ratio_test(contrast, ref_photos["contrast"]),
            "dark_share_change": _dark_share_test(dark_share, len(photo_values), ref_photos["dark_share"]),
        },
    }
    drifted = [f"{name}.{test}" for name, entry in sensors.items() for test, result in entry["tests"].items() if result["drift"]]
    drifted += [f"photos.{test}" for test, result in photos["tests"].items() if result["drift"]]
    return {"readings": len(raw), "sensors": sensors, "photos": photos, "drifted": drifted}


# --- statistics and tests ----------------------------------------------------------------------------


def _number(value: float) -> float | None:
    """JSON has no NaN: an undefined statistic is null."""
    return round(float(value), 6) if math.isfinite(value) else None


def _moments(values: np.ndarray) -> dict:
    """n, mean and std of the finite values (NaN is missing)."""
    present = values[np.isfinite(values)]
    return {
        "n": int(present.size),
        "mean": _number(present.mean()) if present.size else None,
        "std": _number(present.std()) if present.size else None,
    }


def _sensor_summary(values: np.ndarray) -> dict:
    moments = _moments(values)
    return {**moments, "missing_rate": _number(1 - moments["n"] / values.size) if values.size else None}


def _share(mask: np.ndarray) -> float | None:
    return _number(mask.mean()) if mask.size else None


def _result(value: float, threshold: object, fired: bool) -> dict:
    return {"value": _number(value), "threshold": threshold, "drift": bool(fired)}


def _skipped(threshold: object, why: str) -> dict:
    return {"value": None, "threshold": threshold, "drift": None, "skipped": why}


def _too_few(n: int, what: str = "values") -> str | None:
    return f"{n} {what}, fewer than {MIN_VALUES}" if n < MIN_VALUES else None


def _missing_test(recent: dict, ref: dict, readings: int) -> dict:
    if why := _too_few(readings, "readings"):
        return _skipped(MISSING_RATE_INCREASE_MAX, why)
    if ref["missing_rate"] is None:
        return _skipped(MISSING_RATE_INCREASE_MAX, "training had no records")
    increase = recent["missing_rate"] - ref["missing_rate"]
    return _result(increase, MISSING_RATE_INCREASE_MAX, increase > MISSING_RATE_INCREASE_MAX)


def _mean_shift_test(recent: dict, ref: dict) -> dict:
    if why := _too_few(recent["n"]):
        return _skipped(MEAN_SHIFT_MAX, why)
    if not ref["std"]:
        return _skipped(MEAN_SHIFT_MAX, "the training values have no spread")
    shift = (recent["mean"] - ref["mean"]) / ref["std"]
    return _result(shift, MEAN_SHIFT_MAX, abs(shift) > MEAN_SHIFT_MAX)


def _std_ratio_test(recent: dict, ref: dict) -> dict:
    low, high = STD_RATIO_RANGE
    if why := _too_few(recent["n"]):
        return _skipped(list(STD_RATIO_RANGE), why)
    if not ref["std"]:
        return _skipped(list(STD_RATIO_RANGE), "the training values have no spread")
    ratio = recent["std"] / ref["std"]
    return _result(ratio, list(STD_RATIO_RANGE), not low <= ratio <= high)


def _dark_share_test(dark_share: float | None, n: int, ref_share: float | None) -> dict:
    if why := _too_few(n, "photos"):
        return _skipped(DARK_SHARE_CHANGE_MAX, why)
    if ref_share is None:
        return _skipped(DARK_SHARE_CHANGE_MAX, "training had no photos")
    change = dark_share - ref_share
    return _result(change, DARK_SHARE_CHANGE_MAX, abs(change) > DARK_SHARE_CHANGE_MAX)

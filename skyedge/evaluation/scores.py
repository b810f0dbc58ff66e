"""Scoring a model's outputs on samples: sky class, rain and temperature per horizon, with
persistence and climatology baselines and day-resampled bootstrap intervals (numpy only).

The schema of the returned dict is the metrics.json contract read by gates and dashboards:
  sky: {n, accuracy, macro_f1, per_class_recall, confusion}   (absent without labelled photos)
  horizons: [{h, n, rain_base_rate, rain_brier, rain_bss_persistence, ...}] for h = 1..4
  ci: {"sky_accuracy": [lo, hi], "rain_bss_persistence_h1": [lo, hi], ...}   (None: undefined)
  skipped: {reason: count}
Bootstrap groups are whole days: the `day` column when the samples have one (photos without a
capture time get a group of their own), else the date part of `timestamp`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from skyedge.core.contract import HORIZONS, SKY_CLASSES
from skyedge.evaluation import metrics


class EmptyDatasetError(ValueError):
    """Nothing left to score: an error, never a NaN."""


def sky_scores(labels: np.ndarray, logits: np.ndarray) -> dict:
    predicted = logits.argmax(axis=1)
    n_classes = len(SKY_CLASSES)
    return {
        "n": int(len(labels)),
        "accuracy": metrics.accuracy(labels, predicted),
        "macro_f1": metrics.macro_f1(labels, predicted, n_classes),
        "per_class_recall": dict(zip(SKY_CLASSES, metrics.per_class_recall(labels, predicted, n_classes))),
        "confusion": metrics.confusion(labels, predicted, n_classes),
    }


SKILL_CI_KEYS: tuple[str, ...] = (
    "rain_bss_persistence",
    "rain_bss_climatology",
    "temp_skill_persistence",
    "temp_skill_climatology",
)


def score(
    outputs: dict[str, np.ndarray],
    samples,
    climatology: dict,
    n_boot: int = 500,
    seed: int = 0,
    max_window_gap_hours: int | None = None,
) -> dict:
    """Score model outputs aligned with `samples` (a DataFrame slice of the ingest samples).

    max_window_gap_hours: station samples whose sensor window misses more hours than this are
    skipped (counted under skipped["gap_in_window"]); None scores every window, gaps and all.
    """
    sky_label = samples["sky_label"].to_numpy()
    if "day" in samples:
        days = samples["day"].fillna("").astype(str).to_numpy()
    else:
        days = samples["timestamp"].fillna("").astype(str).str[:10].to_numpy()
    result: dict = {"horizons": [], "ci": {}, "skipped": {}}
    has_sky = sky_label >= 0
    if has_sky.any():
        result["sky"] = sky_scores(sky_label[has_sky], outputs["sky_logits"][has_sky])
        sky_hit = (outputs["sky_logits"].argmax(1) == sky_label).astype(float)
        photo_rows = np.flatnonzero(has_sky)
        result["ci"]["sky_accuracy"] = list(
            metrics.bootstrap_ci(lambda idx: float(sky_hit[photo_rows[idx]].mean()), days[photo_rows], n_boot, seed)
        )

    stations = samples["has_sensors"].to_numpy() == 1
    rain_clim = np.full(len(samples), climatology["rain_base_rate"])
    temp_clim = np.asarray(climatology["temp_by_hour_c"])[samples["hour_of_day"].fillna(0).to_numpy(int)]
    rain_now = samples["rain_now"].to_numpy(float)
    temp_now = samples["temp_now"].to_numpy(float)
    gaps = samples["window_missing_hours"].to_numpy() if "window_missing_hours" in samples else np.zeros(len(samples))
    gappy = stations & (gaps > max_window_gap_hours) if max_window_gap_hours is not None else np.zeros(len(samples), bool)
    result["skipped"]["gap_in_window"] = int(gappy.sum())
    stations = stations & ~gappy
    no_now = stations & (np.isnan(rain_now) | np.isnan(temp_now))
    result["skipped"]["no_current_reading"] = int(no_now.sum())
    result["skipped"]["windows_with_gaps_scored"] = int((stations & (gaps > 0)).sum())
    for i, h in enumerate(HORIZONS):
        rain_obs = samples[f"rain_h{h}"].to_numpy(float)
        temp_obs = samples[f"temp_h{h}"].to_numpy(float)
        no_future = stations & ~no_now & (np.isnan(rain_obs) | np.isnan(temp_obs))
        result["skipped"][f"no_future_record_h{h}"] = int(no_future.sum())
        rows = np.flatnonzero(stations & ~no_now & ~no_future)
        if len(rows) == 0:
            continue
        arrays = (
            outputs["rain_prob"][rows, i], rain_obs[rows], rain_now[rows], rain_clim[rows],
            outputs["temp_c"][rows, i], temp_obs[rows], temp_now[rows], temp_clim[rows],
        )
        result["horizons"].append({"h": h, **metrics.horizon_scores(*arrays)})
        for key in SKILL_CI_KEYS:
            statistic = _skill_statistic(key, arrays)
            try:
                result["ci"][f"{key}_h{h}"] = list(metrics.bootstrap_ci(statistic, days[rows], n_boot, seed))
            except ValueError:  # undefined in every resample (e.g. no rain at all): no interval
                result["ci"][f"{key}_h{h}"] = None
    if "sky" not in result and not result["horizons"]:
        raise EmptyDatasetError("nothing to score: no labelled photos and no station samples with current and future records")
    return result


def _skill_statistic(key: str, arrays: tuple[np.ndarray, ...]):
    rain_prob, rain_obs, rain_now, rain_clim, temp_pred, temp_obs, temp_now, temp_clim = arrays
    rain_reference = rain_clim if key == "rain_bss_climatology" else rain_now
    temp_reference = temp_clim if key == "temp_skill_climatology" else temp_now

    def statistic(idx: np.ndarray) -> float | None:
        if key.startswith("rain_"):
            return metrics.brier_skill(metrics.brier(rain_prob[idx], rain_obs[idx]), metrics.brier(rain_reference[idx], rain_obs[idx]))
        return metrics.temp_skill(metrics.rmse(temp_pred[idx], temp_obs[idx]), metrics.rmse(temp_reference[idx], temp_obs[idx]))

    return statistic


def summary_row(name: str, scores: dict) -> dict:
    """One flat row per model variant: the numbers the variant table and Pareto plots show (the
    field estimate; with groups, sky accuracy on seen days beside it)."""
    row = {"variant": name}
    sky = scores.get("sky")
    row["sky_accuracy"] = sky["accuracy"] if sky else None
    row["sky_macro_f1"] = sky["macro_f1"] if sky else None
    seen = (scores.get("groups", {}).get("seen_days") or {}).get("sky")
    if "groups" in scores:
        row["sky_accuracy_seen_days"] = seen["accuracy"] if seen else None
    for entry in scores["horizons"]:
        row[f"rain_bss_persistence_h{entry['h']}"] = entry["rain_bss_persistence"]
        row[f"temp_skill_persistence_h{entry['h']}"] = entry["temp_skill_persistence"]
    return row


FLEET_NEWEST_DAYS = 14  # "the newest fleet weeks": what the stations saw most recently


def groups_of(samples, fleet_sources: frozenset[str] = frozenset()) -> dict[str, np.ndarray]:
    """Boolean masks of the groups reported side by side, for samples that carry `day_in_train`
    and `station_in_train` (1: training saw that capture day / station):

      unseen_days    photos and station hours of days training never saw: the field estimate
      seen_days      photos of a day training also had (a class with one capture day only)
      later_season   station hours of training stations, in a later block than training's
      station:<id>   each held-out station, never trained on
      fleet_newest   rows from the fleet (sources named in fleet_sources) of its newest
                     FLEET_NEWEST_DAYS days: how the model does on what stations see now
    """
    stations = samples["station_id"].fillna("").to_numpy() != ""
    day_seen = samples["day_in_train"].to_numpy() == 1
    station_seen = samples["station_in_train"].to_numpy() == 1
    groups = {"unseen_days": ~day_seen, "seen_days": day_seen & ~stations, "later_season": stations & station_seen & ~day_seen}
    for station in sorted(set(samples["station_id"][stations & ~station_seen])):
        groups[f"station:{station}"] = samples["station_id"].to_numpy() == station
    from_fleet = samples["source"].isin(fleet_sources).to_numpy() if fleet_sources else np.zeros(len(samples), bool)
    if from_fleet.any():
        days = pd.to_datetime(samples["day"].where(from_fleet))
        groups["fleet_newest"] = from_fleet & (days >= days.max() - pd.Timedelta(days=FLEET_NEWEST_DAYS - 1)).to_numpy()
    return groups


def grouped_score(outputs: dict[str, np.ndarray], samples, climatology: dict, n_boot: int = 500, seed: int = 0, max_window_gap_hours: int | None = None,
                  fleet_sources: frozenset[str] = frozenset()) -> dict:
    """`score` on the field estimate (rows from days training never saw), with every group of
    `groups_of` scored beside it under `groups` (an empty group is left out). `estimate` says
    which rows the headline scores are: unseen days, or all rows when none is unseen (data the
    model was trained on: say so, never pass it off as an estimate)."""
    masks = groups_of(samples, fleet_sources)
    subset = lambda mask: ({name: values[mask] for name, values in outputs.items()}, samples[mask].reset_index(drop=True))  # noqa: E731
    unseen = masks["unseen_days"]
    headline = unseen if unseen.any() else np.ones(len(samples), bool)
    result = score(*subset(headline), climatology, n_boot, seed, max_window_gap_hours)
    result["estimate"] = "unseen_days" if unseen.any() else "all rows: none is from a day training never saw"
    result["groups"] = {}
    for name, mask in masks.items():
        if mask.any():
            try:
                result["groups"][name] = {"n_samples": int(mask.sum()), **score(*subset(mask), climatology, n_boot, seed, max_window_gap_hours)}
            except EmptyDatasetError:
                continue
    return result

"""Leak-free splits, grouped as the field will see the data: later seasons, whole stations,
whole capture days.

A station sample at hour t reads hours t-W+1..t (its window) and t+1..t+4 (its labels). Samples
are assigned train, val or test by the time block their WHOLE span [t-W+1, t+4] falls in; samples
whose span crosses a block boundary are marked `buffer` and used by no split. So the gap between
the last train span and the first val span is at least W+4 hours and nothing crosses splits; the
test block is the later season of every station. Held-out stations (params `ingest.split.
holdout_stations`) are never trained on: their train block is `buffer` too, their later blocks
are val and test, scored apart as unseen stations.
Labelled photos without sensors are split by capture day per class (`class_photo_split`), after
duplicates (same pixels) are removed, so the same sky never appears in two splits.
"""

from __future__ import annotations

import numpy as np

from skyedge.core.contract import HORIZONS

SPLITS = ("train", "val", "test")
BUFFER = "buffer"


def station_split(hours: np.ndarray, window_hours: int, fractions: tuple[float, float, float], held_out: bool = False) -> np.ndarray:
    """Split labels for ONE station's sample hours by time blocks (see module doc)."""
    first, last = hours.min(), hours.max()
    span = last - first + 1
    train_end = first + fractions[0] * span
    val_end = first + (fractions[0] + fractions[1]) * span
    window_start = hours - window_hours + 1
    label_end = hours + max(HORIZONS)
    split = np.full(len(hours), BUFFER, dtype=object)
    split[label_end < train_end] = BUFFER if held_out else "train"
    split[(window_start >= train_end) & (label_end < val_end)] = "val"
    split[window_start >= val_end] = "test"
    return split


def day_split(days: np.ndarray, fractions: tuple[float, float, float]) -> np.ndarray:
    """Split labels by whole days: the earliest days train, then val, then test."""
    unique_days = np.unique(days)
    n_train = max(1, int(round(fractions[0] * len(unique_days))))
    n_val = max(1, int(round(fractions[1] * len(unique_days)))) if len(unique_days) > 2 else 0
    order = {day: i for i, day in enumerate(unique_days)}
    rank = np.array([order[day] for day in days])
    return np.where(rank < n_train, "train", np.where(rank < n_train + n_val, "val", "test")).astype(object)


def class_photo_split(days: np.ndarray, fractions: tuple[float, float, float]) -> np.ndarray:
    """Split labels for ONE sky class's photos by whole capture days: no day is on two sides (a
    split by capture puts near-identical frames of one day on both sides).

    - four days or more: earliest days to train, then val, then test (`day_split`);
    - three days: the day with the fewest photos to test, the next fewest to val, the other trains;
    - two days: the smaller day to test (the class has no val day), the other trains;
    - one day: nothing can be held out, so all of it trains. No field estimate of this class
      exists in the data: the ingest report names it (`classes_without_estimate`).
    Which day is held out does not change the honesty of the estimate, only how much trains, so
    with few days the largest trains.
    """
    unique_days, counts = np.unique(days, return_counts=True)
    if len(unique_days) >= 4:
        return day_split(days, fractions)
    split = np.full(len(days), "train", dtype=object)
    by_size = unique_days[np.argsort(counts, kind="stable")]
    held_out = {2: ("test",), 3: ("test", "val")}.get(len(unique_days), ())
    for day, name in zip(by_size, held_out):
        split[days == day] = name
    return split

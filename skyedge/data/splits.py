"""Leak-free time splits.

A station sample at hour t reads hours t-W+1..t (its window) and t+1..t+4 (its labels). Samples
are assigned train, val or test by the block their WHOLE span [t-W+1, t+4] falls in; samples
whose span crosses a block boundary are marked `buffer` and used by no split. So the gap between
the last train span and the first val span is at least W+4 hours and nothing crosses splits.
Labelled photos without sensors are split by capture day, after duplicates (same pixels) are
removed, so the same sky never appears in two splits.
"""

from __future__ import annotations

import numpy as np

from skyedge.core.contract import HORIZONS

SPLITS = ("train", "val", "test")
BUFFER = "buffer"


def station_split(hours: np.ndarray, window_hours: int, fractions: tuple[float, float, float]) -> np.ndarray:
    """Split labels for ONE station's sample hours by time blocks (see module doc)."""
    first, last = hours.min(), hours.max()
    span = last - first + 1
    train_end = first + fractions[0] * span
    val_end = first + (fractions[0] + fractions[1]) * span
    window_start = hours - window_hours + 1
    label_end = hours + max(HORIZONS)
    split = np.full(len(hours), BUFFER, dtype=object)
    split[label_end < train_end] = "train"
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

"""Forecast scores and their baselines (ARCHITECTURE §3), as pure numpy functions.

Devices and flows import this module, so it depends on numpy only. Every score is a Python
float (JSON-serialisable) or None where the score is undefined; nothing here returns NaN or
inf, because a NaN in a metrics file silently passes or fails every gate that reads it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike

HORIZON_SCORE_KEYS: tuple[str, ...] = (
    "n",
    "rain_base_rate",
    "rain_brier",
    "rain_brier_persistence",
    "rain_brier_climatology",
    "rain_bss_persistence",
    "rain_bss_climatology",
    "rain_csi",
    "temp_rmse",
    "temp_mae",
    "temp_rmse_persistence",
    "temp_rmse_climatology",
    "temp_skill_persistence",
    "temp_skill_climatology",
)


def _arrays(**named: ArrayLike) -> list[np.ndarray]:
    """1-D float arrays of one common, non-zero length, all finite; else a ValueError naming them."""
    arrays = {name: np.asarray(value, dtype=float) for name, value in named.items()}
    for name, a in arrays.items():
        if a.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    lengths = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs must have the same length, got {lengths}")
    if next(iter(lengths.values())) == 0:
        raise ValueError(f"inputs are empty: {', '.join(lengths)}")
    for name, a in arrays.items():
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains NaN or inf")
    return list(arrays.values())


def _binary(name: str, a: np.ndarray) -> None:
    if not np.all((a == 0) | (a == 1)):
        raise ValueError(f"{name} must be 0/1 outcomes")


def _ratio_skill(model: float, reference: float) -> float | None:
    # Skill against a perfect reference (score 0) is undefined, not -inf.
    if reference == 0:
        return None
    return float(1.0 - model / reference)


# --- Rain: probabilistic binary forecasts -------------------------------------------------


def brier(prob: ArrayLike, outcome: ArrayLike) -> float:
    """Brier score: mean squared error of probabilities against 0/1 outcomes (lower is better)."""
    p, o = _arrays(prob=prob, outcome=outcome)
    _binary("outcome", o)
    return float(np.mean((p - o) ** 2))


def brier_skill(brier_model: float, brier_reference: float) -> float | None:
    """Brier skill score 1 - model/reference: 1 is perfect, 0 is no better than the reference.

    None when the reference is perfect (Brier 0), where skill is undefined.
    """
    return _ratio_skill(brier_model, brier_reference)


def csi(prob: ArrayLike, outcome: ArrayLike, threshold: float = 0.5) -> float | None:
    """Critical success index hits / (hits + misses + false alarms) of `prob >= threshold`.

    It ignores correct negatives, so dry hours cannot inflate it. None when there were no
    rain events and none were forecast (the denominator is 0).
    """
    p, o = _arrays(prob=prob, outcome=outcome)
    _binary("outcome", o)
    forecast = p >= threshold
    observed = o == 1
    hits = int(np.sum(forecast & observed))
    misses = int(np.sum(~forecast & observed))
    false_alarms = int(np.sum(forecast & ~observed))
    denominator = hits + misses + false_alarms
    if denominator == 0:
        return None
    return hits / denominator


# --- Temperature: continuous forecasts ----------------------------------------------------


def rmse(pred: ArrayLike, obs: ArrayLike) -> float:
    """Root mean squared error, in the units of the inputs."""
    p, o = _arrays(pred=pred, obs=obs)
    return float(np.sqrt(np.mean((p - o) ** 2)))


def mae(pred: ArrayLike, obs: ArrayLike) -> float:
    """Mean absolute error, in the units of the inputs."""
    p, o = _arrays(pred=pred, obs=obs)
    return float(np.mean(np.abs(p - o)))


def temp_skill(rmse_model: float, rmse_reference: float) -> float | None:
    """Temperature skill 1 - RMSE_model/RMSE_reference; None when the reference is perfect."""
    return _ratio_skill(rmse_model, rmse_reference)


# --- Sky: multi-class classification ------------------------------------------------------


def _labels(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    t, p = (np.asarray(y, dtype=float) for y in (y_true, y_pred))
    _arrays(y_true=t, y_pred=p)
    for name, y in (("y_true", t), ("y_pred", p)):
        if not np.all((y == np.round(y)) & (y >= 0) & (y < n_classes)):
            raise ValueError(f"{name} must hold integer labels in [0, {n_classes})")
    return t.astype(np.int64), p.astype(np.int64)


def confusion(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> list[list[int]]:
    """Confusion counts: rows are true classes, columns predicted classes."""
    t, p = _labels(y_true, y_pred, n_classes)
    counts = np.bincount(t * n_classes + p, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes).tolist()


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of labels predicted exactly."""
    t, p = _arrays(y_true=y_true, y_pred=y_pred)
    return float(np.mean(t == p))


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> float:
    """Unweighted mean of per-class F1, so rare sky classes count as much as common ones.

    Classes absent from both y_true and y_pred are left out of the mean: their F1 is 0/0, and
    counting them as 0 would penalise a test split for not containing every class.
    """
    m = np.asarray(confusion(y_true, y_pred, n_classes))
    tp = np.diag(m)
    fp = m.sum(axis=0) - tp
    fn = m.sum(axis=1) - tp
    denominator = 2 * tp + fp + fn
    present = denominator > 0
    return float(np.mean(2 * tp[present] / denominator[present]))


def per_class_recall(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> list[float | None]:
    """Recall of each class (true positives / true members); None for classes absent from y_true."""
    m = np.asarray(confusion(y_true, y_pred, n_classes))
    support = m.sum(axis=1)
    return [float(m[c, c] / support[c]) if support[c] else None for c in range(n_classes)]


# --- One horizon, model beside its baselines ----------------------------------------------


def horizon_scores(
    rain_prob: ArrayLike,
    rain_obs: ArrayLike,
    rain_now: ArrayLike,
    rain_climatology: ArrayLike,
    temp_pred: ArrayLike,
    temp_obs: ArrayLike,
    temp_now: ArrayLike,
    temp_climatology: ArrayLike,
) -> dict[str, float | int | None]:
    """All §3 scores for one horizon: the model beside persistence and climatology.

    Arrays are 1-D and aligned, already masked by the caller. Persistence forecasts rain now
    (as a 0/1 probability) and temperature now; climatology is given per sample (the training
    rain base rate, constant or by hour of day, and the training hour-of-day mean temperature).
    Returns exactly HORIZON_SCORE_KEYS. Raises ValueError on empty, mismatched or non-finite
    input rather than returning NaN.
    """
    (rp, ro, rn, rc, tp, to, tn, tc) = _arrays(
        rain_prob=rain_prob,
        rain_obs=rain_obs,
        rain_now=rain_now,
        rain_climatology=rain_climatology,
        temp_pred=temp_pred,
        temp_obs=temp_obs,
        temp_now=temp_now,
        temp_climatology=temp_climatology,
    )
    _binary("rain_obs", ro)
    _binary("rain_now", rn)
    for name, p in (("rain_prob", rp), ("rain_climatology", rc)):
        if not np.all((p >= 0) & (p <= 1)):
            raise ValueError(f"{name} must be probabilities in [0, 1]")

    b_model, b_pers, b_clim = brier(rp, ro), brier(rn, ro), brier(rc, ro)
    t_model, t_pers, t_clim = rmse(tp, to), rmse(tn, to), rmse(tc, to)
    return {
        "n": int(ro.shape[0]),
        "rain_base_rate": float(np.mean(ro)),
        "rain_brier": b_model,
        "rain_brier_persistence": b_pers,
        "rain_brier_climatology": b_clim,
        "rain_bss_persistence": brier_skill(b_model, b_pers),
        "rain_bss_climatology": brier_skill(b_model, b_clim),
        "rain_csi": csi(rp, ro),
        "temp_rmse": t_model,
        "temp_mae": mae(tp, to),
        "temp_rmse_persistence": t_pers,
        "temp_rmse_climatology": t_clim,
        "temp_skill_persistence": temp_skill(t_model, t_pers),
        "temp_skill_climatology": temp_skill(t_model, t_clim),
    }


# --- Uncertainty ----------------------------------------------------------------------------


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float | None],
    groups: ArrayLike,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic`, resampling whole groups (e.g. days).

    Hours within a day are correlated, so resampling single samples would understate the
    uncertainty. Each replicate draws as many groups as there are, with replacement, and calls
    `statistic` with the indices of all their samples (a group drawn twice appears twice).
    Replicates where the statistic is None (undefined) are dropped. Deterministic given seed.
    """
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] == 0:
        raise ValueError(f"groups must be a non-empty 1-D array, got shape {g.shape}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")

    # Sort samples by group once; each group is then a contiguous run order[start:start+count].
    _, inverse, counts = np.unique(g, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    n_groups = counts.shape[0]

    rng = np.random.default_rng(seed)
    values: list[float] = []
    for _ in range(n_boot):
        chosen = rng.integers(0, n_groups, size=n_groups)
        lengths = counts[chosen]
        # Positions into `order`: for each chosen group, start + 0..count-1, built without a loop.
        run_offsets = np.cumsum(lengths) - lengths
        positions = np.arange(lengths.sum()) + np.repeat(starts[chosen] - run_offsets, lengths)
        value = statistic(order[positions])
        if value is not None:
            values.append(float(value))
    if not values:
        raise ValueError("statistic was undefined (None) in every bootstrap replicate")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(np.asarray(values), [alpha, 1.0 - alpha])
    return float(low), float(high)

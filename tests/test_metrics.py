"""skyedge.evaluation.metrics against hand-computed values, baselines, undefined cases and properties."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from skyedge.evaluation import metrics

# A six-row horizon, scored by hand below.
RAIN_PROB = [0.9, 0.2, 0.6, 0.1, 0.4, 0.7]
RAIN_OBS = [1, 0, 1, 0, 1, 0]
RAIN_NOW = [1, 0, 0, 0, 1, 1]
RAIN_CLIM = [0.5] * 6
TEMP_PRED = [10.0, 12.0, 15.0, 9.0, 11.0, 14.0]
TEMP_OBS = [11.0, 12.0, 13.0, 9.0, 10.0, 14.0]
TEMP_NOW = [9.0, 12.0, 11.0, 10.0, 10.0, 12.0]
TEMP_CLIM = [12.0, 12.0, 12.0, 10.0, 10.0, 12.0]

# Squared rain errors 0.01 0.04 0.16 0.01 0.36 0.49 -> 1.07 / 6.
BRIER_MODEL = 1.07 / 6
# Persistence misses rows 2 and 4 outright: 2 / 6. Climatology 0.5 errs by 0.25 everywhere.
BRIER_PERSISTENCE = 2 / 6
BRIER_CLIMATOLOGY = 0.25
# Forecast rain (p >= 0.5) on rows 0, 2, 5; rain on rows 0, 2, 4: 2 hits, 1 miss, 1 false alarm.
CSI = 2 / 4
# Temperature errors -1 0 2 0 1 0; persistence -2 0 -2 1 0 -2; climatology 1 0 -1 1 0 -2.
TEMP_RMSE = 1.0
TEMP_MAE = 4 / 6
TEMP_RMSE_PERSISTENCE = math.sqrt(13 / 6)
TEMP_RMSE_CLIMATOLOGY = math.sqrt(7 / 6)


def scores(**override):
    args = dict(
        rain_prob=RAIN_PROB,
        rain_obs=RAIN_OBS,
        rain_now=RAIN_NOW,
        rain_climatology=RAIN_CLIM,
        temp_pred=TEMP_PRED,
        temp_obs=TEMP_OBS,
        temp_now=TEMP_NOW,
        temp_climatology=TEMP_CLIM,
    )
    args.update(override)
    return metrics.horizon_scores(**args)


# --- hand-computed values --------------------------------------------------------------


def test_brier_by_hand():
    assert metrics.brier(RAIN_PROB, RAIN_OBS) == pytest.approx(BRIER_MODEL)
    assert metrics.brier(RAIN_NOW, RAIN_OBS) == pytest.approx(BRIER_PERSISTENCE)


def test_brier_skill_by_hand():
    assert metrics.brier_skill(BRIER_MODEL, BRIER_PERSISTENCE) == pytest.approx(1 - 1.07 / 2)
    assert metrics.brier_skill(BRIER_MODEL, BRIER_CLIMATOLOGY) == pytest.approx(1 - 1.07 / 1.5)


def test_csi_by_hand():
    assert metrics.csi(RAIN_PROB, RAIN_OBS) == pytest.approx(CSI)
    # A higher threshold drops the false alarm at 0.7 and the hit at 0.6: 1 hit, 2 misses.
    assert metrics.csi(RAIN_PROB, RAIN_OBS, threshold=0.8) == pytest.approx(1 / 3)


def test_rmse_mae_temp_skill_by_hand():
    assert metrics.rmse(TEMP_PRED, TEMP_OBS) == pytest.approx(TEMP_RMSE)
    assert metrics.mae(TEMP_PRED, TEMP_OBS) == pytest.approx(TEMP_MAE)
    assert metrics.rmse(TEMP_NOW, TEMP_OBS) == pytest.approx(TEMP_RMSE_PERSISTENCE)
    assert metrics.temp_skill(1.0, 2.0) == pytest.approx(0.5)
    assert metrics.temp_skill(3.0, 2.0) == pytest.approx(-0.5)


def test_horizon_scores_by_hand():
    s = scores()
    expected = {
        "n": 6,
        "rain_base_rate": 0.5,
        "rain_brier": BRIER_MODEL,
        "rain_brier_persistence": BRIER_PERSISTENCE,
        "rain_brier_climatology": BRIER_CLIMATOLOGY,
        "rain_bss_persistence": 1 - BRIER_MODEL / BRIER_PERSISTENCE,
        "rain_bss_climatology": 1 - BRIER_MODEL / BRIER_CLIMATOLOGY,
        "rain_csi": CSI,
        "temp_rmse": TEMP_RMSE,
        "temp_mae": TEMP_MAE,
        "temp_rmse_persistence": TEMP_RMSE_PERSISTENCE,
        "temp_rmse_climatology": TEMP_RMSE_CLIMATOLOGY,
        "temp_skill_persistence": 1 - TEMP_RMSE / TEMP_RMSE_PERSISTENCE,
        "temp_skill_climatology": 1 - TEMP_RMSE / TEMP_RMSE_CLIMATOLOGY,
    }
    assert set(s) == set(expected) == set(metrics.HORIZON_SCORE_KEYS)
    for key, value in expected.items():
        assert s[key] == pytest.approx(value), key


def test_horizon_scores_are_plain_python_and_json_serialisable():
    s = scores(rain_prob=np.asarray(RAIN_PROB, dtype=np.float32))
    assert type(s["n"]) is int
    assert all(type(v) is float for k, v in s.items() if k != "n")
    assert json.loads(json.dumps(s, allow_nan=False)) == s


def test_climatology_may_vary_per_sample():
    # An hour-of-day base rate: the Brier of climatology uses each sample's own rate.
    clim = [0.8, 0.2, 0.8, 0.2, 0.8, 0.2]
    # Errors 0.2 0.2 0.2 0.2 0.2 0.2 -> 0.04 each.
    assert scores(rain_climatology=clim)["rain_brier_climatology"] == pytest.approx(0.04)


# --- baselines as anchors ---------------------------------------------------------------


def test_perfect_model_has_skill_one():
    s = scores(rain_prob=RAIN_OBS, temp_pred=TEMP_OBS)
    assert s["rain_brier"] == 0.0
    assert s["rain_bss_persistence"] == 1.0
    assert s["rain_bss_climatology"] == 1.0
    assert s["rain_csi"] == 1.0
    assert s["temp_skill_persistence"] == 1.0
    assert s["temp_skill_climatology"] == 1.0


def test_persistence_scored_as_the_model_has_skill_zero():
    s = scores(rain_prob=RAIN_NOW, temp_pred=TEMP_NOW)
    assert s["rain_bss_persistence"] == 0.0
    assert s["temp_skill_persistence"] == 0.0
    # ...and it is not zero against climatology, so the two baselines are really distinct.
    assert s["rain_bss_climatology"] != 0.0
    assert s["temp_skill_climatology"] != 0.0


# --- undefined and bad input -------------------------------------------------------------


def test_skills_are_none_against_a_perfect_reference():
    assert metrics.brier_skill(0.1, 0.0) is None
    assert metrics.brier_skill(0.0, 0.0) is None
    assert metrics.temp_skill(1.0, 0.0) is None


def test_csi_is_none_when_no_rain_observed_or_forecast():
    assert metrics.csi([0.1, 0.2, 0.3], [0, 0, 0]) is None
    # One false alarm makes it defined (and zero).
    assert metrics.csi([0.1, 0.9, 0.3], [0, 0, 0]) == 0.0


def test_horizon_scores_with_perfect_persistence_reports_none_not_nan():
    s = scores(rain_now=RAIN_OBS, temp_now=TEMP_OBS)
    assert s["rain_bss_persistence"] is None
    assert s["temp_skill_persistence"] is None
    json.dumps(s, allow_nan=False)


def test_horizon_scores_rejects_empty_input():
    with pytest.raises(ValueError, match="empty"):
        metrics.horizon_scores([], [], [], [], [], [], [], [])


def test_horizon_scores_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="same length"):
        scores(temp_obs=TEMP_OBS[:-1])


def test_horizon_scores_rejects_nan_input():
    with pytest.raises(ValueError, match="temp_now contains NaN"):
        scores(temp_now=[math.nan, *TEMP_NOW[1:]])


def test_horizon_scores_rejects_non_binary_outcomes_and_bad_probabilities():
    with pytest.raises(ValueError, match="rain_obs must be 0/1"):
        scores(rain_obs=[1, 0, 1, 0, 1, 0.5])
    with pytest.raises(ValueError, match="rain_prob must be probabilities"):
        scores(rain_prob=[1.2, 0.2, 0.6, 0.1, 0.4, 0.7])


# --- sky classification ------------------------------------------------------------------

Y_TRUE = [0, 0, 1, 1, 2, 2, 3]
Y_PRED = [0, 1, 1, 1, 2, 0, 0]


def test_confusion_by_hand():
    assert metrics.confusion(Y_TRUE, Y_PRED, 5) == [
        [1, 1, 0, 0, 0],
        [0, 2, 0, 0, 0],
        [1, 0, 1, 0, 0],
        [1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ]


def test_accuracy_by_hand():
    assert metrics.accuracy(Y_TRUE, Y_PRED) == pytest.approx(4 / 7)


def test_macro_f1_by_hand_excludes_absent_classes():
    # F1 = 2TP / (2TP + FP + FN): class 0 2/5, class 1 4/5, class 2 2/3, class 3 0.
    # Class 4 is neither true nor predicted, so it is left out of the mean.
    assert metrics.macro_f1(Y_TRUE, Y_PRED, 5) == pytest.approx((0.4 + 0.8 + 2 / 3 + 0.0) / 4)


def test_per_class_recall_by_hand():
    recall = metrics.per_class_recall(Y_TRUE, Y_PRED, 5)
    assert recall[:4] == pytest.approx([0.5, 1.0, 0.5, 0.0])
    assert recall[4] is None


def test_confusion_rejects_labels_out_of_range():
    with pytest.raises(ValueError, match=r"y_pred must hold integer labels in \[0, 5\)"):
        metrics.confusion([0, 1], [0, 5], 5)


# --- bootstrap ---------------------------------------------------------------------------


def daily_errors(n_days: int, seed: int = 1, hours: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Squared-error-like samples with a shared per-day offset, so days are the unit."""
    rng = np.random.default_rng(seed)
    day_offset = rng.normal(0.0, 1.0, size=n_days)
    groups = np.repeat(np.arange(n_days), hours)
    values = day_offset[groups] + rng.normal(0.0, 0.5, size=groups.shape[0])
    return values, groups


def test_bootstrap_contains_the_point_estimate_and_narrows_with_n():
    widths = []
    for n_days in (50, 2000):
        values, groups = daily_errors(n_days)
        low, high = metrics.bootstrap_ci(lambda idx: float(values[idx].mean()), groups, n_boot=500)
        assert low < float(values.mean()) < high
        widths.append(high - low)
    # Width scales ~ 1/sqrt(n_days): 40x the days should give ~6x narrower; demand 3x.
    assert widths[1] < widths[0] / 3


def test_bootstrap_is_deterministic_given_seed():
    values, groups = daily_errors(100)
    stat = lambda idx: float(values[idx].mean())  # noqa: E731
    assert metrics.bootstrap_ci(stat, groups, seed=7) == metrics.bootstrap_ci(stat, groups, seed=7)
    assert metrics.bootstrap_ci(stat, groups, seed=7) != metrics.bootstrap_ci(stat, groups, seed=8)


def test_bootstrap_resamples_whole_groups():
    # Groups of unequal size, interleaved: every replicate must contain each drawn group entire.
    groups = np.array([5, 9, 5, 7, 9, 5, 7, 7, 7])
    sizes = {5: 3, 7: 4, 9: 2}
    seen = []

    def stat(idx):
        drawn, counts = np.unique(groups[idx], return_counts=True)
        for g, c in zip(drawn, counts):
            assert c % sizes[int(g)] == 0
        seen.append(len(idx))
        return 0.0

    metrics.bootstrap_ci(stat, groups, n_boot=200)
    assert len(seen) == 200
    assert len(set(seen)) > 1  # group sizes differ, so replicate sizes vary


def test_bootstrap_drops_undefined_replicates():
    values, groups = daily_errors(30)
    calls = iter(range(10**6))
    low, high = metrics.bootstrap_ci(
        lambda idx: None if next(calls) % 2 else float(values[idx].mean()), groups, n_boot=200
    )
    assert low < float(values.mean()) < high
    with pytest.raises(ValueError, match="every bootstrap replicate"):
        metrics.bootstrap_ci(lambda idx: None, groups, n_boot=10)


def test_bootstrap_is_fast_enough():
    values, groups = daily_errors(420)  # ~10k samples
    start = time.perf_counter()
    metrics.bootstrap_ci(lambda idx: float(values[idx].mean()), groups, n_boot=1000)
    assert time.perf_counter() - start < 1.0


# --- properties --------------------------------------------------------------------------

unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@given(st.lists(st.tuples(unit, st.integers(0, 1)), min_size=1, max_size=50))
def test_brier_is_in_unit_interval(pairs):
    prob, outcome = zip(*pairs)
    assert 0.0 <= metrics.brier(prob, outcome) <= 1.0


@given(st.floats(min_value=1e-12, max_value=1.0, allow_nan=False))
def test_brier_skill_of_reference_against_itself_is_zero(b):
    assert metrics.brier_skill(b, b) == 0.0


def test_the_groups_side_by_side_include_the_fleets_newest_two_weeks():
    import pandas as pd

    from skyedge.evaluation.scores import FLEET_NEWEST_DAYS, groups_of

    days = pd.date_range("2026-01-01", periods=40, freq="D").strftime("%Y-%m-%d")
    samples = pd.DataFrame({
        "source": ["s3://fleet/obs"] * 40 + ["synthetic-0"] * 40,
        "station_id": ["st-a"] * 80,
        "day": list(days) * 2,
        "day_in_train": [0] * 80,
        "station_in_train": [1] * 80,
    })
    groups = groups_of(samples, frozenset({"s3://fleet/obs"}))
    newest = samples[groups["fleet_newest"]]
    assert set(newest["source"]) == {"s3://fleet/obs"} and len(newest) == FLEET_NEWEST_DAYS
    assert newest["day"].min() == "2026-01-27" and newest["day"].max() == "2026-02-09"
    assert "fleet_newest" not in groups_of(samples)  # no fleet source, no such group

"""The promotion gate's paired non-inferiority test on hand-built cases: candidate - champion on the
same rows, a day-resampled interval, a margin per score."""

from __future__ import annotations

import numpy as np
import pytest

from skyedge.evaluation import gate

MARGINS = {"sky_accuracy": 0.02, "rain_bss": 0.02, "temp_skill": 0.02}
DAYS = 10


def paired(candidate_hits: np.ndarray, champion_hits: np.ndarray, rain=None, temp=None) -> gate.Paired:
    """Photos only unless rain/temp ((candidate, champion, observed, now) arrays [n, 4]) are given."""
    n_photos = len(candidate_hits)
    photo_days = np.array([f"d{i % DAYS}" for i in range(n_photos)])
    empty = np.zeros((0, 4))
    rain = rain or (empty, empty, empty, np.zeros(0))
    temp = temp or (empty, empty, empty, np.zeros(0))
    n_rows = max(len(rain[3]), len(temp[3]))
    return gate.Paired(
        sky_hit=(candidate_hits.astype(float), champion_hits.astype(float)), photo_days=photo_days,
        rain=(rain[0], rain[1]), temp=(temp[0], temp[1]), rain_obs=rain[2], temp_obs=temp[2], rain_now=rain[3], temp_now=temp[3],
        station_days=np.array([f"d{i % DAYS}" for i in range(n_rows)]),
    )


def sky(criteria: list[gate.Criterion]) -> gate.Criterion:
    return next(c for c in criteria if c.name == "vs_production_sky_accuracy")


def test_a_candidate_at_080_against_a_champion_at_090_is_refused_though_its_own_interval_reaches_090():
    rng = np.random.default_rng(0)
    champion = rng.random(100) < 0.9
    candidate = champion.copy()
    candidate[np.flatnonzero(champion)[:10]] = False  # the same photos, ten more of them wrong
    assert candidate.mean() == pytest.approx(champion.mean() - 0.10)
    # The old rule: the candidate's own upper bound reaches the champion's point estimate...
    low, high = np.quantile([candidate[rng.integers(0, 100, 100)].mean() for _ in range(2000)], [0.025, 0.975])
    assert high >= champion.mean() - 0.02
    # ...the paired test does not let it through: every day-resample sees it lose.
    result = sky(gate.noninferiority(paired(candidate, champion), MARGINS, n_boot=500, seed=0))
    assert not result.passed and result.value == pytest.approx(-0.10)
    assert result.interval[1] < -0.02 and "reaches below -0.02" in result.detail


def test_a_candidate_equal_to_the_champion_passes_with_a_zero_width_interval():
    hits = np.arange(100) % 3 > 0
    result = sky(gate.noninferiority(paired(hits, hits), MARGINS, n_boot=200, seed=0))
    assert result.passed and result.value == 0 and result.interval == [0.0, 0.0]


def test_a_candidate_slightly_worse_within_the_margin_passes_and_slightly_more_fails():
    champion = np.ones(1000, dtype=bool)  # 100 photos on each of 10 days (photo i on day i % 10)

    def worse_by(points: int) -> np.ndarray:
        """`points` more photos wrong on every day: the same loss, spread evenly."""
        hits = champion.copy()
        hits[: points * DAYS] = False
        return hits

    assert sky(gate.noninferiority(paired(worse_by(1), champion), MARGINS, n_boot=300, seed=0)).passed
    assert not sky(gate.noninferiority(paired(worse_by(4), champion), MARGINS, n_boot=300, seed=0)).passed


def test_the_skill_difference_is_computed_on_the_same_rows_as_by_hand():
    # Two rows, horizon 1 only differs: persistence error (now - obs) is 2 on both rows.
    observed = np.array([[10.0] * 4, [12.0] * 4])
    now = np.array([12.0, 14.0])
    candidate = observed + 1.0  # error 1 everywhere: RMSE 1
    champion = observed + 2.0  # error 2: RMSE 2
    no_rain = (np.zeros((2, 4)), np.zeros((2, 4)), np.zeros((2, 4)), np.zeros(2))  # never rains: rain skill undefined, left out
    criteria = gate.noninferiority(paired(np.ones(10, bool), np.ones(10, bool), rain=no_rain, temp=(candidate, champion, observed, now)), MARGINS, n_boot=50, seed=0)
    assert not [c for c in criteria if "rain" in c.name]
    temp = next(c for c in criteria if c.name == "vs_production_temp_skill_persistence_h1")
    # skill = 1 - rmse / rmse_persistence: candidate 1 - 1/2, champion 1 - 2/2 -> difference 0.5
    assert temp.value == pytest.approx(0.5) and temp.passed


def test_a_missing_metric_fails_the_thresholds_by_name():
    from skyedge.core.config import Gate

    document = {"sky": {"accuracy": 0.9}, "horizons": [{"h": 1, "rain_bss_persistence": 0.1}], "ci": {}}
    config = Gate.model_construct(min_sky_accuracy=0.6, min_rain_bss_persistence=0.0, min_temp_skill_persistence=0.0, horizons=[1], max_size_bytes=10**6, max_latency_ms_p95=50.0)
    criteria = {c.name: c for c in gate.thresholds(document, 1000, 1.0, config)}
    assert criteria["sky_accuracy"].passed and criteria["rain_bss_persistence_h1"].passed
    assert not criteria["temp_skill_persistence_h1"].passed and criteria["temp_skill_persistence_h1"].detail == "missing"

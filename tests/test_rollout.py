"""Rollout decisions on constructed fleets: advance, hold for lack of evidence, abort on failures or
on field skill; and the paired-by-hour comparison against hand-computed values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from skyedge.core.config import Rollout
from skyedge.evaluation import rollout

START = datetime(2026, 6, 1, tzinfo=UTC)
NEW, OLD = 2, 1
CONFIG = Rollout(
    rings=[5, 25, 100], soak_hours=6, min_matured_forecasts=100, max_failure_rate=0.05,
    noninferiority_margin={"rain_bss": 0.05, "temp_skill": 0.05}, n_boot=200, seed=0, cron="0 * * * *",
)


def state(ring: int = 0) -> dict:
    return {
        "channel": "production", "version": NEW, "previous_version": OLD, "rings": [5, 25, 100], "ring": ring, "state": "running",
        "started_at": START.isoformat(), "ring_started_at": START.isoformat(), "history": [],
    }


POINTER_ALL_NEW = {"channel": "production", "version": NEW, "previous": {"version": OLD}}  # no rollout field: everyone in the cohort


def station(device: str, version: int, hours: int, temp_error: float, seed: int, outcome: dict | None = None) -> dict:
    """A device's status.json: hourly forecasts for 4 horizons, scored. Truth is a daily cycle;
    persistence misses by the hour's change; the model misses by `temp_error` of noise."""
    rng = np.random.default_rng(seed)
    rows = []
    first_hour = START.timestamp() // 3600
    for t in range(hours):
        for h in (1, 2, 3, 4):
            truth = 15 + 5 * np.sin(2 * np.pi * (t + h) / 24)
            now = 15 + 5 * np.sin(2 * np.pi * t / 24)
            rain_obs = float(rng.random() < 0.3)
            rain_now = float(rng.random() < 0.3)
            rain_prob = float(np.clip(0.3 + (0.4 if rain_obs else -0.2) + rng.normal(0, 0.1), 0, 1)) if version == NEW or temp_error < 5 else 0.5
            rows.append([first_hour + t, version, h, rain_prob, truth + rng.normal(0, temp_error), rain_now, now, rain_obs, truth])
    return {"device_id": device, "time": (START + timedelta(hours=hours)).isoformat(), "version": version, "state": "up-to-date", "target_version": NEW,
            "field": {"recent": {"columns": list(rollout.PAIR_COLUMNS), "rows": rows}}, **(outcome or {})}


def fleet(hours: int, new_error: float, old_error: float = 0.5, n_new: int = 5, n_old: int = 20, failing: int = 0) -> list[dict]:
    new = [station(f"new-{i}", NEW, hours, new_error, i, {"state": "refused", "reason": "health-check-failed"} if i < failing else None) for i in range(n_new)]
    old = [station(f"old-{i}", OLD, hours, old_error, 100 + i) for i in range(n_old)]
    return new + old


def test_a_release_as_good_as_the_old_one_advances_once_soaked_with_enough_forecasts():
    decision = rollout.decide(state(), CONFIG, POINTER_ALL_NEW, fleet(hours=48, new_error=0.5), START + timedelta(hours=48))
    assert decision.action == rollout.ADVANCE, decision.reason
    assert decision.next_ring == 25 and all(c.verdict == "non-inferior" for c in decision.comparisons)


def test_the_last_ring_completes_the_rollout():
    decision = rollout.decide(state(ring=2), CONFIG, POINTER_ALL_NEW, fleet(hours=48, new_error=0.5), START + timedelta(hours=48))
    assert decision.action == rollout.COMPLETE


def test_a_ring_holds_until_it_has_soaked():
    decision = rollout.decide(state(), CONFIG, POINTER_ALL_NEW, fleet(hours=48, new_error=0.5), START + timedelta(hours=3))
    assert decision.action == rollout.HOLD and "soaked 3.0 of 6" in decision.reason


def test_a_ring_holds_without_enough_matured_forecasts():
    decision = rollout.decide(state(), CONFIG, POINTER_ALL_NEW, fleet(hours=4, new_error=0.5, n_new=1), START + timedelta(hours=8))
    assert decision.action == rollout.HOLD and "of 100 matured forecasts" in decision.reason


def test_a_release_clearly_worse_in_the_field_is_aborted():
    decision = rollout.decide(state(), CONFIG, POINTER_ALL_NEW, fleet(hours=24, new_error=6.0), START + timedelta(hours=2))
    assert decision.action == rollout.ABORT and "temp_skill_persistence" in decision.reason
    temp = next(c for c in decision.comparisons if c.metric == "temp_skill_persistence")
    assert temp.verdict == "inferior" and temp.interval[1] < -0.05


def test_too_many_failed_devices_abort_the_rollout():
    decision = rollout.decide(state(), CONFIG, POINTER_ALL_NEW, fleet(hours=48, new_error=0.5, n_new=10, failing=2), START + timedelta(hours=48))
    assert decision.action == rollout.ABORT and "2 of 30 devices" in decision.reason


def test_the_comparison_pairs_hours_and_pools_cohorts_as_computed_by_hand():
    # Two hours, one device per cohort, horizon 1; temperature errors chosen by hand.
    rows = [
        # hour, version, h, rain_prob, temp_c, rain_now, temp_now, rain_obs, temp_obs
        [10, NEW, 1, 0.0, 11.0, 0.0, 12.0, 0.0, 10.0],  # new: se 1, persistence 4
        [10, OLD, 1, 0.0, 13.0, 0.0, 12.0, 0.0, 10.0],  # old: se 9, persistence 4
        [11, NEW, 1, 0.0, 10.0, 0.0, 11.0, 0.0, 10.0],  # new: se 0, persistence 1
        [11, OLD, 1, 0.0, 10.0, 0.0, 11.0, 0.0, 10.0],  # old: se 0, persistence 1
        [12, NEW, 1, 0.0, 50.0, 0.0, 11.0, 0.0, 10.0],  # an hour only the new cohort forecast: not paired, ignored
    ]
    result = rollout.compare(np.array(rows, float), NEW, OLD, "temp", margin=0.05, n_boot=50, seed=0)
    assert result.hours == 2 and result.new_forecasts == 2 and result.old_forecasts == 2
    assert result.new == pytest.approx(1 - 1 / 5) and result.old == pytest.approx(1 - 9 / 5)
    assert result.difference == pytest.approx(0.8 - (-0.8))


def test_cohorts_are_compared_by_their_gain_over_persistence_so_a_calm_cohort_does_not_swing_it():
    """The new cohort's stations stayed calm (persistence nearly perfect) and its forecasts were off
    by a hundredth of a degree squared more than persistence; the old cohort's beat persistence by as
    little. Each against its own persistence the new release would look a whole unit of skill worse
    (-1 vs 0.001); by gain over persistence in pooled units the difference is what it is: tiny."""
    rows = [
        # hour, version, h, rain_prob, temp_c, rain_now, temp_now, rain_obs, temp_obs
        [10, NEW, 1, 0.0, 10.0 + 0.02**0.5, 0.0, 10.1, 0.0, 10.0],  # new: se 0.02, persistence 0.01
        [10, OLD, 1, 0.0, 10.0 + 8.99**0.5, 0.0, 13.0, 0.0, 10.0],  # old: se 8.99, persistence 9
        [11, NEW, 1, 0.0, 10.0 + 0.02**0.5, 0.0, 10.1, 0.0, 10.0],
        [11, OLD, 1, 0.0, 10.0 + 8.99**0.5, 0.0, 13.0, 0.0, 10.0],
    ]
    result = rollout.compare(np.array(rows, float), NEW, OLD, "temp", margin=0.05, n_boot=50, seed=0)
    assert result.new == pytest.approx(-1.0) and result.old == pytest.approx(1 - 8.99 / 9)  # each against its own
    assert result.difference == pytest.approx(((0.01 - 0.02) - (9 - 8.99)) / ((0.01 + 9) / 2))
    assert abs(result.difference) < 0.01 and result.verdict == "non-inferior"


def test_no_verdict_before_the_new_release_has_enough_matured_forecasts():
    rows = [[10, NEW, 1, 0.0, 20.0, 0.0, 10.0, 0.0, 10.0], [10, OLD, 1, 0.0, 10.5, 0.0, 11.0, 0.0, 10.0],
            [11, NEW, 1, 0.0, 20.0, 0.0, 10.0, 0.0, 10.0], [11, OLD, 1, 0.0, 10.5, 0.0, 11.0, 0.0, 10.0]]
    few = rollout.compare(np.array(rows, float), NEW, OLD, "temp", margin=0.05, n_boot=50, seed=0, min_forecasts=3)
    assert few.difference < -1 and few.verdict == "undecided"  # far worse, but on two forecasts
    assert rollout.compare(np.array(rows, float), NEW, OLD, "temp", margin=0.05, n_boot=50, seed=0, min_forecasts=2).verdict == "inferior"

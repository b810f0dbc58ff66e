"""Rollout decisions on constructed fleets: advance, hold for lack of evidence, abort on failures or
on field skill; and the paired-by-hour comparison against hand-computed values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from skyedge.core.config import Rollout
from skyedge.device.journal import RECENT_COLUMNS
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


def station(device: str, version: int, hours: int, temp_error: float, seed: int, outcome: dict | None = None, shadow_error: float | None = None) -> dict:
    """A device's status.json: hourly forecasts for 4 horizons, scored. Truth is a daily cycle;
    persistence misses by the hour's change; the model misses by `temp_error` of noise. A device
    on the new release also reports the old release's shadow forecasts (`shadow_error`)."""
    rng = np.random.default_rng(seed)
    rows = []
    first_hour = START.timestamp() // 3600
    for t in range(hours):
        for h in (1, 2, 3, 4):
            truth = 15 + 5 * np.sin(2 * np.pi * (t + h) / 24)
            now = 15 + 5 * np.sin(2 * np.pi * t / 24)
            rain_obs = float(rng.random() < 0.3)
            rain_now = float(rng.random() < 0.3)
            for release, error, shadow in ((version, temp_error, 0), (OLD, shadow_error, 1)):
                if error is None:
                    continue
                rain_prob = float(np.clip(0.3 + (0.4 if rain_obs else -0.2) + rng.normal(0, 0.1), 0, 1))
                rows.append([first_hour + t, release, h, rain_prob, truth + rng.normal(0, error), rain_now, now, rain_obs, truth, shadow])
    return {"device_id": device, "time": (START + timedelta(hours=hours)).isoformat(), "version": version, "state": "up-to-date", "target_version": NEW,
            "field": {"recent": {"columns": list(RECENT_COLUMNS), "rows": rows}}, **(outcome or {})}


def fleet(hours: int, new_error: float, old_error: float = 0.5, n_new: int = 5, n_old: int = 20, failing: int = 0) -> list[dict]:
    new = [station(f"new-{i}", NEW, hours, new_error, i, {"state": "refused", "reason": "health-check-failed"} if i < failing else None, shadow_error=old_error) for i in range(n_new)]
    old = [station(f"old-{i}", OLD, hours, old_error, 100 + i) for i in range(n_old)]
    return new + old


def test_a_release_as_good_as_the_old_one_advances_once_soaked_with_enough_forecasts():
    decision = rollout.decide(state(), CONFIG, POINTER_ALL_NEW, fleet(hours=48, new_error=0.5), START + timedelta(hours=48))
    assert decision.action == rollout.ADVANCE, decision.reason
    assert decision.next_ring == 25 and all(c.verdict == "non-inferior" for c in decision.comparisons)


def test_the_last_ring_completes_the_rollout():
    decision = rollout.decide(state(ring=2), CONFIG, POINTER_ALL_NEW, fleet(hours=48, new_error=0.5), START + timedelta(hours=48))
    assert decision.action == rollout.COMPLETE


def test_the_last_ring_completes_once_soaked():
    everyone_new = fleet(hours=48, new_error=0.5, n_new=10, n_old=0)
    assert rollout.decide(state(ring=2), CONFIG, POINTER_ALL_NEW, everyone_new, START + timedelta(hours=3)).action == rollout.HOLD
    done = rollout.decide(state(ring=2), CONFIG, POINTER_ALL_NEW, everyone_new, START + timedelta(hours=6))
    assert done.action == rollout.COMPLETE and "the rollout is complete" in done.reason


def test_a_ring_holds_until_it_has_soaked():
    decision = rollout.decide(state(), CONFIG, POINTER_ALL_NEW, fleet(hours=48, new_error=0.5), START + timedelta(hours=3))
    assert decision.action == rollout.HOLD and "soaked 3.0 of 6" in decision.reason


def test_a_ring_holds_without_enough_matured_forecasts():
    decision = rollout.decide(state(), CONFIG, POINTER_ALL_NEW, fleet(hours=4, new_error=0.5, n_new=1), START + timedelta(hours=8))
    assert decision.action == rollout.HOLD and "of 100 matured forecasts" in decision.reason


def test_a_release_clearly_worse_in_the_field_is_aborted():
    decision = rollout.decide(state(), CONFIG, POINTER_ALL_NEW, fleet(hours=30, new_error=6.0), START + timedelta(hours=2))
    assert decision.action == rollout.ABORT and "temp_skill_persistence" in decision.reason
    temp = next(c for c in decision.comparisons if c.metric == "temp_skill_persistence")
    assert temp.verdict == "inferior" and temp.interval[1] < -0.05


def test_too_many_failed_devices_abort_the_rollout():
    decision = rollout.decide(state(), CONFIG, POINTER_ALL_NEW, fleet(hours=48, new_error=0.5, n_new=10, failing=2), START + timedelta(hours=48))
    assert decision.action == rollout.ABORT and "2 of 30 devices" in decision.reason


COLUMNS = (*RECENT_COLUMNS, "device")


def pair_rows(*rows: tuple) -> np.ndarray:
    """Rows of rollout.PAIR_COLUMNS from (device, hour, version, shadow, temp_c, temp_now, temp_obs): horizon 1, no rain."""
    assert rollout.PAIR_COLUMNS == COLUMNS
    return np.array([[hour, version, 1, 0.0, temp, 0.0, now, 0.0, obs, shadow, device] for device, hour, version, shadow, temp, now, obs in rows], float)


def test_the_comparison_pairs_each_forecast_with_the_old_releases_on_the_same_station_and_hour_as_computed_by_hand():
    pairs = pair_rows(
        # device, hour, version, shadow, temp_c, temp_now, temp_obs
        (0, 10, NEW, 0, 11.0, 12.0, 10.0),  # new: se 1, persistence 4
        (0, 10, OLD, 1, 13.0, 12.0, 10.0),  # old's shadow forecast on the same reading: se 9
        (0, 11, NEW, 0, 10.0, 11.0, 10.0),  # new: se 0, persistence 1
        (0, 11, OLD, 1, 10.0, 11.0, 10.0),  # old: se 0
        (1, 10, OLD, 0, 50.0, 11.0, 10.0),  # another station on the old release: not the same reading, not paired
        (0, 12, NEW, 0, 50.0, 11.0, 10.0),  # no shadow forecast that hour: not paired, ignored
    )
    result = rollout.compare(pairs, NEW, OLD, "temp", margin=0.05, n_boot=50, seed=0)
    assert result.hours == 2 and result.forecasts == 2 and result.stations == 1
    assert result.new == pytest.approx(1 - 1 / 5) and result.old == pytest.approx(1 - 9 / 5)
    assert result.difference == pytest.approx((9 - 1) / 5)  # = skill(new) - skill(old)


def test_two_releases_that_forecast_alike_differ_by_exactly_zero_whatever_the_stations_weather():
    """One station calm (persistence almost perfect), one stormy: measured against each other, as
    cohorts of different stations, they would differ by whole units of skill. Paired on the same
    readings the stations' weather cancels out."""
    rows = []
    for day in (0, 1):
        for hour in range(10, 16):
            at = day * 24 + hour
            rows += [(0, at, NEW, 0, 10.05, 10.1, 10.0), (0, at, OLD, 1, 10.05, 10.1, 10.0),  # calm
                     (1, at, NEW, 0, 12.0, 16.0, 10.0), (1, at, OLD, 1, 12.0, 16.0, 10.0)]  # stormy
    result = rollout.compare(pair_rows(*rows), NEW, OLD, "temp", margin=0.05, n_boot=50, seed=0, min_forecasts=10)
    assert result.difference == 0.0 and result.interval == [0.0, 0.0] and result.verdict == "non-inferior"
    assert result.stations == 2 and result.days == 2


def test_no_verdict_before_enough_matured_forecasts_over_at_least_two_days():
    rows = [(0, 10, NEW, 0, 20.0, 11.0, 10.0), (0, 10, OLD, 1, 10.5, 11.0, 10.0),
            (0, 11, NEW, 0, 20.0, 11.0, 10.0), (0, 11, OLD, 1, 10.5, 11.0, 10.0)]
    few = rollout.compare(pair_rows(*rows), NEW, OLD, "temp", margin=0.05, n_boot=50, seed=0, min_forecasts=3)
    assert few.difference < -1 and few.verdict == "undecided"  # far worse, but on two forecasts
    one_day = rollout.compare(pair_rows(*rows), NEW, OLD, "temp", margin=0.05, n_boot=50, seed=0, min_forecasts=2)
    assert one_day.days == 1 and one_day.verdict == "undecided"  # enough forecasts, but every resample is the same day
    rows += [(0, 34, NEW, 0, 20.0, 11.0, 10.0), (0, 34, OLD, 1, 10.5, 11.0, 10.0)]
    assert rollout.compare(pair_rows(*rows), NEW, OLD, "temp", margin=0.05, n_boot=50, seed=0, min_forecasts=2).verdict == "inferior"


def test_field_pairs_read_each_status_by_its_column_names_and_number_the_stations():
    older = {"field": {"recent": {"columns": list(RECENT_COLUMNS[:-1]), "rows": [[10, OLD, 1, 0.2, 11.0, 0.0, 12.0, 0.0, 10.0]]}}}  # before shadow forecasts
    newer = {"field": {"recent": {"columns": list(RECENT_COLUMNS), "rows": [[10, OLD, 1, 0.2, 11.0, 0.0, 12.0, 0.0, 10.0, 1]]}}}
    pairs = rollout.field_pairs([older, {}, newer])
    column = {name: i for i, name in enumerate(rollout.PAIR_COLUMNS)}
    assert pairs[:, column["shadow"]].tolist() == [0, 1] and pairs[:, column["device"]].tolist() == [0, 2]

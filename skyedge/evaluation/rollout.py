"""Staged rollouts that decide themselves: advance, hold or abort a release, ring by ring, on what
the field measured.

A rollout moves the channel's release through rings (params `rollout.rings`, e.g. 5 -> 25 -> 100
percent of the fleet by the registry's cohort hash, `skyedge.release.registry.in_cohort`). Its
state is one object in the store, `rollouts/<channel>.json`: the release, the release it
replaces, the ring, when the ring started, and every decision taken, with its table.

At each check (`decide`), for the current ring:

- **failures**: the share of the ring's devices (in the cohort of the new release, reported since
  the ring started) whose last pull was refused, failed its health check or ended in an error.
  Above `max_failure_rate`: abort.
- **field skill, paired by hour**: every station scores its matured forecasts against its own
  later readings (skyedge.device.journal) and reports them per issue hour (status.json
  `field.recent`). For each hour that both cohorts forecast, the new release's devices and the
  old release's devices are pooled separately; the statistic is skill(new) - skill(old) over the
  hours, with skill = 1 - error / error of persistence (rain: Brier; temperature: squared error),
  computed as each cohort's gain over its own persistence per forecast, new minus old, in units
  of the persistence error of both cohorts together:
      ((mean persistence error - mean error)(new) - (same)(old)) / mean persistence error(both)
  It equals skill(new) - skill(old) when the cohorts' persistence errors are equal, and is 0 for
  two releases that both forecast persistence. The cohorts are different stations: each against
  its own persistence, a cohort that stayed dry and calm (persistence nearly perfect) divides by
  almost nothing, and being off by a hundredth of a degree there would swing the difference by
  whole units. Its 95% interval resamples whole days (`metrics.bootstrap_ci`), as the promotion
  gate does. No verdict (undecided) before the new release has `min_matured_forecasts` in the
  paired hours: neither an abort nor an advance on a handful of forecasts.
  Abort when the interval lies entirely below -margin (worse beyond the margin, with 95%
  confidence); advance only when its lower end is at or above -margin (non-inferior).
- **evidence**: advance also needs the ring to have soaked `soak_hours` and the new release to
  have `min_matured_forecasts` scored forecasts in the paired hours; else hold.

`apply` carries a decision out in the registry: advance widens the staged rollout (signed with
the TUF keys; at 100 percent the rollout field is removed), abort re-points the channel to the
release it replaced (`registry.rollback`, signed), so devices on the new release go back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from skyedge.core.config import Rollout
from skyedge.core.tables import Column, markdown_table, text_table
from skyedge.device.journal import RECENT_COLUMNS
from skyedge.evaluation import metrics
from skyedge.release import registry
from skyedge.release.store import NotFound, Store

ROLLOUTS = "rollouts"
ADVANCE, HOLD, ABORT, COMPLETE = "advance", "hold", "abort", "complete"
RUNNING, COMPLETED, ABORTED = "running", "completed", "aborted"
FAILED_REASONS = frozenset({"health-check-failed", "canary-mismatch"})
# Columns of the matured-forecast rows a station reports (status.json field.recent.rows).
PAIR_COLUMNS = RECENT_COLUMNS
_COL = {name: i for i, name in enumerate(PAIR_COLUMNS)}
HOUR = timedelta(hours=1)


class RolloutError(ValueError):
    """A rollout command that cannot be carried out; the message says why and what to do."""


# --- state ----------------------------------------------------------------------------------------


def state_key(channel: str) -> str:
    return f"{ROLLOUTS}/{registry.check_channel(channel)}.json"


def read_state(store: Store, channel: str) -> dict[str, Any] | None:
    try:
        return json.loads(store.get_bytes(state_key(channel), max_bytes=registry.MAX_POINTER_BYTES * 16))
    except NotFound:
        return None


def write_state(store: Store, state: dict[str, Any]) -> None:
    store.put_bytes(state_key(state["channel"]), (json.dumps(state, indent=2, sort_keys=True) + "\n").encode())


def start(store: Store, channel: str, config: Rollout, now: datetime, keys: Path | str | None = None) -> dict[str, Any]:
    """Begin a rollout of the release the channel points to (published as a staged rollout), at the first ring."""
    pointer = registry.read_channel(store, channel)
    if pointer is None:
        raise RolloutError(f"channel {channel!r} has no release: publish one first")
    if pointer.get("previous") is None:
        raise RolloutError(f"channel {channel!r} has only one release ({pointer['version']}): a rollout replaces a release; there is nothing to compare with")
    if not pointer.get("rollout"):
        raise RolloutError(
            f"version {pointer['version']} on {channel!r} was published to every device (no staged rollout on the pointer): "
            "start the rollout with the next release (skyedge rollout start --package DIR)"
        )
    current = read_state(store, channel)
    if current is not None and current["state"] == RUNNING:
        raise RolloutError(f"a rollout of version {current['version']} on {channel!r} is running (ring {current['rings'][current['ring']]}%): advance or abort it first")
    registry.set_rollout(store, channel, {"percent": config.rings[0]}, keys=keys)
    state = {
        "channel": channel,
        "version": pointer["version"],
        "previous_version": pointer["previous"]["version"],
        "rings": list(config.rings),
        "ring": 0,
        "state": RUNNING,
        "started_at": now.isoformat(timespec="seconds"),
        "ring_started_at": now.isoformat(timespec="seconds"),
        "history": [],
    }
    write_state(store, state)
    return state


# --- evidence from the fleet -------------------------------------------------------------------------


def device_statuses(store: Store) -> list[dict[str, Any]]:
    """Every device's last status.json in the store (skyedge.device.agent reports it)."""
    statuses = []
    for key in store.list(f"{registry.DEVICES}/"):
        if key.endswith("/status.json"):
            try:
                statuses.append(json.loads(store.get_bytes(key, max_bytes=4 * 1024 * 1024)))
            except (NotFound, ValueError):
                continue
    return statuses


def field_pairs(statuses: list[dict[str, Any]]) -> np.ndarray:
    """All stations' matured forecasts as [P, len(PAIR_COLUMNS)] floats (NaN: missing)."""
    rows = [row for status in statuses for row in ((status.get("field") or {}).get("recent") or {}).get("rows", [])]
    return np.array(rows, dtype=np.float64).reshape(-1, len(PAIR_COLUMNS)) if rows else np.empty((0, len(PAIR_COLUMNS)))


@dataclass(frozen=True)
class Comparison:
    """skill(new) - skill(old) over the hours both cohorts forecast, with its day-resampled interval."""

    metric: str
    new: float | None
    old: float | None
    difference: float | None
    interval: list[float] | None
    margin: float
    hours: int
    new_forecasts: int
    old_forecasts: int
    verdict: str  # non-inferior | inferior | undecided


def _per_hour_errors(pairs: np.ndarray, version: int, kind: str, hours: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per hour in `hours`: summed squared error of the model, of persistence, and the count."""
    model, now, obs = (("rain_prob", "rain_now", "rain_obs") if kind == "rain" else ("temp_c", "temp_now", "temp_obs"))
    mine = pairs[(pairs[:, _COL["version"]] == version) & np.isfinite(pairs[:, _COL[obs]]) & np.isfinite(pairs[:, _COL[now]]) & np.isfinite(pairs[:, _COL[model]])]
    if not len(hours):
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    index = np.searchsorted(hours, mine[:, _COL["hour"]])
    inside = (index < len(hours)) & (hours[np.minimum(index, len(hours) - 1)] == mine[:, _COL["hour"]])
    index, mine = index[inside], mine[inside]
    error = np.bincount(index, (mine[:, _COL[model]] - mine[:, _COL[obs]]) ** 2, len(hours))
    reference = np.bincount(index, (mine[:, _COL[now]] - mine[:, _COL[obs]]) ** 2, len(hours))
    return error, reference, np.bincount(index, minlength=len(hours))


def compare(pairs: np.ndarray, new: int, old: int, kind: str, margin: float, n_boot: int, seed: int, min_forecasts: int = 1) -> Comparison:
    """The paired-by-hour comparison of one score (kind "rain": Brier skill; "temp": squared-error
    skill, both against persistence), pooled over horizons."""
    metric = "rain_bss_persistence" if kind == "rain" else "temp_skill_persistence"
    hours_new = set(pairs[pairs[:, _COL["version"]] == new, _COL["hour"]])
    hours_old = set(pairs[pairs[:, _COL["version"]] == old, _COL["hour"]])
    hours = np.array(sorted(hours_new & hours_old))
    new_err, new_ref, new_n = _per_hour_errors(pairs, new, kind, hours)
    old_err, old_ref, old_n = _per_hour_errors(pairs, old, kind, hours)
    both = (new_n > 0) & (old_n > 0)
    hours, new_err, new_ref, new_n, old_err, old_ref, old_n = (a[both] for a in (hours, new_err, new_ref, new_n, old_err, old_ref, old_n))

    def skill(err: np.ndarray, ref: np.ndarray) -> float | None:
        return 1.0 - float(err.sum()) / float(ref.sum()) if ref.sum() > 0 else None

    def difference(idx: np.ndarray) -> float | None:
        """Gain over persistence per forecast, new minus old, in pooled persistence error (module doc)."""
        n_new, n_old = new_n[idx].sum(), old_n[idx].sum()
        reference = (new_ref[idx].sum() + old_ref[idx].sum()) / (n_new + n_old)
        if reference <= 0:
            return None
        gain_new = (new_ref[idx].sum() - new_err[idx].sum()) / n_new
        gain_old = (old_ref[idx].sum() - old_err[idx].sum()) / n_old
        return float((gain_new - gain_old) / reference)

    everything = np.arange(len(hours))
    value = difference(everything) if len(hours) else None
    interval = None
    if value is not None:
        days = (hours // 24).astype(np.int64)  # epoch hours -> epoch days: hours of one day move together
        try:
            interval = list(metrics.bootstrap_ci(difference, days, n_boot, seed))
        except ValueError:
            interval = None
    if interval is None or new_n.sum() < min_forecasts:
        verdict = "undecided"
    elif interval[1] < -margin:
        verdict = "inferior"
    elif interval[0] >= -margin:
        verdict = "non-inferior"
    else:
        verdict = "undecided"
    return Comparison(
        metric, skill(new_err, new_ref) if len(hours) else None, skill(old_err, old_ref) if len(hours) else None,
        value, interval, margin, len(hours), int(new_n.sum()), int(old_n.sum()), verdict,
    )


def failures(statuses: list[dict[str, Any]], pointer: dict[str, Any], since: datetime) -> tuple[int, int]:
    """(failed, reported) among the devices of the new release's cohort that reported since `since`."""
    failed = reported = 0
    for status in statuses:
        device = status.get("device_id")
        reported_at = datetime.fromisoformat(status["time"]) if status.get("time") else None
        if not device or reported_at is None or reported_at < since or not registry.in_cohort(device, pointer):
            continue
        reported += 1
        about_new = status.get("target_version") == pointer["version"]
        if about_new and (status.get("reason") in FAILED_REASONS or status.get("state") in ("refused", "error")):
            failed += 1
    return failed, reported


# --- the decision ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    action: str  # advance | hold | abort | complete
    reason: str
    ring: int  # percent of the fleet when decided
    next_ring: int | None
    soaked_hours: float
    failed: int
    reported: int
    comparisons: list[Comparison] = field(default_factory=list)
    decided_at: str = ""

    def as_record(self) -> dict[str, Any]:
        return {**asdict(self), "comparisons": [asdict(c) for c in self.comparisons]}


def decide(state: dict[str, Any], config: Rollout, pointer: dict[str, Any], statuses: list[dict[str, Any]], now: datetime) -> Decision:
    """What the rollout should do now, and why (module doc). Times are timezone-aware (UTC)."""
    ring = state["rings"][state["ring"]]
    next_ring = state["rings"][state["ring"] + 1] if state["ring"] + 1 < len(state["rings"]) else None
    ring_start = datetime.fromisoformat(state["ring_started_at"])
    soaked = (now - ring_start) / HOUR
    failed, reported = failures(statuses, pointer, ring_start)
    pairs = field_pairs(statuses)
    since_hour = ring_start.timestamp() // 3600
    pairs = pairs[pairs[:, _COL["hour"]] >= since_hour] if len(pairs) else pairs
    margins = config.noninferiority_margin
    comparisons = [
        compare(pairs, state["version"], state["previous_version"], "rain", margins.rain_bss, config.n_boot, config.seed, config.min_matured_forecasts),
        compare(pairs, state["version"], state["previous_version"], "temp", margins.temp_skill, config.n_boot, config.seed, config.min_matured_forecasts),
    ]
    common = {"ring": ring, "next_ring": next_ring, "soaked_hours": round(soaked, 2), "failed": failed, "reported": reported, "comparisons": comparisons, "decided_at": now.isoformat(timespec="seconds")}
    rate = failed / reported if reported else 0.0
    if reported and rate > config.max_failure_rate:
        return Decision(ABORT, f"{failed} of {reported} devices on version {state['version']} failed (refused, health check or error): {rate:.1%} > {config.max_failure_rate:.1%}", **common)
    inferior = [c for c in comparisons if c.verdict == "inferior"]
    if inferior:
        worst = inferior[0]
        return Decision(ABORT, f"{worst.metric}: version {state['version']} is worse than {state['previous_version']} by {-worst.difference:.3f} (95% interval [{worst.interval[0]:+.3f}, {worst.interval[1]:+.3f}], entirely below -{worst.margin:g}) over {worst.hours} paired hours", **common)
    matured = min(c.new_forecasts for c in comparisons)
    missing = []
    if soaked < config.soak_hours:
        missing.append(f"soaked {soaked:.1f} of {config.soak_hours} h")
    if matured < config.min_matured_forecasts:
        missing.append(f"{matured} of {config.min_matured_forecasts} matured forecasts of version {state['version']} in hours both cohorts forecast")
    undecided = [c.metric for c in comparisons if c.verdict != "non-inferior"]
    if undecided and not missing:
        missing.append(f"non-inferiority not yet shown for {', '.join(undecided)} (interval reaches below -margin)")
    if missing:
        return Decision(HOLD, "not enough evidence yet: " + "; ".join(missing), **common)
    if next_ring is None:
        return Decision(COMPLETE, f"ring {ring}% soaked {soaked:.1f} h, {failed} of {reported} failed, field skill non-inferior: the rollout is complete", **common)
    return Decision(ADVANCE, f"ring {ring}% soaked {soaked:.1f} h, {failed} of {reported} failed, field skill non-inferior: widening to {next_ring}%", **common)


def operator_decision(state: dict[str, Any], action: str, reason: str, now: datetime) -> Decision:
    """An operator's advance or abort, recorded like the flow's own decisions."""
    ring = state["rings"][state["ring"]]
    next_ring = state["rings"][state["ring"] + 1] if state["ring"] + 1 < len(state["rings"]) else None
    soaked = (now - datetime.fromisoformat(state["ring_started_at"])) / HOUR
    if action == ADVANCE and next_ring is None:
        action = COMPLETE
    return Decision(action, f"operator: {reason}", ring, next_ring, round(soaked, 2), 0, 0, [], now.isoformat(timespec="seconds"))


def apply(store: Store, state: dict[str, Any], decision: Decision, now: datetime, keys: Path | str | None = None) -> dict[str, Any]:
    """Carry the decision out in the registry and record it in the rollout's state."""
    state = {**state, "history": [*state["history"], decision.as_record()]}
    if decision.action == ADVANCE:
        state["ring"] += 1
        state["ring_started_at"] = now.isoformat(timespec="seconds")
        percent = state["rings"][state["ring"]]
        registry.set_rollout(store, state["channel"], None if percent >= 100 else {"percent": percent}, keys=keys)
    elif decision.action == COMPLETE:
        registry.set_rollout(store, state["channel"], None, keys=keys)
        state["state"] = COMPLETED
    elif decision.action == ABORT:
        registry.rollback(store, state["channel"], keys=keys)
        state["state"] = ABORTED
    write_state(store, state)
    return state


# --- what an operator reads -----------------------------------------------------------------------------

COMPARISON_COLUMNS = [
    Column("metric", align="left"),
    Column("new", "new release"),
    Column("old", "old release"),
    Column("difference", "new - old", format="+.3f"),
    Column("interval", "95% interval (days)", format=lambda ci: f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"),
    Column("margin", format="g"),
    Column("hours", "paired hours"),
    Column("new_forecasts", "n new"),
    Column("old_forecasts", "n old"),
    Column("verdict", align="left"),
]


def describe(state: dict[str, Any], decision: Decision, markdown: bool = False) -> str:
    """The decision as an operator reads it: headline, reason, evidence, comparison table."""
    table = (markdown_table if markdown else text_table)([asdict(c) for c in decision.comparisons], COMPARISON_COLUMNS)
    lines = [
        f"{'## ' if markdown else ''}Rollout of version {state['version']} (replacing {state['previous_version']}) on {state['channel']}: {decision.action.upper()} at ring {decision.ring}%",
        "",
        f"Reason: {decision.reason}",
        "",
        f"Ring started {state['ring_started_at']}, soaked {decision.soaked_hours} h; devices of the ring reporting: {decision.reported}, failed: {decision.failed}.",
        "",
        table,
    ]
    return "\n".join(lines)


HISTORY_COLUMNS = [Column("decided_at", "when", align="left"), Column("ring", "ring %", format="g"), Column("action", align="left"), Column("reason", align="left")]


def history_rows(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Every decision of the rollout so far: when, at which ring, what and why."""
    return [{"decided_at": d["decided_at"], "ring": d["ring"], "action": d["action"], "reason": d["reason"]} for d in state["history"]]


def ring_history(state: dict[str, Any], markdown: bool = False) -> str:
    rows = history_rows(state)
    return (markdown_table if markdown else text_table)(rows, HISTORY_COLUMNS) if rows else "no decisions yet"

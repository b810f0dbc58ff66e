"""The fleet as an operator reads it: one row per station (`skyedge fleet`) and the fleet report
(HTML, linked from the rollout flow's runs): field skill per release with intervals, drift over
time, the rollout's ring history.

Everything comes from the store: each device's last status.json (skyedge.device.agent, with the
station's `field`, `drift` and `uplink` sections) and the rollout state (skyedge.evaluation.rollout).
Drift over time needs more than the last status: every rollout check appends a snapshot of the
fleet (stations per drift flag, versions, failures) to `fleet/history.jsonl` (`record_snapshot`).
"""

from __future__ import annotations

import base64
import html
import io
import json
from datetime import datetime
from typing import Any

import numpy as np

from skyedge.core.contract import HORIZONS
from skyedge.core.tables import Column, markdown_table, text_table
from skyedge.evaluation import metrics, rollout
from skyedge.release import registry
from skyedge.release.store import NotFound, Store

HISTORY_KEY = "fleet/history.jsonl"
MAX_HISTORY_BYTES = 16 * 1024 * 1024


def _skills(status: dict[str, Any]) -> tuple[list[float | None], list[float | None], int]:
    """The station's field skill of the version it runs: rain BSS and temperature skill per horizon, and n."""
    mine = next((v for v in (status.get("field") or {}).get("versions", []) if v["version"] == status.get("version")), None)
    if mine is None:
        return [None] * len(HORIZONS), [None] * len(HORIZONS), 0
    by_h = {entry["h"]: entry for entry in mine["horizons"]}
    rain = [(by_h.get(h) or {}).get("rain", {}).get("brier_skill") for h in HORIZONS]
    temp = [(by_h.get(h) or {}).get("temp", {}).get("skill") for h in HORIZONS]
    return rain, temp, max((by_h.get(h) or {}).get("temp", {}).get("n", 0) for h in HORIZONS)


def _per_horizon(values: list[float | None]) -> str:
    return " ".join("-" if v is None else f"{v:+.2f}" for v in values)


def station_rows(store: Store) -> list[dict[str, Any]]:
    """One row per device that reported: what it runs, what its channel says, health, field skill
    per horizon, drift flags, when it was last seen and what waits to upload."""
    rows, pointers = [], {}
    for status in rollout.device_statuses(store):
        channel = status.get("channel") or registry.PRODUCTION
        if channel not in pointers:
            pointers[channel] = registry.read_channel(store, channel)
        expected = registry.expected_version(pointers[channel], status.get("device_id") or "") if pointers[channel] else None
        rain, temp, n = _skills(status)
        drift = status.get("drift") or {}
        uplink = status.get("uplink") or {}
        rows.append({
            "device": status.get("device_id"),
            "version": status.get("version"),
            "expected": expected,
            "check": "ok" if expected is None or expected == status.get("version") else f"MISMATCH: channel says {expected}",
            "health": status.get("health"),
            "state": status.get("state") if not status.get("reason") else f"{status.get('state')} ({status.get('reason')})",
            "rain_bss": _per_horizon(rain),
            "temp_skill": _per_horizon(temp),
            "n": n,
            "drift": ", ".join(drift.get("drifted") or []) or ("-" if drift.get("reference") else "no reference"),
            "last_seen": status.get("time"),
            "waiting": uplink.get("pending"),
            "dropped_photos": uplink.get("dropped_photos"),
        })
    return sorted(rows, key=lambda r: str(r["device"]))


STATION_COLUMNS = [
    Column("device", align="left"), Column("version"), Column("expected"), Column("check", align="left"), Column("health", align="left"),
    Column("state", "last pull", align="left"), Column("rain_bss", "rain BSS h1-h4", align="left"), Column("temp_skill", "temp skill h1-h4", align="left"),
    Column("n"), Column("drift", "drift flags", align="left"), Column("last_seen", "last seen", align="left"), Column("waiting", "to upload"),
    Column("dropped_photos", "photos dropped"),
]


def station_table(rows: list[dict[str, Any]]) -> str:
    return text_table(rows, STATION_COLUMNS)


# --- field skill per release, pooled over the fleet -----------------------------------------------------


def release_skill(statuses: list[dict[str, Any]], n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Per release and horizon: the fleet's pooled field skill against persistence with a 95%
    interval that resamples whole days (every station's matured forecasts, status field.recent)."""
    col = {name: i for i, name in enumerate(rollout.PAIR_COLUMNS)}
    pairs = rollout.field_pairs(statuses)
    pairs = pairs[pairs[:, col["shadow"]] == 0]  # a release's field skill: its forecasts while active
    rows = []
    for version in sorted({int(v) for v in pairs[:, col["version"]]}) if len(pairs) else []:
        for h in HORIZONS:
            mine = pairs[(pairs[:, col["version"]] == version) & (pairs[:, col["h"]] == h)]
            row: dict[str, Any] = {"version": version, "h": h}
            for kind, (model, now, obs) in {"rain_bss": ("rain_prob", "rain_now", "rain_obs"), "temp_skill": ("temp_c", "temp_now", "temp_obs")}.items():
                ok = mine[np.isfinite(mine[:, col[obs]]) & np.isfinite(mine[:, col[now]])]
                err, ref = (ok[:, col[model]] - ok[:, col[obs]]) ** 2, (ok[:, col[now]] - ok[:, col[obs]]) ** 2

                def skill(idx: np.ndarray, err=err, ref=ref) -> float | None:
                    return 1 - err[idx].sum() / ref[idx].sum() if ref[idx].sum() > 0 else None

                value = skill(np.arange(len(ok))) if len(ok) else None
                interval = None
                if value is not None:
                    try:
                        interval = list(metrics.bootstrap_ci(skill, (ok[:, col["hour"]] // 24).astype(np.int64), n_boot, seed))
                    except ValueError:
                        interval = None
                row[kind], row[f"{kind}_ci"], row["n"] = value, interval, len(ok)
            rows.append(row)
    return rows


SKILL_COLUMNS = [
    Column("version"), Column("h", format="d"), Column("n"),
    Column("rain_bss", "rain BSS", format="+.3f"), Column("rain_bss_ci", "95% interval", format=lambda ci: f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"),
    Column("temp_skill", "temp skill", format="+.3f"), Column("temp_skill_ci", "95% interval", format=lambda ci: f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"),
]


# --- history and the HTML report ------------------------------------------------------------------------------


def snapshot(statuses: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    """What the fleet looked like at one check: versions, failures, stations per drift flag."""
    versions: dict[str, int] = {}
    flags: dict[str, int] = {}
    for status in statuses:
        versions[str(status.get("version"))] = versions.get(str(status.get("version")), 0) + 1
        for flag in (status.get("drift") or {}).get("drifted") or []:
            flags[flag] = flags.get(flag, 0) + 1
    failing = sum(status.get("state") in ("refused", "error") for status in statuses)
    return {"at": now.isoformat(timespec="seconds"), "stations": len(statuses), "versions": versions, "failing": failing, "drift": flags}


def record_snapshot(store: Store, entry: dict[str, Any]) -> None:
    """Append one snapshot to fleet/history.jsonl (one writer: the rollout flow)."""
    try:
        previous = store.get_bytes(HISTORY_KEY, max_bytes=MAX_HISTORY_BYTES)
    except NotFound:
        previous = b""
    store.put_bytes(HISTORY_KEY, previous + (json.dumps(entry, sort_keys=True) + "\n").encode())


def read_history(store: Store) -> list[dict[str, Any]]:
    try:
        return [json.loads(line) for line in store.get_bytes(HISTORY_KEY, max_bytes=MAX_HISTORY_BYTES).decode().splitlines() if line.strip()]
    except NotFound:
        return []


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _history_plot(history: list[dict[str, Any]]) -> str | None:
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = [datetime.fromisoformat(h["at"]) for h in history]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    for version in sorted({v for h in history for v in h["versions"]}):
        top.plot(times, [h["versions"].get(version, 0) for h in history], label=f"version {version}")
    top.set_ylabel("stations")
    top.legend(loc="upper left", fontsize=8)
    for flag in sorted({f for h in history for f in h["drift"]}):
        bottom.plot(times, [h["drift"].get(flag, 0) for h in history], label=flag)
    bottom.set_ylabel("stations with drift flag")
    if any(h["drift"] for h in history):
        bottom.legend(loc="upper left", fontsize=7)
    figure.autofmt_xdate()
    data = _png(figure)
    plt.close(figure)
    return data


def report_html(store: Store, channel: str, n_boot: int, seed: int) -> str:
    """The fleet report: stations, field skill per release with intervals, versions and drift over
    time, the rollout's ring history."""
    statuses = rollout.device_statuses(store)
    state = rollout.read_state(store, channel)
    plot = _history_plot(read_history(store))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>SkyEdge fleet report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}</style></head><body>",
        f"<h1>Fleet report: {html.escape(store.url)}</h1>",
        f"<p>{len(statuses)} stations reported. Field skill is each station's own forecasts scored against its later readings, against persistence; intervals resample whole days.</p>",
        "<h2>Field skill per release</h2>",
        _html_table(release_skill(statuses, n_boot, seed), SKILL_COLUMNS),
        "<h2>Versions and drift over time</h2>",
        f"<img src='{plot}' alt='versions and drift flags over time'>" if plot else "<p>no history yet (the rollout flow records one snapshot per check)</p>",
        f"<h2>Rollout on {html.escape(channel)}</h2>",
        f"<p>version {state['version']} replacing {state['previous_version']}: {state['state']}, ring {state['rings'][state['ring']]:g}%</p>" + _html_table(rollout.history_rows(state), rollout.HISTORY_COLUMNS) if state else "<p>no rollout yet</p>",
        "<h2>Stations</h2>",
        _html_table(station_rows(store), STATION_COLUMNS),
        "</body></html>",
    ]
    return "\n".join(parts)


def _html_table(rows: list[dict[str, Any]], columns: list[Column]) -> str:
    if not rows:
        return "<p>nothing yet</p>"
    head = "".join(f"<th>{html.escape(c.title)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c.text(row.get(c.key)))}</td>" for c in columns) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def skill_markdown(statuses: list[dict[str, Any]], n_boot: int, seed: int) -> str:
    return markdown_table(release_skill(statuses, n_boot, seed), SKILL_COLUMNS)

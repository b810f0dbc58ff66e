"""Promotion gate: absolute thresholds, then a paired non-inferiority test against production.

`judge` runs the candidate package and the production package on the same test rows of the
candidate's data (each with its own recorded preprocessing), on the field estimate only (rows from
days and stations training never saw), and applies every criterion:

- thresholds (params `gate`): sky accuracy, rain Brier skill and temperature skill against
  persistence per horizon, file size, p95 latency;
- non-inferiority against production: for each score, the difference candidate - production on
  the same rows, with a 95% bootstrap interval that resamples whole days (hours of one day are
  correlated). The candidate passes when the interval's lower end is above -margin (params
  `gate.noninferiority_margin`): it is not worse by more than the margin, beyond what resampling
  days explains. Comparing one model's interval with the other's point estimate (what this gate
  did before) passes a candidate at 0.80 [0.62, 0.91] against a champion at 0.90; the paired test
  does not. The rollout flow reads the same statistics (`noninferiority`).

Every criterion carries its plain-language meaning and which direction is better, so the approval
form can show it. A criterion is refused with its name, value and limit; nothing is skipped
silently: a missing metric fails.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from skyedge.core import inference, paths
from skyedge.core.config import Gate
from skyedge.core.contract import HORIZONS
from skyedge.core.tables import Column, markdown_table
from skyedge.data.dataset import Ingested, inputs_for_package, load_ingested
from skyedge.evaluation import metrics, scores

HIGHER, LOWER = "higher is better", "lower is better"


def meaning(name: str) -> str:
    """What a criterion measures, in words an operator reads on the approval form."""
    base = name.removeprefix("vs_production_")
    words = {
        "sky_accuracy": "share of sky photos classified right, on days training never saw",
        "size_bytes": "model file size in bytes (what a station downloads)",
        "latency_ms_p95": "95th-percentile time of one forecast, batch 1, 1 thread (ms)",
    }.get(base)
    if words is None:
        kind, _, h = base.rpartition("_h")
        words = {
            "rain_bss_persistence": f"rain in the hour ending {h} h ahead: Brier skill against persistence (1 perfect, 0 no better than 'as now')",
            "temp_skill_persistence": f"temperature {h} h ahead: RMSE skill against persistence (1 perfect, 0 no better than 'as now')",
        }.get(kind, base)
    return f"{words}; candidate - production on the same rows" if name.startswith("vs_production_") else words


@dataclass(frozen=True)
class Criterion:
    name: str
    value: float | None
    limit: float | None
    passed: bool
    detail: str = ""
    interval: list[float] | None = None  # 95% bootstrap interval of value (days resampled)
    direction: str = HIGHER

    def as_row(self) -> dict:
        return {**asdict(self), "meaning": meaning(self.name), "result": "pass" if self.passed else "FAIL"}


def _at_least(name: str, value: float | None, limit: float, interval: list | None = None) -> Criterion:
    passed = value is not None and value >= limit
    return Criterion(name, value, limit, passed, "" if passed else ("missing" if value is None else f"{value:.4g} < {limit:.4g}"), interval, HIGHER)


def _at_most(name: str, value: float | None, limit: float) -> Criterion:
    passed = value is not None and value <= limit
    return Criterion(name, value, limit, passed, "" if passed else ("missing" if value is None else f"{value:.4g} > {limit:.4g}"), None, LOWER)


def thresholds(document: dict, size_bytes: int, latency_ms_p95: float | None, gate: Gate) -> list[Criterion]:
    """Absolute thresholds from the `gate` params section, on a metrics.json document."""
    ci = document.get("ci", {})
    criteria = [_at_least("sky_accuracy", (document.get("sky") or {}).get("accuracy"), gate.min_sky_accuracy, ci.get("sky_accuracy"))]
    by_h = {entry["h"]: entry for entry in document.get("horizons", [])}
    for h in gate.horizons:
        entry = by_h.get(h, {})
        criteria.append(_at_least(f"rain_bss_persistence_h{h}", entry.get("rain_bss_persistence"), gate.min_rain_bss_persistence, ci.get(f"rain_bss_persistence_h{h}")))
        criteria.append(_at_least(f"temp_skill_persistence_h{h}", entry.get("temp_skill_persistence"), gate.min_temp_skill_persistence, ci.get(f"temp_skill_persistence_h{h}")))
    criteria.append(_at_most("size_bytes", float(size_bytes), float(gate.max_size_bytes)))
    criteria.append(_at_most("latency_ms_p95", latency_ms_p95, gate.max_latency_ms_p95))
    return criteria


@dataclass(frozen=True)
class Paired:
    """Two models' outputs on the same rows, with the truth, the persistence reference and the
    bootstrap groups (days): everything a paired comparison needs."""

    sky_hit: tuple[np.ndarray, np.ndarray]  # per labelled photo: 1 where each model got the class right
    photo_days: np.ndarray
    rain: tuple[np.ndarray, np.ndarray]  # [n, H] probabilities of each model
    temp: tuple[np.ndarray, np.ndarray]  # [n, H] degC of each model
    rain_obs: np.ndarray
    temp_obs: np.ndarray
    rain_now: np.ndarray
    temp_now: np.ndarray
    station_days: np.ndarray


def pair(candidate: dict[str, np.ndarray], champion: dict[str, np.ndarray], samples) -> Paired:
    """Line up two models' outputs on the same samples (a DataFrame of ingest samples)."""
    labels = samples["sky_label"].to_numpy()
    photos = labels >= 0
    stations = (samples["station_id"].to_numpy() != "") & samples["rain_now"].notna().to_numpy() & samples["temp_now"].notna().to_numpy()
    return Paired(
        sky_hit=tuple((out["sky_logits"][photos].argmax(1) == labels[photos]).astype(float) for out in (candidate, champion)),
        photo_days=samples["day"].astype(str).to_numpy()[photos],
        rain=tuple(out["rain_prob"][stations] for out in (candidate, champion)),
        temp=tuple(out["temp_c"][stations] for out in (candidate, champion)),
        rain_obs=samples[[f"rain_h{h}" for h in HORIZONS]].to_numpy(float)[stations],
        temp_obs=samples[[f"temp_h{h}" for h in HORIZONS]].to_numpy(float)[stations],
        rain_now=samples["rain_now"].to_numpy(float)[stations],
        temp_now=samples["temp_now"].to_numpy(float)[stations],
        station_days=samples["day"].astype(str).to_numpy()[stations],
    )


def _skill_difference(kind: str, paired: Paired, i: int):
    """Statistic: candidate skill - champion skill at horizon i on the resampled rows (None if undefined)."""
    model, obs, now = (paired.rain, paired.rain_obs, paired.rain_now) if kind == "rain" else (paired.temp, paired.temp_obs, paired.temp_now)

    def error(pred: np.ndarray, truth: np.ndarray) -> float:
        return float(np.mean((pred - truth) ** 2)) if kind == "rain" else float(np.sqrt(np.mean((pred - truth) ** 2)))

    def statistic(idx: np.ndarray) -> float | None:
        known = idx[~np.isnan(obs[idx, i])]
        if not len(known):
            return None
        reference = error(now[known], obs[known, i])
        if reference == 0:
            return None
        return (error(model[1][known, i], obs[known, i]) - error(model[0][known, i], obs[known, i])) / reference

    return statistic


def noninferiority(paired: Paired, margins: dict[str, float], n_boot: int, seed: int) -> list[Criterion]:
    """Per score, candidate - champion on the same rows with a day-resampled 95% interval; passes
    when the interval's lower end is at least -margin."""
    criteria = []

    def add(name: str, statistic, groups: np.ndarray, margin: float) -> None:
        if not len(groups):
            return
        value = statistic(np.arange(len(groups)))
        try:
            low, high = metrics.bootstrap_ci(statistic, groups, n_boot, seed)
        except ValueError:  # undefined in every replicate (e.g. no rain at all)
            return
        passed = value is not None and low >= -margin
        detail = "" if passed else f"difference {value:+.4g}, 95% interval [{low:+.4g}, {high:+.4g}] reaches below -{margin:g}"
        criteria.append(Criterion(f"vs_production_{name}", value, -margin, passed, detail, [low, high], HIGHER))

    hits = paired.sky_hit
    add("sky_accuracy", lambda idx: float(hits[0][idx].mean() - hits[1][idx].mean()), paired.photo_days, margins["sky_accuracy"])
    for i, h in enumerate(HORIZONS):
        add(f"rain_bss_persistence_h{h}", _skill_difference("rain", paired, i), paired.station_days, margins["rain_bss"])
        add(f"temp_skill_persistence_h{h}", _skill_difference("temp", paired, i), paired.station_days, margins["temp_skill"])
    return criteria


def package_outputs(package_dir: Path, data: Ingested, rows: np.ndarray, threads: int) -> tuple[dict[str, np.ndarray], dict]:
    """A package's outputs on some rows of ingested data, with its own recorded preprocessing
    (windows re-normalised, photos resized to its input size, through its attention when it
    has one), and its manifest."""
    package = paths.Package(package_dir)
    document = json.loads(package.manifest.read_text())
    return inference.predict(inference.session(package.model, threads), inputs_for_package(data, rows, document, package_dir)), document


@dataclass(frozen=True)
class Verdict:
    criteria: list[Criterion]
    candidate: dict  # the candidate's metrics.json (evaluate stage)
    production: dict | None  # production scored on the candidate's test split; None: first model

    @property
    def failed(self) -> list[Criterion]:
        return [c for c in self.criteria if not c.passed]


def judge(workspace: paths.Workspace, gate: Gate, production_dir: Path | None, threads: int, n_boot: int, seed: int) -> Verdict:
    """Every criterion for the candidate in the workspace, against production when there is one."""
    candidate = json.loads(workspace.evaluate.metrics.read_text())
    shipped = candidate["variants"]["shipped"]
    criteria = thresholds(candidate, workspace.package.model.stat().st_size, shipped["latency_ms_p95"], gate)
    production = None
    if production_dir is not None:
        data = load_ingested(workspace.ingest.dir)
        test = data.split("test")
        samples = data.samples.iloc[test].reset_index(drop=True)
        unseen = samples["day_in_train"].to_numpy() == 0  # the field estimate: what the gate compares
        ours, _ = package_outputs(workspace.package.dir, data, test, threads)
        theirs, document = package_outputs(production_dir, data, test, threads)
        production = scores.grouped_score(theirs, samples, document["climatology"], n_boot, seed)
        subset = lambda out: {k: v[unseen] for k, v in out.items()}  # noqa: E731
        paired = pair(subset(ours), subset(theirs), samples[unseen].reset_index(drop=True))
        criteria += noninferiority(paired, gate.noninferiority_margin.model_dump(), n_boot, seed)
    return Verdict(criteria, candidate, production)


CRITERIA_COLUMNS = [
    Column("name", "criterion", align="left"),
    Column("meaning", align="left"),
    Column("direction", "better", align="left"),
    Column("value", format=".4g"),
    Column("interval", "95% interval", format=lambda ci: f"[{ci[0]:.3g}, {ci[1]:.3g}]"),
    Column("limit", format=".4g"),
    Column("result", align="left"),
]


def criteria_markdown(criteria: list[Criterion]) -> str:
    """The criteria as a Markdown table: what each measures, which way is better, value,
    interval, limit and pass/fail."""
    return markdown_table([c.as_row() for c in criteria], CRITERIA_COLUMNS)

"""Promotion gate: absolute thresholds, then champion/challenger against production.

`judge` re-scores the production package on the candidate's own test split (with production's
recorded preprocessing) and applies every criterion; the criteria themselves are pure functions
over metrics.json documents (skyedge.evaluation.scores), testable without Prefect. The flow only
fetches production and orders the steps. A criterion is refused with its name, the measured value
and the limit; nothing is silently skipped: a missing metric fails.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from skyedge.core import inference, paths
from skyedge.core.config import Gate
from skyedge.data.dataset import inputs_for_model, load_ingested
from skyedge.evaluation import scores


@dataclass(frozen=True)
class Criterion:
    name: str
    value: float | None
    limit: float | None
    passed: bool
    detail: str = ""

    def as_row(self) -> dict:
        return asdict(self)


def _at_least(name: str, value: float | None, limit: float) -> Criterion:
    passed = value is not None and value >= limit
    return Criterion(name, value, limit, passed, "" if passed else ("missing" if value is None else f"{value:.4g} < {limit:.4g}"))


def _at_most(name: str, value: float | None, limit: float) -> Criterion:
    passed = value is not None and value <= limit
    return Criterion(name, value, limit, passed, "" if passed else ("missing" if value is None else f"{value:.4g} > {limit:.4g}"))


def thresholds(metrics: dict, size_bytes: int, latency_ms_p95: float | None, gate) -> list[Criterion]:
    """Absolute thresholds from the `gate` params section (skyedge.core.config.Gate)."""
    criteria = [_at_least("sky_accuracy", (metrics.get("sky") or {}).get("accuracy"), gate.min_sky_accuracy)]
    by_h = {entry["h"]: entry for entry in metrics.get("horizons", [])}
    for h in gate.horizons:
        entry = by_h.get(h, {})
        criteria.append(_at_least(f"rain_bss_persistence_h{h}", entry.get("rain_bss_persistence"), gate.min_rain_bss_persistence))
        criteria.append(_at_least(f"temp_skill_persistence_h{h}", entry.get("temp_skill_persistence"), gate.min_temp_skill_persistence))
    criteria.append(_at_most("size_bytes", float(size_bytes), float(gate.max_size_bytes)))
    criteria.append(_at_most("latency_ms_p95", latency_ms_p95, gate.max_latency_ms_p95))
    return criteria


def _headline(metrics: dict) -> dict[str, tuple[float | None, list | None]]:
    """Point estimate and bootstrap interval of each score compared between two models."""
    ci = metrics.get("ci", {})
    scores = {"sky_accuracy": ((metrics.get("sky") or {}).get("accuracy"), ci.get("sky_accuracy"))}
    for entry in metrics.get("horizons", []):
        for key in ("rain_bss_persistence", "temp_skill_persistence"):
            name = f"{key}_h{entry['h']}"
            scores[name] = (entry.get(key), ci.get(name))
    return scores


def champion_challenger(candidate: dict, production: dict) -> list[Criterion]:
    """Refuse the candidate where it is worse than production beyond the bootstrap interval.

    "Beyond the interval" = the candidate's upper 95% bound is below production's point estimate:
    a drop that resampling days cannot explain. Scores production does not report are skipped.
    """
    criteria = []
    candidate_scores = _headline(candidate)
    for name, (champion_value, _) in _headline(production).items():
        if champion_value is None:
            continue
        value, interval = candidate_scores.get(name, (None, None))
        upper = interval[1] if interval else value
        passed = upper is not None and upper >= champion_value
        detail = "" if passed else ("missing" if value is None else f"{value:.4g} (95% CI up to {upper:.4g}) below production {champion_value:.4g}")
        criteria.append(Criterion(f"vs_production_{name}", value, champion_value, passed, detail))
    return criteria


def diff_table(candidate: dict, production: dict | None) -> str:
    """Markdown table of headline scores, candidate vs production (the approval form shows it)."""
    lines = ["| metric | candidate | production | change |", "|---|---|---|---|"]
    champion = _headline(production) if production else {}
    for name, (value, _) in _headline(candidate).items():
        old = champion.get(name, (None, None))[0]
        change = f"{value - old:+.4f}" if value is not None and old is not None else "n/a"
        lines.append(f"| {name} | {_fmt(value)} | {_fmt(old)} | {change} |")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def score_package(package_dir: Path, ingest_dir: Path, split: str, threads: int, n_boot: int, seed: int) -> dict:
    """A package's scores on one split of ingested data, with the package's own preprocessing and
    climatology (windows re-normalised, photos resized to its input size)."""
    package = paths.Package(package_dir)
    document = json.loads(package.manifest.read_text())
    data = load_ingested(ingest_dir)
    rows = data.split(split)
    outputs = inference.predict(inference.session(package.model, threads), inputs_for_model(data, rows, document["preprocessing"]))
    return scores.grouped_score(outputs, data.samples.iloc[rows].reset_index(drop=True), document["climatology"], n_boot, seed)


@dataclass(frozen=True)
class Verdict:
    criteria: list[Criterion]
    candidate: dict  # the candidate's metrics.json (evaluate stage)
    production: dict | None  # production re-scored on the candidate's test split; None: first model

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
        production = score_package(production_dir, workspace.ingest.dir, "test", threads, n_boot, seed)
        criteria += champion_challenger(candidate, production)
    return Verdict(criteria, candidate, production)

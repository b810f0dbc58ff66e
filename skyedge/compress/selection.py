"""Which compressed variant ships: the selection policy, apart from how variants are built.

A measured candidate is a dict: name, method, val_sky_accuracy, val_rain_brier, val_temp_rmse
(None where val has no such label), the same two errors per forecast horizon
(val_rain_brier_by_horizon, val_temp_rmse_by_horizon) and latency_ms_p50 (timed interleaved with the others,
skyedge.core.inference). The reference is fp32, the model every other is a compression of.

- within budget: val sky accuracy at most `max_accuracy_drop` below the reference's, val rain
  Brier and temperature RMSE at most `max_error_increase` (a fraction) above its, over all
  horizons and at each horizon. Every head counts, not only the sky; and every horizon, because
  the 1-hour RMSE is a fraction of the 4-hour one: a candidate can lose a fifth of its 1-hour
  temperature skill inside a 2 % budget on the mean.
- shipped: the fastest candidate within budget, but a candidate other than fp32 only when it is
  at least `min_speedup` times faster than fp32. Timings of the same file differ by a few percent
  from run to run; shipping a quantized model for a 3 % "gain" that is noise costs accuracy for
  nothing. Then bytes: among the candidates within budget that are as fast as that choice (within
  the same factor: no measurable difference), the one a station downloads in the fewest bytes
  (`ota_bytes`, its model container) ships. That is how a weight-shared model, fp32 compute with
  a fraction of the bytes, replaces fp32.
- int8 (evaluate's `quantized` row): the fastest int8 candidate within budget, else the most
  accurate one.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from skyedge.core import inference
from skyedge.core.config import INT8_METHODS
from skyedge.data.dataset import Ingested, model_inputs

REFERENCE = "fp32"


def _accuracy(candidate: dict) -> float:
    value = candidate.get("val_sky_accuracy")
    return -1.0 if value is None else value


ERROR_KEYS = {"val_rain_brier": "rain Brier", "val_temp_rmse": "temp RMSE"}


def _paired_errors(candidate: dict, reference: dict) -> list[tuple[str, float, float]]:
    """(what, candidate's, reference's) of each error both have: over all horizons, then at each horizon."""
    pairs = []
    for key, label in ERROR_KEYS.items():
        pairs.append((label, candidate.get(key), reference.get(key)))
        by_horizon = zip(candidate.get(f"{key}_by_horizon") or [], reference.get(f"{key}_by_horizon") or [])
        pairs += [(f"{label} h{horizon}", mine, theirs) for horizon, (mine, theirs) in enumerate(by_horizon, 1)]
    return [(label, mine, theirs) for label, mine, theirs in pairs if mine is not None and theirs is not None]


def budget_breaches(candidate: dict, reference: dict, max_accuracy_drop: float, max_error_increase: float) -> list[str]:
    """What puts a candidate outside the reference's budget, e.g. "temp RMSE h1 +17.6 %"; empty
    when within (a head or horizon without val labels is not checked)."""
    breaches = []
    if _accuracy(candidate) < _accuracy(reference) - max_accuracy_drop:
        breaches.append(f"sky accuracy {_accuracy(candidate) - _accuracy(reference):+.3f}")
    for label, mine, theirs in _paired_errors(candidate, reference):
        if not math.isfinite(mine):  # NaN forecasts where val has a label; a NaN would compare as within any budget
            breaches.append(f"{label} not finite (the model outputs NaN or inf)")
        elif mine > theirs * (1 + max_error_increase):
            breaches.append(f"{label} +{100 * (mine / theirs - 1):.1f} %" if theirs > 0 else f"{label} {mine:.4g} (fp32 0)")
    return breaches


def within_budget(candidate: dict, reference: dict, max_accuracy_drop: float, max_error_increase: float) -> bool:
    return not budget_breaches(candidate, reference, max_accuracy_drop, max_error_increase)


def _measured(candidates: list[dict]) -> tuple[list[dict], dict]:
    measured = [c for c in candidates if "error" not in c]
    reference = next((c for c in measured if c["method"] == REFERENCE), None)
    if reference is None:
        raise ValueError("no fp32 candidate was measured: it is the reference every candidate is compared with")
    return measured, reference


def choose(candidates: list[dict], max_accuracy_drop: float, max_error_increase: float, min_speedup: float) -> tuple[dict, str]:
    """The candidate that ships, and why (see the module doc)."""
    measured, reference = _measured(candidates)
    fast_enough = [
        c for c in measured
        if c is reference or (within_budget(c, reference, max_accuracy_drop, max_error_increase) and reference["latency_ms_p50"] / c["latency_ms_p50"] >= min_speedup)
    ]
    fastest = min(fast_enough, key=lambda c: c["latency_ms_p50"])
    best = _fewest_bytes(fastest, [c for c in measured if within_budget(c, reference, max_accuracy_drop, max_error_increase)], min_speedup)
    if best is not fastest:
        return best, (
            f"{best['name']} ships: as fast as {fastest['name']} ({best['latency_ms_p50']:.3f} vs {fastest['latency_ms_p50']:.3f} ms, "
            f"within {min_speedup:g}x) and {fastest['ota_bytes'] / best['ota_bytes']:.1f}x fewer bytes over the air "
            f"({best['ota_bytes']} vs {fastest['ota_bytes']}) at val sky accuracy {_accuracy(best):.3f} (fp32 {_accuracy(reference):.3f})"
        )
    if best is not reference:
        speedup = reference["latency_ms_p50"] / best["latency_ms_p50"]
        return best, f"{best['name']} ships: {speedup:.2f}x faster than fp32 at val sky accuracy {_accuracy(best):.3f} (fp32 {_accuracy(reference):.3f})"
    others = ", ".join(_summary(c, budget_breaches(c, reference, max_accuracy_drop, max_error_increase)) for c in measured if c is not reference)
    reason = f"fp32 ships ({reference['latency_ms_p50']:.3f} ms): no candidate within budget is at least {min_speedup:g}x faster ({others})"
    slower = [c["name"] for c in measured if c["method"] in INT8_METHODS and c["latency_ms_p50"] >= reference["latency_ms_p50"]]
    if slower:
        reason += (
            f"; int8 ({', '.join(slower)}) is slower than fp32 here: at this model size the quantize/dequantize "
            "of activations and per-op overhead cost more than the integer kernels save"
        )
    return reference, reason


def _summary(candidate: dict, breaches: list[str]) -> str:
    text = f"{candidate['name']} {candidate['latency_ms_p50']:.3f} ms acc {_accuracy(candidate):.3f}"
    return text + (f" over budget: {'; '.join(breaches)}" if breaches else "")


def _fewest_bytes(fastest: dict, allowed: list[dict], min_speedup: float) -> dict:
    """The candidate as fast as `fastest` (within min_speedup) with the fewest over-the-air bytes."""
    if fastest.get("ota_bytes") is None:
        return fastest
    as_fast = [c for c in allowed if c.get("ota_bytes") is not None and c["latency_ms_p50"] <= fastest["latency_ms_p50"] * min_speedup]
    smallest = min(as_fast, key=lambda c: c["ota_bytes"], default=fastest)
    return smallest if smallest["ota_bytes"] < fastest["ota_bytes"] else fastest


def outcomes(candidates: list[dict], shipped: dict, int8: dict, max_accuracy_drop: float, max_error_increase: float) -> list[str]:
    """What became of each candidate, in order: failed, shipped / int8, or over budget and where."""
    _, reference = _measured(candidates)
    said = []
    for candidate in candidates:
        if "error" in candidate:
            said.append("failed: " + candidate["error"][:60])
            continue
        chosen = [label for label, model in (("shipped", shipped), ("int8", int8)) if candidate is model]
        breaches = budget_breaches(candidate, reference, max_accuracy_drop, max_error_increase)
        said.append(", ".join(chosen + (["over budget: " + "; ".join(breaches)] if breaches else [])))
    return said


def weight_shared(candidates: list[dict]) -> dict | None:
    """The run's weight-sharing candidate (method `shared`, whatever its name) if it was built."""
    return next((c for c in candidates if c["method"] == "shared" and "error" not in c), None)


def best_int8(candidates: list[dict], max_accuracy_drop: float, max_error_increase: float) -> dict:
    """The int8 candidate evaluate reports as `quantized`: fastest within budget, else most accurate."""
    measured, reference = _measured(candidates)
    int8 = [c for c in measured if c["method"] in INT8_METHODS]
    if not int8:
        raise RuntimeError("no int8 candidate could be built: " + "; ".join(f"{c['name']}: {c['error']}" for c in candidates if "error" in c))
    allowed = [c for c in int8 if within_budget(c, reference, max_accuracy_drop, max_error_increase)]
    return min(allowed, key=lambda c: c["latency_ms_p50"]) if allowed else max(int8, key=_accuracy)


def val_scores(path: Path, data: Ingested, rows: np.ndarray) -> dict:
    """What the policy reads of a candidate ONNX file: val sky accuracy (photos), rain Brier and
    temperature RMSE (station samples) over all horizons and per horizon; None where val has no
    such label."""
    outputs = inference.predict(inference.session(path), model_inputs(data, rows))
    labels = data.samples["sky_label"].to_numpy()[rows]
    photos = labels >= 0
    hits = outputs["sky_logits"][photos].argmax(1) == labels[photos]
    scores: dict = {"val_sky_accuracy": float(hits.mean()) if photos.any() else None}
    for key, predicted, truth, is_rmse in (("val_rain_brier", outputs["rain_prob"], data.rain[rows], False), ("val_temp_rmse", outputs["temp_c"], data.temp[rows], True)):
        scores[key] = _mean_known(predicted, truth, is_rmse)
        scores[f"{key}_by_horizon"] = [_mean_known(predicted[:, h], truth[:, h], is_rmse) for h in range(truth.shape[1])]
    return scores


def _mean_known(predicted: np.ndarray, truth: np.ndarray, root: bool) -> float | None:
    """Mean squared error where the truth is known (its square root with `root`); None when none
    is. Masked by the truth only, so a NaN prediction makes the score NaN, not a smaller sample."""
    known = ~np.isnan(truth)
    if not known.any():
        return None
    mean = float(((predicted[known] - truth[known]) ** 2).mean())
    return mean**0.5 if root else mean


def horizon_skills(path: Path, data: Ingested, rows: np.ndarray) -> dict[str, list[float | None]]:
    """Per horizon, a model's rain Brier skill and temperature skill against persistence on
    `rows` (station samples with the current and the future reading); None where undefined."""
    outputs = inference.predict(inference.session(path), model_inputs(data, rows))
    samples = data.samples.iloc[rows]
    rain_now, temp_now = samples["rain_now"].to_numpy(float), samples["temp_now"].to_numpy(float)
    skills: dict[str, list[float | None]] = {"rain": [], "temp": []}
    for i in range(data.rain.shape[1]):
        rain, temp = data.rain[rows, i], data.temp[rows, i]
        known = ~np.isnan(rain) & ~np.isnan(rain_now)
        reference = float(((rain_now - rain)[known] ** 2).mean()) if known.any() else 0.0
        model = float(((outputs["rain_prob"][:, i] - rain)[known] ** 2).mean()) if known.any() else 0.0
        skills["rain"].append(1 - model / reference if reference > 0 else None)
        known = ~np.isnan(temp) & ~np.isnan(temp_now)
        reference = float(np.sqrt(((temp_now - temp)[known] ** 2).mean())) if known.any() else 0.0
        model = float(np.sqrt(((outputs["temp_c"][:, i] - temp)[known] ** 2).mean())) if known.any() else 0.0
        skills["temp"].append(1 - model / reference if reference > 0 else None)
    return skills


def fallback_heads(skills: dict[str, list[float | None]]) -> dict[str, list[bool]]:
    """Which heads must output persistence: those whose validation skill is below zero (a head
    that cannot beat persistence is not a forecast). Undefined skill keeps the model."""
    return {head: [value is not None and value < 0 for value in values] for head, values in skills.items()}


def set_fallback(onnx_path: Path, fallback: dict[str, list[bool]]) -> None:
    """Write the fallback masks into an exported graph's `fallback_rain` / `fallback_temp`
    constants (skyedge.train.models.NowcastNet), keeping their dtype."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    found = set()
    for initializer in model.graph.initializer:
        for head in ("rain", "temp"):
            if initializer.name.endswith(f"fallback_{head}"):
                current = numpy_helper.to_array(initializer)
                initializer.CopyFrom(numpy_helper.from_array(np.asarray(fallback[head], dtype=current.dtype).reshape(current.shape), initializer.name))
                found.add(head)
    if found != {"rain", "temp"}:
        raise ValueError(f"{onnx_path}: no fallback_{', fallback_'.join(sorted({'rain', 'temp'} - found))} constant: was the model exported from skyedge.train.models.NowcastNet?")
    onnx.save(model, str(onnx_path))

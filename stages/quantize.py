"""quantize: build every quantization candidate, measure them, and ship by measurement.

Candidates (`quantize.candidates`): the pruned fp32 model (the reference), ORT static int8 (U8S8 /
S8S8, QDQ / QOperator, per-channel, MinMax / Entropy / Percentile calibration on a train-only
calibration set stratified by sky class), dynamic int8, fp16, and quantization-aware training
(fake-quant fine-tuning of the pruned model, exported as QDQ). Each is scored on the val split
and timed on this machine (ONNX Runtime, batch 1, 1 intra-op thread, warm-up excluded). The
fastest candidate within budget ships: val sky accuracy within `max_accuracy_drop` of fp32's, val
rain Brier and temperature RMSE at most `max_error_increase` above fp32's. int8 that is slower
than fp32 does not ship, and the report says so.

Writes under data/quantize/: candidates/<name>.onnx, model_int8.onnx (the best int8 candidate:
the fastest within budget, else the most accurate; evaluate's `quantized` row), shipped.onnx (a
copy of the choice), report.json (the candidate table, the choice and why).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from skyedge.compress.quantization import (
    INT8_CANDIDATES,
    dynamic_int8,
    float16,
    static_int8,
    static_settings,
    stratified_rows,
)
from skyedge.core import files, inference
from skyedge.core.config import Common, Data, Quantize, load_params
from skyedge.data.dataset import load_ingested, model_inputs
from skyedge.evaluation import metrics


def val_sky_accuracy(path: Path, data, rows: np.ndarray) -> float:
    outputs = inference.predict(inference.session(path), model_inputs(data, rows))
    labels = data.samples["sky_label"].to_numpy()[rows]
    return metrics.accuracy(labels, outputs["sky_logits"].argmax(1))


def val_scores(path: Path, data, rows: np.ndarray) -> dict[str, float]:
    """Val sky accuracy (photos), mean rain Brier and temperature RMSE (station samples)."""
    outputs = inference.predict(inference.session(path), model_inputs(data, rows))
    labels = data.samples["sky_label"].to_numpy()[rows]
    photos = labels >= 0
    scores: dict[str, float | None] = {"val_sky_accuracy": metrics.accuracy(labels[photos], outputs["sky_logits"][photos].argmax(1)) if photos.any() else None}
    rain, temp = data.rain[rows], data.temp[rows]
    known = ~np.isnan(rain)
    scores["val_rain_brier"] = float(((outputs["rain_prob"] - rain)[known] ** 2).mean()) if known.any() else None
    known = ~np.isnan(temp)
    scores["val_temp_rmse"] = float(np.sqrt(((outputs["temp_c"] - temp)[known] ** 2).mean())) if known.any() else None
    return scores


def _accuracy(candidate: dict) -> float:
    value = candidate.get("val_sky_accuracy")
    return -1.0 if value is None else value


def within_budget(candidate: dict, reference: dict, max_drop: float, max_error_increase: float) -> bool:
    """Val sky accuracy at most max_drop below the reference's, val rain Brier and temperature RMSE
    at most max_error_increase (a fraction) above its (a head without val labels is not checked)."""
    if _accuracy(candidate) < _accuracy(reference) - max_drop:
        return False
    errors = [key for key in ("val_rain_brier", "val_temp_rmse") if reference.get(key) is not None and candidate.get(key) is not None]
    return all(candidate[key] <= reference[key] * (1 + max_error_increase) for key in errors)


def choose(candidates: list[dict], max_drop: float, max_error_increase: float) -> tuple[dict, str]:
    """The fastest candidate within the accuracy budget of the fp32 reference, and why."""
    measured = [c for c in candidates if "error" not in c]
    reference = next(c for c in measured if c["name"] == "fp32")
    allowed = [c for c in measured if within_budget(c, reference, max_drop, max_error_increase)]
    best = min(allowed, key=lambda c: c["latency_ms_p50"])
    speedup = reference["latency_ms_p50"] / best["latency_ms_p50"]
    if best["name"] == "fp32":
        others = ", ".join(f"{c['name']} {c['latency_ms_p50']:.3f} ms acc {_accuracy(c):.3f}" for c in measured if c is not best)
        reason = f"fp32 ships: it is the fastest within the accuracy budget (fp32 {best['latency_ms_p50']:.3f} ms; {others})"
        slower = [c["name"] for c in measured if c["name"] in INT8_CANDIDATES and c["latency_ms_p50"] >= best["latency_ms_p50"]]
        if slower:
            reason += (
                f"; int8 ({', '.join(slower)}) is slower than fp32 here: at this model size the quantize/dequantize "
                "of activations and per-op overhead cost more than the integer kernels save"
            )
    else:
        reason = f"{best['name']} ships: {speedup:.2f}x faster than fp32 at val sky accuracy {_accuracy(best):.3f} (fp32 {_accuracy(reference):.3f})"
    return best, reason


def best_int8(candidates: list[dict], max_drop: float, max_error_increase: float) -> dict:
    """The int8 candidate evaluate reports as `quantized`: fastest within budget, else most accurate."""
    int8 = [c for c in candidates if c["name"] in INT8_CANDIDATES and "error" not in c]
    if not int8:
        raise RuntimeError("no int8 candidate could be built: " + "; ".join(f"{c['name']}: {c['error']}" for c in candidates if "error" in c))
    reference = next(c for c in candidates if c["name"] == "fp32")
    allowed = [c for c in int8 if within_budget(c, reference, max_drop, max_error_increase)]
    return min(allowed, key=lambda c: c["latency_ms_p50"]) if allowed else max(int8, key=_accuracy)


def build_qat(params: Quantize, data_params: Data, common: Common, data, prune_dir: Path, out_path: Path) -> dict:
    """Fake-quant fine-tuning of the pruned module, exported as QDQ; returns its training record."""
    import torch

    from skyedge.compress import qat
    from skyedge.core.features import N_FEATURES
    from skyedge.train import checkpoints as torch_io
    from skyedge.train.training import FitConfig, fit

    torch.set_num_threads(common.threads)
    model, layers = qat.prepare_qat(torch_io.load_module(prune_dir / "pruned.pt"))
    history = []
    if params.qat_epochs:
        config = FitConfig(params.qat_epochs, params.qat_batch_size, params.qat_lr, common.seed, photo_share=data_params.photo_share, augment=data_params.augment)
        history = fit(model, data, config, "qat")
    size, window = data.preprocessing["image"]["size"], data.windows.shape[1]
    qat.export_qdq(model, out_path, size, window, N_FEATURES)
    torch_io.save_module(model, out_path.with_suffix(".pt"))
    return {"quantized_layers": layers, "qdq_pairs": qat.qdq_pairs(model), "epochs": params.qat_epochs, "history": history}


def build(name: str, params: Quantize, data_params: Data, common: Common, data, fp32: Path, calibration: list, out_dir: Path) -> tuple[Path, dict]:
    """Write candidate `name` under out_dir/candidates/; returns its path and build details."""
    if name == "fp32":
        return fp32, {}
    path = out_dir / "candidates" / f"{name}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    if name.startswith("static"):
        settings = static_settings(name, params.weight_type, params.activation_type, params.format, params.calibration_method)
        static_int8(fp32, path, calibration, per_channel=params.per_channel, reduce_range=params.reduce_range, **settings)
        return path, {**settings, "per_channel": params.per_channel, "reduce_range": params.reduce_range}
    if name == "dynamic":
        dynamic_int8(fp32, path, params.per_channel, params.reduce_range)
        return path, {"per_channel": params.per_channel, "reduce_range": params.reduce_range}
    if name == "fp16":
        return float16(fp32, path), {"keep_io_types": True}
    if name == "qat":
        return path, build_qat(params, data_params, common, data, fp32.parent, path)
    raise ValueError(f"unknown quantization candidate {name!r}")


def run(params: Quantize, data_params: Data, common: Common, ingest_dir: Path, prune_dir: Path, out_dir: Path) -> dict:
    data = load_ingested(ingest_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out_dir / "candidates", ignore_errors=True)  # nothing stale from another candidate list
    train = data.split("train")
    calibration_rows = stratified_rows(data.samples["sky_label"].to_numpy(), train, params.calibration_samples, common.seed)
    calibration = [model_inputs(data, calibration_rows[i : i + 1]) for i in range(len(calibration_rows))]
    fp32 = prune_dir / "pruned.onnx"
    val = data.split("val")
    one = model_inputs(data, val[:1])
    candidates = []
    for name in params.candidates:
        started = time.perf_counter()
        try:
            path, details = build(name, params, data_params, common, data, fp32, calibration, out_dir)
            # A candidate ORT cannot load (e.g. an op without a kernel for its type) is reported, not fatal.
            inference.session(path)
        except Exception as error:  # noqa: BLE001 - one broken candidate must not hide the others
            if name == "fp32":
                raise
            candidates.append({"name": name, "error": f"{type(error).__name__}: {error}"[:500]})
            print(f"quantize: candidate {name} failed: {candidates[-1]['error']}")
            continue
        history = details.pop("history", None)
        candidates.append(
            {
                "name": name,
                "path": str(path),
                "size_bytes": path.stat().st_size,
                "build_s": time.perf_counter() - started,
                **val_scores(path, data, val),
                **inference.latency_ms(path, one, params.latency_runs),
                **({"details": details} if details else {}),
                **({"val_sky_accuracy_after_qat_training": history[-1]["val_sky_accuracy"]} if history else {}),
            }
        )
    best, reason = choose(candidates, params.max_accuracy_drop, params.max_error_increase)
    int8 = best_int8(candidates, params.max_accuracy_drop, params.max_error_increase)
    print(reason)
    print(candidate_table(candidates, best["name"]))
    shutil.copyfile(best["path"], out_dir / "shipped.onnx")
    shutil.copyfile(int8["path"], out_dir / "model_int8.onnx")
    report = {
        "candidates": candidates,
        "shipped": best["name"],
        "reason": reason,
        "int8": int8["name"],
        "calibration_samples": len(calibration_rows),
        "calibration_classes": {str(k): int(v) for k, v in zip(*np.unique(data.samples["sky_label"].to_numpy()[calibration_rows], return_counts=True))},
        "config": params.model_dump(mode="json"),
    }
    files.write_json(out_dir / "report.json", report)
    return report


def candidate_table(candidates: list[dict], shipped: str) -> str:
    """The candidate table as aligned text: size, val scores, latency, and which one ships."""
    header = ["candidate", "size_kB", "val_sky_acc", "val_rain_brier", "val_temp_rmse", "p50_ms", "p95_ms", ""]
    lines = [header]
    for c in candidates:
        if "error" in c:
            lines.append([c["name"], "-", "-", "-", "-", "-", "-", "failed: " + c["error"][:60]])
            continue
        cells = [c["name"], f"{c['size_bytes'] / 1000:.1f}"]
        cells += ["n/a" if c.get(k) is None else f"{c[k]:.4f}" for k in ("val_sky_accuracy", "val_rain_brier", "val_temp_rmse")]
        cells += [f"{c['latency_ms_p50']:.3f}", f"{c['latency_ms_p95']:.3f}", "shipped" if c["name"] == shipped else ""]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingest", type=Path, default=Path("data/ingest"))
    parser.add_argument("--prune", type=Path, default=Path("data/prune"))
    parser.add_argument("--out", type=Path, default=Path("data/quantize"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    run(params.quantize, params.data, params.common, args.ingest, args.prune, args.out)


if __name__ == "__main__":
    main()

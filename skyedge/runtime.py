"""ONNX Runtime inference and latency measurement (no torch: devices and evaluation use it)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from skyedge.contract import OUTPUT_RAIN_PROB, OUTPUT_SKY_LOGITS, OUTPUT_TEMP_C


class ModelFileError(ValueError):
    """An ONNX file that cannot be loaded."""


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU session with a fixed intra-op thread count (latency is measured at 1 thread)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own exception types for corrupt or missing files
        raise ModelFileError(f"{path}: not a loadable ONNX model ({error})") from None


def predict(model: ort.InferenceSession, inputs: dict[str, np.ndarray], batch_size: int = 256) -> dict[str, np.ndarray]:
    """Run the model over all rows in batches; returns sky_logits, rain_prob and temp_c."""
    names = [OUTPUT_SKY_LOGITS, OUTPUT_RAIN_PROB, OUTPUT_TEMP_C]
    n = len(next(iter(inputs.values())))
    chunks: list[list[np.ndarray]] = []
    for start in range(0, n, batch_size):
        feed = {name: value[start : start + batch_size] for name, value in inputs.items()}
        chunks.append(model.run(names, feed))
    return {name: np.concatenate([c[i] for c in chunks]) for i, name in enumerate(names)}


def latency_ms(path: Path, one_sample: dict[str, np.ndarray], runs: int, warmup: int = 10, threads: int = 1) -> dict[str, float]:
    """Batch-1 latency percentiles in milliseconds, warm-up runs excluded."""
    model = session(path, threads)
    for _ in range(warmup):
        model.run(None, one_sample)
    return _percentiles(timed_runs(model, one_sample, runs))


def interleaved_latency_ms(
    paths: dict[str, Path], one_sample: dict[str, np.ndarray], runs: int, warmup: int = 10, block: int = 10, threads: int = 1
) -> dict[str, dict[str, float]]:
    """Batch-1 latency percentiles of several models that take turns, `block` runs each.

    Timing one model after the other lets machine drift (another process, clock changes) land
    on whichever model ran at that moment; taking turns spreads it over all of them, so the
    ratios between them are fair.
    """
    sessions = {name: session(path, threads) for name, path in paths.items()}
    for model in sessions.values():
        for _ in range(warmup):
            model.run(None, one_sample)
    timings: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(-(-runs // block)):
        for name, model in sessions.items():
            timings[name] += timed_runs(model, one_sample, block)
    return {name: _percentiles(values) for name, values in timings.items()}


def timed_runs(model: ort.InferenceSession, one_sample: dict[str, np.ndarray], runs: int) -> list[float]:
    """Wall time of each of `runs` calls, in milliseconds."""
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        model.run(None, one_sample)
        timings.append((time.perf_counter() - start) * 1000)
    return timings


def _percentiles(timings: list[float]) -> dict[str, float]:
    p50, p95, p99 = np.percentile(timings, [50, 95, 99])
    return {"latency_ms_p50": float(p50), "latency_ms_p95": float(p95), "latency_ms_p99": float(p99)}

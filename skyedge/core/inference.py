"""ONNX Runtime inference, and the one way SkyEdge times a model and reads its memory (no torch).

Every latency the tools report (quantize's choice, evaluate, `make bench`, `skyedge evaluate`'s
runtime section, the device's health check and footprint bench) comes from `time_calls` and is
summarised by `latency_summary` under the same keys: latency_ms_p50, latency_ms_p95,
latency_ms_p99. When models are compared, `interleaved_latency_ms` times them in turns, so machine
drift cannot favour whichever ran at a quiet moment.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from skyedge.core.contract import INPUT_IMAGE_PRESENT, OUTPUT_RAIN_PROB, OUTPUT_SKY_LOGITS, OUTPUT_TEMP_C

LATENCY_KEYS = ("latency_ms_p50", "latency_ms_p95", "latency_ms_p99")


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


def time_calls(call: Callable[[], object], runs: int, warmup: int = 0) -> list[float]:
    """Wall time of each of `runs` calls in milliseconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        call()
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        timings.append((time.perf_counter() - start) * 1000)
    return timings


def timed_runs(model: ort.InferenceSession, feed: dict[str, np.ndarray], runs: int, warmup: int = 0) -> list[float]:
    """Milliseconds of each of `runs` model runs on one feed, after `warmup` untimed runs."""
    return time_calls(lambda: model.run(None, feed), runs, warmup)


def latency_summary(timings_ms: list[float]) -> dict[str, float]:
    """p50, p95 and p99 of a list of timings, in milliseconds."""
    return dict(zip(LATENCY_KEYS, (float(v) for v in np.percentile(timings_ms, [50, 95, 99]))))


def latency_ms(path: Path, feed: dict[str, np.ndarray], runs: int, warmup: int = 10, threads: int = 1) -> dict[str, float]:
    """Latency percentiles of one model on one feed (batch 1 in every caller)."""
    return latency_summary(timed_runs(session(path, threads), feed, runs, warmup))


def interleaved_latency_ms(
    paths: dict[str, Path], feed: dict[str, np.ndarray], runs: int, warmup: int = 10, block: int = 10, threads: int = 1
) -> dict[str, dict[str, float]]:
    """Latency percentiles of several models that take turns, `block` runs each.

    Timing one model after the other lets machine drift (another process, clock changes) land
    on whichever model ran at that moment; taking turns spreads it over all of them, so the
    ratios between them are fair.
    """
    sessions = {name: session(path, threads) for name, path in paths.items()}
    for model in sessions.values():
        timed_runs(model, feed, 0, warmup)
    timings: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(-(-runs // block)):
        for name, model in sessions.items():
            timings[name] += timed_runs(model, feed, block)
    return {name: latency_summary(values) for name, values in timings.items()}


def random_inputs(model: ort.InferenceSession, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the graph's shapes (dynamic dims set to `batch`) and dtypes; the latency of these
    CNNs does not depend on the values. image_present is 1: the full image path, the slower case."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in model.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else batch for d in spec.shape]
        shape[0] = batch
        dtype = np.float16 if spec.type == "tensor(float16)" else np.float32
        feed[spec.name] = rng.standard_normal(shape).astype(dtype)
        if spec.name == INPUT_IMAGE_PRESENT:
            feed[spec.name][:] = 1.0
    return feed


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def machine() -> dict[str, str | int | None]:
    """What a measurement ran on, for every benchmark's JSON. Training runs and timings repeat on
    one machine, not across machines (a reset onto another CPU moved the teacher's sky accuracy
    with the same code and packages): a number is only comparable with one of the same `cpu`."""
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")), cpu)

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:  # the device side has no torch
            return None

    return {"cpu": cpu, "cores": usable_cores(), "python": platform.python_version(), "onnxruntime": ort.__version__, "torch": version("torch")}


def machine_text(measured_on: dict) -> str:
    """`machine()` in words: CPU, cores, onnxruntime and torch versions."""
    return f"{measured_on['cpu']}, {measured_on['cores']} cores, onnxruntime {measured_on['onnxruntime']}, torch {measured_on['torch'] or '(none)'}"


def machine_line(measured_on: dict) -> str:
    """`machine()` in one line, printed above a benchmark's table."""
    return f"measured on {machine_text(measured_on)}"


def peak_rss_bytes() -> int:
    """Peak resident set size of this process.

    On Linux, ru_maxrss survives fork + exec: a child started by a big parent reports the
    parent's peak (measured: 318 MB for an 11 MB child). VmHWM belongs to the process's own
    address space, so it is read first; getrusage is the fallback elsewhere.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # KiB on Linux, bytes on macOS

"""Runtime of one ONNX model, measured in a process of its own (run by `skyedge evaluate`).

`python -m skyedge.benchmark_runtime MODEL [--runs N] [--warmup K]` prints one JSON object:
load time, batch-1 latency percentiles with 1 intra-op thread and with every core this process
may use, throughput at batch 32 (all cores) and peak RSS. Warm-up runs are excluded from every
timing. Inputs are random, of the graph's shapes and dtypes: latency of these CNNs does not
depend on the values. Peak RSS is this whole process (interpreter + numpy + ORT + model), i.e.
what a device pays to run the model; `peak_rss_before_load_bytes` is the same before any session
(Linux: VmHWM, see `peak_rss_bytes`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from skyedge import runtime

THROUGHPUT_BATCH = 32


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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


def random_inputs(model: ort.InferenceSession, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the graph's shapes (dynamic dims set to `batch`) and dtypes."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in model.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else batch for d in spec.shape]
        shape[0] = batch
        dtype = np.float16 if spec.type == "tensor(float16)" else np.float32
        feed[spec.name] = rng.standard_normal(shape).astype(dtype)
        if spec.name == "image_present":
            feed[spec.name][:] = 1.0  # the full image path: the slower, common case
    return feed


def percentiles(timings_ms: list[float]) -> dict[str, float]:
    p50, p95, p99 = np.percentile(timings_ms, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99)}


def timed_runs(model: ort.InferenceSession, feed: dict, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        model.run(None, feed)
    return runtime.timed_runs(model, feed, runs)


def measure(path: Path, runs: int = 200, warmup: int = 20) -> dict:
    rss_before = peak_rss_bytes()
    start = time.perf_counter()
    single = runtime.session(path, threads=1)
    load_ms = (time.perf_counter() - start) * 1000
    one = random_inputs(single, 1)
    latency_one = percentiles(timed_runs(single, one, runs, warmup))
    cores = usable_cores()
    parallel = runtime.session(path, threads=cores)
    latency_all = percentiles(timed_runs(parallel, one, runs, warmup))
    batch = random_inputs(parallel, THROUGHPUT_BATCH)
    batch_runs = max(5, runs // 10)
    timings = timed_runs(parallel, batch, batch_runs, max(2, warmup // 10))
    return {
        "load_ms": load_ms,
        "latency_ms": {"batch1_threads1": latency_one, "batch1_threads_all": latency_all},
        "threads_all": cores,
        "throughput_batch": THROUGHPUT_BATCH,
        "throughput_samples_per_s": THROUGHPUT_BATCH * len(timings) / (sum(timings) / 1000),
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_rss_before_load_bytes": rss_before,
        "runs": runs,
        "warmup_runs": warmup,
        "onnxruntime_version": ort.__version__,
        "inputs": "random, graph shapes; image_present=1",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")
    try:
        result = measure(args.model, args.runs, args.warmup)
    except runtime.ModelFileError as error:
        print(error, file=sys.stderr)
        return 1
    print(json.dumps(result, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

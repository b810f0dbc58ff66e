"""Runtime of one ONNX model, measured in a process of its own (run by `skyedge evaluate`).

`python -m skyedge.evaluation.runtime MODEL [--runs N] [--warmup K]` prints one JSON object:
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
import sys
import time
from pathlib import Path

from skyedge.core import inference

THROUGHPUT_BATCH = 32


def measure(path: Path, runs: int = 200, warmup: int = 20) -> dict:
    rss_before = inference.peak_rss_bytes()
    start = time.perf_counter()
    single = inference.session(path, threads=1)
    load_ms = (time.perf_counter() - start) * 1000
    one = inference.random_inputs(single, 1)
    latency_one = inference.latency_summary(inference.timed_runs(single, one, runs, warmup))
    cores = inference.usable_cores()
    parallel = inference.session(path, threads=cores)
    latency_all = inference.latency_summary(inference.timed_runs(parallel, one, runs, warmup))
    batch = inference.random_inputs(parallel, THROUGHPUT_BATCH)
    batch_runs = max(5, runs // 10)
    timings = inference.timed_runs(parallel, batch, batch_runs, max(2, warmup // 10))
    return {
        "load_ms": load_ms,
        "latency_ms": {"batch1_threads1": latency_one, "batch1_threads_all": latency_all},
        "threads_all": cores,
        "throughput_batch": THROUGHPUT_BATCH,
        "throughput_samples_per_s": THROUGHPUT_BATCH * len(timings) / (sum(timings) / 1000),
        "peak_rss_bytes": inference.peak_rss_bytes(),
        "peak_rss_before_load_bytes": rss_before,
        "runs": runs,
        "warmup_runs": warmup,
        "machine": inference.machine(),  # latencies compare only on one machine (and onnxruntime version)
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
    except inference.ModelFileError as error:
        print(error, file=sys.stderr)
        return 1
    print(json.dumps(result, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

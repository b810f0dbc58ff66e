"""Device footprint (`make bench-device`): agent peak RSS, pull + verify + swap time, predict latency.

Publishes the shipped package (data/package, built by `make run` or `make run-real`) with fresh
TUF keys to a local store, then measures in child processes so each peak RSS is the agent's own
(VmHWM): a first pull (provisioning: metadata, download, hashes, canary, swap, health check) and
batch-1 `device predict` latency with no photo.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from skyedge.core import inference, paths
from skyedge.release import registry, tuf
from skyedge.release.store import LocalStore


def _child_pull(state: str, store: str, root: str) -> dict:
    start = time.perf_counter()  # the agent's import is part of what a first pull costs
    from skyedge.device.agent import Agent

    status = Agent(Path(state), store, device_id="bench", trusted_root=Path(root)).pull()
    return {"seconds": time.perf_counter() - start, "state": status["state"], "reason": status["reason"], "version": status["version"], "peak_rss_bytes": inference.peak_rss_bytes()}


def _child_predict(state: str, sensors: str, runs: int) -> dict:
    from skyedge.device import predict

    model = inference.session(predict.active_slot(Path(state)) / "model.onnx")
    timings = inference.time_calls(lambda: predict.forecast(Path(state), Path(sensors), session=model), runs, warmup=1)
    return {**inference.latency_summary(timings), "runs": runs, "peak_rss_bytes": inference.peak_rss_bytes()}


def _sensors_csv(path: Path, hours: int) -> Path:
    lines = ["station_id,timestamp,temperature_c,pressure_hpa,humidity_pct,wind_speed_ms,wind_dir_deg,precip_mm"]
    for h in range(hours):
        lines.append(f"bench,2024-05-0{1 + h // 24}T{h % 24:02d}:00:00Z,{10 + h % 7},1012,60,3,180,0.0")
    path.write_text("\n".join(lines) + "\n")
    return path


def run(package: Path, out: Path, runs: int = 200) -> dict:
    if not paths.Package(package).manifest.exists():
        raise FileNotFoundError(f"bench-device: no package at {package}: build one first (`make run`, or `make run-real`)")
    with tempfile.TemporaryDirectory(prefix="skyedge-bench-device-") as tmp:
        tmp_path = Path(tmp)
        tuf.init_keys(tmp_path / "keys")
        store = LocalStore(tmp_path / "store")
        registry.publish(store, package, keys=tmp_path / "keys")
        state = tmp_path / "state"

        def child(*args: str) -> dict:
            proc = subprocess.run([sys.executable, "-m", "skyedge.evaluation.device_bench", "--child", *args], capture_output=True, text=True, check=True)
            return json.loads(proc.stdout.strip().splitlines()[-1])

        pull = child("pull", str(state), str(store.root), str(tmp_path / "keys" / "root.json"))
        manifest = json.loads((package / "manifest.json").read_text())
        window = int(manifest["preprocessing"]["sensors"]["window_hours"])
        sensors = _sensors_csv(tmp_path / "sensors.csv", window + 4)
        latency = child("predict", str(state), str(sensors), str(runs))
        model_bytes = (package / "model.onnx").stat().st_size
    report = {
        "package": str(package),
        "machine": inference.machine(),
        "model_bytes": model_bytes,
        "pull_verify_swap_seconds": round(pull["seconds"], 4),
        "pull_state": pull["state"],
        "agent_peak_rss_bytes": pull["peak_rss_bytes"],
        "predict_latency_ms": {key: round(latency[key], 4) for key in inference.LATENCY_KEYS} | {"runs": latency["runs"]},
        "predict_peak_rss_bytes": latency["peak_rss_bytes"],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        kind, *rest = argv[1:]
        result = _child_pull(*rest) if kind == "pull" else _child_predict(rest[0], rest[1], int(rest[2]))
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=paths.Workspace().package.dir)
    parser.add_argument("--out", type=Path, default=Path("reports/bench_device.json"))
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args(argv)
    report = run(args.package, args.out, args.runs)
    if report["pull_state"] != "updated":
        raise SystemExit(f"bench-device: the pull did not install the package: {report}")
    print(f"device footprint ({report['package']}, model {report['model_bytes']} bytes):")
    print(f"  agent peak RSS          {report['agent_peak_rss_bytes'] / 2**20:.1f} MiB")
    print(f"  pull + verify + swap    {report['pull_verify_swap_seconds']:.3f} s")
    print(f"  predict latency p50/p95 {report['predict_latency_ms']['latency_ms_p50']:.2f} / {report['predict_latency_ms']['latency_ms_p95']:.2f} ms (peak RSS {report['predict_peak_rss_bytes'] / 2**20:.1f} MiB)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

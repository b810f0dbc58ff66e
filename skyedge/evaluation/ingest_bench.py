"""Ingest throughput and memory (`make bench-ingest`): records/s and peak RSS at 1x and 10x the shared data.

1x is ../shared/datasets as it is (the 9 Beijing stations, 236,736 hourly records, and the 642
SWIMCAT photos). kx replays the Beijing records as k times the stations: copy r of every station
file, its station id suffixed `-r<r>` (copy 0 keeps the real ids, so the real profile's held-out
stations exist at every scale), and stations.csv likewise, written line by line into a temporary
folder (never held in memory); SWIMCAT is read once at every scale. Each scale's ingest runs in a
child process with the `real` profile's ingest and data sections (sources replaced, quarantine
threshold lifted), so its peak RSS (VmHWM) is its own. A table goes to stdout and the numbers to
reports/bench_ingest.json, with the targets: peak RSS at 10x within 1.2x of 1x, seconds per record
at 10x within 1.2x of 1x (linear time).

Without ../shared/datasets (a fresh clone) it says so and exits 0: nothing to measure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from skyedge.core import inference
from skyedge.core.config import Ingest, load_params
from skyedge.core.contract import STATION_METADATA_FILE
from skyedge.core.tables import Column, text_table

RSS_TARGET = 1.2  # peak RSS at the largest scale / at 1x
TIME_TARGET = 1.2  # seconds per record at the largest scale / at 1x


def replay(source: Path, out: Path, copies: int) -> Path:
    """The station CSVs and stations.csv of source, `copies` times, station ids suffixed (module doc)."""
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(source.glob("*.csv"))
    for path in files:
        target_name = path.name
        with path.open() as reader, (out / target_name).open("w") as writer:
            header = reader.readline()
            writer.write(header)
            lines = reader.readlines() if path.name == STATION_METADATA_FILE else None
            for copy in range(copies):
                suffix = f"-r{copy}" if copy else ""
                if lines is not None:  # stations.csv: one row per station and copy
                    writer.writelines(_suffixed(line, suffix) for line in lines)
                elif copy == 0:
                    writer.writelines(reader)  # the real file, streamed
                else:
                    with path.open() as again, (out / f"{path.stem}{suffix}.csv").open("w") as copy_writer:
                        copy_writer.write(again.readline())
                        copy_writer.writelines(_suffixed(line, suffix) for line in again)
    return out


def _suffixed(line: str, suffix: str) -> str:
    station, _, rest = line.partition(",")
    return f"{station}{suffix},{rest}" if rest else line


def _child(params_path: str, out: str, folders: list[str]) -> dict:
    """One ingest of folders (in this fresh process): its time, counts and peak RSS."""
    from skyedge.data import ingest

    params = load_params(Path(params_path), profile="real")
    config = Ingest.model_validate({**params.ingest.model_dump(), "sources": [{"type": "folder", "path": f} for f in folders], "max_quarantine_fraction": 1.0})
    started = time.perf_counter()
    report = ingest.run(config, params.data, Path(out))
    seconds = time.perf_counter() - started
    return {
        "received": report["total"]["received"],
        "accepted": report["total"]["accepted"],
        "samples": sum(entry["samples"] for entry in report["splits"].values()),
        "seconds": round(seconds, 2),
        "records_per_s": round(report["total"]["received"] / seconds, 1),
        "peak_rss_bytes": inference.peak_rss_bytes(),
        "validation_seconds": report.get("validation", {}).get("seconds"),
    }


def run(shared: Path, params: Path, out: Path, scales: list[int], work: Path | None = None) -> dict | None:
    """Ingest at each scale (module doc); None when the shared datasets are absent."""
    beijing, swimcat = shared / "beijing", shared / "swimcat"
    if not beijing.is_dir():
        return None
    extra = [str(swimcat)] if swimcat.is_dir() else []
    rows = []
    with tempfile.TemporaryDirectory(prefix="skyedge-bench-ingest-", dir=work) as tmp:
        for scale in scales:
            folder = beijing if scale == 1 else replay(beijing, Path(tmp) / f"beijing-{scale}x", scale)
            proc = subprocess.run(
                [sys.executable, "-m", "skyedge.evaluation.ingest_bench", "--child", str(params), str(Path(tmp) / f"out-{scale}x"), str(folder), *extra],
                capture_output=True, text=True, check=False,
            )
            if proc.returncode:
                raise RuntimeError(f"bench-ingest: the {scale}x ingest failed:\n{proc.stderr[-3000:]}")
            rows.append({"scale": scale, **json.loads(proc.stdout.strip().splitlines()[-1])})
            if scale != 1:
                _remove(folder)
    base, top = rows[0], rows[-1]
    result = {
        "shared": str(shared),
        "machine": inference.machine(),
        "photos_once": bool(extra),
        "great_expectations": load_params(params, profile="real").ingest.great_expectations,
        "scales": rows,
        "targets": {
            "peak_rss_ratio": {"value": round(top["peak_rss_bytes"] / base["peak_rss_bytes"], 3), "target": RSS_TARGET},
            "seconds_per_record_ratio": {"value": round((top["seconds"] / top["received"]) / (base["seconds"] / base["received"]), 3), "target": TIME_TARGET},
        },
    }
    for target in result["targets"].values():
        target["met"] = target["value"] <= target["target"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _remove(folder: Path) -> None:
    for path in folder.glob("*"):
        path.unlink()
    folder.rmdir()


def format_table(result: dict) -> str:
    base = result["scales"][0]
    rows = [
        {**row, "peak_rss_mb": row["peak_rss_bytes"] / 1e6, "rss_ratio": row["peak_rss_bytes"] / base["peak_rss_bytes"],
         "time_ratio": (row["seconds"] / row["received"]) / (base["seconds"] / base["received"])}
        for row in result["scales"]
    ]
    table = text_table(rows, [
        Column("scale", format=lambda s: f"{s}x"), Column("received", header="records"), Column("seconds", format=".1f"),
        Column("records_per_s", header="records/s", format=".0f"), Column("peak_rss_mb", header="peak RSS MB", format=".0f"),
        Column("rss_ratio", header="RSS vs 1x", format=".2f"), Column("time_ratio", header="s/record vs 1x", format=".2f"),
    ], rule=True)  # fmt: skip
    targets = "; ".join(f"{name} {t['value']} (target <= {t['target']}: {'met' if t['met'] else 'NOT met'})" for name, t in result["targets"].items())
    return f"{table}\n{targets}"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        print(json.dumps(_child(argv[1], argv[2], argv[3:])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("reports/bench_ingest.json"))
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10], help="replay factors; the first is the reference (default: 1 10)")
    parser.add_argument("--work", type=Path, help="where the replayed folders and outputs go (default: the system temp dir)")
    args = parser.parse_args(argv)
    result = run(args.shared, args.params, args.out, args.scales, args.work)
    if result is None:
        print(f"bench-ingest: skipped: {args.shared / 'beijing'} not found (a fresh clone has no ../shared)")
        return
    print(format_table(result))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()

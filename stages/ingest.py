"""ingest: read every source, validate, quarantine, build windows and labels, split by time.

The work is skyedge.data.ingest.run; this module reads params and paths and prints the report.
`--bench FOLDER...` times the same run on folders (records/s, peak RSS) for `make bench-ingest`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from skyedge.core.config import Data, FolderSource, Ingest, load_params
from skyedge.core.inference import peak_rss_bytes
from skyedge.data import ingest


def run(params: Ingest, data: Data, out_dir: Path, now: pd.Timestamp | None = None) -> dict:
    """Ingest the configured sources into out_dir (skyedge.data.ingest); returns the report."""
    return ingest.run(params, data, out_dir, now)


def bench(folders: list[Path], params: Ingest, data: Data, out_dir: Path, report_path: Path) -> dict:
    """Ingest folders as `type: folder` sources; time it, peak RSS, records/s -> report_path (JSON)."""
    config = params.model_copy(update={"sources": [FolderSource(type="folder", path=str(folder)) for folder in folders], "max_quarantine_fraction": 1.0})
    started = time.perf_counter()
    report = ingest.run(config, data, out_dir)
    seconds = time.perf_counter() - started
    received = report["total"]["received"]
    result = {
        "sources": [str(folder) for folder in folders],
        "received": received,
        "accepted": report["total"]["accepted"],
        "seconds": round(seconds, 2),
        "records_per_s": round(received / seconds, 1),
        "peak_rss_mb": round(peak_rss_bytes() / 1e6, 1),
        "validation_seconds": report.get("validation", {}).get("seconds"),
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--bench", type=Path, nargs="+", metavar="FOLDER", help="benchmark: ingest these folders instead of params' sources")
    parser.add_argument("--bench-report", type=Path, default=Path("reports/bench_ingest.json"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if args.bench:
        missing = [str(folder) for folder in args.bench if not folder.is_dir()]
        if missing:
            raise SystemExit(f"bench-ingest: {', '.join(missing)} not found (the benchmark reads ../shared/datasets)")
        result = bench(args.bench, params.ingest, params.data, args.out, args.bench_report)
        print(f"ingest bench: {result['received']} items in {result['seconds']} s = {result['records_per_s']:.0f} records/s, "
              f"peak RSS {result['peak_rss_mb']:.0f} MB -> {args.bench_report}")
        return
    print(ingest.format_report(ingest.run(params.ingest, params.data, args.out)))


if __name__ == "__main__":
    main()

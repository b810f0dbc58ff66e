"""ingest: read every source, validate, quarantine, build windows and labels, split by time.

The work is skyedge.data.ingest.run (streaming: memory does not grow with the records); this
module reads params and paths and prints the report. `make bench-ingest`
(skyedge.evaluation.ingest_bench) times the same run at 1x and 10x the shared data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from skyedge.core.config import Data, Ingest, load_params
from skyedge.data import ingest


def run(params: Ingest, data: Data, out_dir: Path, now: pd.Timestamp | None = None) -> dict:
    """Ingest the configured sources into out_dir (skyedge.data.ingest); returns the report."""
    return ingest.run(params, data, out_dir, now)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    print(ingest.format_report(ingest.run(params.ingest, params.data, args.out)))


if __name__ == "__main__":
    main()

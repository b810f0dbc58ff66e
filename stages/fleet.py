"""fleet: what the fleet's observation stores hold now, so DVC knows when ingest has new data.

DVC tracks files, and the fleet (`ingest.sources` entries of type `fleet`) is an S3 store that
grows every hour. This stage is `always_changed` in dvc.yaml: every `dvc repro` lists the stores
(listings only: cheap) and writes data/fleet/snapshot.json, per store its batch count and a sha256
over every batch key and ETag. Ingest depends on that file, so it re-runs when a station has sent
something since the last run, and not otherwise. Without fleet sources the snapshot is constant.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from skyedge.core import paths
from skyedge.core.config import FleetSource, Ingest, load_params
from skyedge.data import fleet


def run(params: Ingest, out_dir: Path) -> dict:
    """List every fleet source of `params` into out_dir/snapshot.json; returns the document."""
    stores = [fleet.snapshot(source, fleet.client_for(source)) for source in params.sources if isinstance(source, FleetSource)]
    document = {"fleet_sources": stores}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths.Fleet(out_dir).snapshot.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return document


def format_snapshot(document: dict) -> str:
    if not document["fleet_sources"]:
        return "fleet: no fleet source in ingest.sources: nothing to list"
    return "\n".join(
        f"fleet {entry['store']}: {entry['batches']} batches from {entry['devices']} devices (sha256 {entry['batches_sha256'][:12]})"
        for entry in document["fleet_sources"]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    print(format_snapshot(run(load_params(args.params).ingest, args.out)))


if __name__ == "__main__":
    main()

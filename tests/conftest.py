"""Shared fixtures: the tiny profile, and one in-process run of every stage on it per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from skyedge.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def tiny() -> Params:
    return load_params(REPO / "params.yaml", profile="tiny")


@dataclass(frozen=True)
class PipelineRun:
    params: Params
    root: Path

    def __getattr__(self, stage: str) -> Path:
        return self.root / stage


@pytest.fixture(scope="session")
def pipeline(tiny: Params, tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    """Every stage's `run()` in DVC order on the tiny profile, outputs under one temp dir."""
    from stages import distill, embed, evaluate, ingest, package, prune, quantize

    root = tmp_path_factory.mktemp("pipeline")
    d = PipelineRun(tiny, root)
    ingest.run(tiny.ingest, tiny.data, d.ingest)
    embed.run(tiny.embed, tiny.data, tiny.common, d.ingest, d.embed)
    distill.run(tiny.distill, tiny.data, tiny.common, d.ingest, d.embed, d.distill)
    prune.run(tiny.prune, tiny.distill, tiny.data, tiny.common, d.ingest, d.embed, d.distill, d.prune)
    quantize.run(tiny.quantize, tiny.common, d.ingest, d.prune, d.quantize)
    evaluate.run(tiny.evaluate, tiny.common, d.ingest, evaluate.variant_paths(d.embed, d.distill, d.prune, d.quantize), d.evaluate)
    package.run(tiny, d.ingest, d.quantize, d.evaluate, d.package, root / "keys" / "signing_key.pem")
    return d


def shared_dataset(name: str) -> Path:
    """A dataset from ../shared/datasets, or a clean skip when this checkout has none."""
    path = SHARED_DATASETS / name
    if not path.is_dir():
        pytest.skip(f"../shared/datasets/{name} not present (a fresh clone has no ../shared)")
    return path

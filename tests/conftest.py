"""Shared fixtures: the tiny profile, and one in-process run of every stage on it per session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from skyedge.core.config import Data, Ingest, Params, load_params

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def tiny() -> Params:
    return load_params(REPO / "params.yaml", profile="tiny")


def ingest_params(sources: list[dict], holdout_stations: tuple[str, ...] = (), **overrides) -> Ingest:
    """The tiny profile's ingest section (params.yaml is the one home of every value), with these
    sources, held-out stations (none unless named: they are the test data's own) and overrides."""
    base = load_params(REPO / "params.yaml", profile="tiny").ingest.model_dump()
    split = {**base["split"], "holdout_stations": list(holdout_stations)}
    return Ingest.model_validate({**base, "sources": sources, "split": split, **overrides})


def data_params(**overrides) -> Data:
    return Data.model_validate({**load_params(REPO / "params.yaml", profile="tiny").data.model_dump(), **overrides})


def folder_source(path: Path) -> dict:
    return {"type": "folder", "path": str(path)}


def s3_source(url: str, **connection) -> dict:
    return {"type": "s3", "url": url, **connection}


@dataclass(frozen=True)
class PipelineRun:
    params: Params
    root: Path

    def __getattr__(self, stage: str) -> Path:
        return self.root / stage


@pytest.fixture(scope="session")
def pipeline(tiny: Params, tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    """Every stage's `run()` in DVC order on the tiny profile, outputs under one temp dir."""
    from stages import attend, embed, ingest

    root = tmp_path_factory.mktemp("pipeline")
    d = PipelineRun(tiny, root)
    ingest.run(tiny.ingest, tiny.data, d.ingest)
    attend.run(tiny.attend, tiny.data, tiny.common, d.ingest, d.attend)
    embed.run(tiny.embed, tiny.data, tiny.augment, tiny.common, d.ingest, d.embed)
    run_student_stages(tiny, d)
    return d


def run_student_stages(params: Params, d: PipelineRun) -> None:
    """distill, prune, quantize, evaluate and package, from d's ingest, attend and embed outputs."""
    from stages import distill, evaluate, package, prune, quantize

    distill.run(params.distill, params.data, params.augment, params.common, d.ingest, d.embed, d.distill, params.attend, d.attend)
    prune.run(params.prune, params.distill, params.data, params.augment, params.common, d.ingest, d.embed, d.distill, d.prune, params.attend, d.attend)
    quantize.run(params.quantize, params.data, params.augment, params.common, params.distill, d.ingest, d.embed, d.prune, d.quantize, params.attend, d.attend)
    evaluate.run(params.evaluate, params.common, d.ingest, evaluate.variant_paths(d.embed, d.distill, d.prune, d.quantize), d.evaluate, params.attend, d.attend)
    package.run(params, d.ingest, d.quantize, d.evaluate, d.package, d.root / "keys" / "signing_key.pem", d.attend)


@pytest.fixture(scope="session")
def attended_pipeline(pipeline: PipelineRun, tmp_path_factory: pytest.TempPathFactory) -> PipelineRun:
    """The student stages again with attend.student_input = crop (fp32 and static int8 candidates
    only: the attention path, not the quantizer, is under test), on the session pipeline's ingest,
    attend and embed outputs."""
    params = pipeline.params
    crop = params.model_copy(
        update={
            "attend": params.attend.model_copy(update={"student_input": "crop"}),
            "quantize": params.quantize.model_copy(update={"candidates": {k: v for k, v in params.quantize.candidates.items() if k in ("fp32", "static")}}),
        }
    )
    d = PipelineRun(crop, tmp_path_factory.mktemp("attended"))
    for stage in ("ingest", "attend", "embed"):
        getattr(d, stage).symlink_to(getattr(pipeline, stage))
    (d.root / "keys").symlink_to(pipeline.root / "keys")
    run_student_stages(crop, d)
    return d


def shared_dataset(name: str) -> Path:
    """A dataset from ../shared/datasets, or a clean skip when this checkout has none."""
    path = SHARED_DATASETS / name
    if not path.is_dir():
        pytest.skip(f"../shared/datasets/{name} not present (a fresh clone has no ../shared)")
    return path


def copy_project(destination: Path) -> Path:
    """This project's files (as git would clone them) in a fresh git repo at destination."""
    import shutil
    import subprocess

    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True)
    for name in listed.stdout.split():
        if (REPO / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone"]):
        subprocess.run(command, cwd=destination, check=True, capture_output=True)
    return destination


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real S3 API (moto's server mode) over HTTP on 127.0.0.1, for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def aws_env(monkeypatch, moto_endpoint, tmp_path):
    """Dummy credentials and the moto endpoint, and no real AWS configuration from this machine."""
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return env


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect server and database for the session's flow runs."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield

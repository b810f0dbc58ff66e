"""The retrain flow under a real Prefect server (test harness) with S3 on moto's server.

One workspace (a git copy of the project, tiny profile) serves every test: the first flow run
reproduces the seven stages; later runs find DVC up to date and exercise gate, approval, publish.
Tests run in file order: approval first (nothing published yet), then the gate refusals.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_project


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, moto_endpoint, prefect_harness):
    root = copy_project(tmp_path_factory.mktemp("flow") / "skyedge")
    saved = dict(os.environ)
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": moto_endpoint,
            "SKYEDGE_SIGNING_KEY": str(root.parent / "keys" / "signing_key.pem"),
            "PATH": f"{Path(os.sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(root),
        }
    )
    import boto3

    bucket = f"flow-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    # The tiny profile trains for one epoch: gate on the mechanics, not on its (poor) skill.
    set_gate(root, **PERMISSIVE)
    yield {"root": root, "store": f"s3://{bucket}/registry"}
    os.environ.clear()
    os.environ.update(saved)


PERMISSIVE = {"min_sky_accuracy": 0.0, "min_rain_bss_persistence": -100.0, "min_temp_skill_persistence": -100.0}


def set_gate(root: Path, **values) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["gate"].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def production(store_url: str) -> int | None:
    from skyedge import registry
    from skyedge.store import open_store

    pointer = registry.read_channel(open_store(store_url), "production")
    return pointer["version"] if pointer else None


def run_in_background(**kwargs) -> tuple[threading.Thread, dict]:
    from flows.retrain import retrain

    outcome: dict = {}

    def target() -> None:
        try:
            outcome["result"] = retrain(**kwargs)
        except BaseException as error:  # the test inspects what the flow raised
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def wait_for_paused_run(thread: threading.Thread, outcome: dict, timeout_s: float = 600):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    deadline = time.monotonic() + timeout_s
    paused_filter = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    while time.monotonic() < deadline:
        assert thread.is_alive(), f"flow ended before pausing: {outcome}"
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_run_filter=paused_filter)
        if runs:
            return runs[0]
        time.sleep(1)
    raise AssertionError("the flow never paused for approval")


def decide(workspace, approve: bool) -> dict:
    from prefect.flow_runs import resume_flow_run

    thread, outcome = run_in_background(workspace=str(workspace["root"]), profile="tiny", store=workspace["store"], approval="required")
    paused = wait_for_paused_run(thread, outcome)
    resume_flow_run(paused.id, run_input={"approve": approve, "reviewer": "ops@station", "comment": "looked at the diff"})
    thread.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    return outcome["result"]


def test_rejecting_in_the_approval_form_publishes_nothing(workspace):
    result = decide(workspace, approve=False)
    assert result["published"] is False
    assert result["decision"]["reviewer"] == "ops@station"
    assert production(workspace["store"]) is None


def test_approving_publishes_and_moves_production(workspace):
    result = decide(workspace, approve=True)
    assert result["published"] is True
    assert production(workspace["store"]) == result["version"]
    from skyedge import registry
    from skyedge.store import open_store

    stored = registry.show(open_store(workspace["store"]))
    version = next(v for v in stored["versions"] if v["version"] == result["version"])
    assert version["decision"]["reviewer"] == "ops@station"


def test_no_decision_before_the_timeout_publishes_nothing(workspace):
    from flows.retrain import retrain

    before = production(workspace["store"])
    set_gate(workspace["root"], approval_timeout_s=2)
    try:
        result = retrain(workspace=str(workspace["root"]), store=workspace["store"], approval="required")
    finally:
        set_gate(workspace["root"], approval_timeout_s=3600)
    assert result["published"] is False and result["decision"]["timed_out"] is True
    assert production(workspace["store"]) == before


def test_a_candidate_below_a_threshold_is_refused_naming_the_criterion(workspace):
    from flows.retrain import GateRefused, retrain

    set_gate(workspace["root"], min_sky_accuracy=0.999)
    try:
        with pytest.raises(GateRefused, match=r"sky_accuracy: .* < 0\.999"):
            retrain(workspace=str(workspace["root"]), store=workspace["store"], approval="auto")
    finally:
        set_gate(workspace["root"], **PERMISSIVE)


def test_a_candidate_worse_than_production_is_refused(workspace, tmp_path):
    """Production becomes the (much better) teacher; the student must then lose to it."""
    import json

    from flows.retrain import GateRefused, retrain
    from skyedge import registry, signing
    from skyedge.config import load_params
    from skyedge.store import open_store
    from stages import package

    root = workspace["root"]
    quantize_dir = tmp_path / "quantize"
    quantize_dir.mkdir()
    shutil.copyfile(root / "data" / "embed" / "teacher.onnx", quantize_dir / "shipped.onnx")
    (quantize_dir / "report.json").write_text(json.dumps({"shipped": "teacher", "reason": "test: production is the teacher"}))
    params = load_params(root / "params.yaml")
    package.run(params, root / "data" / "ingest", quantize_dir, root / "data" / "evaluate", tmp_path / "teacher_package", signing.key_path_from_env())
    key = signing.load_private_key(signing.key_path_from_env()).public_key()
    registry.publish(open_store(workspace["store"]), tmp_path / "teacher_package", public_key=key, force=True)

    with pytest.raises(GateRefused, match=r"vs_production_"):
        retrain(workspace=str(root), store=workspace["store"], approval="auto")

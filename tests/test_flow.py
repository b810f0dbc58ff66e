"""The retrain flow under a real Prefect server (test harness) with S3 on moto's server.

One workspace (a git copy of the project, tiny profile) serves every test: the first flow run
reproduces the DVC stages; later runs find DVC up to date and exercise gate, approval, publish,
the DVC remote, the served deployment and the sweep (whose copies reuse the upstream outputs).
Tests run in file order: reject and timeout first (nothing published yet), approve, then the
DVC remote and the deployment (a run of the unchanged model), the gate refusals, the sweep.
Other modules get a copy of a reproduced tiny workspace from `reproduced_tiny_workspace`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
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
    yield {"root": root, "store": f"s3://{bucket}/registry", "bucket": bucket, "marker": tmp_path_factory.getbasetemp() / REPRODUCED}
    os.environ.clear()
    os.environ.update(saved)


REPRODUCED = "tiny-reproduced.json"


def reproduced_tiny_workspace(tmp_path_factory, dest: Path) -> tuple[Path, Path]:
    """A private copy of a workspace whose tiny pipeline already ran, and its signing key.

    Copies this module's workspace when its flow has reproduced the stages in this session (the
    marker file says so); otherwise reproduces a template once (`dvc repro`, tiny profile)."""
    from flows.dvc import set_profile
    from flows.sweep import copy_workspace

    marker = tmp_path_factory.getbasetemp() / REPRODUCED
    if not marker.exists():
        source = copy_project(tmp_path_factory.mktemp("tiny-template") / "skyedge")
        key = source.parent / "keys" / "signing_key.pem"
        set_profile.fn(source, "tiny")
        env = {**os.environ, "SKYEDGE_SIGNING_KEY": str(key), "PYTHONPATH": str(source), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        subprocess.run(["dvc", "repro"], cwd=source, env=env, check=True, capture_output=True)
        marker.write_text(json.dumps({"workspace": str(source), "signing_key": str(key)}))
    found = json.loads(marker.read_text())
    return copy_workspace(Path(found["workspace"]), dest), Path(found["signing_key"])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


PERMISSIVE = {"min_sky_accuracy": 0.0, "min_rain_bss_persistence": -100.0, "min_temp_skill_persistence": -100.0}


def set_gate(root: Path, **values) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["gate"].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def production(store_url: str) -> int | None:
    from skyedge.release import registry
    from skyedge.release.store import open_store

    pointer = registry.read_channel(open_store(store_url), "production")
    return pointer["version"] if pointer else None


def run_in_background(**kwargs) -> tuple[threading.Thread, dict]:
    from flows.retrain import retrain

    outcome: dict = {}

    def target() -> None:
        try:
            outcome["state"] = retrain(**kwargs, return_state=True)
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


def run_retrain(**kwargs):
    """The retrain flow's final state: its name says what happened, its result what was done."""
    from flows.retrain import retrain

    return retrain(**kwargs, return_state=True)


def decide(workspace, approve: bool, store: str | None = None):
    from prefect.flow_runs import resume_flow_run

    thread, outcome = run_in_background(workspace=str(workspace["root"]), profile="tiny", store=store or workspace["store"], approval="required")
    paused = wait_for_paused_run(thread, outcome)
    resume_flow_run(paused.id, run_input={"approve": approve, "reviewer": "ops@station", "comment": "looked at the diff"})
    thread.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    # The stages ran: other modules may copy this workspace instead of re-running them.
    workspace["marker"].write_text(json.dumps({"workspace": str(workspace["root"]), "signing_key": os.environ["SKYEDGE_SIGNING_KEY"]}))
    return outcome["state"]


def test_rejecting_in_the_approval_form_publishes_nothing_and_records_the_refusal(workspace):
    from skyedge.release import registry
    from skyedge.release.store import open_store

    store = str(workspace["root"].parent / "rejected-registry")  # its own: the refusal would block the approval tests
    state = decide(workspace, approve=False, store=store)
    result = state.result()
    assert state.name == "Rejected" and state.is_completed()
    assert result["published"] is False
    assert result["decision"]["reviewer"] == "ops@station"
    assert production(store) is None
    refusal = registry.read_refusal(open_store(store), result["version"])
    assert refusal["by"] == "ops@station" and refusal["reason"] == "looked at the diff"


def test_no_decision_before_the_timeout_publishes_nothing(workspace):
    before = production(workspace["store"])
    set_gate(workspace["root"], approval_timeout_s=2)
    try:
        state = run_retrain(workspace=str(workspace["root"]), store=workspace["store"], approval="required")
    finally:
        set_gate(workspace["root"], approval_timeout_s=3600)
    result = state.result()
    assert state.name == "NoDecision"
    assert result["published"] is False and result["decision"]["timed_out"] is True
    assert production(workspace["store"]) == before


def test_approving_publishes_and_moves_production(workspace):
    state = decide(workspace, approve=True)
    result = state.result()
    assert state.name == "Published"
    assert result["published"] is True
    assert production(workspace["store"]) == result["version"]
    from skyedge.release import registry
    from skyedge.release.store import open_store

    stored = registry.show(open_store(workspace["store"]))
    version = next(v for v in stored["versions"] if v["version"] == result["version"])
    assert version["decision"]["reviewer"] == "ops@station"


def test_after_publishing_dvc_pull_in_a_second_copy_restores_the_outputs(workspace, tmp_path):
    """The flow pushed the DVC cache to <store>/dvc; a fresh checkout pulls identical outputs."""
    import boto3

    from flows import dvc_remote

    root = workspace["root"]
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=workspace["bucket"], Prefix="registry/dvc/")["Contents"]]
    assert len(keys) >= 10, keys  # every cached output of the stages
    assert "skyedge" in (root / ".dvc" / "config.local").read_text() and "skyedge" not in (root / ".dvc" / "config").read_text()

    # A second machine: the commit plus dvc.lock and params.yaml, no outputs and no cache.
    second = tmp_path / "second"
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root, capture_output=True, text=True, check=True)
    for name in listed.stdout.split():
        (second / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, second / name)
    subprocess.run(["git", "init", "-q"], cwd=second, check=True)
    assert not (second / "data" / "package").exists() and not (second / ".dvc" / "cache").exists()
    dvc_remote.configure(second, workspace["store"])
    dvc_remote.pull(second)
    for output in ("data/package/model.onnx", "data/package/manifest.json", "data/quantize/shipped.onnx", "data/embed/teacher.onnx"):
        assert sha256(second / output) == sha256(root / output), output
    published = json.loads((second / "data" / "package" / "manifest.json").read_text())
    assert published["version"] == production(workspace["store"])


def test_the_deployment_is_served_on_its_cron_and_a_triggered_run_completes(workspace, tmp_path):
    """`skyedge serve` against the harness's server; a run from the deployment (approval auto)."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    from skyedge.core.config import load_params

    root = workspace["root"]
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    log = (tmp_path / "serve.log").open("w")
    command = [str(Path(sys.executable).parent / "skyedge"), "serve", "--workspace", str(root), "--store", workspace["store"], "--approval", "auto", "--name", "test"]
    server = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        deployment = checks = None
        while checks is None:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "the deployments were never registered"
            try:
                with get_client(sync_client=True) as client:
                    deployment = client.read_deployment_by_name("skyedge-retrain/test")
                    checks = client.read_deployment_by_name("skyedge-rollout/test")  # the rollout's checks, on their own schedule
            except Exception:  # not registered yet
                time.sleep(1)
        assert [s.schedule.cron for s in deployment.schedules] == [load_params(root / "params.yaml").flow.cron]
        assert deployment.parameters == {"workspace": str(root), "store": workspace["store"], "approval": "auto"}
        assert [s.schedule.cron for s in checks.schedules] == [load_params(root / "params.yaml").rollout.cron]

        run = run_deployment("skyedge-retrain/test", timeout=600, poll_interval=2)
        assert run.state.is_completed(), f"{run.state}: {(tmp_path / 'serve.log').read_text()[-3000:]}"
        # Nothing changed since the approved release: the scheduled run says so and publishes nothing.
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        expected = f"production version {production(workspace['store'])} already: nothing to approve or publish"
        # Run logs reach the API in batches, possibly after the run's final state: poll for them.
        deadline, said = time.monotonic() + 30, ""
        while expected not in said and time.monotonic() < deadline:
            time.sleep(1)
            with get_client(sync_client=True) as client:
                logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
            said = "\n".join(entry.message for entry in logs)
        assert expected in said, said[-3000:]
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def test_a_candidate_below_a_threshold_is_refused_naming_the_criterion(workspace, capsys):
    from cli.main import main

    # its own registry: an earlier test may have published this very candidate (NoChange), and the
    # refusal on record would block the approval tests
    store = str(workspace["root"].parent / "refused-registry")
    set_gate(workspace["root"], min_sky_accuracy=0.999)
    try:
        state = run_retrain(workspace=str(workspace["root"]), store=store, approval="auto")
        assert state.name == "GateRefused" and state.is_failed()
        assert re.search(r"sky_accuracy: .* < 0\.999", state.message)
        # `skyedge retrain`: its own exit code and one line with the reason
        assert main(["retrain", "--workspace", str(workspace["root"]), "--store", store, "--approval", "auto"]) == 4
        assert re.search(r"retrain: REFUSED: .*sky_accuracy: .* < 0\.999", capsys.readouterr().err)
    finally:
        set_gate(workspace["root"], **PERMISSIVE)
    # The refusal is on record: publishing that package by hand says so and needs a reason.
    package = str(workspace["root"] / "data" / "package")
    assert main(["publish", package, "--store", store]) == 1
    assert "was refused by gate" in capsys.readouterr().err
    assert main(["publish", package, "--store", store, "--force"]) == 2
    assert "--force needs --reason" in capsys.readouterr().err


def test_a_candidate_worse_than_production_is_refused(workspace, tmp_path):
    """Production becomes the teacher (on the tiny profile it forecasts rain far better than the
    one-epoch student); the student must then lose to it on the same rows."""
    import json

    from skyedge.core.config import load_params
    from skyedge.release import registry, signing
    from skyedge.release.store import open_store
    from stages import package

    root = workspace["root"]
    quantize_dir = tmp_path / "quantize"
    quantize_dir.mkdir()
    shutil.copyfile(root / "data" / "embed" / "teacher.onnx", quantize_dir / "shipped.onnx")
    (quantize_dir / "report.json").write_text(json.dumps({"shipped": "teacher", "reason": "test: production is the teacher", "fallback": {"rain": [False] * 4, "temp": [False] * 4}}))
    params = load_params(root / "params.yaml")
    package.run(params, root / "data" / "ingest", quantize_dir, root / "data" / "evaluate", tmp_path / "teacher_package", signing.key_path_from_env(), root / "data" / "attend")
    key = signing.load_private_key(signing.key_path_from_env()).public_key()
    registry.publish(open_store(workspace["store"]), tmp_path / "teacher_package", public_key=key, force=True)

    state = run_retrain(workspace=str(root), store=workspace["store"], approval="auto")
    # refused against production; which criteria fall below depends on where the teacher is better
    assert state.name == "GateRefused" and re.search(r"vs_production_\w+: difference -", state.message), state.message


def test_a_sweep_of_two_configs_on_a_two_worker_local_cluster(workspace, tmp_path):
    """Two prune ratios, each in its own workspace copy, as tasks on prefect-dask's LocalCluster."""
    from flows import sweep

    configs = sweep.grid(["tinycnn"], [0.25, 0.5], ["per_channel"])
    rows = sweep.run_sweep(n_workers=2, workspace=str(workspace["root"]), configs=configs, out=str(tmp_path / "sweep"))
    assert [row["variant"] for row in rows] == ["tinycnn-p0.25-per_channel", "tinycnn-p0.5-per_channel"]
    for row in rows:
        assert "error" not in row, row
        assert row["size_bytes"] > 0 and row["latency_ms_p50"] > 0 and 0 <= row["sky_accuracy"] <= 1
        assert "rain_bss_persistence_h1" in row and "temp_skill_persistence_h4" in row
        copied = Path(row["workspace"])
        assert copied.parent == tmp_path / "sweep" / "runs" and copied != workspace["root"]
    # each copy ran its own params: the pruned models differ; the base workspace kept its own
    assert sha256(Path(rows[0]["workspace"]) / "data/prune/pruned.onnx") != sha256(Path(rows[1]["workspace"]) / "data/prune/pruned.onnx")
    assert yaml.safe_load((workspace["root"] / "params.yaml").read_text())["prune"]["structured"]["ratio"] == 0.5
    # the copies keep no cache of their own: they use the base's, run cache included
    assert not (Path(rows[0]["workspace"]) / ".dvc" / "cache").exists()
    assert str(workspace["root"] / ".dvc" / "cache") in (Path(rows[0]["workspace"]) / ".dvc" / "config.local").read_text()
    # the two configurations share this machine's cores instead of each taking them all
    copied_params = yaml.safe_load((Path(rows[0]["workspace"]) / "params.yaml").read_text())
    assert copied_params["common"]["threads"] == sweep.threads_per_worker(2)
    written = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert [r["variant"] for r in written] == [r["variant"] for r in rows]
    assert (tmp_path / "sweep" / "sweep.csv").read_text().count("\n") == 3
    assert (tmp_path / "sweep" / "pareto.png").stat().st_size > 1000
    # ranked by the grouped-validation estimate, never by test scores
    by_rank = sorted(rows, key=lambda r: r["rank"])
    assert [r["rank"] for r in by_rank] == [1, 2] and by_rank[0]["val_sky_accuracy"] >= by_rank[1]["val_sky_accuracy"]
    assert all(r["macs"] > 0 for r in rows) and rows[0]["macs"] > rows[1]["macs"]  # less pruned: more MACs


def test_width_and_input_resolution_are_sweep_axes_written_where_params_keep_them(tmp_path):
    from flows import sweep

    configs = sweep.grid(["tinycnn"], [0.5], ["per_tensor"], widths=[8, 16], sizes=[32])
    assert [c["name"] for c in configs] == ["tinycnn-w8-s32-p0.5-per_tensor", "tinycnn-w16-s32-p0.5-per_tensor"]
    project = copy_project(tmp_path / "ws")
    sweep.apply_config(project / "params.yaml", configs[0])
    written = yaml.safe_load((project / "params.yaml").read_text())
    assert (written["distill"]["width"], written["data"]["image_size"], written["quantize"]["per_channel"]) == (8, 32, False)


def test_sweep_workers_share_the_cores_and_each_keeps_at_least_one_thread():
    from flows.sweep import threads_per_worker

    assert threads_per_worker(2, cores=2) == 1
    assert threads_per_worker(2, cores=8) == 4
    assert threads_per_worker(1, cores=2) == 2
    assert threads_per_worker(4, cores=2) == 1

"""The retrain flow: DVC stages as Prefect tasks, then gate, approval and publish.

    ingest -> embed -> distill -> prune -> quantize -> evaluate -> package   (each `dvc repro <stage>`)
    -> gate (thresholds; champion/challenger against production, re-scored on the same test split)
    -> approval (an operator's PromotionDecision in the Prefect UI, or auto)
    -> publish (registry: immutable objects, pointer moved last) -> dvc push

Orchestration only: the ML lives in stages/ and skyedge/; this module imports no torch.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import subprocess
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.context import get_run_context
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.tasks import exponential_backoff

from flows import dvc_remote
from skyedge.core import inference
from skyedge.core.config import Params, load_params
from skyedge.data.dataset import inputs_for_model, load_ingested
from skyedge.evaluation import gate, scores
from skyedge.release import registry, signing
from skyedge.release.store import open_store

STAGES = ("ingest", "embed", "distill", "prune", "quantize", "evaluate", "package")
# Failures worth retrying: another process holds DVC's lock, or the OS killed the stage (OOM).
TRANSIENT = re.compile(r"Unable to acquire lock|is busy|Killed|Resource temporarily unavailable|Connection", re.I)


class PromotionDecision(RunInput):
    """What the operator fills in on the Prefect UI's resume form."""

    approve: bool
    reviewer: str
    comment: str = ""


class GateRefused(RuntimeError):
    """The candidate failed the gate; the message lists each failed criterion."""


class StageFailed(RuntimeError):
    def __init__(self, stage: str, output: str, transient: bool):
        super().__init__(f"dvc repro {stage} failed{' (transient)' if transient else ''}:\n{output[-4000:]}")
        self.transient = transient


@contextmanager
def workspace_lock(workspace: Path):
    """One DVC run per workspace at a time, across threads and processes (DVC's own lock fails
    fast instead of waiting, so concurrent flow runs queue here)."""
    lock_path = workspace / ".dvc" / "tmp" / "skyedge-flow.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _retry_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except StageFailed as error:
        return error.transient
    except Exception:
        return False
    return False


@task(retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=5), retry_condition_fn=_retry_transient, task_run_name="dvc repro {stage}")
def run_stage(stage: str, workspace: Path) -> str:
    """`dvc repro <stage>`: runs it (and nothing downstream) if its inputs changed."""
    with workspace_lock(workspace):
        result = subprocess.run(["dvc", "repro", stage], cwd=workspace, capture_output=True, text=True)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise StageFailed(stage, output, transient=bool(TRANSIENT.search(output)) or result.returncode < 0)
    get_run_logger().info("%s: %s", stage, "ran" if f"Running stage '{stage}'" in output else "up to date")
    return output


@task
def set_profile(workspace: Path, profile: str) -> None:
    """Select the params profile the way `dvc exp run -S common.profile=…` does (one key)."""
    path = workspace / "params.yaml"
    text = path.read_text()
    updated = re.sub(r"(?m)^(common:\n(?:[ \t].*\n)*?[ \t]+profile:[ \t]*)\S+", rf"\g<1>{profile}", text, count=1)
    if updated != text:
        path.write_text(updated)
    load_params(path)  # fail now, naming the key, if the profile does not exist


def score_production(production_dir: Path, workspace: Path, params: Params) -> dict:
    """Re-score the production model on the candidate's test split with its own preprocessing."""
    document = json.loads((production_dir / "manifest.json").read_text())
    data = load_ingested(workspace / "data" / "ingest")
    test = data.split("test")
    inputs = inputs_for_model(data, test, document["preprocessing"])
    outputs = inference.predict(inference.session(production_dir / "model.onnx", params.common.threads), inputs)
    samples = data.samples.iloc[test].reset_index(drop=True)
    return scores.score(outputs, samples, document["climatology"], params.evaluate.bootstrap, params.common.seed)


@task
def gate_candidate(workspace: Path, params: Params, store_url: str) -> dict:
    """Thresholds, then champion/challenger; raises GateRefused naming every failed criterion."""
    candidate = json.loads((workspace / "data" / "evaluate" / "metrics.json").read_text())
    shipped = candidate["variants"]["shipped"]
    size = (workspace / "data" / "package" / "model.onnx").stat().st_size
    criteria = gate.thresholds(candidate, size, shipped["latency_ms_p95"], params.gate)
    store = open_store(store_url, params.flow.endpoint_url)
    pointer = registry.read_channel(store, params.flow.channel)
    production = None
    if pointer is not None:
        with tempfile.TemporaryDirectory() as scratch:
            production_dir = registry.fetch_version(store, params.flow.channel, Path(scratch) / "production")
            production = score_production(production_dir, workspace, params)
        criteria += gate.champion_challenger(candidate, production)
    against = "first model: thresholds only" if production is None else f"against production v{pointer['version']}"
    create_table_artifact([c.as_row() for c in criteria], key="gate-criteria", description=f"Gate criteria ({against})")
    failed = [c for c in criteria if not c.passed]
    if failed:
        raise GateRefused("candidate refused by the gate: " + "; ".join(f"{c.name}: {c.detail}" for c in failed))
    return {
        "candidate": candidate,
        "production": production,
        "production_version": pointer["version"] if pointer else None,
        "production_manifest_sha256": pointer["manifest_sha256"] if pointer else None,
    }


def ask_operator(diff: str, timeout_s: int) -> dict:
    """Pause until an operator resumes the run in the Prefect UI with a PromotionDecision."""
    description = "## Promote this model?\n\nCandidate vs production on the same test split:\n\n" + diff
    try:
        decision = pause_flow_run(
            wait_for_input=PromotionDecision.with_initial_data(description=description, approve=False, reviewer="", comment=""),
            timeout=timeout_s,
            poll_interval=2,
        )
    except FlowPauseTimeout:
        return {"approve": False, "reviewer": "", "comment": f"no decision within {timeout_s} s", "timed_out": True}
    return {"approve": decision.approve, "reviewer": decision.reviewer, "comment": decision.comment, "timed_out": False}


@task
def publish_candidate(workspace: Path, params: Params, store_url: str, decision: dict) -> dict:
    store = open_store(store_url, params.flow.endpoint_url)
    key_path = signing.key_path_from_env()
    key_path = key_path if key_path.is_absolute() else workspace / key_path
    public_key = signing.load_private_key(key_path).public_key()
    record = {key: decision[key] for key in ("approve", "reviewer", "comment", "decided_at")}
    return registry.publish(store, workspace / "data" / "package", params.flow.channel, public_key=public_key, decision=record)


@task(retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=5), task_run_name="dvc push")
def push_data(workspace: Path, store_url: str, endpoint_url: str | None) -> str:
    """`dvc push` to `<store>/dvc`, so a second machine can `dvc pull` what was just published."""
    url = dvc_remote.configure(workspace, store_url, endpoint_url)
    with workspace_lock(workspace):
        dvc_remote.push(workspace)
    get_run_logger().info("dvc push: outputs in %s", url)
    return url


@flow(name="skyedge-retrain", log_prints=True)
def retrain(workspace: str = ".", profile: str | None = None, store: str | None = None, approval: str | None = None) -> dict:
    """Retrain, gate, get approval and publish. Returns what happened; refusals fail the run."""
    root = Path(workspace).resolve()
    if profile:
        set_profile(root, profile)
    params = load_params(root / "params.yaml")
    store_url = store or params.flow.store
    if not store_url.startswith("s3://") and not os.path.isabs(store_url):
        store_url = str(root / store_url)
    mode = approval or params.gate.approval
    for stage in STAGES:
        run_stage(stage, root)
    report = root / "data" / "evaluate" / "report.md"
    create_table_artifact(_variant_rows(root), key="evaluate-variants", description="Every variant on the test split")
    create_link_artifact(report.as_uri(), link_text="evaluation report", key="evaluate-report")

    verdict = gate_candidate(root, params, store_url)
    manifest_sha256 = hashlib.sha256((root / "data" / "package" / "manifest.json").read_bytes()).hexdigest()
    if manifest_sha256 == verdict["production_manifest_sha256"]:
        # Nothing changed since the last release (a scheduled run with no new data or code).
        print(f"the candidate is production version {verdict['production_version']} already: nothing to approve or publish")
        return {"published": False, "unchanged": True, "version": verdict["production_version"], "flow_run_id": str(get_run_context().flow_run.id)}
    diff = gate.diff_table(verdict["candidate"], verdict["production"])
    if mode == "auto":
        print("approval: auto (gate.approval or --approval): no operator was asked")
        decision = {"approve": True, "reviewer": "auto", "comment": "gate.approval=auto", "timed_out": False}
    else:
        decision = ask_operator(diff, params.gate.approval_timeout_s)
    decision["decided_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    create_markdown_artifact(
        f"**{'approved' if decision['approve'] else 'not approved'}** by `{decision['reviewer'] or '-'}` at {decision['decided_at']}: {decision['comment']}\n\n{diff}",
        key="promotion-decision",
    )
    if not decision["approve"]:
        print(f"not published: {decision['comment'] or 'rejected by ' + decision['reviewer']}")
        return {"published": False, "decision": decision, "flow_run_id": str(get_run_context().flow_run.id)}
    published = publish_candidate(root, params, store_url, decision)
    print(f"published version {published['version']} to {params.flow.channel} on {store_url}")
    remote = push_data(root, store_url, params.flow.endpoint_url)
    print(f"dvc push: pipeline outputs in {remote} (`dvc pull` there reproduces them)")
    return {"published": True, "decision": decision, "version": published["version"], "dvc_remote": remote, "flow_run_id": str(get_run_context().flow_run.id)}


def _variant_rows(workspace: Path) -> list[dict]:
    metrics = json.loads((workspace / "data" / "evaluate" / "metrics.json").read_text())
    return [{"variant": name, **{k: v for k, v in row.items() if not isinstance(v, (dict, list))}} for name, row in metrics["variants"].items()]

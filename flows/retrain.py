"""The retrain flow: DVC stages as Prefect tasks, then gate, approval and publish.

    ingest -> embed -> distill -> prune -> quantize -> evaluate -> package   (each `dvc repro <stage>`)
    -> gate (thresholds; champion/challenger against production, re-scored on the same test split)
    -> approval (an operator's PromotionDecision in the Prefect UI, or auto)
    -> publish (registry: immutable objects, pointer moved last) -> dvc push

Orchestration only: the ML lives in stages/ and skyedge/; this module imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.context import get_run_context
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.tasks import exponential_backoff

from flows import dvc, dvc_remote
from flows.dvc import run_stage
from skyedge.core import paths
from skyedge.core.config import Params, load_params
from skyedge.evaluation import gate
from skyedge.release import registry, signing
from skyedge.release.store import open_store


class PromotionDecision(RunInput):
    """What the operator fills in on the Prefect UI's resume form."""

    approve: bool
    reviewer: str
    comment: str = ""


class GateRefused(RuntimeError):
    """The candidate failed the gate; the message lists each failed criterion."""


@task
def gate_candidate(workspace: Path, params: Params, store_url: str) -> dict:
    """Thresholds, then champion/challenger; raises GateRefused naming every failed criterion."""
    store = open_store(store_url, params.flow.endpoint_url)
    pointer = registry.read_channel(store, params.flow.channel)
    with tempfile.TemporaryDirectory() as scratch:
        production_dir = registry.fetch_version(store, params.flow.channel, Path(scratch) / "production") if pointer else None
        verdict = gate.judge(paths.Workspace(workspace), params.gate, production_dir, params.common.threads, params.evaluate.bootstrap, params.common.seed)
    against = "first model: thresholds only" if pointer is None else f"against production v{pointer['version']}"
    create_table_artifact([c.as_row() for c in verdict.criteria], key="gate-criteria", description=f"Gate criteria ({against})")
    if verdict.failed:
        raise GateRefused("candidate refused by the gate: " + "; ".join(f"{c.name}: {c.detail}" for c in verdict.failed))
    return {
        "candidate": verdict.candidate,
        "production": verdict.production,
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
    return registry.publish(store, paths.Workspace(workspace).package.dir, params.flow.channel, public_key=public_key, decision=record)


@task(retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=5), task_run_name="dvc push")
def push_data(workspace: Path, store_url: str, endpoint_url: str | None) -> str:
    """`dvc push` to `<store>/dvc`, so a second machine can `dvc pull` what was just published."""
    url = dvc_remote.configure(workspace, store_url, endpoint_url)
    with dvc.workspace_lock(workspace):
        dvc_remote.push(workspace)
    get_run_logger().info("dvc push: outputs in %s", url)
    return url


@flow(name="skyedge-retrain", log_prints=True)
def retrain(workspace: str = ".", profile: str | None = None, store: str | None = None, approval: str | None = None) -> dict:
    """Retrain, gate, get approval and publish. Returns what happened; refusals fail the run."""
    root = Path(workspace).resolve()
    if profile:
        dvc.set_profile(root, profile)
    params = load_params(root / "params.yaml")
    store_url = store or params.flow.store
    if not store_url.startswith("s3://") and not os.path.isabs(store_url):
        store_url = str(root / store_url)
    mode = approval or params.gate.approval
    workspace = paths.Workspace(root)
    for stage in paths.STAGES:
        run_stage.with_options(retries=params.flow.stage_retries)(stage, root)
    report = workspace.evaluate.report
    create_table_artifact(_variant_rows(root), key="evaluate-variants", description="Every variant on the test split")
    create_link_artifact(report.as_uri(), link_text="evaluation report", key="evaluate-report")

    verdict = gate_candidate(root, params, store_url)
    manifest_sha256 = hashlib.sha256(workspace.package.manifest.read_bytes()).hexdigest()
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
    metrics = json.loads(paths.Workspace(workspace).evaluate.metrics.read_text())
    return [{"variant": name, **{k: v for k, v in row.items() if not isinstance(v, (dict, list))}} for name, row in metrics["variants"].items()]

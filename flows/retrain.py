"""The retrain flow: DVC stages as Prefect tasks, then gate, approval and publish.

    preflight (params, store writable, TUF and signing keys: one clear line before any work)
    -> ingest -> embed -> distill -> prune -> quantize -> evaluate -> package   (each `dvc repro <stage>`)
    -> gate (thresholds; paired non-inferiority against production on the same test rows)
    -> approval (an operator's PromotionDecision in the Prefect UI, or auto)
    -> publish (registry: immutable objects, pointer moved last) -> dvc push

Every run ends in a state whose name says what happened: Published, NoChange, Rejected,
NoDecision (Completed), or GateRefused, Failed. A refusal by the gate or an operator is recorded
in the registry, so a later hand publish of that version has to say why. Orchestration only: the
ML lives in stages/ and skyedge/; this module imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import get_run_context
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.states import Completed, Failed, State
from prefect.tasks import exponential_backoff
from pydantic import Field

from flows import dvc, dvc_remote, evidence
from flows.dvc import run_stage
from skyedge.core import paths
from skyedge.core.config import Params, load_params
from skyedge.evaluation import gate
from skyedge.release import registry, signing
from skyedge.release.store import open_store

# Final state names: what `skyedge retrain` maps to its exit code.
PUBLISHED, NO_CHANGE, REJECTED, NO_DECISION, GATE_REFUSED = "Published", "NoChange", "Rejected", "NoDecision", "GateRefused"


class PromotionDecision(RunInput):
    """What the operator fills in on the Prefect UI's resume form. Reviewer is required: the
    registry stores who approved, and a decision without a name is not one."""

    approve: bool = Field(description="switch on to publish this candidate to the channel")
    reviewer: str = Field(min_length=1, description="your name: stored with the version in the registry")
    comment: str = Field(default="", description="why (stored with the decision)")


class PreflightFailed(RuntimeError):
    """The run cannot publish whatever it trains: found before the first stage."""


def resolve_store(root: Path, params: Params, store: str | None) -> str:
    store_url = store or params.flow.store
    if not store_url.startswith("s3://") and not os.path.isabs(store_url):
        store_url = str(root / store_url)
    return store_url


def check_publishable(root: Path, params: Params, store_url: str) -> None:
    """Check, before 20 minutes of training, that the result could be published: the store can be
    written, devices' TUF keys are at hand when the store signs for devices, and the package
    signing key can be read or created."""
    try:
        store = open_store(store_url, params.flow.endpoint_url)
        registry.check_writable(store)
        registry.require_keys(store, registry.tuf_keys(None), "publish")
        key_path = signing.key_path_from_env()
        signing.load_or_create_private_key(key_path if key_path.is_absolute() else root / key_path)
    except (registry.RegistryError, registry.StoreError, signing.SigningError) as error:
        raise PreflightFailed(str(error)) from None


preflight = task(check_publishable, name="preflight")


@task
def gate_candidate(workspace: Path, params: Params, store_url: str) -> dict:
    """Thresholds, then the paired comparison with production: the verdict and the production pointer."""
    store = open_store(store_url, params.flow.endpoint_url)
    pointer = registry.read_channel(store, params.flow.channel)
    with tempfile.TemporaryDirectory() as scratch:
        production_dir = registry.fetch_version(store, params.flow.channel, Path(scratch) / "production") if pointer else None
        verdict = gate.judge(paths.Workspace(workspace), params.gate, production_dir, params.common.threads, params.evaluate.bootstrap, params.common.seed)
    against = "first model: thresholds only" if pointer is None else f"against production v{pointer['version']}"
    create_markdown_artifact(gate.criteria_markdown(verdict.criteria), key="gate-criteria", description=f"Gate criteria ({against})")
    return {"verdict": verdict, "pointer": pointer}


# The server's pause outlives the operator's deadline by this much: at the deadline the run resumes
# itself (a run whose pause expired on the server can only fail, never end as NoDecision).
PAUSE_GRACE_S = 120
NO_DECISION_REVIEWER = "(nobody: the approval deadline passed)"


def ask_operator(description: str, timeout_s: int) -> dict:
    """Pause until an operator resumes the run in the Prefect UI with a PromotionDecision, or the
    deadline passes (then the run resumes itself and nothing is approved)."""
    from prefect.flow_runs import resume_flow_run

    run_id = get_run_context().flow_run.id
    deadline = threading.Event()

    def give_up() -> None:
        deadline.set()
        try:
            resume_flow_run(run_id, run_input={"approve": False, "reviewer": NO_DECISION_REVIEWER, "comment": f"no decision within {timeout_s} s"})
        except Exception:  # noqa: BLE001 - the operator resumed it in the same instant: their decision stands
            deadline.clear()

    timer = threading.Timer(timeout_s, give_up)
    timer.daemon = True
    timer.start()
    try:
        decision = pause_flow_run(
            wait_for_input=PromotionDecision.with_initial_data(description=description, approve=False, comment=""),
            timeout=timeout_s + PAUSE_GRACE_S,
            poll_interval=2,
        )
    except FlowPauseTimeout:
        return {"approve": False, "reviewer": "", "comment": f"no decision within {timeout_s} s", "timed_out": True}
    finally:
        timer.cancel()
    timed_out = deadline.is_set() and decision.reviewer == NO_DECISION_REVIEWER
    return {"approve": decision.approve and not timed_out, "reviewer": "" if timed_out else decision.reviewer.strip(), "comment": decision.comment, "timed_out": timed_out}


@task
def publish_candidate(workspace: Path, params: Params, store_url: str, decision: dict) -> dict:
    store = open_store(store_url, params.flow.endpoint_url)
    key_path = signing.key_path_from_env()
    key_path = key_path if key_path.is_absolute() else workspace / key_path
    public_key = signing.load_private_key(key_path).public_key()
    record = {key: decision[key] for key in ("approve", "reviewer", "comment", "decided_at")}
    return registry.publish(store, paths.Workspace(workspace).package.dir, params.flow.channel, public_key=public_key, decision=record, delta_bases=params.flow.delta_bases)


@task
def record_refusal(params: Params, store_url: str, version: int, by: str, reason: str) -> dict:
    return registry.record_refusal(open_store(store_url, params.flow.endpoint_url), version, by, reason)


@task(retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=5), task_run_name="dvc push")
def push_data(workspace: Path, store_url: str, endpoint_url: str | None) -> str:
    """`dvc push` to `<store>/dvc`, so a second machine can `dvc pull` what was just published."""
    url = dvc_remote.configure(workspace, store_url, endpoint_url)
    with dvc.workspace_lock(workspace):
        dvc_remote.push(workspace)
    get_run_logger().info("dvc push: outputs in %s", url)
    return url


@flow(name="skyedge-retrain", log_prints=True)
def retrain(workspace: str = ".", profile: str | None = None, store: str | None = None, approval: str | None = None) -> State:
    """Retrain, gate, get approval and publish. The final state's name says what happened."""
    root = Path(workspace).resolve()
    if profile:
        dvc.set_profile(root, profile)  # validated before params.yaml is written
    params = load_params(root / "params.yaml")
    store_url = resolve_store(root, params, store)
    mode = approval or params.gate.approval
    preflight(root, params, store_url)
    workspace_paths = paths.Workspace(root)
    for stage in paths.STAGES:
        run_stage.with_options(retries=params.flow.stage_retries)(stage, root)
    create_table_artifact(evidence.variant_rows(workspace_paths), key="evaluate-variants", description="Every variant on the test split (unseen days)")
    create_markdown_artifact(evidence.evaluation_report(workspace_paths), key="evaluate-report", description="The evaluation report with its plots")

    version = json.loads(workspace_paths.package.manifest.read_text())["version"]
    dvc.save_experiment(root, f"retrain-{version}")
    gated = gate_candidate(root, params, store_url)
    verdict, pointer = gated["verdict"], gated["pointer"]
    run_id = str(get_run_context().flow_run.id)
    if pointer and hashlib.sha256(workspace_paths.package.manifest.read_bytes()).hexdigest() == pointer["manifest_sha256"]:
        # Nothing changed since the last release (a scheduled run with no new data or code).
        message = f"the candidate is production version {pointer['version']} already: nothing to approve or publish"
        print(message)
        return Completed(name=NO_CHANGE, message=message, data={"published": False, "unchanged": True, "version": pointer["version"], "flow_run_id": run_id})
    if verdict.failed:
        reason = "; ".join(f"{c.name}: {c.detail}" for c in verdict.failed)
        record_refusal(params, store_url, version, "gate", reason)
        message = f"candidate version {version} refused by the gate: {reason}"
        print(message)
        return Failed(name=GATE_REFUSED, message=message, data={"published": False, "refused": reason, "version": version, "flow_run_id": run_id})

    form = evidence.approval_form(workspace_paths, params, verdict, version, pointer)
    if mode == "auto":
        print("approval: auto (gate.approval or --approval): no operator was asked")
        decision = {"approve": True, "reviewer": "auto", "comment": "gate.approval=auto", "timed_out": False}
    else:
        decision = ask_operator(form, params.gate.approval_timeout_s)
    decision["decided_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if not decision["approve"]:
        outcome = NO_DECISION if decision["timed_out"] else REJECTED
        if not decision["timed_out"]:
            record_refusal(params, store_url, version, decision["reviewer"], decision["comment"] or "rejected in the approval form")
        message = f"version {version} not published: {decision['comment'] or 'rejected by ' + decision['reviewer']}"
        create_markdown_artifact(evidence.decision_markdown(decision, version, published=False, message=message), key="promotion-decision")
        print(message)
        return Completed(name=outcome, message=message, data={"published": False, "decision": decision, "version": version, "flow_run_id": run_id})
    published = publish_candidate(root, params, store_url, decision)
    # The decision artifact is written once it took effect: it never states a publish that did not happen.
    message = f"published version {published['version']} to {params.flow.channel} on {store_url}"
    create_markdown_artifact(evidence.decision_markdown(decision, published["version"], published=True, message=message), key="promotion-decision")
    print(message)
    remote = push_data(root, store_url, params.flow.endpoint_url)
    print(f"dvc push: pipeline outputs in {remote} (`dvc pull` there reproduces them)")
    result = {"published": True, "decision": decision, "version": published["version"], "dvc_remote": remote, "flow_run_id": run_id}
    return Completed(name=PUBLISHED, message=message, data=result)

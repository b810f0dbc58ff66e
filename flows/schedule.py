"""Scheduled retraining and rollout checks: the retrain flow and the rollout flow as deployments on
their cron schedules from params (flow.cron, rollout.cron).

`serve()` registers the deployment with the Prefect server that PREFECT_API_URL names and then
serves it from this process (Prefect's Runner polls for scheduled and manually triggered runs and
starts each in a subprocess). `make serve` starts a local server on 127.0.0.1 first.
"""

from __future__ import annotations

import os
from pathlib import Path

from skyedge.core.config import load_params

DEPLOYMENT = "scheduled"


def deployment_parameters(workspace: Path, profile: str | None, store: str | None, approval: str | None) -> dict:
    """What every scheduled run gets. The workspace is absolute: runs start in a subprocess."""
    parameters: dict = {"workspace": str(Path(workspace).resolve())}
    if profile:
        parameters["profile"] = profile
    if store:
        parameters["store"] = store if store.startswith("s3://") or os.path.isabs(store) else str(Path(store).resolve())
    if approval:
        parameters["approval"] = approval
    return parameters


def serve(workspace: Path, profile: str | None = None, store: str | None = None, approval: str | None = None, name: str = DEPLOYMENT, cron: str | None = None) -> None:
    """Register `skyedge-retrain/<name>` on `flow.cron` (or `cron`) and `skyedge-rollout/<name>` on
    `rollout.cron` (the staged rollout's checks), and serve both until interrupted."""
    from prefect import serve as serve_all
    from prefect.deployments.runner import EntrypointType

    from flows.retrain import retrain
    from flows.rollout import rollout_check

    # With the profile each scheduled run will select: a typo fails here, not at every run.
    params = load_params(Path(workspace) / "params.yaml", profile=profile)
    schedule = cron or params.flow.cron
    parameters = deployment_parameters(workspace, profile, store, approval)
    rollout_parameters = {key: value for key, value in parameters.items() if key in ("workspace", "store")}
    print(f"serving deployment skyedge-retrain/{name} on cron {schedule!r} (UTC) with {parameters}", flush=True)
    print(f"serving deployment skyedge-rollout/{name} on cron {params.rollout.cron!r} (UTC) with {rollout_parameters}", flush=True)
    # Module path, not file path: each run starts in a subprocess that imports the flow's module.
    serve_all(
        retrain.to_deployment(name=name, cron=schedule, parameters=parameters, entrypoint_type=EntrypointType.MODULE_PATH),
        rollout_check.to_deployment(name=name, cron=params.rollout.cron, parameters=rollout_parameters, entrypoint_type=EntrypointType.MODULE_PATH),
    )

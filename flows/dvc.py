"""Running DVC from the flows: one `dvc repro` per workspace at a time, transient failures told apart.

Every flow that runs pipeline stages (retrain, sweep) goes through `repro`, so they queue on the
same lock and read the same failure rules. Orchestration only: imports no torch.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path

from prefect import get_run_logger, task
from prefect.tasks import exponential_backoff

from skyedge.core.config import select_profile

# Failures worth retrying: another process holds DVC's lock, or the OS killed the stage (OOM).
TRANSIENT = re.compile(r"Unable to acquire lock|is busy|Killed|Resource temporarily unavailable|Connection", re.I)


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


def repro(workspace: Path, *targets: str) -> str:
    """`dvc repro [targets]` in the workspace, under its lock; StageFailed says whether to retry."""
    with workspace_lock(workspace):
        result = subprocess.run(["dvc", "repro", *targets], cwd=workspace, capture_output=True, text=True)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise StageFailed(" ".join(targets) or "(all)", output, transient=bool(TRANSIENT.search(output)) or result.returncode < 0)
    return output


# Who DVC names as the author of a saved experiment when git has no identity configured
# (a fresh machine, a container): `dvc exp save` refuses to run otherwise.
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "skyedge retrain", "GIT_AUTHOR_EMAIL": "retrain@skyedge.invalid", "GIT_COMMITTER_NAME": "skyedge retrain", "GIT_COMMITTER_EMAIL": "retrain@skyedge.invalid"}


@task(task_run_name="dvc exp save {name}")
def save_experiment(workspace: Path, name: str) -> str:
    """Record the workspace's params, metrics and outputs as a DVC experiment, so retrains can
    be compared with `dvc exp show` and `dvc metrics diff`."""
    configured = subprocess.run(["git", "config", "user.email"], cwd=workspace, capture_output=True, text=True).stdout.strip()
    env = os.environ if configured else {**os.environ, **GIT_IDENTITY}
    with workspace_lock(workspace):
        result = subprocess.run(["dvc", "exp", "save", "--force", "-n", name], cwd=workspace, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise StageFailed("exp save", result.stdout + result.stderr, transient=False)
    return name


def _retry_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except StageFailed as error:
        return error.transient
    except Exception:
        return False
    return False


@task(retry_delay_seconds=exponential_backoff(backoff_factor=5), retry_condition_fn=_retry_transient, task_run_name="dvc repro {stage}")
def run_stage(stage: str, workspace: Path) -> str:
    """`dvc repro <stage>`: runs it (and nothing downstream) if its inputs changed. Retries come
    from params `flow.stage_retries` (`run_stage.with_options(retries=...)`)."""
    output = repro(workspace, stage)
    get_run_logger().info("%s: %s", stage, "ran" if f"Running stage '{stage}'" in output else "up to date")
    return output


@task
def set_profile(workspace: Path, profile: str) -> None:
    """Select the params profile the way `dvc exp run -S common.profile=…` does, but validated
    first and without rewriting the rest of params.yaml (skyedge.core.config.select_profile)."""
    select_profile(workspace / "params.yaml", profile)

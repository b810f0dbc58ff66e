"""Running DVC from the flows: one `dvc repro` per workspace at a time, transient failures told apart.

Every flow that runs pipeline stages (retrain, sweep) goes through `repro`, so they queue on the
same lock and read the same failure rules. Orchestration only: imports no torch.
"""

from __future__ import annotations

import fcntl
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path

from prefect import get_run_logger, task
from prefect.tasks import exponential_backoff

from skyedge.core.config import load_params

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
    """Select the params profile the way `dvc exp run -S common.profile=…` does (one key), after
    checking that the profile exists and validates: a typo never reaches params.yaml."""
    path = workspace / "params.yaml"
    load_params(path, profile=profile)
    text = path.read_text()
    updated = re.sub(r"(?m)^(common:\n(?:[ \t].*\n)*?[ \t]+profile:[ \t]*)\S+", rf"\g<1>{profile}", text, count=1)
    if updated != text:
        path.write_text(updated)

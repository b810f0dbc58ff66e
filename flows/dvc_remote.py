"""The DVC remote that lives beside the model registry: `<store>/dvc`.

After a successful publish the retrain flow pushes the DVC cache there, so `dvc pull` on a second
machine (same git commit, same dvc.lock) checks out the very outputs that were published. The
remote is written with `dvc remote add --local` / `dvc remote modify --local`, i.e. into
`.dvc/config.local` (gitignored by DVC): nothing machine-specific (bucket, endpoint) is committed.

    s3://bucket/prefix      -> s3://bucket/prefix/dvc   (dvc-s3; endpointurl from params or $AWS_ENDPOINT_URL)
    /abs/local/registry     -> /abs/local/registry/dvc  (a plain directory remote)
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from skyedge.core.s3 import ENDPOINT_ENV_VAR

REMOTE = "skyedge"


class DvcCommandFailed(RuntimeError):
    pass


def remote_url(store_url: str) -> str:
    """The DVC remote for a registry store URL (already resolved: s3://… or an absolute path)."""
    if store_url.startswith("s3://"):
        return store_url.rstrip("/") + "/dvc"
    path = Path(store_url)
    if not path.is_absolute():
        raise ValueError(f"local store {store_url!r} must be an absolute path here")
    return str(path / "dvc")


def _dvc(workspace: Path, *args: str) -> str:
    result = subprocess.run(["dvc", *args], cwd=workspace, capture_output=True, text=True)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise DvcCommandFailed(f"dvc {' '.join(args)} failed in {workspace} (exit {result.returncode}):\n{output[-4000:]}")
    return output


def configure(workspace: Path, store_url: str, endpoint_url: str | None = None, name: str = REMOTE) -> str:
    """Point the workspace's local (uncommitted) DVC config at `<store>/dvc`; returns the remote URL."""
    url = remote_url(store_url)
    if not url.startswith("s3://"):
        Path(url).mkdir(parents=True, exist_ok=True)
    _dvc(workspace, "remote", "add", "--local", "-f", name, url)
    endpoint = endpoint_url or os.environ.get(ENDPOINT_ENV_VAR)
    if url.startswith("s3://") and endpoint:
        _dvc(workspace, "remote", "modify", "--local", name, "endpointurl", endpoint)
    return url


def push(workspace: Path, name: str = REMOTE) -> str:
    """`dvc push -r <name>`: upload every cached output named in dvc.lock (present ones are skipped)."""
    return _dvc(workspace, "push", "-r", name)


def pull(workspace: Path, name: str = REMOTE) -> str:
    """`dvc pull -r <name>`: fetch and check out every output named in dvc.lock."""
    return _dvc(workspace, "pull", "-r", name)

"""End to end: real `dvc repro` of all seven stages on the tiny profile in a temporary git repo."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = ["ingest", "embed", "distill", "prune", "quantize", "evaluate", "package"]


def run(command: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict]:
    """A copy of this project's files in a fresh git repo, as a user's clone would be."""
    root = tmp_path_factory.mktemp("clone") / "skyedge"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(root),
        "SKYEDGE_SIGNING_KEY": str(root.parent / "keys" / "signing_key.pem"),
        "DVC_NO_ANALYTICS": "1",
    }
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone"]):
        run(command, root, env)
    return root, env


def test_dvc_repro_runs_all_seven_stages_then_does_nothing_then_only_what_changed(project):
    root, env = project
    first = run([sys.executable, "-m", "cli.main", "repro", "--profile", "tiny"], root, env)
    assert stages_run(first) == STAGES
    for name in ("model.onnx", "manifest.json", "manifest.sig.json"):
        assert (root / "data" / "package" / name).is_file()
    verified = run([sys.executable, "-m", "cli.main", "verify", "data/package"], root, env)
    assert "verify: OK" in verified
    assert yaml.safe_load((root / "params.yaml").read_text())["common"]["profile"] == "tiny"

    again = run(["dvc", "repro"], root, env)
    assert stages_run(again) == []

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["quantize"]["calibration_method"] = "Percentile"  # a new int8 model: descendants must follow
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = run(["dvc", "repro"], root, env)
    assert stages_run(changed) == ["quantize", "evaluate", "package"]
    table = run([sys.executable, "-m", "cli.main", "report"], root, env)
    for variant in ("teacher", "student", "pruned", "quantized", "shipped"):
        assert variant in table

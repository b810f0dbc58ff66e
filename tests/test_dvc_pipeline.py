"""End to end: real `dvc repro` of all seven stages on the tiny profile in a temporary git repo."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_project

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
    root = copy_project(tmp_path_factory.mktemp("clone") / "skyedge")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(root),
        "SKYEDGE_SIGNING_KEY": str(root.parent / "keys" / "signing_key.pem"),
        "DVC_NO_ANALYTICS": "1",
    }
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
    params["common"]["threads"] = 1  # how fast, not what is built: no stage tracks it
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_run(run(["dvc", "repro"], root, env)) == []

    # Every default int8 candidate has per-channel weight scales (or, for qat, its own training), so
    # a per-tensor static model is new whichever was fastest before: quantize's outputs change and
    # its descendants must follow; nothing upstream runs. (A calibration method is no such change:
    # on the tiny profile's 32 samples, Entropy's ranges equal MinMax's exactly.)
    params["quantize"]["candidates"] = {name: params["quantize"]["candidates"][name] for name in ("fp32", "static")}
    params["quantize"]["per_channel"] = False
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    tiny = yaml.safe_load((root / "profiles" / "tiny.yaml").read_text())
    tiny["quantize"].pop("candidates")  # it tunes qat, which this list leaves out
    (root / "profiles" / "tiny.yaml").write_text(yaml.safe_dump(tiny, sort_keys=False))
    changed = run(["dvc", "repro"], root, env)
    assert stages_run(changed) == ["quantize", "evaluate", "package"]
    table = run([sys.executable, "-m", "cli.main", "report"], root, env)
    for variant in ("teacher", "student", "pruned", "quantized", "shipped"):
        assert variant in table

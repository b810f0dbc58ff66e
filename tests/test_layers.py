"""ARCHITECTURE §8: the device side and flows/ import no torch; the library imports no upper layer."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEVICE_MODULES = ["skyedge.files", "skyedge.contract", "skyedge.features", "skyedge.manifest", "skyedge.signing", "skyedge.runtime", "skyedge.metrics", "skyedge.evaluation", "skyedge.device", "skyedge.device.trust", "skyedge.device.fetch", "skyedge.device.agent", "skyedge.device.predict"]
HEAVY = ("torch", "torchvision", "prefect", "dvc", "pandas")


@pytest.mark.parametrize("module", [*DEVICE_MODULES, "flows"])
def test_device_side_and_flows_import_no_torch(module):
    heavy = [h for h in HEAVY if not (module == "flows" and h in ("prefect", "dvc", "pandas"))]
    code = f"import sys, {module}; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_the_library_never_imports_stages_flows_or_cli():
    for path in (REPO / "skyedge").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] not in ("stages", "flows", "cli"), f"{path.name} imports {name}"

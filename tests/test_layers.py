"""ARCHITECTURE §8 as rules about packages: which package may import which, and which packages
stay light enough for a station (no torch, pandas, prefect or dvc)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "skyedge"
PACKAGES = sorted(p.name for p in LIBRARY.iterdir() if (p / "__init__.py").exists())
# Bottom to top: a package imports itself and the packages listed for it, nothing else of skyedge.
ALLOWED = {
    "core": {"core"},
    "data": {"core", "data"},
    "train": {"core", "data", "train"},
    "compress": {"core", "data", "train", "compress"},
    "release": {"core", "release"},
    "evaluation": {"core", "data", "train", "compress", "release", "device", "evaluation"},
    "device": {"core", "release", "device"},
}
HEAVY = ("torch", "torchvision", "pandas", "prefect", "dvc")
# A station installs numpy, onnxruntime, pillow, cryptography, PyYAML and python-tuf: the device
# package does without the training extras' pydantic too (params are the pipeline's, not a station's).
LIGHT = {"core": HEAVY, "release": HEAVY, "device": (*HEAVY, "pydantic")}


def imported_names(path: Path) -> list[str]:
    """Every module named by an import statement in the file, at any depth (lazy imports too)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.append(node.module or "")
    return names


def modules_of(package: str) -> list[str]:
    return sorted(
        ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for path in (LIBRARY / package).rglob("*.py")
    )


def test_every_package_has_a_rule():
    assert set(PACKAGES) == set(ALLOWED), "a new subpackage of skyedge/ needs a rule in ALLOWED"
    assert not [p.name for p in LIBRARY.glob("*.py") if p.name != "__init__.py"], "modules belong in a subpackage, not in skyedge/ itself"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_packages_below_it(package):
    for path in (LIBRARY / package).rglob("*.py"):
        for name in imported_names(path):
            parts = name.split(".")
            assert parts[0] not in ("stages", "flows", "cli"), f"{path.relative_to(REPO)} imports {name}: the library never imports a layer above it"
            if parts[0] == "skyedge" and len(parts) > 1:
                assert parts[1] in ALLOWED[package], f"{path.relative_to(REPO)} imports {name}; {package} may import {sorted(ALLOWED[package])}"


@pytest.mark.parametrize("package", sorted(LIGHT))
def test_core_release_and_device_import_no_torch_pandas_prefect_or_dvc(package):
    modules = modules_of(package)
    code = f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; print([m for m in {LIGHT[package]!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_flows_import_no_torch():
    modules = [f"flows.{p.stem}" for p in (REPO / "flows").glob("*.py") if p.stem != "__init__"]
    code = f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; print([m for m in ('torch', 'torchvision') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"

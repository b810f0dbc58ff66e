"""End to end: real `dvc repro` of every stage on the tiny profile in a temporary git repo.

`fleet` lists the fleet's stores on every repro (always_changed); without fleet sources its
output never changes, so nothing after it runs unless something else changed."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_project

REPO = Path(__file__).resolve().parents[1]
STAGES = ["fleet", "ingest", "attend", "embed", "distill", "prune", "quantize", "evaluate", "package"]
ALWAYS = ["fleet"]  # always_changed: it looks at the fleet store each time


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


def test_dvc_repro_runs_every_stage_then_does_nothing_then_only_what_changed(project):
    root, env = project
    first = run([sys.executable, "-m", "cli.main", "repro", "--profile", "tiny"], root, env)
    assert stages_run(first) == STAGES
    for name in ("model.onnx", "manifest.json", "manifest.sig.json"):
        assert (root / "data" / "package" / name).is_file()
    verified = run([sys.executable, "-m", "cli.main", "verify", "data/package"], root, env)
    assert "verify: OK" in verified
    assert yaml.safe_load((root / "params.yaml").read_text())["common"]["profile"] == "tiny"

    again = run(["dvc", "repro"], root, env)
    assert stages_run(again) == ALWAYS

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["common"]["threads"] = 1  # how fast, not what is built: no stage tracks it
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_run(run(["dvc", "repro"], root, env)) == ALWAYS

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
    assert stages_run(changed) == [*ALWAYS, "quantize", "evaluate", "package"]
    table = run([sys.executable, "-m", "cli.main", "report"], root, env)
    for variant in ("teacher", "student", "pruned", "quantized", "shipped"):
        assert variant in table
    chosen = json.loads((root / "data" / "distill" / "metrics.json").read_text())["chosen"]
    assert f"pruned and shipped: {chosen} (grouped validation sky accuracy: with KD " in table


def test_editing_another_profile_re_runs_nothing_and_a_bad_profile_never_reaches_params_yaml(project):
    root, env = project
    run([sys.executable, "-m", "cli.main", "repro", "--profile", "tiny"], root, env)
    real = yaml.safe_load((root / "profiles" / "real.yaml").read_text())
    real["distill"]["epochs"] = 99  # the real profile's distill, not the tiny one this workspace runs
    (root / "profiles" / "real.yaml").write_text(yaml.safe_dump(real, sort_keys=False))
    assert stages_run(run(["dvc", "repro"], root, env)) == ALWAYS
    before = (root / "params.yaml").read_text()
    typo = subprocess.run([sys.executable, "-m", "cli.main", "repro", "--profile", "tin"], cwd=root, env=env, capture_output=True, text=True)
    assert typo.returncode == 2 and "unknown profile 'tin'" in typo.stderr
    assert (root / "params.yaml").read_text() == before  # validated before anything is written


def test_dvc_metrics_and_experiments_fit_a_terminal(project):
    root, env = project
    run([sys.executable, "-m", "cli.main", "repro", "--profile", "tiny"], root, env)
    metrics = run(["dvc", "metrics", "show"], root, env)
    assert "data/evaluate/summary.json" in metrics and "sky_accuracy" in metrics
    assert max(len(line) for line in metrics.splitlines()) <= 200, metrics
    experiments = run(["dvc", "exp", "show", "--no-pager", "--only-changed"], root, env)
    assert max(len(line) for line in experiments.splitlines()) <= 240, experiments


def test_dvc_plots_render_offline_with_the_local_vega_template(project, tmp_path):
    from tests.test_flow_browser import CHROMIUM, CHROMIUM_ARGS, require_chromium

    require_chromium()
    from playwright.sync_api import sync_playwright

    root, env = project
    vega = REPO / ".skyedge" / "vega"
    assert (vega / "vega.min.js").is_file(), "make setup fetches Vega into .skyedge/vega"
    (root / ".skyedge").mkdir(exist_ok=True)
    if not (root / ".skyedge" / "vega").exists():
        (root / ".skyedge" / "vega").symlink_to(vega)
    run(["dvc", "plots", "show"], root, env)
    page_path = root / "dvc_plots" / "index.html"
    assert "cdn.jsdelivr.net" not in page_path.read_text()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(offline=True)
            page = context.new_page()
            page.goto(page_path.as_uri())
            page.wait_for_selector("svg.marks, canvas.marks", timeout=30_000)  # vega-embed drew a chart
            assert page.locator("svg.marks, canvas.marks").count() >= 1
            page.screenshot(path=str(tmp_path / "dvc-plots.png"))
        finally:
            browser.close()


def test_every_output_dvc_yaml_declares_is_named_in_skyedge_core_paths():
    """File names inside data/<stage>/ have one home (skyedge.core.paths); dvc.yaml's must match."""
    from skyedge.core import paths

    workspace = paths.Workspace(Path("."))
    named = set()
    for stage in paths.STAGES:
        directory = getattr(workspace, stage)
        named.add(str(directory.dir))
        for attribute in vars(type(directory)).values():
            if isinstance(attribute, paths.File):
                named.add(str(directory.dir / attribute.name))
        for model in (*getattr(type(directory), "MODELS", ()), *getattr(type(directory), "VARIANTS", ())):
            named |= {str(directory.module(model)), str(directory.onnx(model))}
    declared = []
    for stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                declared.append(next(iter(entry)) if isinstance(entry, dict) else entry)
    assert declared and set(declared) <= named, set(declared) - named

"""An operator approves a model in the real Prefect UI, driven by headless Chromium.

A real `prefect server start` on 127.0.0.1 (its own PREFECT_HOME), S3 on moto's server, and
`skyedge retrain --approval required` in a subprocess against that server: the run pauses, the
browser opens the UI, finds the paused run, clicks Resume, fills approve/reviewer/comment and
submits; production must then point at the new version, with the decision stored beside it.

Chromium is Debian's (/usr/bin/chromium, `.ci/run` installs it) driven by Playwright's Python
package (no `playwright install`). Without it the test skips locally and fails in CI (CI=true).
Set SKYEDGE_UPDATE_SCREENSHOT=1 to refresh docs/approval-form.png (the README's screenshot).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_flow import PERMISSIVE, production, reproduced_tiny_workspace, set_gate

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run", "--headless"]
SCREENSHOT = REPO / "docs" / "approval-form.png"


def require_chromium():
    missing = None
    if not CHROMIUM.exists():
        missing = f"{CHROMIUM} not found (apt-get install -y chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "the playwright package is not installed"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser test cannot run in CI: {missing}")
        pytest.skip(missing)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """`prefect server start` on 127.0.0.1 with a temporary home and database."""
    require_chromium()
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"{url}/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_API_URL": f"{url}/api"}
    env.pop("PREFECT_API_KEY", None)
    log = (home / "server.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 180
    while True:
        assert server.poll() is None, (home / "server.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "prefect server did not become healthy"
        try:
            with urllib.request.urlopen(f"{url}/api/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(1)
    yield url
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


def wait_for_paused_run(api_url: str, retrain: subprocess.Popen, log: Path, timeout_s: float = 900):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    deadline = time.monotonic() + timeout_s
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        while time.monotonic() < deadline:
            assert retrain.poll() is None, f"skyedge retrain ended before pausing:\n{log.read_text()[-3000:]}"
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(flow_run_filter=paused)
            if runs:
                return runs[0]
            time.sleep(2)
    raise AssertionError("the flow never paused for approval")


def run_state(api_url: str, run_id) -> str:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: f"{api_url}/api"}), get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state.name


def test_an_operator_approves_in_the_prefect_ui_and_production_moves(prefect_server, moto_endpoint, tmp_path_factory, tmp_path, monkeypatch):
    require_chromium()
    import boto3
    from playwright.sync_api import expect, sync_playwright

    from skyedge.release import registry
    from skyedge.release.store import open_store

    root, signing_key = reproduced_tiny_workspace(tmp_path_factory, tmp_path / "skyedge")
    set_gate(root, **PERMISSIVE, approval="required")
    aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": moto_endpoint}
    for name, value in aws.items():
        monkeypatch.setenv(name, value)
    bucket = f"ui-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    store = f"s3://{bucket}/registry"

    env = {
        **os.environ,
        **aws,
        "PREFECT_API_URL": f"{prefect_server}/api",
        "SKYEDGE_SIGNING_KEY": str(signing_key),
        "PYTHONPATH": str(root),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    log_path = tmp_path / "retrain.log"
    with log_path.open("w") as log:
        retrain = subprocess.Popen(
            [str(Path(sys.executable).parent / "skyedge"), "retrain", "--workspace", str(root), "--store", store, "--approval", "required"],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            run = wait_for_paused_run(f"{prefect_server}/api", retrain, log_path)
            candidate = json.loads((root / "data" / "package" / "manifest.json").read_text())["version"]
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
                try:
                    page = browser.new_page(viewport={"width": 1280, "height": 1300})
                    page.goto(f"{prefect_server}/runs")
                    page.get_by_role("link", name=run.name).first.click()  # the paused run, found in the list
                    expect(page.get_by_text("Paused").first).to_be_visible(timeout=30_000)
                    page.get_by_role("button", name="Resume").click()
                    form = page.get_by_role("dialog")
                    # The evidence: the version, each criterion with what it means and pass/fail, size and latency.
                    expect(form.get_by_text(f"Promote version {candidate} to")).to_be_visible()
                    expect(form.get_by_text("share of sky photos classified right").first).to_be_visible()
                    expect(form.get_by_text("every criterion passes").first).to_be_visible()
                    expect(form.get_by_text("latency p50").first).to_be_visible()
                    form.get_by_role("switch").click()
                    expect(form.get_by_role("switch")).to_have_attribute("aria-checked", "true")
                    # Reviewer is required: approving without a name is refused in the form, not thrown away later.
                    expect(form.locator(".schema-form-property", has_text="Reviewer")).not_to_contain_text("Optional")
                    form.get_by_role("button", name="Submit").click()
                    expect(form).to_be_visible()
                    assert run_state(prefect_server, run.id) == "Paused"
                    form.locator(".schema-form-property", has_text="Reviewer").locator("textarea").fill("ops@station")
                    form.locator(".schema-form-property", has_text="Comment").locator("textarea").fill("diff checked in the UI")
                    page.screenshot(path=str(tmp_path / "approval-form.png"))
                    if os.environ.get("SKYEDGE_UPDATE_SCREENSHOT") == "1":
                        SCREENSHOT.parent.mkdir(exist_ok=True)
                        shutil.copyfile(tmp_path / "approval-form.png", SCREENSHOT)
                    form.get_by_role("button", name="Submit").click()
                    expect(form).to_be_hidden(timeout=30_000)
                    assert retrain.wait(timeout=600) == 0, log_path.read_text()[-3000:]
                    # The runs list tells the story: the final state is named for what happened.
                    page.goto(f"{prefect_server}/runs")
                    expect(page.get_by_text("Published").first).to_be_visible(timeout=30_000)
                    page.screenshot(path=str(tmp_path / "runs-list.png"))
                    # The evaluation report renders in the UI, plots included (no file:// link).
                    page.goto(f"{prefect_server}/runs/flow-run/{run.id}")
                    page.get_by_text("Artifacts", exact=True).first.click()
                    page.get_by_text("evaluate-report").first.click()
                    expect(page.locator("img[src^='data:image/png']").first).to_be_visible(timeout=30_000)
                    page.screenshot(path=str(tmp_path / "evaluate-report.png"), full_page=True)
                    if os.environ.get("SKYEDGE_UPDATE_SCREENSHOT") == "1":
                        for name in ("runs-list.png", "evaluate-report.png"):
                            shutil.copyfile(tmp_path / name, SCREENSHOT.parent / name)
                finally:
                    browser.close()
        finally:
            if retrain.poll() is None:
                retrain.kill()
                retrain.wait()

    output = log_path.read_text()
    assert "retrain: OK: version" in output, output[-3000:]
    version = production(store)
    assert version is not None and f"version {version} published" in output
    stored = next(v for v in registry.show(open_store(store))["versions"] if v["version"] == version)
    assert stored["decision"]["approve"] is True
    assert stored["decision"]["reviewer"] == "ops@station" and stored["decision"]["comment"] == "diff checked in the UI"
    assert json.loads((root / "data" / "package" / "manifest.json").read_text())["version"] == version

"""The `skyedge` command as a user runs it."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from skyedge.release import signing

REPO = Path(__file__).resolve().parents[1]


def skyedge(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_help_lists_the_commands_and_is_fast():
    start = time.perf_counter()
    result = skyedge("--help")
    assert result.returncode == 0
    for command in ("generate", "ingest", "repro", "report", "verify"):
        assert command in result.stdout
    assert time.perf_counter() - start < 5  # commands import lazily: no torch for --help


def test_generate_writes_the_contract_layout(tmp_path):
    result = skyedge("generate", "--out", str(tmp_path / "syn"), "--stations", "2", "--days", "2", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "syn" / "stations").iterdir()) == ["stations.csv", "syn-00.csv", "syn-01.csv"]  # records + the stations' coordinates
    assert "wrote 96 records and 96 images" in result.stdout


@pytest.fixture
def signed_package(pipeline, tmp_path) -> tuple[Path, Path]:
    package = tmp_path / "package"
    shutil.copytree(pipeline.package, package)
    public = tmp_path / "trusted.pub.pem"
    public.write_bytes(signing.public_key_pem(signing.load_private_key(pipeline.root / "keys" / "signing_key.pem")))
    return package, public


def test_verify_accepts_the_untouched_package(signed_package):
    package, public = signed_package
    result = skyedge("verify", str(package), "--public-key", str(public))
    assert result.returncode == 0, result.stderr
    assert "verify: OK" in result.stdout


def test_verify_fails_on_a_one_byte_change_of_the_model(signed_package):
    package, public = signed_package
    model = bytearray((package / "model.onnx").read_bytes())
    model[len(model) // 2] ^= 0x01
    (package / "model.onnx").write_bytes(bytes(model))
    result = skyedge("verify", str(package), "--public-key", str(public))
    assert result.returncode == 1
    assert "model.onnx" in result.stderr and "sha256 mismatch" in result.stderr


def test_verify_fails_on_a_manifest_edited_after_signing(signed_package):
    package, public = signed_package
    text = (package / "manifest.json").read_text()
    (package / "manifest.json").write_text(text.replace('"latency_budget_ms": 50.0', '"latency_budget_ms": 500.0'))
    assert (package / "manifest.json").read_text() != text
    result = skyedge("verify", str(package), "--public-key", str(public))
    assert result.returncode == 1
    assert "signature" in result.stderr


def test_verify_without_a_trusted_key_says_what_to_pass(signed_package, tmp_path):
    package, _ = signed_package
    env = {"SKYEDGE_SIGNING_KEY": str(tmp_path / "absent.pem"), "PATH": "/usr/bin:/bin"}
    result = skyedge("verify", str(package), env=env)
    assert result.returncode == 2
    assert "--public-key" in result.stderr


def test_a_bad_params_file_is_reported_with_the_key_path(tmp_path):
    params = (REPO / "params.yaml").read_text().replace("static: {method: static, activations: uint8, weights: int8,", "static: {method: static, activations: uint8, weights: int7,")
    (tmp_path / "params.yaml").write_text(params)
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    (tmp_path / "src").mkdir()
    result = skyedge("ingest", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--params", str(tmp_path / "params.yaml"))
    assert result.returncode == 2
    assert "quantize.candidates.static.static.weights" in result.stderr and "'int8' or 'uint8'" in result.stderr


def test_serve_refuses_an_unknown_profile_before_registering_anything():
    """Every scheduled run would select it; a typo must fail now, not at each run."""
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}  # never reached: the check comes first
    result = skyedge("serve", "--workspace", str(REPO), "--profile", "reel", env=env)
    assert result.returncode == 2
    assert "unknown profile 'reel'" in result.stderr and "real" in result.stderr

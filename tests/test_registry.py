"""Registry and publishing (ARCHITECTURE §6) on a local directory and on moto's S3 server over HTTP.

Every test that takes `store` runs twice: against `LocalStore` in tmp_path and against a real
moto server on 127.0.0.1 reached through boto3 (a fresh bucket per test).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from cli.main import main as cli_main
from skyedge.core import contract
from skyedge.release.manifest import MANIFEST_FILE, MANIFEST_SCHEMA_VERSION, SIGNATURE_FILE, file_entry, sign_package, write_manifest
from skyedge.release.registry import DECISION_FILE, RegistryError, fetch_version, model_key, publish, read_channel, rollback, show, verify_version
from skyedge.release.signing import load_or_create_private_key, public_key_pem
from skyedge.release.store import LocalStore, NotFound, S3Store, StoreError, open_store

REPO = Path(__file__).resolve().parents[1]
DECISION = {"approve": True, "reviewer": "ops@example.org", "comment": "beats production", "decided_at": "2024-05-01T12:00:00+00:00"}
# A publish with a decision writes, in order: model.onnx, canary.npz, decision.json,
# manifest.sig.json, manifest.json, channels/previous.json, channels/production.json.
PUBLISH_PUTS = 7


# --- packages ---------------------------------------------------------------------------------


def _tiny_model(path: Path, bias: float) -> None:
    """A real ONNX graph (x + constant); `bias` makes packages of the same shape differ."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])
    b = helper.make_tensor("b", TensorProto.FLOAT, [1, 4], [bias] * 4)
    graph = helper.make_graph([helper.make_node("Add", ["x", "b"], ["z"])], "tiny", [x], [z], initializer=[b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    return load_or_create_private_key(tmp_path_factory.mktemp("keys") / "signing_key.pem")


@pytest.fixture()
def make_package(tmp_path, key):
    """make_package(version, bias=…) -> a signed package dir shaped like stages/package.py's."""

    def make(version: int, bias: float | None = None) -> Path:
        bias = float(version) if bias is None else bias
        pkg = tmp_path / f"pkg-{version}-{bias}"
        pkg.mkdir()
        _tiny_model(pkg / "model.onnx", bias)
        np.savez(pkg / "canary.npz", x=np.ones((1, 4), np.float32))
        write_manifest(
            pkg,
            {
                "schema_version": MANIFEST_SCHEMA_VERSION,
                "name": "skyedge-test",
                "version": version,
                "version_label": f"0.1.0+{version}",
                "created_at": f"2024-05-0{min(version, 9)}T00:00:00+00:00",
                "files": [file_entry(pkg / "model.onnx", pkg), file_entry(pkg / "canary.npz", pkg)],
                "inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32"}],
                "outputs": [{"name": "z", "shape": [1, 4], "dtype": "float32"}],
                "horizons": list(contract.HORIZONS),
                "classes": list(contract.SKY_CLASSES),
                "metrics": {"bias": bias},
                "lineage": {"git_commit": None, "dvc_stages": {}, "params": {}},
                "canary": {"file": "canary.npz", "atol": 1e-5, "expected": {"z": [[1 + bias] * 4]}},
                "min_agent_version": "0.1.0",
            },
        )
        sign_package(pkg, key)
        return pkg

    return make


# --- stores -----------------------------------------------------------------------------------


def _new_bucket() -> str:
    import boto3

    name = f"skyedge-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def store_url(request, tmp_path):
    """A store URL: a local directory, or s3://<fresh bucket>/registry on the moto server."""
    if request.param == "local":
        return str(tmp_path / "registry")
    request.getfixturevalue("aws_env")
    return f"s3://{_new_bucket()}/registry"


@pytest.fixture()
def store(store_url):
    return open_store(store_url)


class Fault(StoreError):
    """The error the fault-injecting store raises (a StoreError, as a real S3 failure would be)."""


class FaultyStore:
    """Delegates to a real store; the `fail_at`-th write (0-based) raises, before or after it lands."""

    def __init__(self, inner, fail_at: int, when: str) -> None:
        self.inner, self.fail_at, self.when, self.puts = inner, fail_at, when, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _put(self, method: str, key: str, value) -> None:
        index = len(self.puts)
        self.puts.append(key)
        if index == self.fail_at and self.when == "before":
            raise Fault(f"injected failure before writing {key}")
        getattr(self.inner, method)(key, value)
        if index == self.fail_at and self.when == "after":
            raise Fault(f"injected failure after writing {key} (the reply was lost)")

    def put_bytes(self, key, data):
        self._put("put_bytes", key, data)

    def put_file(self, key, path):
        self._put("put_file", key, path)


def _assert_valid(store, tmp_path, key, expect_production: set[int]) -> int:
    """Production points to a complete, verified version (downloaded and signature-checked)."""
    pointer = read_channel(store, "production")
    assert pointer is not None and pointer["version"] in expect_production
    dest = fetch_version(store, "production", tmp_path / f"check-{uuid.uuid4().hex[:6]}", public_key=key.public_key())
    assert json.loads((dest / MANIFEST_FILE).read_text())["version"] == pointer["version"]
    previous = read_channel(store, "previous")
    if previous is not None:
        verify_version(store, previous["version"], previous["manifest_sha256"])
    return pointer["version"]


# --- publish / show / rollback ----------------------------------------------------------------


def test_publish_then_show(store, make_package, key):
    result = publish(store, make_package(1), public_key=key.public_key(), decision=DECISION)
    assert result["status"] == "published" and result["version"] == 1
    assert set(result["objects"].values()) == {"uploaded"}
    state = show(store)
    assert set(state["channels"]) == {"production"}
    assert state["channels"]["production"]["version"] == 1
    assert state["channels"]["production"]["previous"] is None
    [row] = state["versions"]
    assert row["version"] == 1 and row["complete"] and row["channels"] == ["production"]
    assert set(row["objects"]) == {"model.onnx", "canary.npz", DECISION_FILE, SIGNATURE_FILE, MANIFEST_FILE}
    assert row["created_at"] == "2024-05-01T00:00:00+00:00"
    assert row["size_bytes"] == sum(store.head(model_key(1, name)) for name in row["objects"])
    assert row["decision"] == DECISION


def test_second_publish_moves_production_and_keeps_previous(store, make_package, key):
    first = publish(store, make_package(1), public_key=key.public_key())["pointer"]
    publish(store, make_package(2), public_key=key.public_key())
    production, previous = read_channel(store, "production"), read_channel(store, "previous")
    assert production["version"] == 2 and production["previous"] == {"version": 1, "manifest_sha256": first["manifest_sha256"]}
    assert previous == first
    assert [v["version"] for v in show(store)["versions"]] == [1, 2]


def test_rollback_repoints_production_in_one_write(store, make_package, key):
    publish(store, make_package(1), public_key=key.public_key())
    publish(store, make_package(2), public_key=key.public_key())
    counting = FaultyStore(store, fail_at=-1, when="before")
    result = rollback(counting, "production")
    assert result["version"] == 1 and result["rolled_back_from"] == 2
    # One pointer move for production; previous.json is updated after it.
    assert counting.puts == ["channels/production.json", "channels/previous.json"]
    assert read_channel(store, "production")["version"] == 1
    assert read_channel(store, "previous")["version"] == 2
    # A second rollback undoes the first.
    assert rollback(store)["version"] == 2
    assert read_channel(store, "previous")["version"] == 1


def test_interrupted_rollback_finishes_on_retry(store, make_package, key, tmp_path):
    publish(store, make_package(1), public_key=key.public_key())
    publish(store, make_package(2), public_key=key.public_key())
    with pytest.raises(Fault):
        rollback(FaultyStore(store, fail_at=0, when="after"))
    assert _assert_valid(store, tmp_path, key, {1}) == 1
    result = rollback(store)  # finishes the interrupted one, does not flip back
    assert result["version"] == 1 and result["rolled_back_from"] == 2
    assert read_channel(store, "production")["version"] == 1
    assert read_channel(store, "previous")["version"] == 2


def test_other_channels_roll_back_to_their_own_previous(store, make_package, key):
    publish(store, make_package(1), public_key=key.public_key())
    publish(store, make_package(2), channel="candidate", public_key=key.public_key())
    publish(store, make_package(3), channel="candidate", public_key=key.public_key())
    assert read_channel(store, "previous") is None  # only production keeps channels/previous.json
    assert rollback(store, "candidate")["version"] == 2
    assert read_channel(store, "candidate")["version"] == 2
    assert read_channel(store, "production")["version"] == 1
    with pytest.raises(RegistryError, match="kept by publish and rollback"):
        publish(store, make_package(4), channel="previous", public_key=key.public_key())


def test_rollback_without_previous_is_refused(store, make_package, key):
    with pytest.raises(RegistryError, match="never been published"):
        rollback(store)
    publish(store, make_package(1), public_key=key.public_key())
    with pytest.raises(RegistryError, match="no previous version"):
        rollback(store)


def test_republishing_the_same_version_is_idempotent(store, make_package, key):
    package = make_package(3)
    first = publish(store, package, public_key=key.public_key())
    again = publish(store, package, public_key=key.public_key())
    assert again["status"] == "unchanged" and set(again["objects"].values()) == {"present"}
    assert read_channel(store, "production") == first["pointer"]
    assert read_channel(store, "previous") is None


def test_a_different_package_with_a_published_version_is_refused(store, make_package, key):
    publish(store, make_package(5, bias=0.5), channel="candidate", public_key=key.public_key())
    before = {k: store.get_bytes(k) for k in store.list("models/")}
    with pytest.raises(RegistryError, match=r"models/5/model\.onnx already exists with different content.*immutable"):
        publish(store, make_package(5, bias=9.0), channel="production", public_key=key.public_key())
    assert {k: store.get_bytes(k) for k in store.list("models/")} == before
    assert read_channel(store, "production") is None


def test_an_older_version_is_refused_unless_forced(store, make_package, key):
    publish(store, make_package(2), public_key=key.public_key())
    older = make_package(1)
    with pytest.raises(RegistryError, match="version 1 is not newer than production's version 2"):
        publish(store, older, public_key=key.public_key())
    assert not store.list("models/1/")
    publish(store, older, public_key=key.public_key(), force=True)
    assert read_channel(store, "production")["version"] == 1
    assert read_channel(store, "previous")["version"] == 2


def test_a_package_that_does_not_verify_uploads_nothing(store, make_package, key, tmp_path):
    package = make_package(1)
    model = package / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1] + bytes([model.read_bytes()[-1] ^ 1]))
    with pytest.raises(RegistryError, match=r"model\.onnx: sha256 mismatch"):
        publish(store, package, public_key=key.public_key())
    with pytest.raises(RegistryError, match=r"model\.onnx: size or sha256 differs"):
        publish(store, package)  # no key: hashes are still checked
    other = load_or_create_private_key(tmp_path / "other.pem")
    with pytest.raises(RegistryError, match="key id mismatch"):
        publish(store, make_package(2), public_key=other.public_key())
    with pytest.raises(RegistryError, match="a rejected candidate is never published"):
        publish(store, make_package(3), public_key=key.public_key(), decision={**DECISION, "approve": False})
    assert store.list("") == []


# --- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("fail_at", range(PUBLISH_PUTS))
def test_a_failure_at_each_publish_step_leaves_the_registry_valid_and_a_retry_completes(store, make_package, key, tmp_path, fail_at, when):
    publish(store, make_package(1), public_key=key.public_key())
    candidate = make_package(2)
    faulty = FaultyStore(store, fail_at=fail_at, when=when)
    with pytest.raises(Fault):
        publish(faulty, candidate, public_key=key.public_key(), decision=DECISION)
    assert faulty.puts[-1] == (
        ["models/2/model.onnx", "models/2/canary.npz", "models/2/decision.json", "models/2/manifest.sig.json",
         "models/2/manifest.json", "channels/previous.json", "channels/production.json"][fail_at]
    )
    moved = fail_at == PUBLISH_PUTS - 1 and when == "after"
    assert _assert_valid(store, tmp_path, key, {2} if moved else {1}) == (2 if moved else 1)

    retry = publish(store, candidate, public_key=key.public_key(), decision=DECISION)
    assert retry["status"] == ("unchanged" if moved else "published")
    assert _assert_valid(store, tmp_path, key, {2}) == 2
    assert read_channel(store, "previous")["version"] == 1
    assert all(v["complete"] for v in show(store)["versions"])


KILL_SCRIPT = """
import json, os, signal, sys
from pathlib import Path
from skyedge.release import registry
from skyedge.release.store import open_store

store = open_store(sys.argv[1])
kill_after, puts = int(sys.argv[3]), []

def hook(real):
    def put(key, value):
        real(key, value)
        puts.append(key)
        if len(puts) - 1 == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    return put

store.put_bytes, store.put_file = hook(store.put_bytes), hook(store.put_file)
registry.publish(store, Path(sys.argv[2]), decision=json.loads(sys.argv[4]))
"""


@pytest.mark.parametrize("kill_after", range(PUBLISH_PUTS))
def test_publish_killed_after_each_write_leaves_the_registry_valid(store_url, make_package, key, tmp_path, kill_after):
    store = open_store(store_url)
    publish(store, make_package(1), public_key=key.public_key())
    candidate = make_package(2)
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, store_url, str(candidate), str(kill_after), json.dumps(DECISION)],
        cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    moved = kill_after == PUBLISH_PUTS - 1
    assert _assert_valid(store, tmp_path, key, {2} if moved else {1}) == (2 if moved else 1)
    publish(store, candidate, public_key=key.public_key(), decision=DECISION)
    assert _assert_valid(store, tmp_path, key, {2}) == 2
    assert read_channel(store, "previous")["version"] == 1


# --- fetch ------------------------------------------------------------------------------------


def test_fetch_version_downloads_a_verified_package(store, make_package, key, tmp_path):
    package = make_package(4)
    publish(store, package, public_key=key.public_key(), decision=DECISION)
    by_channel = fetch_version(store, "production", tmp_path / "by-channel", public_key=key.public_key())
    by_number = fetch_version(store, 4, tmp_path / "by-number")
    for dest in (by_channel, by_number):
        for name in ("model.onnx", "canary.npz", MANIFEST_FILE, SIGNATURE_FILE):
            assert (dest / name).read_bytes() == (package / name).read_bytes()
        assert json.loads((dest / DECISION_FILE).read_text()) == DECISION
    with pytest.raises(RegistryError, match="not an empty directory"):
        fetch_version(store, 4, by_number)


def test_fetch_version_refuses_a_corrupted_object(store, make_package, key, tmp_path):
    publish(store, make_package(1), public_key=key.public_key())
    target = model_key(1, "model.onnx")
    data = bytearray(store.get_bytes(target))
    data[len(data) // 2] ^= 0x01
    store.put_bytes(target, bytes(data))  # behind the registry's back, as bit rot or an attacker would
    dest = tmp_path / "fetched"
    with pytest.raises(RegistryError, match=r"models/1/model\.onnx sha256 mismatch"):
        fetch_version(store, "production", dest)
    assert not dest.exists() and not list(tmp_path.glob(".fetched*"))
    with pytest.raises(RegistryError, match="sha256 mismatch"):
        verify_version(store, 1)
    publish(store, make_package(2), public_key=key.public_key())
    with pytest.raises(RegistryError, match="sha256 mismatch"):
        rollback(store)  # the target is read back and checked before the pointer moves
    assert read_channel(store, "production")["version"] == 2


def test_fetch_version_refuses_a_manifest_that_is_not_the_pointers(store, make_package, key, tmp_path):
    publish(store, make_package(1), public_key=key.public_key())
    target = model_key(1, MANIFEST_FILE)
    store.put_bytes(target, store.get_bytes(target).replace(b'"skyedge-test"', b'"skyedge-evil"'))
    with pytest.raises(RegistryError, match="does not match the channel pointer"):
        fetch_version(store, "production", tmp_path / "a")
    with pytest.raises(RegistryError, match="signature check failed"):
        fetch_version(store, 1, tmp_path / "b", public_key=key.public_key())


# --- store ------------------------------------------------------------------------------------


def test_store_round_trip_and_listing(store, tmp_path):
    store.put_bytes("a/b/one.bin", b"one")
    (tmp_path / "two.bin").write_bytes(b"2" * 3000)
    store.put_file("a/two.bin", tmp_path / "two.bin")
    assert store.list("a/") == ["a/b/one.bin", "a/two.bin"] and store.list("a/b") == ["a/b/one.bin"]
    assert store.head("a/two.bin") == 3000 and store.exists("a/b/one.bin") and not store.exists("a/none")
    assert store.get_file("a/two.bin", tmp_path / "out" / "two.bin").read_bytes() == b"2" * 3000
    with pytest.raises(NotFound):
        store.get_bytes("a/none")
    with pytest.raises(NotFound):
        store.head("a/none")
    for bad in ("../escape", "/abs", "a//b", "a/.hidden", ""):
        with pytest.raises(StoreError, match="object key"):
            store.put_bytes(bad, b"x")
    store.delete("a/two.bin")
    assert store.list("") == ["a/b/one.bin"]


def test_local_store_hides_temporary_files_of_a_killed_write(tmp_path):
    store = LocalStore(tmp_path / "reg")
    store.put_bytes("models/1/model.onnx", b"whole")
    (tmp_path / "reg" / "models" / "1" / ".manifest.json.0123.tmp").write_bytes(b"{half")
    assert store.list("models/") == ["models/1/model.onnx"]
    assert not store.exists("models/1/manifest.json")


def test_open_store_parses_urls(tmp_path, aws_env):
    assert isinstance(open_store(tmp_path / "x"), LocalStore)
    assert open_store(f"file://{tmp_path}/x").root == tmp_path / "x"
    s3 = open_store("s3://bucket/some/prefix/")
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix) == ("bucket", "some/prefix")
    assert s3.client.meta.endpoint_url == aws_env["AWS_ENDPOINT_URL"]
    assert open_store("s3://bucket", endpoint_url="http://127.0.0.1:1").client.meta.endpoint_url == "http://127.0.0.1:1"
    with pytest.raises(StoreError, match="unsupported store URL scheme"):
        open_store("ftp://host/x")


def test_s3_missing_bucket_is_a_clear_error(aws_env, make_package, key):
    store = open_store("s3://no-such-bucket-skyedge/registry")
    for action in (lambda: store.head("models/1/model.onnx"), lambda: publish(store, make_package(1), public_key=key.public_key()), lambda: show(store)):
        with pytest.raises(StoreError, match=r"bucket 'no-such-bucket-skyedge' does not exist at http://127\.0\.0\.1:\d+: create it"):
            action()


# --- command line -----------------------------------------------------------------------------


def test_cli_publish_show_rollback(store_url, make_package, key, tmp_path, capsys):
    pem = tmp_path / "public.pem"
    pem.write_bytes(public_key_pem(key))
    for version in (1, 2):
        assert cli_main(["publish", str(make_package(version)), "--store", store_url, "--public-key", str(pem)]) == 0
    out = capsys.readouterr().out
    assert "production -> version 2 (was 1)" in out
    assert cli_main(["registry", "show", "--store", store_url]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any(line.split()[:2] == ["production", "2"] for line in lines)
    assert any(line.split()[:2] == ["previous", "1"] for line in lines)
    assert any(line.split()[:2] == ["2", "skyedge-test"] and "yes" in line.split() for line in lines)
    assert cli_main(["rollback", "--store", store_url]) == 0
    assert "production -> version 1 (was 2)" in capsys.readouterr().out
    assert cli_main(["publish", str(make_package(1, bias=7.0)), "--store", store_url, "--public-key", str(pem)]) == 1
    assert "publish: FAILED: version 1 is not newer" in capsys.readouterr().err


def test_cli_reports_a_missing_bucket(aws_env, capsys):
    assert cli_main(["registry", "show", "--store", "s3://no-such-bucket-skyedge"]) == 1
    assert "bucket 'no-such-bucket-skyedge' does not exist" in capsys.readouterr().err


def test_store_and_registry_import_nothing_heavy():
    """The device agent reuses both: no torch/pandas/prefect, and boto3 only when S3 is used."""
    heavy = ("torch", "torchvision", "prefect", "dvc", "pandas", "boto3", "botocore")
    code = f"import sys, skyedge.release.store, skyedge.release.registry; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_s3_access_denied_names_the_bucket_and_what_to_check():
    from botocore.exceptions import ClientError

    store = S3Store("locked-bucket", "registry", client=None)
    error = store._error(ClientError({"Error": {"Code": "AccessDenied", "Message": "denied"}}, "GetObject"), "channels/production.json", "get_object")
    assert isinstance(error, StoreError) and not isinstance(error, NotFound)
    assert "access denied to bucket 'locked-bucket'" in str(error) and "check the credentials" in str(error)
    assert "s3://locked-bucket/registry/channels/production.json" in str(error)

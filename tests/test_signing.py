"""Signed packages fail closed: keys, detached signatures and manifest verification (§5)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from skyedge.core import contract
from skyedge.release.manifest import (
    MANIFEST_FILE,
    MANIFEST_SCHEMA_VERSION,
    REQUIRED_KEYS,
    SIGNATURE_FILE,
    PackageError,
    file_entry,
    sha256_file,
    sign_package,
    verify_package,
    write_manifest,
)
from skyedge.release.signing import DEFAULT_KEY_PATH, SigningError, key_id, key_path_from_env, load_or_create_private_key, load_public_key, public_key_pem, sign, verify_signature


def _tiny_model(path: Path) -> None:
    """A real ONNX graph (Add of two inputs), small enough to hash in microseconds."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "y"], ["z"])], "tiny", [x, y], [z])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _manifest(pkg: Path, **overrides) -> dict:
    files = [file_entry(pkg / "model.onnx", pkg), file_entry(pkg / "canary.npz", pkg)]
    manifest = {
        "name": "skyedge-tiny",
        "version": 3,
        "semver": "0.3.0",
        "created_at": "2024-01-01T00:00:00Z",
        "files": files,
        "inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32"}],
        "outputs": [{"name": "z", "shape": [1, 4], "dtype": "float32"}],
        "horizons": list(contract.HORIZONS),
        "classes": list(contract.SKY_CLASSES),
        "metrics": {"accuracy": 0.9},
        "lineage": {"git_commit": "0" * 40, "stages": {}, "params": {}},
        "canary": {"path": "canary.npz", "atol": 1e-5},
        "min_agent_version": "0.1.0",
        "schema_version": MANIFEST_SCHEMA_VERSION,
    }
    manifest.update(overrides)
    return manifest


@pytest.fixture()
def key(tmp_path):
    return load_or_create_private_key(tmp_path / "keys" / "signing_key.pem")


@pytest.fixture()
def package(tmp_path, key) -> Path:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    _tiny_model(pkg / "model.onnx")
    np.savez(pkg / "canary.npz", x=np.ones((1, 4), np.float32), z=np.full((1, 4), 2, np.float32))
    write_manifest(pkg, _manifest(pkg))
    sign_package(pkg, key)
    return pkg


def _resign_raw(pkg: Path, manifest: dict, key) -> None:
    """Write and sign a manifest bypassing write_manifest's checks, as an attacker with the key
    (or a buggy packager) could: verify_package must still refuse it on its own."""
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    (pkg / MANIFEST_FILE).write_bytes(data)
    (pkg / SIGNATURE_FILE).write_text(json.dumps(sign(data, key)))


def test_sign_then_verify_returns_manifest(package, key):
    manifest = verify_package(package, key.public_key())
    assert manifest["version"] == 3
    assert set(REQUIRED_KEYS) <= manifest.keys()
    paths = {f["path"]: f for f in manifest["files"]}
    assert set(paths) == {"model.onnx", "canary.npz"}
    assert paths["model.onnx"]["sha256"] == sha256_file(package / "model.onnx")
    assert paths["model.onnx"]["size_bytes"] == (package / "model.onnx").stat().st_size
    # Deterministic bytes: rewriting the same manifest reproduces the signed file exactly.
    before = (package / MANIFEST_FILE).read_bytes()
    write_manifest(package, manifest)
    assert (package / MANIFEST_FILE).read_bytes() == before
    assert before.endswith(b"}\n")
    sig = json.loads((package / SIGNATURE_FILE).read_text())
    assert sig["algorithm"] == "ed25519" and sig["key_id"] == key_id(key.public_key())


def test_one_byte_change_in_model_fails_on_sha256(package, key):
    model = package / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"model\.onnx: sha256 mismatch \(expected [0-9a-f]+…"):
        verify_package(package, key.public_key())


def test_manifest_edited_after_signing_fails_signature(package, key):
    manifest = json.loads((package / MANIFEST_FILE).read_text())
    manifest["version"] += 1
    (package / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    with pytest.raises(PackageError, match="manifest.sig.json: signature check failed: bad signature"):
        verify_package(package, key.public_key())


def test_missing_signature_fails(package, key):
    (package / SIGNATURE_FILE).unlink()
    with pytest.raises(PackageError, match=r"manifest\.sig\.json: missing"):
        verify_package(package, key.public_key())


def test_missing_manifest_fails(package, key):
    (package / MANIFEST_FILE).unlink()
    with pytest.raises(PackageError, match=r"manifest\.json: missing"):
        verify_package(package, key.public_key())


def test_signature_by_another_key_fails_on_key_id(package, key, tmp_path):
    other = load_or_create_private_key(tmp_path / "other" / "key.pem")
    assert key_id(other.public_key()) != key_id(key.public_key())
    sign_package(package, other)
    with pytest.raises(PackageError, match="key id mismatch"):
        verify_package(package, key.public_key())


def test_forged_key_id_still_fails_on_signature(package, key, tmp_path):
    """Claiming the trusted key id does not help a signature made by another key."""
    other = load_or_create_private_key(tmp_path / "other" / "key.pem")
    data = (package / MANIFEST_FILE).read_bytes()
    doc = sign(data, other)
    doc["key_id"] = key_id(key.public_key())
    with pytest.raises(SigningError, match="bad signature"):
        verify_signature(data, doc, key.public_key())


@pytest.mark.parametrize(
    ("mutate", "rule"),
    [
        (lambda d: d.update(algorithm="rsa"), "unsupported signature algorithm"),
        (lambda d: d.pop("signature"), "missing signature"),
        (lambda d: d.update(signature="not base64!"), "not base64"),
        (lambda d: d.update(signature="AAAA"), "3 bytes, expected 64"),
    ],
)
def test_malformed_signature_document_is_refused(key, mutate, rule):
    doc = sign(b"payload", key)
    mutate(doc)
    with pytest.raises(SigningError, match=rule):
        verify_signature(b"payload", doc, key.public_key())


def test_truncated_model_fails_on_size(package, key):
    model = package / "model.onnx"
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 2])
    with pytest.raises(PackageError, match=r"model\.onnx: size mismatch \(expected \d+ bytes"):
        verify_package(package, key.public_key())


def test_missing_listed_file_fails(package, key):
    (package / "canary.npz").unlink()
    with pytest.raises(PackageError, match=r"canary\.npz: listed in manifest\.json but missing"):
        verify_package(package, key.public_key())


@pytest.mark.parametrize("bad_path", ["../x", "/etc/passwd", "sub/../../x", "C:/x"])
def test_path_escape_is_refused(package, key, bad_path):
    manifest = json.loads((package / MANIFEST_FILE).read_text())
    manifest["files"].append({"path": bad_path, "sha256": "0" * 64, "size_bytes": 0})
    with pytest.raises(PackageError, match="escapes the package dir"):
        write_manifest(package, manifest)
    _resign_raw(package, manifest, key)
    with pytest.raises(PackageError, match="escapes the package dir"):
        verify_package(package, key.public_key())


def test_symlink_escaping_package_is_refused(package, key, tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    (package / "link.bin").symlink_to(outside)
    manifest = json.loads((package / MANIFEST_FILE).read_text())
    manifest["files"].append(
        {"path": "link.bin", "sha256": sha256_file(outside), "size_bytes": 6}
    )
    _resign_raw(package, manifest, key)
    with pytest.raises(PackageError, match=r"link\.bin: path escapes the package dir \(symlink\)"):
        verify_package(package, key.public_key())


def test_model_must_be_listed(package, key):
    manifest = json.loads((package / MANIFEST_FILE).read_text())
    manifest["files"] = [f for f in manifest["files"] if f["path"] != "model.onnx"]
    _resign_raw(package, manifest, key)
    with pytest.raises(PackageError, match=r"model\.onnx: not listed"):
        verify_package(package, key.public_key())


@pytest.mark.parametrize("missing", ["lineage", "canary", "min_agent_version", "schema_version"])
def test_missing_required_key_is_named(package, key, missing):
    manifest = json.loads((package / MANIFEST_FILE).read_text())
    del manifest[missing]
    with pytest.raises(PackageError, match=f"missing required key '{missing}'"):
        write_manifest(package, manifest)
    _resign_raw(package, manifest, key)
    with pytest.raises(PackageError, match=f"missing required key '{missing}'"):
        verify_package(package, key.public_key())


@pytest.mark.parametrize("version", [0, -1, "3", True, 2.0])
def test_version_must_be_positive_int(package, key, version):
    manifest = json.loads((package / MANIFEST_FILE).read_text())
    manifest["version"] = version
    _resign_raw(package, manifest, key)
    with pytest.raises(PackageError, match="version must be a positive int"):
        verify_package(package, key.public_key())


def test_broken_package_is_not_signed(package, key):
    (package / "canary.npz").write_bytes(b"changed")
    sig_before = (package / SIGNATURE_FILE).read_bytes()
    with pytest.raises(PackageError, match=r"canary\.npz: size mismatch"):
        sign_package(package, key)
    assert (package / SIGNATURE_FILE).read_bytes() == sig_before


def test_key_file_created_0600_and_reloads_same_key(tmp_path):
    path = tmp_path / "nested" / "dir" / "signing_key.pem"
    first = load_or_create_private_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert [p.name for p in path.parent.iterdir()] == ["signing_key.pem"]  # no temp left behind
    second = load_or_create_private_key(path)
    assert key_id(second.public_key()) == key_id(first.public_key())
    assert len(key_id(first.public_key())) == 64
    pub = tmp_path / "pub.pem"
    pub.write_bytes(public_key_pem(first))
    assert key_id(load_public_key(pub)) == key_id(first.public_key())


def test_garbage_key_file_names_the_file(tmp_path):
    path = tmp_path / "garbage.pem"
    path.write_bytes(b"this is not a key\n")
    with pytest.raises(SigningError, match="garbage.pem"):
        load_or_create_private_key(path)
    with pytest.raises(SigningError, match="garbage.pem"):
        load_public_key(path)
    assert path.read_bytes() == b"this is not a key\n"  # never overwritten


def test_non_ed25519_key_is_refused(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = tmp_path / "ec.pem"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(SigningError, match=r"ec\.pem: .*expected ed25519"):
        load_or_create_private_key(path)


def test_env_var_overrides_key_path(tmp_path, monkeypatch):
    monkeypatch.delenv("SKYEDGE_SIGNING_KEY", raising=False)
    assert key_path_from_env() == DEFAULT_KEY_PATH == Path(".skyedge/signing_key.pem")
    target = tmp_path / "from_env.pem"
    monkeypatch.setenv("SKYEDGE_SIGNING_KEY", str(target))
    assert key_path_from_env() == target
    key = load_or_create_private_key(key_path_from_env())
    assert target.is_file()
    assert key_id(load_or_create_private_key(target).public_key()) == key_id(key.public_key())

"""The signed model package (ARCHITECTURE §5): write, sign and verify, failing closed.

A package is a directory holding `model.onnx`, `manifest.json`, `manifest.sig.json` (a detached
signature over the exact bytes of manifest.json) and any other file the manifest lists (e.g.
`canary.npz`). Verification checks the signature before it trusts a single field of the
manifest, then checks every listed file's size and sha256. Device side: stdlib + cryptography.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from skyedge.core import paths
from skyedge.core.contract import HORIZONS, INPUT_IMAGE, INPUT_IMAGE_PRESENT, INPUT_SENSORS, SKY_CLASSES
from skyedge.core.files import atomic_write
from skyedge.release.signing import SigningError, sign, verify_signature

MANIFEST_SCHEMA_VERSION = 1
MODEL_FILE = paths.Package.model
MANIFEST_FILE = paths.Package.manifest
SIGNATURE_FILE = paths.Package.signature
CANARY_FILE = paths.Package.canary
ATTENTION_FILE = paths.Package.attention
CANARY_FRAMES = "frames"  # canary.npz's whole frames [B, S, S, 3] uint8, for the attention path
INPUT_NAMES = [INPUT_IMAGE, INPUT_IMAGE_PRESENT, INPUT_SENSORS]
REQUIRED_KEYS: tuple[str, ...] = (
    "name",
    "version",
    "created_at",
    "files",
    "inputs",
    "outputs",
    "horizons",
    "classes",
    "metrics",
    "lineage",
    "canary",
    "min_agent_version",
    "schema_version",
)
# Upper bounds on what we parse before the signature is checked: a manifest is kilobytes.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_SIGNATURE_BYTES = 64 * 1024
_CHUNK = 1024 * 1024


class PackageError(ValueError):
    """A package failed verification; the message names the file and the rule it broke."""


def sha256_file(path: Path) -> str:
    """sha256 hex of a file, read in 1 MiB chunks so models of any size fit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(path: Path, root: Path) -> dict[str, Any]:
    """The manifest entry of `path`, named relative to the package root `root`."""
    path, root = Path(path), Path(root)
    rel = path.resolve().relative_to(root.resolve()).as_posix()
    return {"path": rel, "sha256": sha256_file(path), "size_bytes": path.stat().st_size}


def build_manifest(
    package_dir: Path,
    *,
    name: str,
    version: int,
    version_label: str,
    created_at: str,
    inputs: list[dict],
    outputs: list[dict],
    preprocessing: dict,
    climatology: dict | None,
    metrics: dict,
    lineage: dict,
    canary_expected: dict[str, list],
    canary_atol: float,
    latency_budget_ms: float,
    min_agent_version: str,
    container: dict[str, Any] | None = None,
    attention: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The manifest document of the package in package_dir (model.onnx and canary.npz written).

    The one place the document's shape is written: the package stage and the device tests' sample
    packages both build it here. `container` is model.skc's file entry (+ format_version): listed
    in files like model.onnx, so it is signed, published and verified the same way. `extra` adds
    sections (e.g. the quantization choice). `attention` (attention.onnx written): the box rules
    and frame size the station runs attention.onnx with before model.onnx (skyedge.core.crop);
    the file is listed and signed like model.onnx. Without it the model sees the whole frame.
    """
    package_dir = Path(package_dir)
    files = [file_entry(package_dir / MODEL_FILE, package_dir), file_entry(package_dir / CANARY_FILE, package_dir)]
    if container is not None:
        files.append({key: container[key] for key in ("path", "sha256", "size_bytes")})
    if attention is not None:
        files.append(file_entry(package_dir / ATTENTION_FILE, package_dir))
    document = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "name": name,
        "version": version,
        "version_label": version_label,
        "created_at": created_at,
        "files": files,
        "inputs": inputs,
        "outputs": outputs,
        "preprocessing": {**preprocessing, "input_names": INPUT_NAMES},
        "horizons": list(HORIZONS),
        "classes": list(SKY_CLASSES),
        "metrics": metrics,
        "lineage": lineage,
        "canary": {"file": CANARY_FILE, "atol": canary_atol, "expected": canary_expected},
        "latency_budget_ms": latency_budget_ms,
        "min_agent_version": min_agent_version,
        **extra,
    }
    if container is not None:
        document["container"] = container
    if climatology is not None:
        document["climatology"] = climatology
    if attention is not None:
        document["attention"] = {"file": ATTENTION_FILE, **attention}
    return document


def _atomic_write(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one (skyedge.core.files.atomic_write)."""
    atomic_write(path, lambda handle: handle.write(data))


def _safe_relpath(rel: Any) -> PurePosixPath:
    """Refuse any listed path that could name something outside the package directory."""
    if not isinstance(rel, str) or not rel:
        raise PackageError(f"{MANIFEST_FILE}: files[].path must be a non-empty string, got {rel!r}")
    if "\\" in rel or "\x00" in rel:
        raise PackageError(f"{rel}: path escapes the package dir (backslash or NUL not allowed)")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or (len(rel) > 1 and rel[1] == ":"):
        raise PackageError(f"{rel}: path escapes the package dir (absolute path)")
    if any(part in ("", ".", "..") for part in rel.split("/")):
        raise PackageError(f"{rel}: path escapes the package dir ('..', '.' or empty component)")
    if rel in (MANIFEST_FILE, SIGNATURE_FILE):
        raise PackageError(f"{rel}: the manifest and its signature cannot list themselves")
    return pure


def check_manifest_fields(manifest: Any) -> list[dict[str, Any]]:
    """Structural rules on a manifest (no file access); returns the validated file entries."""
    if not isinstance(manifest, dict):
        raise PackageError(f"{MANIFEST_FILE}: must be a JSON object, got {type(manifest).__name__}")
    for key in REQUIRED_KEYS:
        if key not in manifest:
            raise PackageError(f"{MANIFEST_FILE}: missing required key {key!r}")
    schema = manifest["schema_version"]
    if type(schema) is not int or schema != MANIFEST_SCHEMA_VERSION:
        raise PackageError(
            f"{MANIFEST_FILE}: schema_version must be {MANIFEST_SCHEMA_VERSION}, got {schema!r}"
        )
    version = manifest["version"]
    # bool is an int subclass; `True` is not a version.
    if type(version) is not int or version < 1:
        raise PackageError(f"{MANIFEST_FILE}: version must be a positive int, got {version!r}")
    files = manifest["files"]
    if not isinstance(files, list) or not files:
        raise PackageError(f"{MANIFEST_FILE}: files must be a non-empty list")
    seen: set[str] = set()
    for i, entry in enumerate(files):
        if not isinstance(entry, dict) or not {"path", "sha256", "size_bytes"} <= entry.keys():
            raise PackageError(
                f"{MANIFEST_FILE}: files[{i}] must be an object with path, sha256, size_bytes"
            )
        rel = str(_safe_relpath(entry["path"]))
        if rel in seen:
            raise PackageError(f"{rel}: listed twice in {MANIFEST_FILE}")
        seen.add(rel)
        sha, size = entry["sha256"], entry["size_bytes"]
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise PackageError(f"{rel}: sha256 must be 64 lowercase hex characters, got {sha!r}")
        if type(size) is not int or size < 0:
            raise PackageError(f"{rel}: size_bytes must be a non-negative int, got {size!r}")
    if MODEL_FILE not in seen:
        raise PackageError(f"{MODEL_FILE}: not listed in {MANIFEST_FILE} files")
    return files


def _check_files(package_dir: Path, files: list[dict[str, Any]]) -> None:
    root = package_dir.resolve()
    for entry in files:
        rel = entry["path"]
        path = package_dir / rel
        # A symlink inside the package could still point outside it.
        if not path.resolve().is_relative_to(root):
            raise PackageError(f"{rel}: path escapes the package dir (symlink)")
        if not path.is_file():
            raise PackageError(f"{rel}: listed in {MANIFEST_FILE} but missing from the package")
        size = path.stat().st_size
        if size != entry["size_bytes"]:
            raise PackageError(
                f"{rel}: size mismatch (expected {entry['size_bytes']} bytes, got {size})"
            )
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise PackageError(
                f"{rel}: sha256 mismatch (expected {entry['sha256'][:12]}…, got {actual[:12]}…)"
            )


def write_manifest(package_dir: Path, manifest: dict[str, Any]) -> Path:
    """Validate and write manifest.json deterministically and atomically; returns its path."""
    check_manifest_fields(manifest)
    path = Path(package_dir) / MANIFEST_FILE
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    _atomic_write(path, (text + "\n").encode("utf-8"))
    return path


def _read_bounded(path: Path, limit: int) -> bytes:
    if not path.is_file():
        raise PackageError(f"{path.name}: missing from package {path.parent}")
    size = path.stat().st_size
    if size > limit:
        raise PackageError(f"{path.name}: {size} bytes exceeds the {limit}-byte limit")
    return path.read_bytes()


def _parse_manifest(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{MANIFEST_FILE}: not valid UTF-8 JSON ({exc})") from exc


def sign_package(package_dir: Path, private_key: Ed25519PrivateKey) -> Path:
    """Sign the exact bytes of manifest.json into manifest.sig.json; returns the signature path.

    The listed files are checked first, so a broken package is never signed.
    """
    package_dir = Path(package_dir)
    data = _read_bounded(package_dir / MANIFEST_FILE, MAX_MANIFEST_BYTES)
    _check_files(package_dir, check_manifest_fields(_parse_manifest(data)))
    sig_path = package_dir / SIGNATURE_FILE
    doc = json.dumps(sign(data, private_key), indent=2, sort_keys=True) + "\n"
    _atomic_write(sig_path, doc.encode("utf-8"))
    return sig_path


def verify_package(package_dir: Path, public_key: Ed25519PublicKey) -> dict[str, Any]:
    """Return the manifest of a package whose signature, fields and files all check out.

    Raises PackageError naming the file and the rule otherwise. Order matters: the signature is
    verified over the raw bytes before the manifest is parsed or any listed path is touched.
    """
    package_dir = Path(package_dir)
    if not package_dir.is_dir():
        raise PackageError(f"{package_dir}: package directory does not exist")
    data = _read_bounded(package_dir / MANIFEST_FILE, MAX_MANIFEST_BYTES)
    sig_data = _read_bounded(package_dir / SIGNATURE_FILE, MAX_SIGNATURE_BYTES)
    try:
        sig_doc = json.loads(sig_data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{SIGNATURE_FILE}: not valid UTF-8 JSON ({exc})") from exc
    try:
        verify_signature(data, sig_doc, public_key)
    except SigningError as exc:
        raise PackageError(f"{SIGNATURE_FILE}: signature check failed: {exc}") from exc
    manifest = _parse_manifest(data)
    _check_files(package_dir, check_manifest_fields(manifest))
    return manifest

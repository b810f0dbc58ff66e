"""The model registry on an object store (ARCHITECTURE §6): publish, show, roll back, fetch.

Layout (the same in a local directory and under `s3://bucket/prefix/`):

    models/<version>/<file>      model.onnx, model.skc, canary.npz, …, manifest.sig.json,
                                 manifest.json and, when a promotion decision was given,
                                 decision.json. Immutable.
    models/<version>/deltas/from-<base>.skd
                                 model.onnx of <version> as a delta from the model.onnx of each
                                 of the `delta_bases` newest complete versions before it
                                 (skyedge.release.container); written before manifest.json.
    channels/<name>.json         pointer: {version, manifest_sha256, published_at, previous, …}
    channels/previous.json       the production pointer as it was before production last moved
    devices/<id>/status.json     written by the device agents (skyedge.device.agent)

Publishing is ordered so that a crash between any two steps leaves every channel pointing at a
complete, verified version, and running it again finishes the job: (1) upload each object that is
not already there, reading it back (size + sha256); manifest.json goes last, so a version
directory with a manifest is complete; (2) write channels/previous.json; (3) move the channel
pointer. Objects already present must be byte-identical (immutability); identical ones are
skipped, which is what makes a retry safe.

Device side: stdlib + skyedge.release.manifest/skyedge.release.store only (no torch, pandas, prefect).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from skyedge.release import container
from skyedge.release import manifest as mf
from skyedge.release.store import NotFound, Store, StoreError

MODELS = "models"
CHANNELS = "channels"
DEVICES = "devices"
PRODUCTION = "production"
PREVIOUS = "previous"
DECISION_FILE = "decision.json"
OVERRIDE_FILE = "override.json"  # why a refused version was published anyway (publish --force --reason)
REFUSALS = "refusals"  # refusals/<version>.json: the gate or an operator said no to that version
PROBES = "probes"
DELTAS = "deltas"
POINTER_SCHEMA_VERSION = 1
MAX_POINTER_BYTES = 64 * 1024
DECISION_KEYS = ("approve", "reviewer", "comment", "decided_at")
_CHANNEL_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class RegistryError(ValueError):
    """The registry refused an operation; the message names the version/object and the rule."""


def model_key(version: int, name: str) -> str:
    return f"{MODELS}/{int(version)}/{name}"


def delta_key(version: int, base_version: int) -> str:
    return model_key(version, f"{DELTAS}/from-{int(base_version)}.skd")


def complete_versions(store: Store) -> list[int]:
    """Versions whose manifest.json is in the store (publish writes it last), oldest first."""
    versions = set()
    for key in store.list(f"{MODELS}/"):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == mf.MANIFEST_FILE and parts[1].isdigit():
            versions.add(int(parts[1]))
    return sorted(versions)


def delta_objects(store: Store, version: int) -> dict[str, tuple[int, str]]:
    """key -> (size, sha256) of the deltas stored for `version`."""
    return {key: store.stat_sha256(key) for key in store.list(model_key(version, f"{DELTAS}/")) if key.endswith(".skd")}


def channel_key(channel: str) -> str:
    return f"{CHANNELS}/{check_channel(channel)}.json"


def check_channel(channel: Any) -> str:
    if not isinstance(channel, str) or not _CHANNEL_RE.match(channel):
        raise RegistryError(f"channel name {channel!r}: use lowercase letters, digits, '-' and '_'")
    return channel


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json_bytes(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _ref(pointer: dict[str, Any] | None) -> dict[str, Any] | None:
    """The part of a pointer that names a release: enough to re-point to it."""
    if pointer is None:
        return None
    return {"version": pointer["version"], "manifest_sha256": pointer["manifest_sha256"]}


# --- pointers ---------------------------------------------------------------------------------


def read_channel(store: Store, channel: str) -> dict[str, Any] | None:
    """The pointer of `channel`, or None when the channel was never written."""
    key = channel_key(channel)
    try:
        data = store.get_bytes(key, max_bytes=MAX_POINTER_BYTES)
    except NotFound:
        return None
    try:
        pointer = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{key}: not valid UTF-8 JSON ({exc})") from exc
    if not isinstance(pointer, dict):
        raise RegistryError(f"{key}: must be a JSON object")
    version, sha = pointer.get("version"), pointer.get("manifest_sha256")
    if type(version) is not int or version < 1:
        raise RegistryError(f"{key}: version must be a positive int, got {version!r}")
    if not isinstance(sha, str) or not _SHA_RE.match(sha):
        raise RegistryError(f"{key}: manifest_sha256 must be 64 lowercase hex characters, got {sha!r}")
    return pointer


def _write_pointer(store: Store, channel: str, pointer: dict[str, Any]) -> None:
    key = channel_key(channel)
    data = _json_bytes(pointer)
    store.put_bytes(key, data)
    if store.get_bytes(key, max_bytes=MAX_POINTER_BYTES) != data:
        raise RegistryError(f"{store.describe(key)}: read-back differs from what was written")


def list_channels(store: Store) -> dict[str, dict[str, Any]]:
    channels = {}
    for key in store.list(f"{CHANNELS}/"):
        name = key[len(CHANNELS) + 1 :]
        if "/" in name or not name.endswith(".json"):
            continue
        name = name[: -len(".json")]
        pointer = read_channel(store, name)
        if pointer is not None:
            channels[name] = pointer
    return channels


# --- versions ---------------------------------------------------------------------------------


def _read_manifest(store: Store, version: int, expected_sha: str | None = None) -> tuple[bytes, dict[str, Any]]:
    key = model_key(version, mf.MANIFEST_FILE)
    try:
        data = store.get_bytes(key, max_bytes=mf.MAX_MANIFEST_BYTES)
    except NotFound as exc:
        raise RegistryError(f"version {version}: {key} missing: the version is not (completely) published") from exc
    if expected_sha is not None and _sha256(data) != expected_sha:
        raise RegistryError(
            f"version {version}: {mf.MANIFEST_FILE} sha256 {_sha256(data)[:12]}… does not match "
            f"the channel pointer's {expected_sha[:12]}…"
        )
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{key}: not valid UTF-8 JSON ({exc})") from exc
    try:
        mf.check_manifest_fields(document)
    except mf.PackageError as exc:
        raise RegistryError(f"{key}: {exc}") from exc
    if document["version"] != version:
        raise RegistryError(f"{key}: manifest says version {document['version']}, stored under {version}")
    return data, document


def _version_objects(document: dict[str, Any]) -> list[tuple[str, int | None, str | None]]:
    """(name, size, sha256) of every object of a version the manifest vouches for."""
    return [(e["path"], e["size_bytes"], e["sha256"]) for e in document["files"]] + [(mf.SIGNATURE_FILE, None, None)]


def verify_version(store: Store, version: int, expected_manifest_sha256: str | None = None) -> dict[str, Any]:
    """Read back every object of a published version and check it against its manifest.

    Returns the manifest. Raises RegistryError naming the first object that is missing, of the
    wrong size or with the wrong sha256. Signature checks are the device's and
    `fetch_version(public_key=…)`'s business.
    """
    _, document = _read_manifest(store, version, expected_manifest_sha256)
    for name, size, sha in _version_objects(document):
        key = model_key(version, name)
        try:
            actual_size, actual_sha = store.stat_sha256(key)
        except NotFound as exc:
            raise RegistryError(f"version {version}: {key} missing") from exc
        if size is not None and actual_size != size:
            raise RegistryError(f"version {version}: {key} is {actual_size} bytes, manifest says {size}")
        if sha is not None and actual_sha != sha:
            raise RegistryError(f"version {version}: {key} sha256 mismatch (expected {sha[:12]}…, got {actual_sha[:12]}…)")
    return document


# --- publish ----------------------------------------------------------------------------------


def _local_package(package_dir: Path, public_key: Ed25519PublicKey | None) -> tuple[bytes, dict[str, Any]]:
    """The manifest bytes and document of a package whose files (and signature, given a key) check out."""
    package_dir = Path(package_dir)
    try:
        if public_key is not None:
            document = mf.verify_package(package_dir, public_key)
        else:
            if not package_dir.is_dir():
                raise mf.PackageError(f"{package_dir}: package directory does not exist")
            document = json.loads((package_dir / mf.MANIFEST_FILE).read_bytes().decode("utf-8"))
            files = mf.check_manifest_fields(document)
            for entry in files:
                path = package_dir / entry["path"]
                if not path.resolve().is_relative_to(package_dir.resolve()) or not path.is_file():
                    raise mf.PackageError(f"{entry['path']}: listed in {mf.MANIFEST_FILE} but missing from the package")
                if path.stat().st_size != entry["size_bytes"] or mf.sha256_file(path) != entry["sha256"]:
                    raise mf.PackageError(f"{entry['path']}: size or sha256 differs from {mf.MANIFEST_FILE}")
        if not (package_dir / mf.SIGNATURE_FILE).is_file():
            raise mf.PackageError(f"{mf.SIGNATURE_FILE}: missing from package {package_dir}: devices refuse unsigned models")
        if (package_dir / mf.MANIFEST_FILE).stat().st_size > mf.MAX_MANIFEST_BYTES:
            raise mf.PackageError(f"{mf.MANIFEST_FILE}: larger than {mf.MAX_MANIFEST_BYTES} bytes")
        data = (package_dir / mf.MANIFEST_FILE).read_bytes()
    except FileNotFoundError as exc:
        raise RegistryError(f"{package_dir}: not a package: {exc.filename} missing") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(f"{package_dir / mf.MANIFEST_FILE}: not valid UTF-8 JSON ({exc})") from exc
    except mf.PackageError as exc:
        raise RegistryError(f"{package_dir}: package does not verify: {exc}") from exc
    if json.loads(data.decode("utf-8")) != document:  # changed under our feet since verification
        raise RegistryError(f"{package_dir / mf.MANIFEST_FILE}: changed while being verified")
    return data, document


def check_decision(decision: Any) -> dict[str, Any]:
    """A promotion decision {approve, reviewer, comment, decided_at}; only approvals are published."""
    if not isinstance(decision, dict):
        raise RegistryError(f"decision must be an object with {', '.join(DECISION_KEYS)}")
    missing = [k for k in DECISION_KEYS if k not in decision]
    if missing:
        raise RegistryError(f"decision: missing {', '.join(missing)}")
    if decision["approve"] is not True:
        raise RegistryError(f"decision: approve is {decision['approve']!r}: a rejected candidate is never published")
    for k in ("reviewer", "comment", "decided_at"):
        if not isinstance(decision[k], str):
            raise RegistryError(f"decision.{k} must be a string, got {decision[k]!r}")
    if not decision["reviewer"].strip():
        raise RegistryError("decision.reviewer must name who approved")
    return decision


def _deltas(store: Store, version: int, model: Path, bases: int) -> list[tuple[int, bytes]]:
    """(base version, delta bytes) from each of the `bases` newest complete versions before `version`."""
    if bases <= 0:
        return []
    model_bytes = model.read_bytes()
    older = [v for v in complete_versions(store) if v < version][-bases:]
    return [(base, container.encode_delta(store.get_bytes(model_key(base, mf.MODEL_FILE)), model_bytes)) for base in older]


def _put_immutable(store: Store, key: str, size: int, sha: str, put: Any) -> str:
    """Upload one immutable object and read it back. Returns 'uploaded' or 'present'.

    An object already at `key` must be byte-identical: then it is left alone (a retry of an
    interrupted publish); otherwise the publish is refused, because versions never change.
    """
    if store.exists(key):
        actual_size, actual_sha = store.stat_sha256(key)
        if (actual_size, actual_sha) == (size, sha):
            return "present"
        raise RegistryError(
            f"{store.describe(key)} already exists with different content "
            f"(sha256 {actual_sha[:12]}…, this package has {sha[:12]}…): published versions are "
            "immutable; package the model under a new version"
        )
    put()
    actual_size, actual_sha = store.stat_sha256(key)
    if (actual_size, actual_sha) != (size, sha):
        # We just wrote it and nothing can point to it yet (manifest.json goes last, the pointer
        # after that): remove it so a retry uploads it afresh rather than calling it a conflict.
        store.delete(key)
        raise RegistryError(
            f"{store.describe(key)}: read-back mismatch after upload ({actual_size} bytes, "
            f"sha256 {actual_sha[:12]}…; expected {size} bytes, {sha[:12]}…); retry the publish"
        )
    return "uploaded"


def publish(
    store: Store,
    package_dir: Path,
    channel: str = PRODUCTION,
    public_key: Ed25519PublicKey | None = None,
    decision: dict[str, Any] | None = None,
    force: bool = False,
    keys: Path | str | None = None,
    rollout: dict[str, Any] | None = None,
    override: dict[str, Any] | None = None,
    delta_bases: int = 0,
) -> dict[str, Any]:
    """Upload a package as models/<version>/ and move `channel` to it, last.

    `delta_bases` = K: also store a delta from each of the K newest complete versions before this
    one (models/<version>/deltas/), so a station on one of them downloads only what changed.

    With TUF `keys` (a `skyedge keys init` directory; default $SKYEDGE_TUF_KEYS), the new
    objects and the channel pointer are then signed into the TUF metadata devices trust
    (`skyedge.release.tuf`), timestamp last; a retry finishes an interrupted signing. `rollout`
    ({percent: P} and/or {devices: [ids]}) makes the release a staged rollout on the pointer.

    The package is verified first (file hashes always; the signature too given `public_key`).
    Refused: a version not newer than the channel's current one (unless `force`), a version the
    gate or an operator refused (unless `override` = {by, reason, at}: stored as override.json),
    a version whose stored objects differ from this package, and on a store devices trust through
    TUF, any publish without the keys. Publishing what is already published is a
    no-op that reports status 'unchanged'. Returns {status, channel, version, pointer, objects}.
    """
    check_channel(channel)
    if channel == PREVIOUS:
        raise RegistryError(f"channel {PREVIOUS!r} is kept by publish and rollback; publish to {PRODUCTION!r}")
    if decision is not None:
        decision = check_decision(decision)
    if rollout is not None:
        rollout = check_rollout(rollout)
    keys = tuf_keys(keys)
    require_keys(store, keys, "publish")
    package_dir = Path(package_dir)
    manifest_bytes, document = _local_package(package_dir, public_key)
    version, manifest_sha = document["version"], _sha256(manifest_bytes)
    refusal = read_refusal(store, version)
    if refusal is not None and override is None:
        raise RegistryError(
            f"version {version} was refused by {refusal['by']} at {refusal['refused_at']} ({refusal['reason']}): "
            "publish it anyway only with --force and a --reason, which is stored with the version"
        )

    current = read_channel(store, channel)
    already = current is not None and _ref(current) == {"version": version, "manifest_sha256": manifest_sha}
    if current is not None and not already and version <= current["version"] and not force:
        raise RegistryError(
            f"version {version} is not newer than {channel}'s version {current['version']}: "
            "versions only move forward (use rollback, or force to override)"
        )

    # 1. Immutable objects, manifest.json last: its presence marks the version complete.
    uploads: list[tuple[str, int, str, Any]] = []
    for entry in document["files"]:
        path = package_dir / entry["path"]
        uploads.append((entry["path"], entry["size_bytes"], entry["sha256"], lambda k, p=path: store.put_file(k, p)))
    if decision is not None:
        data = _json_bytes(decision)
        uploads.append((DECISION_FILE, len(data), _sha256(data), lambda k, d=data: store.put_bytes(k, d)))
    if override is not None:
        data = _json_bytes({**override, "refusal": refusal})
        uploads.append((OVERRIDE_FILE, len(data), _sha256(data), lambda k, d=data: store.put_bytes(k, d)))
    for base, delta in _deltas(store, version, package_dir / mf.MODEL_FILE, delta_bases):
        name = delta_key(version, base).removeprefix(model_key(version, ""))
        uploads.append((name, len(delta), _sha256(delta), lambda k, d=delta: store.put_bytes(k, d)))
    sig_path = package_dir / mf.SIGNATURE_FILE
    sig_data = sig_path.read_bytes()
    uploads.append((mf.SIGNATURE_FILE, len(sig_data), _sha256(sig_data), lambda k, d=sig_data: store.put_bytes(k, d)))
    uploads.append((mf.MANIFEST_FILE, len(manifest_bytes), manifest_sha, lambda k, d=manifest_bytes: store.put_bytes(k, d)))
    objects = {}
    for name, size, sha, put in uploads:
        key = model_key(version, name)
        objects[name] = _put_immutable(store, key, size, sha, lambda put=put, key=key: put(key))

    if already:
        result = {"status": "unchanged", "channel": channel, "version": version, "pointer": current, "objects": objects}
        if keys is not None:
            result["tuf"] = _sign_tuf(store, keys, version, [channel, PREVIOUS] if channel == PRODUCTION else [channel])
        return result

    # 2. Keep the production pointer we are about to replace (same value on a retry: production
    # has not moved yet). 3. Move the pointer: the one write that makes the release visible.
    if channel == PRODUCTION and current is not None:
        _write_pointer(store, PREVIOUS, current)
    pointer = {
        "schema_version": POINTER_SCHEMA_VERSION,
        "channel": channel,
        "name": document["name"],
        "version": version,
        "version_label": document.get("version_label") or document.get("semver"),
        "manifest_sha256": manifest_sha,
        "published_at": _now(),
        "action": "publish",
        "previous": _ref(current),
    }
    if decision is not None:
        pointer["decision"] = {"reviewer": decision["reviewer"], "decided_at": decision["decided_at"], "sha256": _sha256(_json_bytes(decision))}
    if rollout is not None:
        pointer["rollout"] = rollout
    _write_pointer(store, channel, pointer)
    result = {"status": "published", "channel": channel, "version": version, "pointer": pointer, "objects": objects}
    if keys is not None:  # 4. sign for devices (TUF): they see the release only from here on
        result["tuf"] = _sign_tuf(store, keys, version, [channel, PREVIOUS] if channel == PRODUCTION else [channel])
    return result


def in_cohort(device_id: str, pointer: dict[str, Any]) -> bool:
    """Whether a staged rollout on this channel pointer includes the device.

    `rollout: {percent: P}` takes the devices whose hash of (channel, version, id) falls in the
    first P% (widening P keeps everyone already in); `rollout: {devices: [ids]}` lists them; both
    together are a union. No rollout field: every device.
    """
    rollout = pointer.get("rollout")
    if not rollout:
        return True
    if device_id in (rollout.get("devices") or []):
        return True
    percent = rollout.get("percent")
    if percent is None:
        return False
    digest = hashlib.sha256(f"{pointer.get('channel')}:{pointer['version']}:{device_id}".encode()).hexdigest()
    return int(digest[:8], 16) % 10000 < float(percent) * 100


def expected_version(pointer: dict[str, Any], device_id: str) -> int | None:
    """The version a device on this channel should run: the pointer's, or (outside a staged
    rollout's cohort) the one it replaced."""
    if in_cohort(device_id, pointer):
        return pointer["version"]
    return (pointer.get("previous") or {}).get("version")


def check_rollout(rollout: Any) -> dict[str, Any]:
    """A staged rollout: {percent: 0..100} of devices by hash of their id, and/or {devices: [ids]}."""
    if not isinstance(rollout, dict) or not rollout or set(rollout) - {"percent", "devices"}:
        raise RegistryError(f"rollout must be an object with percent and/or devices, got {rollout!r}")
    percent = rollout.get("percent")
    if percent is not None and (isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent <= 100):
        raise RegistryError(f"rollout.percent must be a number from 0 to 100, got {percent!r}")
    devices = rollout.get("devices")
    if devices is not None and (not isinstance(devices, list) or not all(isinstance(d, str) and d for d in devices)):
        raise RegistryError(f"rollout.devices must be a list of device ids, got {devices!r}")
    return dict(rollout)


def set_rollout(store: Store, channel: str, rollout: dict[str, Any] | None, keys: Path | str | None = None) -> dict[str, Any]:
    """Widen, narrow or end (None) the staged rollout of the release a channel points to."""
    check_channel(channel)
    current = read_channel(store, channel)
    if current is None:
        raise RegistryError(f"channel {channel!r} has never been published: nothing to roll out")
    pointer = {k: v for k, v in current.items() if k != "rollout"}
    if rollout is not None:
        pointer["rollout"] = check_rollout(rollout)
    pointer["published_at"] = _now()
    keys = tuf_keys(keys)
    require_keys(store, keys, "rollout change")
    _write_pointer(store, channel, pointer)
    if keys is not None:
        _sign_tuf(store, keys, pointer["version"], [channel])
    return pointer


def tuf_keys(keys: Path | str | None) -> Path | None:
    """The TUF keys directory given, else $SKYEDGE_TUF_KEYS, else None."""
    if keys is None:
        keys = os.environ.get("SKYEDGE_TUF_KEYS", "").strip() or None
    return Path(keys) if keys is not None else None


def signs_for_devices(store: Store) -> bool:
    """Whether devices trust this store through TUF metadata (someone published with keys)."""
    from skyedge.release import tuf

    return store.exists(tuf.metadata_key("timestamp.json"))


def require_keys(store: Store, keys: Path | None, action: str) -> None:
    """Refuse, before writing anything, a change devices would never see: on a store with TUF
    metadata, a pointer moved without re-signing is ignored by every device (it reports
    up-to-date on the old release)."""
    if keys is None and signs_for_devices(store):
        raise RegistryError(
            f"{store.url}: devices trust this store's TUF metadata, so a {action} without the TUF keys would never reach them: "
            "pass --keys KEYS (the `skyedge keys init` directory) or set SKYEDGE_TUF_KEYS"
        )


def check_writable(store: Store) -> None:
    """Write, read back and delete a probe object: a store that cannot be written (missing bucket,
    denied, read-only directory) fails here, before any work, in one line."""
    key = f"{PROBES}/{uuid.uuid4().hex}.txt"
    data = f"skyedge write check {_now()}\n".encode()
    try:
        store.put_bytes(key, data)
        if store.get_bytes(key) != data:
            raise RegistryError(f"{store.describe(key)}: read back different bytes than written")
    finally:
        try:
            store.delete(key)
        except StoreError:
            pass


def record_refusal(store: Store, version: int, by: str, reason: str) -> dict[str, Any]:
    """Remember that the gate or an operator refused `version`, so a hand publish says so."""
    record = {"version": int(version), "by": by, "reason": reason, "refused_at": _now()}
    store.put_bytes(f"{REFUSALS}/{int(version)}.json", _json_bytes(record))
    return record


def read_refusal(store: Store, version: int) -> dict[str, Any] | None:
    try:
        return json.loads(store.get_bytes(f"{REFUSALS}/{int(version)}.json", max_bytes=MAX_POINTER_BYTES))
    except NotFound:
        return None


def _sign_tuf(store: Store, keys: Path, version: int, channels: list[str]) -> dict[str, Any]:
    """Sign version's objects (as stored and read back) and the channels' pointers into TUF."""
    from skyedge.release import tuf

    manifest_bytes, document = _read_manifest(store, version)
    files = {model_key(version, e["path"]): (e["size_bytes"], e["sha256"]) for e in document["files"]}
    files[model_key(version, mf.MANIFEST_FILE)] = (len(manifest_bytes), _sha256(manifest_bytes))
    files[model_key(version, mf.SIGNATURE_FILE)] = store.stat_sha256(model_key(version, mf.SIGNATURE_FILE))
    files.update(delta_objects(store, version))
    pointers = {}
    for name in channels:
        try:
            pointers[name] = store.get_bytes(channel_key(name), max_bytes=MAX_POINTER_BYTES)
        except NotFound:
            continue
    try:
        return tuf.sign_targets(store, keys, files, pointers)
    except tuf.TrustError as exc:
        raise RegistryError(f"TUF signing: {exc}") from exc


# --- rollback ---------------------------------------------------------------------------------


def rollback(store: Store, channel: str = PRODUCTION, keys: Path | str | None = None) -> dict[str, Any]:
    """Re-point `channel` to the release it replaced, in one pointer write.

    For production the target is channels/previous.json, which then becomes the release rolled
    back from (so a second rollback undoes the first); for other channels it is the pointer's own
    `previous`. The target is verified (every object read back) before the pointer moves.
    Returns {channel, version, rolled_back_from, pointer}.
    """
    check_channel(channel)
    if channel == PREVIOUS:
        raise RegistryError(f"cannot roll back the {PREVIOUS!r} channel itself")
    keys = tuf_keys(keys)
    require_keys(store, keys, "rollback")
    current = read_channel(store, channel)
    if current is None:
        raise RegistryError(f"channel {channel!r} has never been published: nothing to roll back")
    if channel == PRODUCTION:
        previous = read_channel(store, PREVIOUS)
        target = _ref(previous)
        if target is not None and target == _ref(current):
            # Either a publish stopped after writing previous.json (then previous.json is a
            # verbatim copy of production: retry the publish), or a rollback stopped after its
            # pointer write (previous.json still names the release it moved to): finish that.
            undone = current.get("rolled_back_from") if current.get("action") == "rollback" else None
            if undone is not None and previous != current:
                _write_pointer(store, PREVIOUS, undone)
                return {"channel": channel, "version": current["version"], "rolled_back_from": undone["version"], "pointer": current}
            raise RegistryError(f"{PREVIOUS} is version {target['version']}, which production already runs: nothing to roll back to")
    else:
        target = current.get("previous")
    if target is None:
        raise RegistryError(f"channel {channel!r} has no previous version to roll back to")

    document = verify_version(store, target["version"], target["manifest_sha256"])
    undone = {k: v for k, v in current.items() if k not in ("previous", "rolled_back_from")}
    pointer = {
        "schema_version": POINTER_SCHEMA_VERSION,
        "channel": channel,
        "name": document["name"],
        "version": target["version"],
        "version_label": document.get("version_label") or document.get("semver"),
        "manifest_sha256": target["manifest_sha256"],
        "published_at": _now(),
        "action": "rollback",
        # Full copy, so an interrupted rollback can finish from this pointer alone.
        "rolled_back_from": undone,
        "previous": _ref(current),
    }
    _write_pointer(store, channel, pointer)  # the rollback: one write
    if channel == PRODUCTION:
        _write_pointer(store, PREVIOUS, undone)
    result = {"channel": channel, "version": target["version"], "rolled_back_from": current["version"], "pointer": pointer}
    if keys is not None:  # devices accept this older version: the signed pointer says rollback
        result["tuf"] = _sign_tuf(store, keys, target["version"], [channel, PREVIOUS] if channel == PRODUCTION else [channel])
    return result


# --- show / fetch -----------------------------------------------------------------------------


def show(store: Store) -> dict[str, Any]:
    """Channels and versions as stored: {channels: {name: pointer}, versions: [...]}.

    A version is `complete` when its manifest.json (written last) and every object the manifest
    lists are present with the listed sizes; this is a listing check, `verify_version` hashes.
    """
    channels = list_channels(store)
    by_version: dict[int, set[str]] = {}
    for key in store.list(f"{MODELS}/"):
        parts = key.split("/")
        if len(parts) == 3 and parts[1].isdigit():
            by_version.setdefault(int(parts[1]), set()).add(parts[2])
    versions = []
    for version in sorted(by_version):
        names = by_version[version]
        row: dict[str, Any] = {
            "version": version,
            "objects": sorted(names),
            "channels": sorted(c for c, p in channels.items() if p["version"] == version),
            "complete": False,
            "name": None,
            "version_label": None,
            "created_at": None,
            "size_bytes": None,
            "decision": None,
            "problem": None,
        }
        try:
            manifest_bytes, document = _read_manifest(store, version)
            row.update(name=document["name"], version_label=document.get("version_label") or document.get("semver"), created_at=document["created_at"])
            sizes = {name: store.head(model_key(version, name)) for name in names}
            missing = [n for n, _, _ in _version_objects(document) if n not in names]
            wrong = [n for n, size, _ in _version_objects(document) if n in names and size is not None and sizes[n] != size]
            row["size_bytes"] = sum(sizes.values())
            row["complete"] = not missing and not wrong
            if missing or wrong:
                row["problem"] = "; ".join([*(f"{n} missing" for n in missing), *(f"{n} wrong size" for n in wrong)])
            if DECISION_FILE in names:
                row["decision"] = json.loads(store.get_bytes(model_key(version, DECISION_FILE), max_bytes=MAX_POINTER_BYTES))
        except (RegistryError, NotFound) as exc:
            row["problem"] = "incomplete upload (no manifest.json)" if mf.MANIFEST_FILE not in names else str(exc)
        versions.append(row)
    return {"store": store.url, "channels": channels, "versions": versions}


def resolve(store: Store, version_or_channel: int | str) -> tuple[int, str | None]:
    """(version, expected manifest sha256 or None) for a version number or a channel name."""
    if isinstance(version_or_channel, int) or str(version_or_channel).isdigit():
        return int(version_or_channel), None
    pointer = read_channel(store, str(version_or_channel))
    if pointer is None:
        raise RegistryError(f"channel {version_or_channel!r} has never been published in {store.url}")
    return pointer["version"], pointer["manifest_sha256"]


def fetch_version(
    store: Store, version_or_channel: int | str, dest_dir: Path, public_key: Ed25519PublicKey | None = None
) -> Path:
    """Download a published package into `dest_dir` (absent or empty) and verify it; returns dest_dir.

    Hashes are always checked (and the manifest against the channel pointer when fetching by
    channel); the signature too when `public_key` is given. The files land in a temporary sibling
    first, so `dest_dir` only ever holds a verified package. Used by the gate to pull the champion.
    """
    version, expected_sha = resolve(store, version_or_channel)
    dest_dir = Path(dest_dir)
    if dest_dir.exists() and (not dest_dir.is_dir() or any(dest_dir.iterdir())):
        raise RegistryError(f"{dest_dir}: destination exists and is not an empty directory")
    manifest_bytes, document = _read_manifest(store, version, expected_sha)
    tmp = dest_dir.with_name(f".{dest_dir.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir(parents=True)
    try:
        for name, size, sha in _version_objects(document):
            key = model_key(version, name)
            try:
                stored = store.head(key)
            except NotFound as exc:
                raise RegistryError(f"version {version}: {key} missing") from exc
            if size is not None and stored != size:  # refuse before downloading more than declared
                raise RegistryError(f"version {version}: {key} is {stored} bytes, manifest says {size}")
            path = store.get_file(key, tmp / name)
            if size is not None and (path.stat().st_size != size or mf.sha256_file(path) != sha):
                raise RegistryError(
                    f"version {version}: {key} sha256 mismatch (expected {sha[:12]}…, got {mf.sha256_file(path)[:12]}…): "
                    "the stored object is corrupted"
                )
        if store.exists(model_key(version, DECISION_FILE)):
            store.get_file(model_key(version, DECISION_FILE), tmp / DECISION_FILE)
        (tmp / mf.MANIFEST_FILE).write_bytes(manifest_bytes)
        if public_key is not None:
            try:
                mf.verify_package(tmp, public_key)
            except mf.PackageError as exc:
                raise RegistryError(f"version {version}: {exc}") from exc
        if dest_dir.exists():
            dest_dir.rmdir()
        os.replace(tmp, dest_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest_dir

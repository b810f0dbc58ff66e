"""TUF repository metadata for the model registry (python-tuf's Metadata API), and its keys.

Layout in the store, beside the registry's (ARCHITECTURE §6):

    tuf/metadata/root.json, <n>.root.json    the trusted root (public keys + thresholds)
    tuf/metadata/<n>.targets.json            every signed object: path -> length + sha256
    tuf/metadata/<n>.snapshot.json           which targets version belongs to this release
    tuf/metadata/timestamp.json              which snapshot is current; short expiry (freeze)
    tuf/targets/channels/<sha256>.<c>.json   immutable copies of the channel pointers

Targets are the registry's own keys (`models/<v>/model.onnx`, …, `channels/production.json`), so a
device checks every byte it installs, the channel pointer included, against signed metadata.
Channel pointers are mutable in `channels/`, so the signed copy a device fetches lives at a
content-addressed key (TUF's consistent-snapshot convention) and a publish in flight never makes
a pointer disagree with the metadata a device already holds. Timestamp is written last: the one
write that makes a release visible to devices, as the channel pointer is for the registry.

Keys (`init_keys`): the `root` folder inside KEYS holds the root keys (offline: only `keys init` reads them; keep
that folder off the publishing machine once the root is signed), KEYS/online/ the targets,
snapshot and timestamp keys that publish uses, KEYS/root.json the signed root a device is
provisioned with, KEYS/config.json the expiry periods. Nothing of KEYS is uploaded but root.json.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from skyedge.release import signing
from skyedge.release.store import NotFound, Store

KEYS_ENV_VAR = "SKYEDGE_TUF_KEYS"
METADATA_PREFIX = "tuf/metadata"
POINTER_PREFIX = "tuf/targets"
CHANNELS_PREFIX = "channels/"
ONLINE_ROLES = ("targets", "snapshot", "timestamp")
DEFAULT_EXPIRY = {"root": "365d", "targets": "90d", "snapshot": "30d", "timestamp": "7d"}
MAX_METADATA_BYTES = 5_000_000
_DURATION_RE = re.compile(r"^(-?\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class TrustError(ValueError):
    """Keys or TUF metadata could not be created, loaded or updated; the message says which."""


def parse_duration(text: str | int) -> int:
    """'7d', '12h', '30m', '45s' or a number of seconds -> seconds."""
    match = _DURATION_RE.match(str(text).strip())
    if not match:
        raise TrustError(f"duration {text!r}: use a number of seconds or N followed by s, m, h or d (e.g. 7d)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def metadata_key(filename: str) -> str:
    return f"{METADATA_PREFIX}/{filename}"


def object_key(target_path: str, sha256: str) -> str:
    """Where the bytes of a signed target live in the store.

    Model objects are immutable at their own keys; a channel pointer changes in place, so its
    signed copy is content-addressed under tuf/targets/.
    """
    if target_path.startswith(CHANNELS_PREFIX):
        name = target_path[len(CHANNELS_PREFIX) :]
        return f"{POINTER_PREFIX}/channels/{sha256}.{name}"
    return target_path


def keys_dir_from_env() -> Path | None:
    value = os.environ.get(KEYS_ENV_VAR, "").strip()
    return Path(value) if value else None


def _expires(seconds: int, now: datetime | None = None) -> datetime:
    now = now or datetime.now(timezone.utc)
    return (now + timedelta(seconds=seconds)).replace(microsecond=0)


def _signer(path: Path) -> CryptoSigner:
    key = signing.load_private_key(path)
    return CryptoSigner(key, SSlibKey.from_crypto(key.public_key(), scheme="ed25519"))


def _bytes(md: Metadata) -> bytes:
    return md.to_bytes(JSONSerializer(compact=False))


def init_keys(
    keys_dir: Path,
    threshold: int = 1,
    root_keys: int | None = None,
    expiry: dict[str, str | int] | None = None,
) -> Path:
    """Create the signing keys and the signed root metadata under `keys_dir`; returns root.json.

    `threshold` root signatures out of `root_keys` (default: as many as the threshold) are needed
    to trust a root. Refuses to overwrite an existing KEYS/root.json: a new root is a new trust
    anchor every device would have to be re-provisioned with.
    """
    keys_dir = Path(keys_dir)
    root_json = keys_dir / "root.json"
    if root_json.exists():
        raise TrustError(f"{root_json} already exists: keys are created once (devices trust this root)")
    root_keys = threshold if root_keys is None else root_keys
    if threshold < 1 or root_keys < threshold:
        raise TrustError(f"root threshold {threshold} of {root_keys} keys: need 1 <= threshold <= keys")
    periods = {**DEFAULT_EXPIRY, **(expiry or {})}
    unknown = sorted(set(periods) - set(DEFAULT_EXPIRY))
    if unknown:
        raise TrustError(f"expiry for unknown roles {unknown}: roles are {sorted(DEFAULT_EXPIRY)}")
    seconds = {role: parse_duration(v) for role, v in periods.items()}
    if any(s <= 0 for s in seconds.values()):
        raise TrustError(f"expiry periods must be positive, got {periods}")

    root = Root(expires=_expires(seconds["root"]), consistent_snapshot=True)
    root_signers = []
    for i in range(1, root_keys + 1):
        signer = _signer_for(keys_dir / "root" / f"root-{i}.pem")
        root.add_key(signer.public_key, "root")
        root_signers.append(signer)
    root.roles["root"].threshold = threshold
    for role in ONLINE_ROLES:
        root.add_key(_signer_for(keys_dir / "online" / f"{role}.pem").public_key, role)
    md = Metadata(root)
    for signer in root_signers:
        md.sign(signer, append=True)
    (keys_dir / "config.json").write_text(json.dumps({"expiry_seconds": seconds, "root_threshold": threshold}, indent=2) + "\n")
    root_json.write_bytes(_bytes(md))
    return root_json


def _signer_for(path: Path) -> CryptoSigner:
    """Create (0600, never overwritten) or load the ed25519 key at `path`."""
    signing.load_or_create_private_key(path)
    return _signer(path)


class Keys:
    """The online keys and the root of a KEYS directory: what publish needs, and no more."""

    def __init__(self, keys_dir: Path) -> None:
        self.dir = Path(keys_dir)
        root_json = self.dir / "root.json"
        if not root_json.is_file():
            raise TrustError(f"{root_json}: no TUF root here; create keys with `skyedge keys init --dir {self.dir}`")
        self.root_bytes = root_json.read_bytes()
        self.root = Metadata[Root].from_bytes(self.root_bytes)
        config = json.loads((self.dir / "config.json").read_text())
        self.expiry: dict[str, int] = config["expiry_seconds"]
        self.signers: dict[str, CryptoSigner] = {}
        for role in ONLINE_ROLES:
            path = self.dir / "online" / f"{role}.pem"
            try:
                signer = _signer(path)
            except signing.SigningError as exc:
                raise TrustError(f"{role} key: {exc}") from exc
            if signer.public_key.keyid not in self.root.signed.roles[role].keyids:
                raise TrustError(f"{path}: this {role} key is not one the root in {root_json} trusts")
            self.signers[role] = signer

    def sign(self, role: str, signed: Any) -> bytes:
        md = Metadata(signed)
        md.sign(self.signers[role])
        return _bytes(md)


def _load(store: Store, key: str, cls: type, root: Metadata[Root], role: str) -> Any | None:
    """Metadata stored at `key`, verified with our own root; None when absent."""
    try:
        data = store.get_bytes(key, max_bytes=MAX_METADATA_BYTES)
    except NotFound:
        return None
    md = Metadata[cls].from_bytes(data)
    try:
        root.verify_delegate(role, md)
    except Exception as exc:  # UnsignedMetadataError: someone else wrote it
        raise TrustError(f"{store.describe(key)}: not signed by this repository's {role} key ({exc})") from exc
    return md


def current(store: Store, keys: Keys) -> tuple[Timestamp | None, Snapshot | None, Targets | None]:
    """The signed timestamp, snapshot and targets that devices currently see (None before the first)."""
    ts = _load(store, metadata_key("timestamp.json"), Timestamp, keys.root, "timestamp")
    if ts is None:
        return None, None, None
    snap_version = ts.signed.snapshot_meta.version
    snap = _load(store, metadata_key(f"{snap_version}.snapshot.json"), Snapshot, keys.root, "snapshot")
    if snap is None:
        raise TrustError(f"timestamp names snapshot version {snap_version}, which is missing from {store.url}")
    targets_version = snap.signed.meta["targets.json"].version
    targets = _load(store, metadata_key(f"{targets_version}.targets.json"), Targets, keys.root, "targets")
    if targets is None:
        raise TrustError(f"snapshot names targets version {targets_version}, which is missing from {store.url}")
    return ts.signed, snap.signed, targets.signed


def _put_root(store: Store, keys: Keys) -> None:
    version = keys.root.signed.version
    for key in (metadata_key(f"{version}.root.json"), metadata_key("root.json")):
        try:
            if store.get_bytes(key, max_bytes=MAX_METADATA_BYTES) == keys.root_bytes:
                continue
        except NotFound:
            pass
        store.put_bytes(key, keys.root_bytes)


def sign_targets(
    store: Store,
    keys_dir: Path,
    files: dict[str, tuple[int, str]],
    pointers: dict[str, bytes] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Add `files` (target path -> (length, sha256)) and channel `pointers` (name -> bytes) to the
    signed targets and publish new targets, snapshot and timestamp metadata, timestamp last.

    Entries already signed with the same length and hash are left alone; when nothing changes,
    nothing is written (a retried publish is a no-op). Returns {status, targets_version, …}.
    """
    keys = Keys(keys_dir)
    _put_root(store, keys)
    ts, snap, targets = current(store, keys)
    wanted: dict[str, TargetFile] = {}
    for path, (length, sha) in files.items():
        wanted[path] = TargetFile(length, {"sha256": sha}, path)
    for name, data in (pointers or {}).items():
        path = f"{CHANNELS_PREFIX}{name}.json"
        target = TargetFile.from_data(path, data, ["sha256"])
        wanted[path] = target
        copy_key = object_key(path, target.hashes["sha256"])
        if not store.exists(copy_key):
            store.put_bytes(copy_key, data)
        if store.get_bytes(copy_key, max_bytes=MAX_METADATA_BYTES) != data:
            raise TrustError(f"{store.describe(copy_key)}: read-back differs from the pointer being signed")
    existing = dict(targets.targets) if targets is not None else {}
    changed = {p: t for p, t in wanted.items() if existing.get(p) != t}
    if not changed and ts is not None:
        return {"status": "unchanged", "targets_version": targets.version, "timestamp_version": ts.version}

    now = now or datetime.now(timezone.utc)
    new_targets = Targets(
        version=(targets.version + 1) if targets else 1,
        expires=_expires(keys.expiry["targets"], now),
        targets={**existing, **changed},
    )
    snapshot = Snapshot(
        version=(snap.version + 1) if snap else 1,
        expires=_expires(keys.expiry["snapshot"], now),
        meta={"targets.json": MetaFile(version=new_targets.version)},
    )
    # A crash before timestamp.json leaves these two unreferenced: devices never see them, and
    # the retry writes the same version numbers again.
    store.put_bytes(metadata_key(f"{new_targets.version}.targets.json"), keys.sign("targets", new_targets))
    store.put_bytes(metadata_key(f"{snapshot.version}.snapshot.json"), keys.sign("snapshot", snapshot))
    timestamp = _write_timestamp(store, keys, snapshot.version, ts, keys.expiry["timestamp"], now)
    return {"status": "signed", "targets_version": new_targets.version, "snapshot_version": snapshot.version, "timestamp_version": timestamp.version, "changed": sorted(changed)}


def _write_timestamp(store: Store, keys: Keys, snapshot_version: int, previous: Timestamp | None, seconds: int, now: datetime) -> Timestamp:
    timestamp = Timestamp(
        version=(previous.version + 1) if previous else 1,
        expires=_expires(seconds, now),
        snapshot_meta=MetaFile(version=snapshot_version),
    )
    store.put_bytes(metadata_key("timestamp.json"), keys.sign("timestamp", timestamp))
    return timestamp


def refresh_timestamp(store: Store, keys_dir: Path, expiry: str | int | None = None, now: datetime | None = None) -> Timestamp:
    """Re-sign timestamp.json (same snapshot, next version, new expiry): run it more often than
    the timestamp expiry, or devices rightly refuse the stale metadata (freeze protection)."""
    keys = Keys(keys_dir)
    ts, _, _ = current(store, keys)
    if ts is None:
        raise TrustError(f"{store.url}: no TUF metadata yet: publish with --keys first")
    seconds = keys.expiry["timestamp"] if expiry is None else parse_duration(expiry)
    return _write_timestamp(store, keys, ts.snapshot_meta.version, ts, seconds, now or datetime.now(timezone.utc))

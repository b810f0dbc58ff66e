"""The uplink: every reading the journal holds reaches the store exactly once, signed by the station.

The format, keys and signature envelope are skyedge.core.batches'. What this module adds is the
order of writes that makes "exactly once" hold through days offline, a SIGKILL between any two
writes, a restart, or a store that is down:

1. Plan. The next batch (seq first..last: up to `max_batch` readings after the cursor) is written
   to the journal before anything is sent. A batch's key is a function of first and last, so a
   run cut short must resend *that* batch, not a longer one formed from readings taken since:
   two overlapping keys would hold a reading twice.
2. Photos. Each photo of the batch is PUT to `devices/<id>/observations/photos/<seq><ext>`, then
   marked uploaded (and removed from the buffer). A kill in between re-PUTs the same bytes to the
   same key: harmless.
3. Commit. The signed batch object is PUT last; its appearance in the store is the commit (its
   photos are already there). Only after the PUT succeeded does the journal advance the cursor
   past `last` and clear the plan, in one transaction. A kill in between re-PUTs the same batch to
   the same key: the store still holds each reading once. (ed25519 signatures are deterministic,
   so the bytes are the same unless the buffer dropped a photo meanwhile, and then the newer
   document is the true one.)

Readings are numbered by the journal without gaps and never deleted, and a batch covers exactly
cursor+1..last, so nothing is skipped either. A storage failure (unreachable, access denied,
missing bucket) stops the run where it is: the batch stays in flight, the reason and the advice
go to the journal (status.json's `uplink`), and the next cycle resumes from the same step.

Provisioning makes the device's own ed25519 key (`<state>/device_key.pem`, 0600, never leaves
the station) and the registration the operator uploads to `devices/<id>/device.json`
(`<state>/device.json` keeps a copy): the fleet ingest accepts a batch only under its signature.

Test hook: SKYEDGE_UPLINK_TEST_KILL_AFTER_PUT=k makes the uploader SIGKILL itself right after
its k-th successful PUT, as a power cut would (the tests kill it after every step).
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from skyedge.core import batches, s3
from skyedge.core.files import atomic_write
from skyedge.device.journal import Journal
from skyedge.release import signing

KILL_ENV_VAR = "SKYEDGE_UPLINK_TEST_KILL_AFTER_PUT"
KEY_FILE = "device_key.pem"
REGISTRATION_FILE = "device.json"
LOCAL_IO = "local-io"


@dataclass(frozen=True)
class Identity:
    """Who the station uploads as: its device id, its station, its signing key."""

    device_id: str
    station_id: str
    private_key: Ed25519PrivateKey


@dataclass(frozen=True)
class UploadResult:
    """One `upload_pending` run: the batches it committed, and why it stopped if not caught up."""

    batches: list[str]  # keys of the batch objects committed in this run
    readings: int  # readings they hold
    pending: int  # readings still waiting for the store
    reason: str | None  # None: caught up; else the failure kind (skyedge.core.s3, or local-io)
    error: str | None  # what failed and what to check


def provision(state_dir: Path, device_id: str, station_id: str) -> bytes:
    """Make the station's upload key (once) and return its registration for devices/<id>/device.json.

    Running it again returns the same registration; asking for another device or station id
    is refused, since a new key would orphan the one the operator registered."""
    state_dir = Path(state_dir)
    batches.check_device_id(device_id)
    if not station_id:
        raise ValueError("a station id is required: batches speak for one station")
    registration_path = state_dir / REGISTRATION_FILE
    if registration_path.exists():
        known = load_identity(state_dir)
        if (known.device_id, known.station_id) != (device_id, station_id):
            raise ValueError(
                f"{registration_path}: this state is provisioned as device {known.device_id!r} of station {known.station_id!r}, "
                f"not {device_id!r} of {station_id!r}; use another state directory for another device"
            )
        return registration_path.read_bytes()
    key = signing.load_or_create_private_key(state_dir / KEY_FILE)  # 0600 from its creation
    registration = batches.registration(device_id, station_id, key.public_key())
    atomic_write(registration_path, lambda handle: handle.write(registration))
    return registration


def load_identity(state_dir: Path) -> Identity:
    """The provisioned identity; ValueError naming the file when it is missing or does not match
    the key beside it."""
    state_dir = Path(state_dir)
    registration_path = state_dir / REGISTRATION_FILE
    try:
        data = registration_path.read_bytes()
        device_id = str(json.loads(data)["device_id"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{registration_path}: not provisioned for uploads ({exc}); run provision first") from exc
    station_id, public_key = batches.parse_registration(data, device_id)
    private_key = signing.load_private_key(state_dir / KEY_FILE)
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    if private_key.public_key().public_bytes(*raw) != public_key.public_bytes(*raw):
        raise ValueError(f"{state_dir / KEY_FILE} is not the key registered in {registration_path}")
    return Identity(device_id, station_id, private_key)


class _Store:
    """PUTs under the store's prefix, counted for the crash-test hook."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client, self.bucket, self.prefix = client, bucket, prefix
        self.puts = 0
        self.kill_after = int(os.environ.get(KILL_ENV_VAR) or 0)

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}{key}", Body=data)
        self.puts += 1
        if self.puts == self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)


def _upload_batch(journal: Journal, store: _Store, identity: Identity, first: int, last: int) -> str:
    """Photos, then the signed batch object, then the cursor (module doc); the batch's key."""
    for photo in journal.photos_to_upload(first, last):
        try:
            data = photo.path.read_bytes()
        except FileNotFoundError:
            journal.photo_lost(photo.seq)  # or dropped by the budget meanwhile: counted either way
            continue
        store.put(batches.photo_key(identity.device_id, photo.seq, photo.suffix), data)
        journal.photo_uploaded(photo.seq)
    contents = journal.batch_contents(first, last)
    photos = [{"seq": p["seq"], "key": batches.photo_key(identity.device_id, p["seq"], p["suffix"]), "sha256": p["sha256"], "bytes": p["bytes"]} for p in contents.photos]
    document = batches.batch_document(identity.device_id, identity.station_id, contents.rows, photos, contents.dropped_photos)
    key = batches.batch_key(identity.device_id, first, last)
    store.put(key, batches.seal(document, identity.private_key))
    journal.commit_batch(first, last)
    return key


def upload_pending(journal: Journal, client: Any, bucket: str, prefix: str, identity: Identity, max_batch: int) -> UploadResult:
    """Send every reading after the cursor, in batches of at most `max_batch`, until caught up or
    the store fails (then the reason is recorded and the next call resumes where this one stopped).

    client: a boto3 S3 client (skyedge.core.s3.make_client); bucket and prefix: the store's
    (skyedge.core.s3.split_url: prefix empty or ending in "/")."""
    if identity.station_id != journal.station_id:
        raise ValueError(f"device {identity.device_id} is registered for station {identity.station_id!r}, the journal records {journal.station_id!r}")
    store = _Store(client, bucket, prefix)
    committed: list[str] = []
    readings = 0
    reason = error = None
    try:
        while (planned := journal.plan_batch(max_batch)) is not None:
            committed.append(_upload_batch(journal, store, identity, *planned))
            readings += planned[1] - planned[0] + 1
    except s3.client_errors() as exc:
        failure = s3.classify(exc, bucket, getattr(client.meta, "endpoint_url", None))
        reason, error = failure.kind, f"{failure.advice} ({exc})"
    except OSError as exc:
        reason, error = LOCAL_IO, f"{exc}"
    if reason is not None:
        journal.upload_failed(reason, error)
    return UploadResult(committed, readings, journal.uplink_status()["pending"], reason, error)

"""Observation batches: what a station uploads, and how the fleet ingest knows who sent it.

A station uploads its readings in batches under its own prefix of the store:

    devices/<device_id>/device.json                      registration, written by the operator
    devices/<device_id>/observations/photos/<seq>.png    one object per photo, uploaded first
    devices/<device_id>/observations/<first>-<last>.json one signed batch, uploaded last

`seq` is the station's own reading counter (1, 2, 3, ...; zero-padded to 10 digits in keys), so a
batch's key is a pure function of the readings it holds: uploading it again after a crash writes
the same bytes to the same key, and the store ends up holding each reading exactly once. The batch
object is the commit: its photos are already in the store when it appears.

A batch object is an envelope `{"document": {...}, "signature": "<hex>"}`; the signature is ed25519
over `canonical(document)` with the device's own key (made at provisioning, never leaves the
station). The document:

    {"format": "skyedge-observations/1", "device_id": "...", "station_id": "...",
     "first_seq": 1, "last_seq": 24, "rows": [{"seq": 1, <contract columns>...}, ...],
     "photos": [{"seq": 3, "key": "devices/.../photos/0000000003.png", "sha256": "...", "bytes": 123}],
     "dropped_photos": [5, 6]}

`dropped_photos` names readings whose photo the station's bounded buffer gave up (the row is still
here). The registration the operator writes, `{"device_id", "station_id", "public_key": "<hex>"}`,
is what `open_batch` checks a batch against; the bucket policy (README) lets a device write only
under `devices/<its id>/observations/`, never its own registration.

Stdlib and `cryptography` only: stations use this module.
"""

from __future__ import annotations

import json
import re
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FORMAT = "skyedge-observations/1"
PREFIX = "devices/"
SEQ_DIGITS = 10
_BATCH_NAME = re.compile(r"^(\d{10})-(\d{10})\.json$")
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# Rule names a rejected batch is quarantined under (quarantine.csv's `rule` column).
RULE_UNREGISTERED = "batch-device-unregistered"
RULE_MALFORMED = "batch-malformed"
RULE_UNSIGNED = "batch-unsigned"
RULE_BAD_SIGNATURE = "batch-signature-invalid"
RULE_OTHER_DEVICE = "batch-names-another-device"
RULE_OTHER_STATION = "batch-names-another-station"
RULE_PHOTO = "batch-photo-mismatch"


class BatchRejected(ValueError):
    """A batch the fleet ingest must not accept; `rule` names why (for quarantine.csv)."""

    def __init__(self, rule: str, message: str):
        super().__init__(f"{rule}: {message}")
        self.rule = rule


def check_device_id(device_id: str) -> str:
    if not _DEVICE_ID.match(device_id):
        raise ValueError(f"device id {device_id!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return device_id


def device_prefix(device_id: str) -> str:
    return f"{PREFIX}{check_device_id(device_id)}/"


def registration_key(device_id: str) -> str:
    return f"{device_prefix(device_id)}device.json"


def observations_prefix(device_id: str) -> str:
    return f"{device_prefix(device_id)}observations/"


def batch_key(device_id: str, first_seq: int, last_seq: int) -> str:
    return f"{observations_prefix(device_id)}{first_seq:0{SEQ_DIGITS}d}-{last_seq:0{SEQ_DIGITS}d}.json"


def photo_name(seq: int, suffix: str = ".png") -> str:
    """A photo's key relative to the observations prefix, and so to the batch that names it: what a
    row's `image` column holds (the contract's "path relative to the CSV")."""
    return f"photos/{seq:0{SEQ_DIGITS}d}{suffix}"


def photo_key(device_id: str, seq: int, suffix: str = ".png") -> str:
    return f"{observations_prefix(device_id)}{photo_name(seq, suffix)}"


def parse_batch_key(key: str) -> tuple[str, int, int] | None:
    """(device_id, first_seq, last_seq) of a batch object's key, None for any other key."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] + "/" != PREFIX or parts[2] != "observations":
        return None
    match = _BATCH_NAME.match(parts[3])
    return (parts[1], int(match.group(1)), int(match.group(2))) if match else None


def canonical(document: dict[str, Any]) -> bytes:
    """The exact bytes a signature covers: sorted keys, no whitespace, ASCII."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def batch_document(device_id: str, station_id: str, rows: list[dict[str, Any]], photos: list[dict[str, Any]], dropped_photos: list[int]) -> dict[str, Any]:
    """The document of one batch (format above) from rows with consecutive `seq`; ValueError when
    the rows leave a gap or another station speaks in them (the fleet would refuse the batch)."""
    seqs = [row["seq"] for row in rows]
    if not seqs or seqs != list(range(seqs[0], seqs[0] + len(seqs))):
        raise ValueError(f"batch rows must have consecutive seq numbers, got {seqs[:3]}...{seqs[-3:]}")
    others = {row.get("station_id") for row in rows} - {station_id}
    if others:
        raise ValueError(f"rows name station(s) {sorted(map(str, others))}, the batch speaks for {station_id!r}")
    return {
        "format": FORMAT,
        "device_id": check_device_id(device_id),
        "station_id": station_id,
        "first_seq": seqs[0],
        "last_seq": seqs[-1],
        "rows": rows,
        "photos": photos,
        "dropped_photos": dropped_photos,
    }


def seal(document: dict[str, Any], private_key: Ed25519PrivateKey) -> bytes:
    """The batch object's bytes: the document and its signature."""
    signature = private_key.sign(canonical(document)).hex()
    return json.dumps({"document": document, "signature": signature}, sort_keys=True, separators=(",", ":")).encode()


def registration(device_id: str, station_id: str, public_key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return json.dumps({"device_id": check_device_id(device_id), "station_id": station_id, "public_key": raw.hex()}, indent=2).encode()


def parse_registration(data: bytes, device_id: str) -> tuple[str, Ed25519PublicKey]:
    """(station_id, public key) of a device's registration; ValueError naming what is wrong."""
    try:
        doc = json.loads(data)
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(doc["public_key"]))
        station_id = str(doc["station_id"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{registration_key(device_id)}: not a device registration ({exc})") from exc
    if doc.get("device_id") != device_id:
        raise ValueError(f"{registration_key(device_id)}: registers {doc.get('device_id')!r}, not {device_id!r}")
    return station_id, key


def open_batch(data: bytes, device_id: str, station_id: str, public_key: Ed25519PublicKey) -> dict[str, Any]:
    """The document of a batch found under `devices/<device_id>/`, or BatchRejected with its rule.

    `station_id` and `public_key` come from that device's registration: a batch signed with
    another device's key fails the signature, and a correctly signed batch that speaks for another
    device or station is refused too (one station cannot speak for another).
    """
    try:
        envelope = json.loads(data)
        document = envelope["document"]
        if not isinstance(document, dict):
            raise TypeError("document is not an object")
    except (ValueError, KeyError, TypeError) as exc:
        raise BatchRejected(RULE_MALFORMED, f"not a batch envelope ({exc})") from exc
    signature = envelope.get("signature")
    if not signature:
        raise BatchRejected(RULE_UNSIGNED, "the batch carries no signature")
    try:
        public_key.verify(bytes.fromhex(signature), canonical(document))
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise BatchRejected(RULE_BAD_SIGNATURE, f"signature does not verify with {device_id}'s registered key") from exc
    if document.get("format") != FORMAT:
        raise BatchRejected(RULE_MALFORMED, f"format {document.get('format')!r}, expected {FORMAT!r}")
    if document.get("device_id") != device_id:
        raise BatchRejected(RULE_OTHER_DEVICE, f"found under {device_id}/ but names device {document.get('device_id')!r}")
    rows = document.get("rows")
    if not isinstance(rows, list):
        raise BatchRejected(RULE_MALFORMED, "rows is not a list")
    named = {document.get("station_id")} | {row.get("station_id") for row in rows if isinstance(row, dict)}
    if named - {station_id}:
        raise BatchRejected(RULE_OTHER_STATION, f"{device_id} is registered for station {station_id!r} but the batch names {sorted(map(str, named - {station_id}))}")
    return document

"""The fleet as an ingest source: every device's signed observation batches in an S3 store.

The store's layout, the batch envelope, the registration and the rule names are
skyedge.core.batches'. For each device prefix `devices/<id>/` (listed with a delimiter, so photo
objects are never listed) that holds batches `observations/<first>-<last>.json`, in key order:

1. its registration `devices/<id>/device.json` is read; when there is none (or it does not
   parse), every row of each of its batches is quarantined under `batch-device-unregistered`;
2. each batch is opened with `open_batch`, which verifies the signature against the registered
   key and that the batch speaks for its own device and station; a rejection quarantines every
   row of the batch under the rule it names (`batch-unsigned`, `batch-signature-invalid`,
   `batch-names-another-station`, ...), the object's URL as file and the row's `seq` as row. A
   batch that is not JSON at all is one item (row empty);
3. the rows of verified batches become station records (the contract columns as text, `_file` the
   batch's URL, `_row` its seq) and go through the same rules as a CSV's rows, batches gathered
   into chunks of up to read.CHUNK_ROWS rows (a batch is never split, so the whole-file unit rule
   is judged per batch);
4. a row that passes has its photo: the `photos` entry with its seq (else the entry its `image`
   names, relative to the observations prefix as skyedge.core.batches.photo_name writes it). The
   photo is fetched, its size and sha256 checked against the batch (`batch-photo-mismatch`, also
   for a photo outside the device's own prefix, missing from the store or listed without a hash),
   then decoded and validated like any photo. A `photos` entry no row claims is one item,
   quarantined under `batch-photo-mismatch` too.
   Photo and sensors come from the same station and hour: a paired record. As in a folder, a
   photo is one item of its own, counted when its row is accepted; a bad photo never costs the
   row its sensors.

Nothing is mirrored to disk: a batch is fetched, verified, parsed and dropped. The source's report
entry (`fleet`) says what was ingested, so a retrain can tell new fleet data from old: batches and
rows accepted, devices, per device the last sequence number and batch key, the newest record time,
and a sha256 over the accepted batches' keys and ETags. An optional `stations.csv` at the store's
prefix gives the stations' coordinates (station metadata rules as for a folder).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from skyedge.core import batches, s3
from skyedge.core.config import FleetSource
from skyedge.core.contract import IMAGE, REQUIRED_COLUMNS, STATION_METADATA_FILE
from skyedge.data import read, sources, validation


class _Missing(Exception):
    """The object does not exist."""


class _Unavailable(Exception):
    """The object could not be fetched after every attempt."""


def client_for(source: FleetSource):
    """The boto3 client of a `fleet` ingest source (its endpoint/region/profile, else the AWS environment)."""
    return s3.make_client(source.endpoint_url, source.region, source.profile)


class FleetReader:
    """Reads one fleet store into the ingest's intake (module doc); `read()` returns the outcome."""

    def __init__(self, source: FleetSource, client, outcome: read.Outcome, intake, now: pd.Timestamp, runner: validation.SuiteRunner | None,
                 attempts: int, backoff_seconds: float, chunk_rows: int | None = None):
        self.client = client
        self.outcome = outcome
        self.intake = intake
        self.now = now
        self.runner = runner
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.chunk_rows = chunk_rows or read.CHUNK_ROWS
        self.store = source.store
        self.bucket, self.prefix = s3.split_url(source.store)
        self.rules = validation.station_rules(now)
        self._pending: list[pd.DataFrame] = []
        self._pending_rows = 0
        self._photos: dict[str, tuple[str, str | None, int | None, str]] = {}  # photo URL -> (key, sha256, bytes, device) of pending rows
        self._fingerprint = hashlib.sha256()
        self.summary: dict[str, Any] = {"devices": 0, "batches": 0, "batches_quarantined": 0, "rows": 0, "photos": 0, "dropped_photos": 0, "by_device": {}}

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # --- S3 --------------------------------------------------------------------------------

    def _get(self, key: str) -> tuple[bytes, str]:
        """(bytes, ETag) of an object; _Missing when there is none, _Unavailable after the retries."""
        reason = ""
        for attempt in range(self.attempts):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=key)
                return response["Body"].read(), str(response.get("ETag", ""))
            except Exception as error:  # botocore raises many types; s3.classify names each
                failure = s3.classify(error, self.bucket)
                if failure.kind == s3.NOT_FOUND:
                    raise _Missing(key) from error
                reason = f"{type(error).__name__}: {error}"
                if attempt + 1 < self.attempts:
                    time.sleep(self.backoff_seconds * 2**attempt)
        raise _Unavailable(f"{self.attempts} attempts: {reason}"[:200])

    def _list(self, prefix: str) -> tuple[list[str], list[str]]:
        """(object keys, sub-prefixes) directly under prefix, in key order."""
        keys, prefixes = [], []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            keys += [item["Key"] for item in page.get("Contents", [])]
            prefixes += [item["Prefix"] for item in page.get("CommonPrefixes", [])]
        return keys, prefixes

    # --- reading ---------------------------------------------------------------------------

    def read(self) -> read.Outcome:
        sources.check_bucket(self.client, self.store)
        self._read_station_metadata()
        _, devices = self._list(f"{self.prefix}{batches.PREFIX}")
        for device_prefix in tqdm(devices, desc=f"fleet {self.outcome.source}", unit="device", disable=None, leave=False):
            self._read_device(device_prefix[len(self.prefix) + len(batches.PREFIX) :].rstrip("/"))
        self._flush()
        newest = self.intake.newest_us.get(self.outcome.source)
        self.summary["newest_timestamp"] = None if newest is None else pd.Timestamp(newest, unit="us", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
        self.summary["batches_sha256"] = self._fingerprint.hexdigest()
        self.outcome.details["fleet"] = self.summary
        return self.outcome

    def _read_station_metadata(self) -> None:
        key = f"{self.prefix}{STATION_METADATA_FILE}"
        try:
            data, _ = self._get(key)
        except _Missing:
            return
        except _Unavailable as error:
            self.outcome.received += 1
            self.outcome.reject(self.url(key), None, sources.DOWNLOAD_RULE, error)
            return
        local = self.intake.work / f"fleet-{len(self.intake.sources)}-{STATION_METADATA_FILE}"
        local.write_bytes(data)
        read.read_station_metadata_file(local, self.outcome, self.runner, name=self.url(key))

    def _registration(self, device: str) -> tuple[str, Any] | str:
        """(station_id, public key), or why the device counts as unregistered."""
        try:
            key = batches.registration_key(device)
        except ValueError as error:
            return str(error)
        try:
            data, _ = self._get(f"{self.prefix}{key}")
        except _Missing:
            return f"no registration {key}: the operator registers a device before its data is used"
        except _Unavailable as error:
            return f"registration {key} could not be read ({error})"
        try:
            return batches.parse_registration(data, device)
        except ValueError as error:
            return str(error)

    def _read_device(self, device: str) -> None:
        keys, _ = self._list(f"{self.prefix}{batches.PREFIX}{device}/observations/")
        found = [(key, parsed) for key in keys if (parsed := batches.parse_batch_key(key[len(self.prefix) :])) is not None and parsed[0] == device]
        if not found:
            return  # a device prefix without observations (a model-store status, say): nothing received
        registration = self._registration(device)
        accepted = 0
        for key, (_, first, last) in found:
            try:
                data, etag = self._get(key)
            except _Missing:
                continue  # deleted since the listing: not received
            except _Unavailable as error:
                self.outcome.received += 1
                self.outcome.reject(self.url(key), None, sources.DOWNLOAD_RULE, error)
                self.summary["batches_quarantined"] += 1
                continue
            if isinstance(registration, str):
                self._reject_batch(key, data, batches.RULE_UNREGISTERED, registration)
                continue
            station_id, public_key = registration
            try:
                document = batches.open_batch(data, device, station_id, public_key)
            except batches.BatchRejected as error:
                self._reject_batch(key, data, error.rule, str(error))
                continue
            self._accept_batch(key, device, document)
            self._fingerprint.update(f"{key} {etag}\n".encode())
            accepted += 1
            entry = self.summary["by_device"].setdefault(device, {"station_id": station_id, "batches": 0, "last_seq": 0, "latest_batch": ""})
            entry["batches"] += 1
            entry["last_seq"] = max(entry["last_seq"], last)
            entry["latest_batch"] = key
        if accepted:
            self.summary["devices"] += 1

    def _reject_batch(self, key: str, data: bytes, rule: str, message: str) -> None:
        """Every row of a batch under one rule; a batch whose rows cannot be told, one item."""
        self.summary["batches_quarantined"] += 1
        try:
            rows = json.loads(data)["document"]["rows"]
            numbers = [_row_number(row, i) for i, row in enumerate(rows)] if isinstance(rows, list) and rows else [None]
        except (ValueError, KeyError, TypeError):
            numbers = [None]
        for number in numbers:
            self.outcome.received += 1
            self.outcome.reject(self.url(key), number, rule, message)

    def _accept_batch(self, key: str, device: str, document: dict) -> None:
        url = self.url(key)
        observations = f"{batches.PREFIX}{device}/observations/"
        listed: list[dict] = []
        for entry in document.get("photos") or []:
            if isinstance(entry, dict) and isinstance(entry.get("seq"), int) and isinstance(entry.get("key"), str):
                listed.append(entry)
            else:  # a photo entry that names no reading or no object: one item, quarantined
                self.outcome.received += 1
                self.outcome.reject(url, None, batches.RULE_PHOTO, f"photo entry {str(entry)[:80]} names no seq and key")
        by_seq = {entry["seq"]: i for i, entry in enumerate(listed)}
        by_key = {entry["key"]: i for i, entry in enumerate(listed)}
        used: set[int] = set()
        self.summary["dropped_photos"] += len(document.get("dropped_photos") or [])
        records, numbers, images = [], [], []
        for i, row in enumerate(document["rows"]):
            number = _row_number(row, i)
            if not isinstance(row, dict):
                self.outcome.received += 1
                self.outcome.reject(url, number, batches.RULE_MALFORMED, "a row is not an object")
                continue
            # The photo of a reading: the `photos` entry with its seq, else the one its `image`
            # names (relative to the observations prefix, skyedge.core.batches.photo_name).
            name = row.get("image").strip() if isinstance(row.get("image"), str) else ""
            found = by_seq.get(row.get("seq")) if isinstance(row.get("seq"), int) else None
            found = by_key.get(f"{observations}{name}") if found is None and name else found
            image = ""
            if found is not None and found not in used:
                used.add(found)
                photo = listed[found]
                image = self.url(f"{self.prefix}{photo['key']}")
                self._photos[image] = (photo["key"], photo.get("sha256"), photo.get("bytes"), device)
            elif name:  # a photo the batch names without its hash: it cannot be checked
                image = self.url(f"{self.prefix}{observations}{name}")
                self._photos[image] = (f"{observations}{name}", None, None, device)
            records.append([_text(row.get(column)) for column in REQUIRED_COLUMNS])
            numbers.append(number)
            images.append(image)
        for i, photo in enumerate(listed):  # photos of readings the batch does not hold
            if i not in used:
                self.outcome.received += 1
                self.outcome.reject(self.url(f"{self.prefix}{photo['key']}"), photo["seq"], batches.RULE_PHOTO, f"no reading with seq {photo['seq']} in {key}")
        self.summary["batches"] += 1
        self.summary["rows"] += len(records)
        self.summary["photos"] += sum(1 for image in images if image)
        if not records:
            return
        frame = pd.DataFrame(records, columns=list(REQUIRED_COLUMNS), dtype=str)
        frame[IMAGE] = images
        frame["_row"] = np.asarray(numbers, dtype=np.int64)
        frame["_file"] = url
        self.outcome.received += len(frame)
        self._pending.append(frame)
        self._pending_rows += len(frame)
        if self._pending_rows >= self.chunk_rows:
            self._flush()

    def _flush(self) -> None:
        """Validate the gathered batches' rows as one chunk and hand them to the intake."""
        if not self._pending:
            return
        raw = pd.concat(self._pending, ignore_index=True)
        self._pending, self._pending_rows = [], 0
        accepted = read.validate_stations(raw, self.outcome, self.now, self.rules, self.runner)
        self.intake.add_records(accepted, self.outcome, self._load_photo)
        self._photos.clear()

    def _load_photo(self, url: str):
        """A pending row's photo: fetched, checked against the batch's size and sha256, decoded."""
        key, sha256, size, device = self._photos[url]
        if not key.startswith(f"{batches.PREFIX}{device}/observations/") or ".." in key.split("/"):
            return None, {}, (batches.RULE_PHOTO, f"photo {key} is outside {device}'s prefix", url)
        if not sha256:
            return None, {}, (batches.RULE_PHOTO, "the batch lists no sha256 for this photo", url)
        try:
            data, _ = self._get(f"{self.prefix}{key}")
        except _Missing:
            return None, {}, (batches.RULE_PHOTO, "the batch names a photo the store does not hold", url)
        except _Unavailable as error:
            return None, {}, (sources.DOWNLOAD_RULE, str(error), url)
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256 or (size is not None and len(data) != size):
            return None, {}, (batches.RULE_PHOTO, f"{len(data)} bytes, sha256 {digest[:16]}...; the batch says {size} bytes, {sha256[:16]}...", url)
        array, meta = read.inspect_image_bytes(data, len(data), self.intake.image_size)
        return array, meta, None


def _row_number(row: object, position: int) -> int:
    """A batch row's number in the quarantine: its seq, else its 1-based position."""
    seq = row.get("seq") if isinstance(row, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else position + 1


def _text(value: object) -> str:
    """A JSON value as the CSV text the contract rules read."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value)


def snapshot(source: FleetSource, client) -> dict:
    """What the fleet store holds now, from listings only (no object is read): per device, its
    batch count and last batch, and a sha256 over every batch key with its ETag. The `fleet` DVC
    stage writes it, so `dvc repro` re-runs ingest when, and only when, the fleet sent something."""
    bucket, prefix = s3.split_url(source.store)
    sources.check_bucket(client, source.store)
    paginator = client.get_paginator("list_objects_v2")
    devices = [
        item["Prefix"]
        for page in paginator.paginate(Bucket=bucket, Prefix=f"{prefix}{batches.PREFIX}", Delimiter="/")
        for item in page.get("CommonPrefixes", [])
    ]
    fingerprint, by_device = hashlib.sha256(), {}
    for device_prefix in devices:
        device = device_prefix[len(prefix) + len(batches.PREFIX) :].rstrip("/")
        listed = [
            (item["Key"], str(item.get("ETag", "")))
            for page in paginator.paginate(Bucket=bucket, Prefix=f"{device_prefix}observations/", Delimiter="/")
            for item in page.get("Contents", [])
            if batches.parse_batch_key(item["Key"][len(prefix) :]) is not None
        ]
        for key, etag in listed:
            fingerprint.update(f"{key} {etag}\n".encode())
        if listed:
            by_device[device] = {"batches": len(listed), "latest_batch": listed[-1][0]}
    return {"store": source.store, "devices": len(by_device), "batches": sum(d["batches"] for d in by_device.values()), "batches_sha256": fingerprint.hexdigest(), "by_device": by_device}


def read_fleet(source: FleetSource, client, outcome: read.Outcome, intake, now: pd.Timestamp, runner: validation.SuiteRunner | None,
               attempts: int, backoff_seconds: float) -> read.Outcome:
    """Every registered device's batches under source.store into the intake (module doc)."""
    return FleetReader(source, client, outcome, intake, now, runner, attempts, backoff_seconds).read()


"""The uplink (ARCHITECTURE §7) against moto's S3 server over HTTP on 127.0.0.1: every reading a
station took reaches the store exactly once (no gap, no duplicate) after days offline, a SIGKILL
after any PUT, a restart, or a store that is down; batches verify under the device's registered
key; a full buffer drops the oldest photos, keeps the rows, and says so.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from skyedge.core import batches
from skyedge.core.s3 import make_client
from skyedge.device import uplink
from skyedge.device.journal import Journal
from tests.test_journal import photo, reading

REPO = Path(__file__).resolve().parents[1]
DEVICE, STATION, PREFIX = "dev-7", "st-1", "fleet/"
# 5 readings with photos at hours 0, 1, 3, in batches of 2: the PUTs are photo 1, photo 2,
# batch 1-2, photo 4, batch 3-4, batch 5-5.
PUTS = 6


@pytest.fixture()
def aws_env(aws_env, monkeypatch):
    """conftest's moto environment, without a kill hook leaking in from the caller's shell."""
    monkeypatch.delenv(uplink.KILL_ENV_VAR, raising=False)
    return aws_env


@pytest.fixture()
def bucket(aws_env) -> str:
    name = f"skyedge-obs-{uuid.uuid4().hex[:10]}"
    make_client().create_bucket(Bucket=name)
    return name


@pytest.fixture()
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    uplink.provision(path, DEVICE, STATION)
    return path


def open_journal(state: Path, budget: int = 10_000_000) -> Journal:
    return Journal.open(state, STATION, photo_budget_bytes=budget)


def take_readings(state: Path, hours: range, photo_hours: set[int], budget: int = 10_000_000) -> None:
    """Readings at these hours (of 2024-05-01 onwards), with a distinct photo at `photo_hours`."""
    with open_journal(state, budget) as journal:
        for hour in hours:
            row = reading(hour % 24, 10 + hour % 7, timestamp=f"2024-05-{1 + hour // 24:02d}T{hour % 24:02d}:00:00Z")
            shot = photo(state.parent / f"shot-{hour}.png", (hour * 7 % 256, 90, 200)) if hour in photo_hours else None
            journal.observe(row, shot)


def upload(state: Path, bucket: str, max_batch: int, client=None) -> uplink.UploadResult:
    with open_journal(state) as journal:
        return uplink.upload_pending(journal, client or make_client(), bucket, PREFIX, uplink.load_identity(state), max_batch)


def stored(bucket: str) -> dict[str, bytes]:
    client = make_client()
    keys = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket) for item in page.get("Contents", [])]
    return {key[len(PREFIX) :]: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def fleet_view(state: Path, bucket: str) -> tuple[list[int], dict[int, bytes], list[int]]:
    """What the fleet ingest would read: every batch opened under the device's registration; the
    seq of every row (in key order), the photo bytes each batch names, and the dropped photos."""
    station_id, public_key = batches.parse_registration((state / uplink.REGISTRATION_FILE).read_bytes(), DEVICE)
    objects = stored(bucket)
    seqs, photos, dropped = [], {}, []
    for key in sorted(objects):
        parsed = batches.parse_batch_key(key)
        if parsed is None:
            continue
        document = batches.open_batch(objects[key], DEVICE, station_id, public_key)
        assert (parsed[1], parsed[2]) == (document["first_seq"], document["last_seq"])
        seqs += [row["seq"] for row in document["rows"]]
        for entry in document["photos"]:
            data = objects[entry["key"]]
            assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
            photos[entry["seq"]] = data
        row_images = {row["seq"]: row["image"] for row in document["rows"] if row["image"]}
        assert row_images == {entry["seq"]: batches.photo_name(entry["seq"], ".png") for entry in document["photos"]}
        dropped += document["dropped_photos"]
    return seqs, photos, dropped


def local_photo(state: Path, hour: int) -> bytes:
    return (state.parent / f"shot-{hour}.png").read_bytes()


# --- provisioning -------------------------------------------------------------------------------------


def test_provision_makes_a_private_key_and_the_registration_the_operator_uploads(tmp_path):
    state = tmp_path / "station"
    registration = uplink.provision(state, "dev-1", "st-9")
    assert stat.S_IMODE((state / uplink.KEY_FILE).stat().st_mode) == 0o600
    station_id, public_key = batches.parse_registration(registration, "dev-1")
    identity = uplink.load_identity(state)
    assert station_id == "st-9" and (identity.device_id, identity.station_id) == ("dev-1", "st-9")
    public_key.verify(identity.private_key.sign(b"x"), b"x")
    assert uplink.provision(state, "dev-1", "st-9") == registration  # again: the same key, never a new one
    with pytest.raises(ValueError, match="provisioned as device 'dev-1' of station 'st-9', not 'dev-1' of 'st-8'"):
        uplink.provision(state, "dev-1", "st-8")
    with pytest.raises(ValueError, match="device id"):
        uplink.provision(tmp_path / "other", "../escape", "st-9")


# --- uploads -----------------------------------------------------------------------------------------


def test_readings_go_up_in_signed_batches_photos_first_and_a_second_run_sends_nothing(state, bucket):
    take_readings(state, range(5), photo_hours={0, 1, 3})
    result = upload(state, bucket, max_batch=2)
    assert result.reason is None and result.pending == 0 and result.readings == 5
    assert result.batches == [batches.batch_key(DEVICE, 1, 2), batches.batch_key(DEVICE, 3, 4), batches.batch_key(DEVICE, 5, 5)]
    assert len(stored(bucket)) == PUTS  # 3 photos, 3 batches: the steps the SIGKILL test kills at
    seqs, photos, dropped = fleet_view(state, bucket)
    assert seqs == [1, 2, 3, 4, 5] and dropped == []
    assert photos == {1: local_photo(state, 0), 2: local_photo(state, 1), 4: local_photo(state, 3)}
    document = json.loads(stored(bucket)[batches.batch_key(DEVICE, 1, 2)])["document"]
    assert document["rows"][0] == {**{k: str(v) for k, v in reading(0, 10).items()}, "seq": 1, "image": "photos/0000000001.png"}
    # Uploaded photos leave the station's buffer; the rows stay for scoring.
    assert not list((state / "photos").iterdir())
    before = stored(bucket)
    assert upload(state, bucket, max_batch=2).batches == []
    assert stored(bucket) == before


def test_a_full_buffer_drops_the_oldest_photos_keeps_every_row_and_says_so(state, bucket):
    one_photo = photo(state.parent / "probe.png", (0, 90, 200)).stat().st_size
    # Room for two photos and a half: of four taken offline, the two oldest go.
    take_readings(state, range(6), photo_hours={0, 1, 2, 4}, budget=int(2.5 * one_photo))
    with open_journal(state) as journal:
        status = journal.uplink_status()
    assert status["dropped_photos"] == 2 and status["photos_held"] == 2 and status["photo_bytes_held"] <= 2.5 * one_photo
    upload(state, bucket, max_batch=10)
    seqs, photos, dropped = fleet_view(state, bucket)
    assert seqs == [1, 2, 3, 4, 5, 6] and dropped == [1, 2] and sorted(photos) == [3, 5]


def dead_endpoint() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: connection refused
    return f"http://127.0.0.1:{port}"


def test_a_store_that_is_down_keeps_the_batch_queued_with_a_reason_then_it_goes_up(state, bucket):
    # Batch 1-2 has no photo: its first PUT is the batch object itself, and it must not count as sent.
    take_readings(state, range(3), photo_hours={2})
    down = upload(state, bucket, max_batch=2, client=make_client(endpoint_url=dead_endpoint()))
    assert down.reason == "unreachable" and down.batches == [] and down.pending == 3
    assert "cannot reach the endpoint" in down.error
    with open_journal(state) as journal:
        status = journal.uplink_status()
    assert status["reason"] == "unreachable" and status["failures"] == 1 and status["uploaded_through"] == 0
    assert status["batch_in_flight"] == [1, 2] and status["photos_held"] == 1
    # Days pass offline: more readings, and the batch in flight keeps its bounds.
    take_readings(state, range(3, 50), photo_hours={10, 30})
    back = upload(state, bucket, max_batch=24)
    assert back.reason is None and back.pending == 0
    assert back.batches[:2] == [batches.batch_key(DEVICE, 1, 2), batches.batch_key(DEVICE, 3, 26)]
    seqs, photos, _ = fleet_view(state, bucket)
    assert seqs == list(range(1, 51)) and sorted(photos) == [3, 11, 31]
    with open_journal(state) as journal:
        status = journal.uplink_status()
    assert status["reason"] is None and status["failures"] == 0 and status["last_success"]


def test_a_bucket_that_does_not_exist_is_named_as_the_reason(state, aws_env):
    take_readings(state, range(1), photo_hours=set())
    result = upload(state, "no-such-bucket-here", max_batch=2)
    assert result.reason == "missing-bucket" and "does not exist" in result.error and result.pending == 1


# --- SIGKILL at every step ------------------------------------------------------------------------------

UPLOADER = """
import sys
from pathlib import Path
from skyedge.core.s3 import make_client
from skyedge.device import uplink
from skyedge.device.journal import Journal

state, bucket = Path(sys.argv[1]), sys.argv[2]
with Journal.open(state, "st-1", photo_budget_bytes=10_000_000) as journal:
    uplink.upload_pending(journal, make_client(), bucket, "fleet/", uplink.load_identity(state), max_batch=2)
"""


@pytest.mark.parametrize("kill_after", range(1, PUTS + 1))
def test_an_uploader_killed_after_any_put_leaves_after_a_restart_every_reading_exactly_once(state, bucket, aws_env, kill_after):
    take_readings(state, range(5), photo_hours={0, 1, 3})
    env = {**os.environ, **aws_env, uplink.KILL_ENV_VAR: str(kill_after), "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", UPLOADER, str(state), bucket], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(stored(bucket)) == kill_after  # it died right after that PUT, before anything else
    # The station keeps observing while it is down, then restarts with another batch size: the
    # batch that was in flight keeps its key, so no reading lands under two keys.
    take_readings(state, range(5, 8), photo_hours={6})
    result = upload(state, bucket, max_batch=3)
    assert result.reason is None and result.pending == 0
    seqs, photos, dropped = fleet_view(state, bucket)
    assert seqs == [1, 2, 3, 4, 5, 6, 7, 8], f"killed after PUT {kill_after}"
    assert photos == {1: local_photo(state, 0), 2: local_photo(state, 1), 4: local_photo(state, 3), 7: local_photo(state, 6)} and dropped == []
    ranges = sorted(batches.parse_batch_key(key)[1:] for key in stored(bucket) if batches.parse_batch_key(key))
    assert all(previous[1] + 1 == following[0] for previous, following in itertools.pairwise(ranges))

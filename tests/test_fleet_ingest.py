"""The fleet as an ingest source: signed observation batches (skyedge.core.batches) in moto's real
S3 server, read device by device with the folder source's rules, quarantine and time splits."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from PIL import Image

from skyedge.core import batches, s3
from skyedge.data import read, sources
from stages import ingest
from tests.conftest import data_params, ingest_params

NOW = pd.Timestamp("2025-01-01T00:00:00Z")
DATA = data_params(image_size=32, window_hours=3)
PREFIX = "obs"
START = pd.Timestamp("2024-06-01T00:00:00Z")


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class Fleet:
    """A fleet store in moto: registrations, photos and sealed batches under its own bucket."""

    def __init__(self, client):
        self.client = client
        self.bucket = f"fleet-{uuid.uuid4().hex[:12]}"  # moto's server lives for the session: a bucket per test
        self.store = f"s3://{self.bucket}/{PREFIX}"
        self.keys: dict[str, Ed25519PrivateKey] = {}
        self.photos: dict[str, bytes] = {}  # photo object URL -> bytes uploaded
        client.create_bucket(Bucket=self.bucket)

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"{PREFIX}/{key}", Body=data)

    def register(self, device: str, station: str) -> None:
        self.keys[device] = Ed25519PrivateKey.generate()
        self.put(batches.registration_key(device), batches.registration(device, station, self.keys[device].public_key()))

    def batch(self, device: str, station: str, first_seq: int, hours: int, photo_every: int = 0, sign_with: str | None = None,
              signed: bool = True, row_station: str | None = None, bad_photo: int | None = None, hour0: int = 0) -> str:
        """Upload one batch of `hours` readings (seq first_seq..) and its photos; returns its key."""
        rows, photos = [], []
        for i in range(hours):
            seq = first_seq + i
            stamp = (START + pd.Timedelta(hours=hour0 + i)).strftime("%Y-%m-%dT%H:%M:%SZ")
            rows.append({"seq": seq, "station_id": row_station or station, "timestamp": stamp, "temperature_c": 10.0 + (i % 7),
                         "pressure_hpa": 1010.0, "humidity_pct": 50, "wind_speed_ms": 3.0, "wind_dir_deg": 90, "precip_mm": 0.0})
            if photo_every and i % photo_every == 0:  # as a station's uplink writes them (skyedge.device.uplink)
                rows[-1]["image"] = batches.photo_name(seq)
                data = png(seq + 1000 * len(self.keys))
                key = batches.photo_key(device, seq)
                self.put(key, b"not the photo the station hashed" if seq == bad_photo else data)
                self.photos[f"{self.store}/{key}"] = data
                photos.append({"seq": seq, "key": key, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)})
        document = {"format": batches.FORMAT, "device_id": device, "station_id": station, "first_seq": first_seq,
                    "last_seq": first_seq + hours - 1, "rows": rows, "photos": photos, "dropped_photos": []}
        if signed:
            body = batches.seal(document, self.keys[sign_with or device])
        else:
            body = json.dumps({"document": document, "signature": ""}).encode()
        key = batches.batch_key(device, first_seq, first_seq + hours - 1)
        self.put(key, body)
        return key


@pytest.fixture()
def fleet(aws_env):
    return Fleet(s3.make_client(endpoint_url=aws_env["AWS_ENDPOINT_URL"]))


def run(tmp_path, store: str, **overrides) -> dict:
    params = ingest_params([{"type": "fleet", "store": store}], great_expectations=False, max_quarantine_fraction=1.0, **overrides)
    return ingest.run(params, DATA, tmp_path / "out", now=NOW)


def quarantine(tmp_path) -> pd.DataFrame:
    return pd.read_csv(tmp_path / "out" / "quarantine.csv", dtype=str, keep_default_na=False)


def test_good_batches_are_paired_records_and_bad_ones_are_quarantined_by_rule(fleet, tmp_path):
    fleet.register("dev-a", "st-a")
    fleet.register("dev-b", "st-b")
    good = [fleet.batch("dev-a", "st-a", 1 + 24 * b, 24, photo_every=6, hour0=24 * b) for b in range(4)]  # 96 h, 16 photos
    good += [fleet.batch("dev-b", "st-b", 1 + 24 * b, 24, photo_every=8, hour0=24 * b, bad_photo=9 if b == 0 else None) for b in range(3)]  # 72 h, 9 photos
    other_key = fleet.batch("dev-a", "st-a", 1001, 5, sign_with="dev-b", hour0=200)
    unsigned = fleet.batch("dev-a", "st-a", 2001, 4, signed=False, hour0=300)
    other_station = fleet.batch("dev-b", "st-b", 3001, 3, row_station="st-a", hour0=400)
    fleet.keys["dev-c"] = Ed25519PrivateKey.generate()  # a device nobody registered
    unregistered = fleet.batch("dev-c", "st-c", 1, 6, photo_every=2)

    report = run(tmp_path, fleet.store)

    bad = quarantine(tmp_path)
    by_batch = bad.groupby("file")["rule"].agg(lambda rules: sorted(set(rules)))
    expected = {
        other_key: batches.RULE_BAD_SIGNATURE,
        unsigned: batches.RULE_UNSIGNED,
        other_station: batches.RULE_OTHER_STATION,
        unregistered: batches.RULE_UNREGISTERED,
    }
    for key, rule in expected.items():
        assert by_batch[f"{fleet.store}/{key}"] == [rule], key
    # Every row of a rejected batch, numbered by its seq.
    assert sorted(bad.loc[bad["file"] == f"{fleet.store}/{other_key}", "row"].astype(int)) == list(range(1001, 1006))
    assert (bad["file"] == f"{fleet.store}/{unregistered}").sum() == 6
    mismatch = bad[bad["rule"] == batches.RULE_PHOTO]
    assert mismatch["file"].tolist() == [f"{fleet.store}/{batches.photo_key('dev-b', 9)}"]

    total = report["total"]
    rows_in, photos_in = 96 + 72 + 5 + 4 + 3 + 6, 16 + 9
    assert total["received"] == rows_in + photos_in == total["accepted"] + total["quarantined"]
    assert total["quarantined"] == 5 + 4 + 3 + 6 + 1
    assert total["by_rule"] == {batches.RULE_BAD_SIGNATURE: 5, batches.RULE_UNSIGNED: 4, batches.RULE_OTHER_STATION: 3,
                                batches.RULE_UNREGISTERED: 6, batches.RULE_PHOTO: 1}
    assert len(bad) == total["quarantined"]

    samples = pd.read_csv(tmp_path / "out" / "samples.csv", dtype={"station_id": str, "image_file": str}, keep_default_na=False)
    assert samples["station_id"].value_counts().to_dict() == {"st-a": 96, "st-b": 72}  # the bad photo's row kept its sensors
    paired = samples[samples["image_idx"].astype(int) >= 0]
    assert len(paired) == 16 + 8 and (paired["has_sensors"].astype(int) == 1).all()
    images = np.load(tmp_path / "out" / "images.npy")
    for row in paired.itertuples():  # each record holds the photo its station took that hour
        data = fleet.photos[row.image_file]
        expected_pixels, _ = read.inspect_image_bytes(data, len(data), DATA.image_size)
        assert np.array_equal(images[int(row.image_idx)], expected_pixels)
    assert f"{fleet.store}/{batches.photo_key('dev-b', 9)}" not in set(samples["image_file"])

    # Split by time per station, never at random: train, then val, then test blocks.
    for _, station in samples.groupby("station_id"):
        hours = station["hour"].astype(int)
        train, val, test = (hours[station["split"] == name] for name in ("train", "val", "test"))
        assert len(train) and len(val) and len(test)
        assert train.max() + 4 < val.min() - DATA.window_hours + 1 and val.max() + 4 < test.min() - DATA.window_hours + 1
    assert report["split_checks"]["stations_with_overlap"] == 0

    fleet_report = report["sources"][fleet.store]["fleet"]
    assert fleet_report["batches"] == 7 and fleet_report["devices"] == 2 and fleet_report["batches_quarantined"] == 4
    assert fleet_report["rows"] == 96 + 72 and fleet_report["newest_timestamp"] == "2024-06-04T23:00:00Z"
    assert fleet_report["by_device"]["dev-a"] == {"station_id": "st-a", "batches": 4, "last_seq": 96, "latest_batch": f"{PREFIX}/{good[3]}"}
    assert "dev-c" not in fleet_report["by_device"]


def test_a_new_batch_is_new_fleet_data_and_the_old_ones_read_the_same(fleet, tmp_path):
    fleet.register("dev-a", "st-a")
    for b in range(3):
        fleet.batch("dev-a", "st-a", 1 + 24 * b, 24, hour0=24 * b)
    before = run(tmp_path, fleet.store)["sources"][fleet.store]["fleet"]
    again = run(tmp_path, fleet.store)["sources"][fleet.store]["fleet"]
    assert again["batches_sha256"] == before["batches_sha256"]
    fleet.batch("dev-a", "st-a", 73, 24, hour0=72)
    after = run(tmp_path, fleet.store)["sources"][fleet.store]["fleet"]
    assert after["batches_sha256"] != before["batches_sha256"]
    assert (before["by_device"]["dev-a"]["last_seq"], after["by_device"]["dev-a"]["last_seq"]) == (72, 96)
    assert after["newest_timestamp"] > before["newest_timestamp"]


def test_the_fleet_stage_snapshot_changes_when_and_only_when_a_station_sent_something(fleet, tmp_path):
    """The `fleet` DVC stage (always_changed) lists the store; ingest depends on its snapshot."""
    from stages import fleet as fleet_stage

    fleet.register("dev-a", "st-a")
    fleet.batch("dev-a", "st-a", 1, 24, photo_every=6)
    params = ingest_params([{"type": "fleet", "store": fleet.store}, {"type": "synthetic", "stations": 1, "days": 2, "seed": 0, "image_size": 64, "unlabelled_share": 0.0, "camera": "clean"}])
    snapshot = tmp_path / "fleet" / "snapshot.json"
    first = fleet_stage.run(params, tmp_path / "fleet")
    assert [(s["store"], s["batches"], s["devices"]) for s in first["fleet_sources"]] == [(fleet.store, 1, 1)]
    unchanged = snapshot.read_bytes()
    fleet_stage.run(params, tmp_path / "fleet")
    assert snapshot.read_bytes() == unchanged  # same bytes: DVC sees no change, ingest does not re-run
    fleet.batch("dev-a", "st-a", 25, 24, hour0=24)
    after = fleet_stage.run(params, tmp_path / "fleet")
    assert snapshot.read_bytes() != unchanged and after["fleet_sources"][0]["batches"] == 2
    assert after["fleet_sources"][0]["by_device"]["dev-a"] == {"batches": 2, "latest_batch": f"{PREFIX}/{batches.batch_key('dev-a', 25, 48)}"}
    # Without a fleet source the snapshot is a constant.
    assert fleet_stage.run(ingest_params([{"type": "synthetic", "stations": 1, "days": 2, "seed": 0, "image_size": 64, "unlabelled_share": 0.0, "camera": "clean"}]), tmp_path / "none") == {"fleet_sources": []}


def test_contract_rules_apply_to_batch_rows_and_duplicates_across_batches(fleet, tmp_path):
    fleet.register("dev-a", "st-a")
    fleet.batch("dev-a", "st-a", 1, 30)
    # A second upload of hours already held (a station that lost its counter): same hours, new seqs.
    fleet.batch("dev-a", "st-a", 31, 4, hour0=10)
    # A signed batch with a reading out of range: that row only.
    document = {"format": batches.FORMAT, "device_id": "dev-a", "station_id": "st-a", "first_seq": 35, "last_seq": 36, "photos": [], "dropped_photos": [],
                "rows": [{"seq": 35, "station_id": "st-a", "timestamp": "2024-06-02T10:00:00Z", "temperature_c": 295.1, "pressure_hpa": 1010, "humidity_pct": 50,
                          "wind_speed_ms": 3, "wind_dir_deg": 90, "precip_mm": 0},
                         {"seq": 36, "station_id": "st-a", "timestamp": "2024-06-02T11:00:00Z", "temperature_c": None, "pressure_hpa": 1010, "humidity_pct": 50,
                          "wind_speed_ms": 3, "wind_dir_deg": 90, "precip_mm": 0}]}
    fleet.put(batches.batch_key("dev-a", 35, 36), batches.seal(document, fleet.keys["dev-a"]))
    report = run(tmp_path, fleet.store)
    bad = quarantine(tmp_path)
    assert sorted(zip(bad["row"].astype(int), bad["rule"])) == [(31, "unique_station_timestamp"), (32, "unique_station_timestamp"), (33, "unique_station_timestamp"),
                                                               (34, "unique_station_timestamp"), (35, "temperature_c_unit_kelvin")]
    assert report["total"] == {"received": 36, "accepted": 31, "quarantined": 5, "by_rule": {"temperature_c_unit_kelvin": 1, "unique_station_timestamp": 4}}


def test_a_fleet_source_is_typed_config_and_a_cli_argument():
    store = "s3://fleet/obs"
    params = ingest_params([{"type": "fleet", "store": store}])
    assert params.sources[0].store == store and params.sources[0].endpoint_url is None
    with pytest.raises(Exception, match="store"):
        ingest_params([{"type": "fleet", "url": store}])
    assert sources.parse_source(f"fleet:{store}") == {"type": "fleet", "store": store}
    assert sources.parse_source("fleet:s3:/fleet/obs") == {"type": "fleet", "store": store}  # argparse's Path folds "//"
    assert sources.parse_source("s3:/b/p") == {"type": "s3", "url": "s3://b/p"}
    with pytest.raises(ValueError, match="fleet:s3://BUCKET"):
        sources.parse_source("fleet:/some/folder")


def test_skyedge_ingest_reads_a_fleet_store_named_on_the_command_line(fleet, aws_env, tmp_path):
    fleet.register("dev-a", "st-a")
    fleet.batch("dev-a", "st-a", 1, 24, photo_every=6)
    repo = Path(__file__).resolve().parents[1]
    params = tmp_path / "params.yaml"  # the repo's, without its synthetic held-out station
    params.write_text((repo / "params.yaml").read_text().replace("holdout_stations: [syn-02]", "holdout_stations: []"))
    shutil.copytree(repo / "profiles", tmp_path / "profiles")
    result = subprocess.run([sys.executable, "-m", "cli.main", "ingest", f"fleet:{fleet.store}", "--out", str(tmp_path / "cli"), "--params", str(params)],
                            capture_output=True, text=True, cwd=repo, env={**os.environ, **aws_env})
    assert result.returncode == 0, result.stderr
    total = json.loads((tmp_path / "cli" / "report.json").read_text())["total"]
    assert total["received"] == 24 + 4 == total["accepted"] + total["quarantined"]
    bad = subprocess.run([sys.executable, "-m", "cli.main", "ingest", "fleet:/some/folder", "--out", str(tmp_path / "bad")],
                         capture_output=True, text=True, cwd=repo, env={**os.environ, **aws_env})
    assert bad.returncode != 0 and "fleet:s3://BUCKET" in bad.stderr


def test_a_missing_fleet_bucket_is_a_clear_error(aws_env, tmp_path):
    params = ingest_params([{"type": "fleet", "store": "s3://no-such-fleet/obs"}], great_expectations=False)
    with pytest.raises(sources.S3SourceError, match="s3://no-such-fleet/obs: bucket 'no-such-fleet' does not exist"):
        ingest.run(params, DATA, tmp_path / "out", now=NOW)

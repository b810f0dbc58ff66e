"""The device agent against moto's S3 server over HTTP on 127.0.0.1: updates, staged
rollout, status, prediction, and every attack and fault of ARCHITECTURE §7.

Each test publishes tiny torch-free packages (tests.sample_package) with TUF keys to a fresh
public-read bucket, then runs the agent reading the bucket over plain HTTP (TUF makes the
transport untrusted), directly or through a fault-injecting proxy.
"""

from __future__ import annotations

import csv
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import urllib3

from cli.main import main as cli_main
from skyedge.device import agent as ag
from skyedge.device import predict
from skyedge.release import registry, tuf
from skyedge.release.signing import load_or_create_private_key
from skyedge.release.store import open_store
from tests import sample_package

REPO = Path(__file__).resolve().parents[1]


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tuf") / "keys"
    tuf.init_keys(path, threshold=2)
    return path


@pytest.fixture(scope="module")
def sign_key(tmp_path_factory):
    return load_or_create_private_key(tmp_path_factory.mktemp("sk") / "signing_key.pem")


@pytest.fixture()
def aws_env(aws_env, monkeypatch):
    """conftest's moto environment, without agent settings leaking in from the caller's shell."""
    for name in ("SKYEDGE_TUF_KEYS", ag.KILL_ENV_VAR):
        monkeypatch.delenv(name, raising=False)
    return aws_env


class Repo:
    """A registry in a fresh bucket on moto, published with TUF keys, read by devices over HTTP."""

    def __init__(self, endpoint: str, tmp: Path, keys: Path, sign_key) -> None:
        import boto3

        self.bucket = f"skyedge-dev-{uuid.uuid4().hex[:10]}"
        client = boto3.client("s3")
        client.create_bucket(Bucket=self.bucket)
        # Devices read anonymously over HTTP: the bucket (or a CDN in front of it) is public-read.
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{self.bucket}/*"}]}
        client.put_bucket_policy(Bucket=self.bucket, Policy=json.dumps(policy))
        self.url = f"s3://{self.bucket}/registry"
        self.store = open_store(self.url)
        self.endpoint = endpoint
        self.base_url = f"{endpoint}/{self.bucket}/registry"
        self.tmp, self.keys, self.sign_key = tmp, keys, sign_key

    def package(self, version: int, **kw) -> Path:
        return sample_package.build_package(self.tmp / f"pkg-{version}-{uuid.uuid4().hex[:6]}", version, self.sign_key, **kw)

    def publish(self, version: int, force: bool = False, rollout=None, delta_bases: int = 0, **kw) -> dict:
        return registry.publish(
            self.store, self.package(version, **kw), public_key=self.sign_key.public_key(), keys=self.keys, force=force, rollout=rollout, delta_bases=delta_bases
        )

    def agent(self, device_id: str = "dev-1", base_url: str | None = None) -> ag.Agent:
        return ag.Agent(self.tmp / f"state-{device_id}", base_url or self.base_url, device_id=device_id, trusted_root=self.keys / "root.json", status_store=self.store)

    def status(self, device_id: str = "dev-1") -> dict:
        return json.loads(self.store.get_bytes(f"devices/{device_id}/status.json"))


@pytest.fixture()
def repo(aws_env, moto_endpoint, tmp_path, keys_dir, sign_key) -> Repo:
    return Repo(moto_endpoint, tmp_path, keys_dir, sign_key)


def assert_working(device: ag.Agent, version: int) -> None:
    """`active` is a complete, verified package of `version` that passes its health check."""
    slot = device.slot("active")
    assert slot is not None
    assert ag.verify_slot(slot)["version"] == version
    ag.health_check(slot)


def assert_refused(repo: Repo, status: dict, reason: str, active: int, device_id: str = "dev-1") -> None:
    assert status["state"] == "refused", status
    assert status["reason"] == reason, status
    assert status["version"] == active
    assert repo.status(device_id)["reason"] == reason  # reported to the store, naming the reason
    assert_working(repo.agent(device_id), active)


class Proxy:
    """HTTP proxy in front of moto that can cut a response after N bytes or flip a byte, once."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.cut: dict[str, int] = {}  # path suffix -> bytes sent before the connection drops
        self.flip: set[str] = set()  # path suffixes whose next response has a byte flipped
        self.requests: list[tuple[str, str | None]] = []
        http_pool = urllib3.PoolManager(retries=False)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                proxy.requests.append((self.path, self.headers.get("Range")))
                headers = {"Range": self.headers["Range"]} if self.headers.get("Range") else {}
                upstream = http_pool.request("GET", proxy.upstream + self.path, headers=headers)
                body = bytearray(upstream.data)
                cut = next((s for s in proxy.cut if self.path.endswith(s)), None)
                flip = next((s for s in proxy.flip if self.path.endswith(s)), None)
                if flip and body:
                    proxy.flip.discard(flip)
                    body[len(body) // 2] ^= 0xFF
                self.send_response(upstream.status)
                for name in ("Content-Type", "Content-Range", "Accept-Ranges"):
                    if upstream.headers.get(name):
                        self.send_header(name, upstream.headers[name])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if cut is not None:
                    plan = proxy.cut[cut]
                    n = plan.pop(0) if isinstance(plan, list) else plan  # a list: one cut per request
                    if not isinstance(plan, list) or not plan:
                        del proxy.cut[cut]
                    self.wfile.write(bytes(body[:n]))
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(bytes(body))

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def proxy(moto_endpoint):
    p = Proxy(moto_endpoint)
    yield p
    p.close()


def _dead_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now: connection refused
    return f"http://127.0.0.1:{port}/bucket/registry"


# --- updates, status, fleet ---------------------------------------------------------------------------


def test_first_pull_provisions_then_updates_keeping_previous(repo):
    repo.publish(1)
    device = repo.agent()
    status = device.pull()
    assert status["state"] == "updated" and status["version"] == 1 and status["previous_version"] is None
    assert_working(device, 1)
    assert device.pull()["state"] == "up-to-date"
    repo.publish(2)
    status = device.pull()
    assert status["state"] == "updated" and status["version"] == 2 and status["previous_version"] == 1
    assert_working(device, 2)
    assert ag.verify_slot(device.slot("previous"))["version"] == 1
    stored = repo.status()
    assert stored["version"] == 2 and stored["health"] == "ok" and stored["last_error"] is None and stored["time"]
    assert not (device.dir / "journal.json").exists()
    assert sorted(p.name.split("-")[0] for p in (device.dir / "slots").iterdir()) == ["1", "2"]


# --- over-the-air bytes: container and deltas (issue 15) ----------------------------------------------

CODED = {"container": True, "pad_bytes": 64 * 1024}  # one tensor big enough to be entropy coded


def test_a_station_rebuilds_the_signed_model_from_the_container_then_from_a_delta(repo):
    repo.publish(1, **CODED)
    device = repo.agent()
    first = device.pull()
    assert first["state"] == "updated" and first["model_source"]["source"] == "container", first
    assert first["model_source"]["downloaded_bytes"] < first["model_source"]["model_bytes"]
    assert_working(device, 1)  # the rebuilt model.onnx has the sha256 the manifest signs
    published = repo.publish(2, delta_bases=2, **CODED)
    assert "deltas/from-1.skd" in published["objects"]
    second = device.pull()
    assert second["state"] == "updated" and second["model_source"]["source"] == "delta", second
    assert second["model_source"]["downloaded_bytes"] < first["model_source"]["downloaded_bytes"] / 4  # only the biases changed
    assert_working(device, 2)


def test_a_corrupted_delta_falls_back_to_the_container_and_a_corrupted_container_to_the_full_model(repo):
    repo.publish(1, **CODED)
    device = repo.agent()
    device.pull()
    repo.publish(2, delta_bases=1, **CODED)
    for key in ("models/2/deltas/from-1.skd", "models/2/model.skc"):
        data = bytearray(repo.store.get_bytes(key))
        data[len(data) // 2] ^= 0x01
        repo.store.put_bytes(key, bytes(data))
    status = device.pull()
    assert status["state"] == "updated" and status["model_source"]["source"] == "full", status
    gave_up = status["model_source"]["gave_up"]
    assert [g.split(":")[0] for g in gave_up] == ["delta", "container"] and all("sha256" in g for g in gave_up), gave_up
    assert_working(device, 2)


def test_a_station_without_a_delta_from_its_release_downloads_the_container(repo):
    repo.publish(1, **CODED)
    device = repo.agent()
    device.pull()
    repo.publish(2, **CODED)
    repo.publish(3, delta_bases=1, **CODED)  # a delta from 2 only: the station on 1 has no base for it
    status = device.pull()
    assert status["version"] == 3 and status["model_source"]["source"] == "container", status
    assert_working(device, 3)


def test_unprovisioned_device_needs_a_trusted_root(repo, tmp_path):
    with pytest.raises(ValueError, match="trusted-root"):
        ag.Agent(tmp_path / "fresh", repo.base_url)


def test_staged_rollout_by_device_list_and_percentage(repo):
    repo.publish(1)
    a, b = repo.agent("dev-a"), repo.agent("dev-b")
    assert a.pull()["version"] == 1 and b.pull()["version"] == 1
    repo.publish(2, rollout={"devices": ["dev-a"]})
    assert a.pull()["version"] == 2
    status_b = b.pull()
    assert status_b["state"] == "not-in-cohort" and status_b["version"] == 1
    # A new station outside the cohort starts on the release before.
    assert repo.agent("dev-new").pull()["version"] == 1
    # Widening the rollout to everyone moves dev-b too.
    registry.set_rollout(repo.store, "production", {"percent": 100}, keys=repo.keys)
    assert b.pull()["version"] == 2
    pointer = {"channel": "production", "version": 7, "rollout": {"percent": 30}}
    share = sum(registry.in_cohort(f"station-{i}", pointer) for i in range(2000)) / 2000
    assert 0.25 < share < 0.35
    assert all(registry.in_cohort(f"station-{i}", {**pointer, "rollout": {"percent": 60}}) for i in range(2000) if registry.in_cohort(f"station-{i}", pointer))


def test_operator_rollback_signed_with_keys_moves_devices_back(repo):
    repo.publish(1)
    repo.publish(2)
    device = repo.agent()
    assert device.pull()["version"] == 2
    registry.rollback(repo.store, keys=repo.keys)
    status = device.pull()
    assert status["state"] == "updated" and status["version"] == 1


# --- attacks: refused, current model kept, reason reported ----------------------------------------------


@pytest.fixture()
def on_v1(repo):
    """A device running version 1."""
    repo.publish(1)
    device = repo.agent()
    assert device.pull()["version"] == 1
    return device


def test_rollback_replayed_old_metadata_is_refused(repo):
    repo.publish(1)
    old_timestamp = repo.store.get_bytes("tuf/metadata/timestamp.json")
    repo.publish(2)
    device = repo.agent()
    assert device.pull()["version"] == 2
    repo.store.put_bytes("tuf/metadata/timestamp.json", old_timestamp)  # replay
    assert_refused(repo, device.pull(), "rollback", 2)


def test_rollback_repointed_channel_is_refused(repo):
    repo.publish(1)
    v1_pointer = repo.store.get_bytes("channels/production.json")
    repo.publish(2)
    device = repo.agent()
    assert device.pull()["version"] == 2
    # Re-pointed without keys: the mutable pointer devices never read, and the signed copy they do.
    repo.store.put_bytes("channels/production.json", v1_pointer)
    signed = [k for k in repo.store.list("tuf/targets/channels/") if k.endswith(".production.json")]
    for key in signed:
        repo.store.put_bytes(key, v1_pointer)
    assert_refused(repo, device.pull(), "rollback", 2)
    # Re-pointed to an older version with the keys but not as a rollback (publish --force).
    for key in signed:
        repo.store.delete(key)
    registry.publish(repo.store, sorted(repo.tmp.glob("pkg-1-*"))[0], public_key=repo.sign_key.public_key(), keys=repo.keys, force=True)
    assert_refused(repo, device.pull(), "rollback", 2)


def test_freeze_expired_timestamp_is_refused(repo, on_v1):
    repo.publish(2)
    tuf.refresh_timestamp(repo.store, repo.keys, expiry="-60")
    assert_refused(repo, on_v1.pull(), "freeze", 1)


@pytest.mark.parametrize("swapped", ["model.onnx", "manifest.json"])
def test_mix_and_match_object_from_another_release_is_refused(repo, on_v1, swapped):
    repo.publish(2)
    repo.store.put_bytes(f"models/2/{swapped}", repo.store.get_bytes(f"models/1/{swapped}"))
    status = on_v1.pull()
    assert_refused(repo, status, "mix-and-match", 1)
    assert f"models/1/{swapped}" in status["last_error"]


def _resign_timestamp(repo: Repo, transform) -> None:
    from tuf.api.metadata import Metadata

    md = Metadata.from_bytes(repo.store.get_bytes("tuf/metadata/timestamp.json"))
    transform(md)
    repo.store.put_bytes("tuf/metadata/timestamp.json", md.to_bytes())


@pytest.mark.parametrize("attack", ["missing-signature", "bad-signature", "untrusted-key"])
def test_arbitrary_software_unsigned_or_missigned_metadata_is_refused(repo, on_v1, attack, tmp_path):
    repo.publish(2)

    def forge(md):
        md.signed.version += 1
        if attack == "missing-signature":
            md.signatures.clear()
        elif attack == "untrusted-key":
            from securesystemslib.signer import CryptoSigner

            md.signatures.clear()
            md.sign(CryptoSigner.generate_ed25519())
        # bad-signature: the signed content changed, the old signature kept

    _resign_timestamp(repo, forge)
    assert_refused(repo, on_v1.pull(), "arbitrary-software", 1)


def test_arbitrary_software_targets_signed_by_another_repository_are_refused(repo, on_v1, tmp_path, sign_key):
    """An attacker with their own complete key set (a root the device does not trust)."""
    other = tmp_path / "attacker-keys"
    tuf.init_keys(other)
    repo.publish(2)
    for key in repo.store.list("tuf/metadata/"):
        if not key.endswith("root.json"):
            repo.store.delete(key)
    attacker = sample_package.build_package(tmp_path / "evil", 3, sign_key, bias=-50.0)
    registry.publish(repo.store, attacker, public_key=sign_key.public_key())
    tuf.sign_targets(repo.store, other, {}, {"production": repo.store.get_bytes("channels/production.json")})
    assert_refused(repo, on_v1.pull(), "arbitrary-software", 1)


def test_endless_data_is_cut_off_and_refused(repo, on_v1):
    repo.publish(2)
    repo.store.put_bytes("models/2/model.onnx", repo.store.get_bytes("models/2/model.onnx") + b"\0" * 1_000_000)
    status = on_v1.pull()
    assert_refused(repo, status, "endless-data", 1)
    assert not list((on_v1.dir / "staging").rglob("model.onnx*"))


def test_corrupted_object_in_store_is_retried_then_refused(repo, on_v1):
    repo.publish(2)
    data = bytearray(repo.store.get_bytes("models/2/model.onnx"))
    data[len(data) // 2] ^= 0x01
    repo.store.put_bytes("models/2/model.onnx", bytes(data))
    status = on_v1.pull()
    assert_refused(repo, status, "corrupted-download", 1)
    assert "after 3 attempts" in status["last_error"] and on_v1.retries == 3


def test_corrupted_download_in_transit_is_retried_and_installed(repo, on_v1, proxy):
    repo.publish(2)
    proxy.flip.add("/models/2/model.onnx")
    device = repo.agent(base_url=f"{proxy.url}/{repo.bucket}/registry")
    status = device.pull()
    assert status["state"] == "updated" and status["version"] == 2 and device.retries == 1
    assert_working(device, 2)


def test_canary_mismatch_is_refused_and_not_retried(repo, on_v1):
    repo.publish(2, canary_offset=1.0)
    assert_refused(repo, on_v1.pull(), "canary-mismatch", 1)
    again = repo.agent().pull()
    assert again["state"] == "held" and again["reason"] == "canary-mismatch" and again["version"] == 1


# --- faults: survived ----------------------------------------------------------------------------


def test_connection_dropping_mid_download_resumes_from_the_offset(repo, on_v1, proxy):
    repo.publish(2, pad_bytes=300_000)
    proxy.cut["/models/2/model.onnx"] = 100_000
    device = repo.agent(base_url=f"{proxy.url}/{repo.bucket}/registry")
    status = device.pull()
    assert status["state"] == "updated" and status["version"] == 2, status
    assert device.fetcher.resumes == 1 and status["resumes"] == 1
    ranges = [r for p, r in proxy.requests if p.endswith("/models/2/model.onnx")]
    # Resumed from the bytes safely on disk (whole chunks received before the cut), not from 0.
    assert ranges[0] is None and len(ranges) == 2 and ranges[1].startswith("bytes=")
    assert 0 < int(ranges[1][len("bytes="):-1]) <= 100_000
    assert_working(device, 2)


def test_store_down_keeps_the_model_and_retries_with_backoff(repo, on_v1):
    repo.publish(2)
    down = repo.agent(base_url=_dead_url())
    slept: list[float] = []
    delays = ag.run(down, interval_s=600, retry_s=5, iterations=4, sleep=slept.append, rng=lambda: 0.5)
    assert delays == [5, 10, 20, 40] and slept == delays[:3]
    status = json.loads((down.dir / "status.json").read_text())
    assert status["reason"] == "store-unreachable" and status["version"] == 1
    assert_working(down, 1)
    # Jitter spreads a fleet: the factor is uniform in [0.5, 1.5).
    assert ag.run(repo.agent(), interval_s=600, iterations=1, sleep=lambda s: None, rng=lambda: 0.0) == [300]
    assert repo.status()["version"] == 2  # the store is back: the update goes through


@pytest.mark.parametrize("step", ag.STEPS)
def test_sigkill_at_each_install_step_leaves_a_working_model(repo, on_v1, aws_env, step):
    repo.publish(2, pad_bytes=200_000)
    env = {**os.environ, **aws_env, ag.KILL_ENV_VAR: step, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "cli.main", "device", "pull", "--store", repo.url, "--base-url", repo.base_url, "--state", str(on_v1.dir)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # Right after the kill, before any recovery, active is a complete verified model (v1 or v2).
    slot = on_v1.slot("active")
    assert slot is not None and ag.verify_slot(slot)["version"] in (1, 2)
    sensors = _sensors_csv(repo.tmp)
    assert predict.forecast(on_v1.dir, sensors)["model"]["version"] in (1, 2)
    device = repo.agent()
    status = device.pull()
    assert status["version"] == 2 and status["state"] in ("updated", "up-to-date"), status
    assert_working(device, 2)
    assert not (device.dir / "journal.json").exists()
    assert {p.resolve() for p in (device.dir / "slots").iterdir()} <= {device.slot("active"), device.slot("previous")}


def test_health_check_failure_after_swap_rolls_back(repo, on_v1):
    repo.publish(2, latency_budget_ms=1e-9)
    before = on_v1.slot("active")
    status = on_v1.pull()
    assert_refused(repo, status, "health-check-failed", 1)
    assert "rolled back" in status["last_error"]
    assert on_v1.slot("active") == before and len(list((on_v1.dir / "slots").iterdir())) == 1


# --- predict, CLI ------------------------------------------------------------------------------------


def _sensors_csv(tmp: Path, missing_column: str | None = None) -> Path:
    path = tmp / f"sensors-{missing_column}.csv"
    columns = ["station_id", "timestamp", "temperature_c", "pressure_hpa", "humidity_pct", "wind_speed_ms", "wind_dir_deg", "precip_mm"]
    columns = [c for c in columns if c != missing_column]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns, extrasaction="ignore")
        writer.writeheader()
        for h in range(10):
            writer.writerow({"station_id": "st-1", "timestamp": f"2024-05-01T{h:02d}:00:00Z", "temperature_c": 10 + h, "pressure_hpa": 1012, "humidity_pct": 60, "wind_speed_ms": 3, "wind_dir_deg": 180, "precip_mm": "" if h == 4 else 0.2})
    return path


def test_predict_with_and_without_a_photo(repo, on_v1, tmp_path):
    from PIL import Image

    photo = tmp_path / "sky.png"
    Image.new("RGB", (40, 30), (90, 140, 220)).save(photo)
    sensors = _sensors_csv(tmp_path)
    with_photo = predict.forecast(on_v1.dir, sensors, photo)
    without = predict.forecast(on_v1.dir, sensors)
    for result in (with_photo, without):
        assert [row["h"] for row in result["forecast"]] == [1, 2, 3, 4]
        assert all(0 <= row["rain_prob"] <= 1 for row in result["forecast"])
        assert result["time"] == "2024-05-01T09:00:00+00:00" and result["model"]["version"] == 1
        assert abs(sum(result["sky"]["probabilities"].values()) - 1) < 1e-3
    assert with_photo["image_used"] and not without["image_used"]
    assert with_photo["sky"]["probabilities"] != without["sky"]["probabilities"]
    with pytest.raises(predict.PredictError, match="pressure_hpa"):
        predict.forecast(on_v1.dir, _sensors_csv(tmp_path, "pressure_hpa"))


def test_cli_keys_publish_pull_predict_fleet(aws_env, moto_endpoint, tmp_path, sign_key, capsys):
    keys = tmp_path / "keys"
    assert cli_main(["keys", "init", "--dir", str(keys), "--threshold", "1", "--timestamp-expiry", "1d"]) == 0
    assert json.loads((keys / "config.json").read_text())["expiry_seconds"]["timestamp"] == 86400
    assert cli_main(["keys", "init", "--dir", str(keys)]) == 1  # never overwrites a root
    repo = Repo(moto_endpoint, tmp_path, keys, sign_key)
    pkg = repo.package(1)
    public = tmp_path / "pub.pem"
    from skyedge.release.signing import public_key_pem

    public.write_bytes(public_key_pem(sign_key))
    assert cli_main(["publish", str(pkg), "--store", repo.url, "--public-key", str(public), "--keys", str(keys)]) == 0
    state = tmp_path / "station"
    pull = ["device", "pull", "--store", repo.url, "--state", str(state), "--device-id", "st-9"]
    assert cli_main([*pull, "--trusted-root", str(keys / "root.json")]) == 0
    assert cli_main(pull) == 0
    assert cli_main(["device", "predict", "--state", str(state), "--sensors", str(_sensors_csv(tmp_path)), "--json"]) == 0
    out = capsys.readouterr().out
    assert "up-to-date" in out and '"forecast"' in out
    assert cli_main(["fleet", "--store", repo.url]) == 0
    table = capsys.readouterr().out
    assert "st-9" in table and "ok" in table


def test_device_modules_import_nothing_heavy():
    code = "import sys, skyedge.device.agent, skyedge.device.predict, skyedge.release.tuf; print([m for m in ('torch', 'prefect', 'dvc', 'pandas', 'onnx') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


# --- what the operator believes must be what happened ----------------------------------------------------


def test_a_rollback_or_publish_without_keys_on_a_tuf_store_is_refused_naming_the_flag(repo, capsys):
    repo.publish(1)
    repo.publish(2)
    device = repo.agent()
    assert device.pull()["version"] == 2
    assert cli_main(["rollback", "--store", repo.url]) == 1
    err = capsys.readouterr().err
    assert "rollback: FAILED" in err and "devices trust this store's TUF metadata" in err and "--keys" in err
    assert registry.read_channel(repo.store, "production")["version"] == 2  # nothing moved
    with pytest.raises(registry.RegistryError, match="pass --keys KEYS"):
        registry.publish(repo.store, repo.package(3), public_key=repo.sign_key.public_key())
    # With the keys, the rollback reaches the device.
    assert cli_main(["rollback", "--store", repo.url, "--keys", str(repo.keys)]) == 0
    assert "signed for devices (TUF)" in capsys.readouterr().out
    assert device.pull()["version"] == 1


def test_fleet_shows_a_device_whose_version_differs_from_its_channel(repo, capsys):
    repo.publish(1)
    device = repo.agent("st-1")
    assert device.pull()["version"] == 1
    repo.publish(2)  # the device has not pulled since
    assert cli_main(["fleet", "--store", repo.url]) == 0
    out = capsys.readouterr().out
    assert "MISMATCH: channel says 2" in out and "1 device(s) run a version other than their channel's" in out


def test_a_bucket_devices_cannot_read_and_a_missing_bucket_say_what_is_wrong(repo, tmp_path):
    import boto3

    client = boto3.client("s3")
    repo.publish(1)
    client.delete_bucket_policy(Bucket=repo.bucket)  # no anonymous GetObject any more
    denied = ag.Agent(tmp_path / "denied", repo.base_url, device_id="d-1", trusted_root=repo.keys / "root.json").pull()
    assert denied["reason"] == "access-denied" and "must allow anonymous GetObject" in denied["last_error"] and "--base-url" in denied["last_error"]
    missing_base = f"{repo.endpoint}/no-such-bucket-{uuid.uuid4().hex[:6]}/registry"
    missing = ag.Agent(tmp_path / "missing", missing_base, device_id="d-2", trusted_root=repo.keys / "root.json").pull()
    assert missing["reason"] == "store-not-found" and "no such bucket" in missing["last_error"]


def test_resumes_are_counted_when_a_download_finally_fails(repo, on_v1, proxy):
    repo.publish(2, pad_bytes=300_000)
    proxy.cut["/models/2/model.onnx"] = [50_000] * 10  # every request cut: more than the resumes allowed
    status = repo.agent(base_url=f"{proxy.url}/{repo.bucket}/registry").pull()
    assert status["state"] == "error" and status["reason"] == "download-interrupted", status
    assert status["resumes"] == 6 and status["version"] == 1  # 5 resumes allowed, the 6th gives up: all counted


def test_a_connection_cut_mid_metadata_ends_in_a_status_and_a_retry_never_a_crash(repo, on_v1, proxy):
    repo.publish(2)
    device = repo.agent(base_url=f"{proxy.url}/{repo.bucket}/registry")
    proxy.cut["timestamp.json"] = 20  # the small signed files: python-tuf reads them whole
    status = device.pull()
    assert status["state"] == "error" and status["reason"] == "store-unreachable", status
    assert status["version"] == 1 and "resumes" in status
    proxy.cut[".production.json"] = 10  # the signed channel pointer
    for _ in range(3):  # it retries, and the cut heals
        status = device.pull()
        if status["state"] == "updated":
            break
    assert status["state"] == "updated" and status["version"] == 2


def test_predict_applies_the_ingest_rules_and_says_what_it_did(repo, on_v1, tmp_path):
    """Kelvin is not degC and one hour is not a window: flagged with the ingest rule, never fed in."""
    sensors = tmp_path / "records" / "kelvin.csv"
    sensors.parent.mkdir()
    sensors.write_text(
        "station_id,timestamp,temperature_c,pressure_hpa,humidity_pct,wind_speed_ms,wind_dir_deg,precip_mm\n"
        "st-1,2024-05-01T09:00:00Z,288.2,1012,140,3,180,0.0\n"
    )
    result = predict.forecast(on_v1.dir, sensors, latitude=47.4, longitude=8.5)
    assert {(f["column"], f["rule"]) for f in result["flags"]} == {("temperature_c", "temperature_c_unit_kelvin"), ("humidity_pct", "humidity_pct_in_range")}
    assert all(f["action"] == "treated as missing" for f in result["flags"])
    assert result["window_rule"] == "gap_in_window" and result["coordinates"] == "given"
    text = predict.format_forecast(result)
    assert "temperature_c_unit_kelvin: temperature_c = '288.2'" in text and "gap_in_window: 5 of the model's 6 window hours" in text
    assert "rain_prob: probability of more than 0.1 mm of rain in the hour ending at `time`" in text
    # The same station's coordinates from stations.csv beside the records.
    (sensors.parent / "stations.csv").write_text("station_id,latitude,longitude,elevation_m\nst-1,47.4,8.5,420\n")
    assert predict.forecast(on_v1.dir, sensors)["coordinates"].endswith("stations.csv")

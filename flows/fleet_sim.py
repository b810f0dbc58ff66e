"""The whole loop on one machine: a fleet of real station agents replayed hour by hour in
accelerated time against a real store, with faults, while the rollout flow decides.

`skyedge fleet simulate --stations N --hours H --store s3://BUCKET/PREFIX` does, per simulated hour:

1. each station records its reading of that hour (+ photo) from its feed: journal, forecast with
   its active model, scoring of matured forecasts (skyedge.device.journal);
2. a station whose turn it is (every `pull_every` hours, staggered) runs its cycle: upload the
   readings the store lacks (signed batches), pull (install a newer release, or go back on a
   rollback), report status.json with its field skill (skyedge.device.station);
3. at `release_at` the scenario's release is published to the first ring and the rollout starts;
   from then the rollout flow (flows.rollout, a real Prefect flow run) checks every hour, on
   simulated time, and advances, holds or aborts;
4. every station's active model is verified (files against the hashes checked at install).

Stations talk to the store through a fault-injecting HTTP proxy on 127.0.0.1: the store goes down
for `down_hours`, and responses are cut mid-body at `cut_rate`. Agents are killed at a random
install step at `kill_rate` per cycle: the agent is abandoned there (`agent.crash_hook`) and a
fresh agent and journal open the same state directory, as after a power cut. After the last hour
the store comes back and every station uploads what it still holds: readings taken must equal
readings in the store, each exactly once.

Feeds: any folder of data-contract CSVs with photos (`skyedge generate` writes one); station i of
the fleet replays feed station i mod (stations in the folder), under its own station id.
Releases: the "good" release is the baseline model re-packaged under a new version (the same
predictions); the "bad" release is the baseline with its temperature forecast offset by +4 °C and
its rain probabilities inverted (what a model trained on shuffled labels would do to the field).
"""

from __future__ import annotations

import csv
import http.server
import json
import random
import shutil
import socket
import socketserver
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from skyedge.core import batches, contract, s3
from skyedge.core.tables import Column, text_table
from skyedge.device import agent as agent_module
from skyedge.device import station as station_module
from skyedge.release import container, manifest, registry, signing, tuf
from skyedge.release.store import open_store

GOOD, BAD = "good", "bad"


class SimulatedCrash(BaseException):
    """Raised at an agent's checkpoint to abandon it there (BaseException: nothing catches it)."""


# --- faults ----------------------------------------------------------------------------------------


class FaultyProxy:
    """HTTP proxy in front of the S3 endpoint: every method forwarded, unless the store is "down"
    (connections closed unanswered) or a GET's response is cut mid-body (at `cut_rate`)."""

    def __init__(self, upstream: str, cut_rate: float, seed: int) -> None:
        self.upstream = upstream.rstrip("/")
        self.down = False
        self.cut_rate = cut_rate
        self.rng = random.Random(seed)
        self.cuts = 0
        self.refused = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: with Nagle's algorithm the body waits for the
            # client's delayed ACK of the headers (tens of ms per request on loopback).
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                if proxy.down:
                    proxy.refused += 1
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                chunked = "chunked" in (self.headers.get("Transfer-Encoding") or "").lower()
                length = int(self.headers.get("Content-Length") or 0)
                body = self._read_chunked() if chunked else (self.rfile.read(length) if length else None)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "content-length", "transfer-encoding", "expect")}
                # boto3 streams uploads chunked (aws-chunked checksums inside): pass them on chunked, as sent.
                data = iter([body]) if chunked else body
                # urllib would label a body without a type as a form, which the S3 server then parses away.
                headers.setdefault("Content-Type", "binary/octet-stream")
                if chunked:
                    headers["Transfer-Encoding"] = "chunked"
                request = urllib.request.Request(proxy.upstream + self.path, data=data, headers=headers, method=self.command)
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        status, reply_headers, data = response.status, response.headers, response.read()
                except urllib.error.HTTPError as error:
                    status, reply_headers, data = error.code, error.headers, error.read()
                self.send_response(status)
                for name, value in reply_headers.items():
                    if name.lower() not in ("connection", "content-length", "transfer-encoding", "date", "server"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command == "GET" and len(data) > 64 and proxy.rng.random() < proxy.cut_rate:
                    proxy.cuts += 1
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _read_chunked(self) -> bytes:
                parts = []
                while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(parts)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass(frozen=True)
class Faults:
    down_hours: tuple[int, int] | None = None  # [from, to) simulated hours the store is unreachable
    cut_rate: float = 0.0  # share of GET responses cut mid-body
    kill_rate: float = 0.0  # share of station cycles whose agent is killed at a random install step
    seed: int = 0


# --- feeds and releases --------------------------------------------------------------------------------


def load_feeds(folder: Path) -> list[list[tuple[dict[str, str], Path | None]]]:
    """Per feed station (sorted by id): its readings in time order, (row, photo or None)."""
    by_station: dict[str, list[tuple[str, dict[str, str], Path | None]]] = defaultdict(list)
    for path in sorted(Path(folder).rglob("*.csv")):
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not set(contract.REQUIRED_COLUMNS) <= set(reader.fieldnames or ()):
                continue  # stations.csv, index.csv: not readings
            for row in reader:
                image = (row.get(contract.IMAGE) or "").strip()
                by_station[row[contract.STATION_ID]].append((row[contract.TIMESTAMP], row, path.parent / image if image else None))
    if not by_station:
        raise ValueError(f"{folder}: no data-contract CSV (station_id, timestamp, sensors) found")
    return [[(row, photo) for _, row, photo in sorted(rows, key=lambda r: r[0])] for _, rows in sorted(by_station.items())]


def repackage(package_dir: Path, out_dir: Path, version: int, key_path: Path, degrade: bool) -> Path:
    """The package under a new version, its model degraded when asked (module doc), re-signed."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from skyedge.core import inference

    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(package_dir, out_dir)
    model_path = out_dir / manifest.MODEL_FILE
    if degrade:
        model = onnx.load(str(model_path))
        graph = model.graph
        for output, make in ((contract.OUTPUT_TEMP_C, lambda x, o: helper.make_node("Add", [x, "sim_offset"], [o])),
                             (contract.OUTPUT_RAIN_PROB, lambda x, o: helper.make_node("Sub", ["sim_one", x], [o]))):
            for node in graph.node:
                node.output[:] = [f"{output}_sim" if name == output else name for name in node.output]
            graph.node.append(make(f"{output}_sim", output))
        graph.initializer.extend([numpy_helper.from_array(np.array(4.0, np.float32), "sim_offset"), numpy_helper.from_array(np.array(1.0, np.float32), "sim_one")])
        onnx.save(model, str(model_path))
    document = json.loads((out_dir / manifest.MANIFEST_FILE).read_text())
    (out_dir / "model.skc").write_bytes(container.encode(model_path.read_bytes()))
    with np.load(out_dir / manifest.CANARY_FILE) as canary:
        expected = inference.predict(inference.session(model_path), {k: canary[k] for k in canary.files})
    document["version"] = version
    document["version_label"] = f"{document.get('version_label', '').split('+')[0]}+{version}"
    document["files"] = [manifest.file_entry(out_dir / entry["path"], out_dir) for entry in document["files"] if (out_dir / entry["path"]).exists()]
    if not any(entry["path"] == "model.skc" for entry in document["files"]):
        document["files"].append(manifest.file_entry(out_dir / "model.skc", out_dir))
    document["container"] = {**manifest.file_entry(out_dir / "model.skc", out_dir), "format_version": container.FORMAT_VERSION, "decodes_to": manifest.MODEL_FILE}
    document["canary"]["expected"] = {k: v.tolist() for k, v in expected.items()}
    if degrade:
        document["simulation"] = "degraded on purpose: temperature +4 °C, rain probability inverted"
    manifest.write_manifest(out_dir, document)
    manifest.sign_package(out_dir, signing.load_or_create_private_key(key_path))
    return out_dir


# --- the fleet -------------------------------------------------------------------------------------------


class SimStation:
    """One station: a state directory, its agent, journal and uplink; restartable after a crash."""

    def __init__(self, index: int, root: Path, feed: list, base_url: str, store_url: str, endpoint: str, keys_root: Path, clock, store, client, photo_budget: int, batch: int) -> None:
        self.index, self.feed = index, feed
        self.device_id = f"sim-{index:04d}"
        self.station_id = f"simst-{index:04d}"
        self.dir = root / self.device_id
        self.base_url, self.store_url, self.endpoint, self.clock = base_url, store_url, endpoint, clock
        self.config = station_module.StationConfig(self.device_id, self.station_id, photo_budget, batch, None, None)
        registration = station_module.provision(self.dir, self.config)
        store.put_bytes(batches.registration_key(self.device_id), registration)
        (self.dir / "trusted_root.json").write_bytes((keys_root).read_bytes())
        self.status_store = store
        self.client = client  # one boto3 client for the simulated fleet: creating 200 costs minutes, not realism
        self.open()

    def open(self) -> None:
        self.agent = agent_module.Agent(self.dir, self.base_url, device_id=self.device_id, status_store=self.status_store, clock=self.clock)
        self.journal = station_module.open_journal(self.dir, self.config)
        self.station = station_module.Station(self.agent, self.journal, self.config, self.store_url, self.endpoint, client=self.client)

    def restart(self) -> None:
        self.journal.close()
        self.open()

    def observe(self, hour: int) -> None:
        row, photo = self.feed[hour % len(self.feed)]
        self.journal.observe({**row, contract.STATION_ID: self.station_id}, photo)

    def verified_version(self) -> int | None:
        """The active model's version if its files still match what was verified, else None."""
        slot = self.agent.slot("active")
        if slot is None:
            return None
        try:
            return agent_module.verify_slot(slot)["version"]
        except (OSError, ValueError, manifest.PackageError):
            return None


@dataclass
class Timeline:
    versions: list[dict[int | None, int]] = field(default_factory=list)  # per hour: version -> stations
    decisions: list[dict[str, Any]] = field(default_factory=list)


def run(
    params_file: Path,
    store_url: str,
    endpoint: str,
    feeds: Path,
    baseline: Path,
    stations: int,
    hours: int,
    scenario: str,
    release_at: int,
    pull_every: int,
    faults: Faults,
    work: Path,
    use_flow: bool = True,
) -> dict[str, Any]:
    """One scenario (GOOD or BAD) end to end; the measurements the benchmark reports."""
    import os

    from skyedge.core.config import load_params
    from skyedge.evaluation import rollout

    params = load_params(params_file)
    endpoint = endpoint or os.environ.get(s3.ENDPOINT_ENV_VAR)
    if not endpoint:
        raise ValueError("a simulated fleet talks to an S3 endpoint through its fault proxy: pass --endpoint-url or set AWS_ENDPOINT_URL")
    work.mkdir(parents=True, exist_ok=True)
    store = open_store(store_url, endpoint_url=endpoint)
    keys = work / "tuf-keys"
    if not keys.exists():
        tuf.init_keys(keys)
    sign_key = work / "signing_key.pem"
    v1 = repackage(baseline, work / "release-1", 1, sign_key, degrade=False)
    registry.publish(store, v1, public_key=signing.load_private_key(sign_key).public_key(), keys=keys)

    feed_list = load_feeds(feeds)
    proxy = FaultyProxy(endpoint, faults.cut_rate, faults.seed)
    bucket_path = store_url[len("s3://") :]
    base_url = f"{proxy.url}/{bucket_path}"
    clock_now = [datetime.fromisoformat(feed_list[0][0][0][contract.TIMESTAMP].replace("Z", "+00:00"))]
    clock = lambda: clock_now[0]
    device_client = s3.make_client(proxy.url, attempts=1)
    device_store = open_store(store_url, client=device_client)
    fleet = [
        SimStation(i, work / "stations", feed_list[i % len(feed_list)], base_url, store_url, proxy.url, keys / "root.json", clock, device_store, device_client,
                   int(params.station.photo_budget_mb * 1e6), params.station.batch_readings)
        for i in range(stations)
    ]
    rng = random.Random(faults.seed)
    timeline = Timeline()
    taken = pulls = kills = 0
    pull_seconds = 0.0
    had_model: set[str] = set()
    ever_lacking: set[str] = set()
    back_at: int | None = None
    release_version = 2
    start_time = clock_now[0]
    try:
        for hour in range(hours):
            clock_now[0] = start_time + timedelta(hours=hour)
            proxy.down = faults.down_hours is not None and faults.down_hours[0] <= hour < faults.down_hours[1]
            if hour == release_at:
                package = repackage(baseline, work / f"release-{release_version}", release_version, sign_key, degrade=scenario == BAD)
                registry.publish(store, package, public_key=signing.load_private_key(sign_key).public_key(), keys=keys, rollout={"percent": params.rollout.rings[0]}, delta_bases=params.flow.delta_bases)
                rollout.start(store, registry.PRODUCTION, params.rollout, clock_now[0], keys=keys)
            for site in fleet:
                site.observe(hour)
                taken += 1
            for site in fleet:
                if (hour + site.index) % pull_every:
                    continue
                agent_module.crash_hook = _crash_at(rng.choice(agent_module.STEPS)) if rng.random() < faults.kill_rate else None
                began = time.perf_counter()
                try:
                    site.station.cycle()
                except SimulatedCrash:
                    kills += 1
                    site.restart()
                finally:
                    agent_module.crash_hook = None
                pull_seconds += time.perf_counter() - began
                pulls += 1
            versions: dict[int | None, int] = defaultdict(int)
            for site in fleet:
                version = site.verified_version()
                versions[version] += 1
                if version is not None:
                    had_model.add(site.device_id)
                elif site.device_id in had_model:  # once installed, a station must always have a verified model
                    ever_lacking.add(site.device_id)
            timeline.versions.append(dict(versions))
            if hour >= release_at:
                state = rollout.read_state(store, registry.PRODUCTION)
                if state and state["state"] == rollout.RUNNING:
                    timeline.decisions.append(_check(params_file, store_url, endpoint, keys, clock_now[0], use_flow))
                state = rollout.read_state(store, registry.PRODUCTION)
                if scenario == BAD and back_at is None and state and state["state"] == rollout.ABORTED and versions.get(1, 0) == stations:
                    back_at = hour
        proxy.down = False
        for site in fleet:  # the store is back: every station sends what it still holds
            site.station.upload()
    finally:
        agent_module.crash_hook = None
        proxy.close()
        for site in fleet:
            site.journal.close()
    in_store = readings_in_store(store, [site.device_id for site in fleet])
    final_state = rollout.read_state(store, registry.PRODUCTION)
    return {
        "scenario": scenario,
        "stations": stations,
        "hours": hours,
        "readings_taken": taken,
        "readings_in_store": in_store["readings"],
        "duplicates_in_store": in_store["duplicates"],
        "gaps_in_store": in_store["gaps"],
        "pulls": pulls,
        "pulls_per_s": pulls / pull_seconds if pull_seconds else None,
        "kills": kills,
        "cut_responses": proxy.cuts,
        "refused_while_down": proxy.refused,
        "rollout_state": final_state["state"] if final_state else None,
        "rollout_history": final_state["history"] if final_state else [],
        "final_versions": timeline.versions[-1] if timeline.versions else {},
        "hours_bad_release_to_fleet_back": (back_at - release_at) if back_at is not None else None,
        "devices_ever_without_verified_model": len(ever_lacking),
        "decisions": timeline.decisions,
    }


def _crash_at(step: str):
    def hook(at: str) -> None:
        if at == step:
            raise SimulatedCrash(step)

    return hook


def _check(params_file: Path, store_url: str, endpoint: str, keys: Path, now: datetime, use_flow: bool) -> dict[str, Any]:
    """One rollout check on simulated time: the Prefect flow (default) or the same library calls."""
    if use_flow:
        import os

        from flows.rollout import rollout_check

        os.environ.setdefault("AWS_ENDPOINT_URL", endpoint)
        state = rollout_check(workspace=str(params_file.parent), params_file=params_file.name, store=store_url, keys=str(keys), now=now.isoformat(), return_state=True)
        return {"at": now.isoformat(), "state": state.name, "message": state.message}
    from skyedge.core.config import load_params
    from skyedge.evaluation import rollout

    params = load_params(params_file)
    store = open_store(store_url, endpoint_url=endpoint)
    state = rollout.read_state(store, registry.PRODUCTION)
    decision = rollout.decide(state, params.rollout, registry.read_channel(store, registry.PRODUCTION), rollout.device_statuses(store), now)
    rollout.apply(store, state, decision, now, keys=keys)
    return {"at": now.isoformat(), "state": decision.action, "message": decision.reason}


def readings_in_store(store, device_ids: list[str]) -> dict[str, int]:
    """Readings held by the batch objects of these devices: total, duplicated seqs, missing seqs."""
    total = duplicates = gaps = 0
    for device_id in device_ids:
        seen: set[int] = set()
        for key in store.list(batches.observations_prefix(device_id)):
            parsed = batches.parse_batch_key(key)
            if parsed is None:
                continue
            document = json.loads(store.get_bytes(key))["document"]
            seqs = [row["seq"] for row in document["rows"]]
            duplicates += len(seen & set(seqs))
            seen |= set(seqs)
        total += len(seen)
        gaps += (max(seen) - len(seen)) if seen else 0
    return {"readings": total, "duplicates": duplicates, "gaps": gaps}


SUMMARY_COLUMNS = [
    Column("scenario", align="left"), Column("stations"), Column("hours"), Column("readings_taken", "readings taken"),
    Column("readings_in_store", "in store"), Column("duplicates_in_store", "duplicates"), Column("gaps_in_store", "gaps"),
    Column("pulls"), Column("pulls_per_s", "pulls/s", format=".1f"), Column("kills"), Column("cut_responses", "cut"),
    Column("rollout_state", "rollout", align="left"), Column("hours_bad_release_to_fleet_back", "h to back"),
    Column("devices_ever_without_verified_model", "without model"),
]


def summary(result: dict[str, Any]) -> str:
    """The run as a table, then the rollout's decisions as an operator reads them."""
    from skyedge.evaluation import rollout

    lines = [text_table([result], SUMMARY_COLUMNS), "", f"versions at the end: {result['final_versions']}", ""]
    history = {"history": result["rollout_history"]}
    lines.append(rollout.ring_history(history) if result["rollout_history"] else "no rollout decision")
    if result["rollout_history"]:
        last = result["rollout_history"][-1]
        lines += ["", f"last decision ({last['action']} at ring {last['ring']:g}%, {last['decided_at']}): {last['reason']}", text_table(last["comparisons"], rollout.COMPARISON_COLUMNS)]
    return "\n".join(lines)

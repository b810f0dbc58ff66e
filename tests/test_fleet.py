"""The closed loop on one machine: stations record, score and upload; the rollout flow (real Prefect
runs) widens a good release and aborts a bad one, with the store down, responses cut and agents
killed on the way. Real agents, a real S3 server (moto) on 127.0.0.1, real flows."""

from __future__ import annotations

import csv
import json
import shutil
import uuid
from pathlib import Path

import boto3
import pytest
import yaml

from cli.main import main as cli_main
from flows import fleet_sim
from skyedge.data import synthetic
from skyedge.evaluation import fleet, rollout
from skyedge.release.signing import load_or_create_private_key
from skyedge.release.store import open_store
from tests import sample_package

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def bucket(aws_env) -> str:
    name = f"skyedge-fleet-{uuid.uuid4().hex[:10]}"
    client = boto3.client("s3")
    client.create_bucket(Bucket=name)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{name}/*"}]}
    client.put_bucket_policy(Bucket=name, Policy=json.dumps(policy))
    return f"s3://{name}/registry"


@pytest.fixture(scope="module")
def feeds(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("feeds")
    synthetic.generate(folder, stations=3, days=3, seed=0, image_size=64, unlabelled_share=0.0)
    return folder


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("baseline")
    return sample_package.build_package(root / "package", 1, load_or_create_private_key(root / "key.pem"), container=True, bias=0.0, persistence=True)


def small_fleet_workspace(tmp_path: Path) -> Path:
    """params.yaml with rings a fleet of six can show: a first ring of a third, short soak."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    shutil.copytree(REPO / "profiles", workspace / "profiles")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["rollout"].update(rings=[34, 100], soak_hours=3, min_matured_forecasts=12, n_boot=200)
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    return workspace


def simulate(tmp_path, bucket, feeds, baseline, scenario, faults, hours=32) -> dict:
    return fleet_sim.run(
        small_fleet_workspace(tmp_path) / "params.yaml", bucket, None, feeds, baseline, stations=6, hours=hours, scenario=scenario,
        release_at=10, pull_every=2, faults=faults, work=tmp_path / "work",
    )


def test_a_bad_release_is_aborted_at_the_first_ring_and_every_station_goes_back_losing_no_reading(tmp_path, bucket, feeds, baseline, prefect_harness):
    faults = fleet_sim.Faults(down_hours=(3, 6), cut_rate=0.03, kill_rate=0.1, seed=1)
    result = simulate(tmp_path, bucket, feeds, baseline, fleet_sim.BAD, faults)
    assert result["rollout_state"] == rollout.ABORTED, result["rollout_history"]
    aborted = result["rollout_history"][-1]
    assert aborted["action"] == "abort" and aborted["ring"] == 34 and ("temp_skill_persistence" in aborted["reason"] or "rain_bss_persistence" in aborted["reason"])  # both were degraded
    assert result["final_versions"] == {1: 6}  # every station back on the release before
    assert result["hours_bad_release_to_fleet_back"] is not None
    assert result["readings_taken"] == result["readings_in_store"] == 6 * 32
    assert result["duplicates_in_store"] == result["gaps_in_store"] == 0
    assert result["devices_ever_without_verified_model"] == 0
    assert result["kills"] > 0 and result["cut_responses"] > 0 and result["refused_while_down"] > 0  # the faults happened
    assert [d["state"] for d in result["decisions"]][-1] == "Aborted"  # decided by the rollout flow's runs


def test_a_good_release_widens_ring_by_ring_to_the_whole_fleet(tmp_path, bucket, feeds, baseline, prefect_harness):
    result = simulate(tmp_path, bucket, feeds, baseline, fleet_sim.GOOD, fleet_sim.Faults(seed=2), hours=44)  # the first ring's verdict needs two days
    actions = [d["action"] for d in result["rollout_history"]]
    assert result["rollout_state"] == rollout.COMPLETED, result["rollout_history"]
    assert [a for a in actions if a != "hold"] == ["advance", "complete"] and "hold" in actions  # held while the evidence was thin
    advanced = next(d for d in result["rollout_history"] if d["action"] == "advance")
    # The good release forecasts as the old one did; compared on the same readings (the old one's
    # shadow forecasts on the new release's stations) the difference is exactly 0.
    assert all(c["difference"] == 0.0 and c["forecasts"] >= 12 and c["verdict"] == "non-inferior" for c in advanced["comparisons"])
    assert result["final_versions"] == {2: 6}
    assert result["readings_taken"] == result["readings_in_store"]
    store = open_store(bucket)
    rows = fleet.station_rows(store)
    assert len(rows) == 6 and all(row["version"] == 2 and row["check"] == "ok" for row in rows)
    assert all(row["n"] > 0 and row["temp_skill"] != "- - - -" for row in rows)  # field skill reported by every station
    assert fleet.read_history(store)  # the rollout flow recorded the fleet at each check
    assert "Field skill per release" in store.get_bytes("fleet/report.html").decode()


def test_the_cli_provisions_observes_registers_and_shows_a_station(tmp_path, bucket, feeds, capsys):
    state = tmp_path / "station"
    assert cli_main(["device", "provision", "--state", str(state), "--device-id", "dev-a", "--station", "syn-00", "--params", str(REPO / "params.yaml")]) == 0
    assert cli_main(["fleet", "register", "--store", bucket, str(state / "device.json")]) == 0
    sensors = next(feeds.rglob("syn-00*.csv"))
    with open(sensors, newline="") as handle:
        rows = list(csv.DictReader(handle))[:4]
    rows[-1]["temperature_c"] = "300.0"  # a reading in Kelvin
    window = tmp_path / "window.csv"
    with open(window, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "image": ""} for row in rows)
    assert cli_main(["device", "observe", "--state", str(state), "--sensors", str(window)]) == 0
    out = capsys.readouterr().out
    assert "reading 4" in out and "temperature_c_unit_kelvin" in out and "no forecast (no-active-model)" in out
    assert cli_main(["device", "status", "--state", str(state)]) == 0
    status = capsys.readouterr().out
    assert "station syn-00, device dev-a" in status and "4 readings, 4 waiting" in status


def test_rollout_check_reads_the_params_file_and_the_endpoint_it_is_given(tmp_path, bucket, moto_endpoint, monkeypatch, capsys, prefect_harness):
    """No params.yaml beside it and no $AWS_ENDPOINT_URL: what the command names is all it has."""
    workspace = small_fleet_workspace(tmp_path)
    params_file = (workspace / "params.yaml").rename(workspace / "rollout-params.yaml")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    code = cli_main(["rollout", "check", "--store", bucket, "--endpoint-url", moto_endpoint, "--params", str(params_file)])
    assert code == 0
    assert "no rollout running on production" in capsys.readouterr().out

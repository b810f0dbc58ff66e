"""`make bench-fleet`: the closed loop at fleet scale, two scenarios in one run.

200 simulated stations, 72 simulated hours, faults on (the store down for three hours, 2% of
responses cut mid-body, 2% of cycles killed at a random install step), against moto's S3 server
on 127.0.0.1 started here. A good release must reach 100% of the fleet; a bad one (its
predictions degraded on purpose) must be aborted at the first ring with every station back on the
release before. Reports readings taken vs in the store, pulls/s, the simulated hours from the bad
release to the fleet back, stations that ever lacked a verified model, and the peak RSS of one
agent (a station's whole cycle in a process of its own). Prints a table, writes
reports/bench_fleet.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from flows import fleet_sim
from skyedge.core import inference
from skyedge.core.tables import Column, text_table

_ONE_AGENT = """
import json, sys
from pathlib import Path
from flows import fleet_sim
from skyedge.core.inference import peak_rss_bytes
result = fleet_sim.run(Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5]), stations=1, hours=int(sys.argv[6]),
                       scenario="good", release_at=int(sys.argv[6]) // 2, pull_every=1, faults=fleet_sim.Faults(), work=Path(sys.argv[7]), use_flow=False)
print(json.dumps({"peak_rss_mb": peak_rss_bytes() / 2**20, "pulls": result["pulls"]}))
"""

COLUMNS = [
    Column("scenario", align="left"), Column("stations"), Column("hours"), Column("readings_taken", "readings taken"), Column("readings_in_store", "in store"),
    Column("duplicates_in_store", "dup"), Column("pulls"), Column("pulls_per_s", "pulls/s", format=".1f"), Column("kills"), Column("cut_responses", "cut"),
    Column("rollout_state", "rollout", align="left"), Column("hours_bad_release_to_fleet_back", "h bad -> back"),
    Column("devices_ever_without_verified_model", "ever without model"), Column("wall_s", "wall s", format=".0f"),
]


def bucket(endpoint: str) -> str:
    import boto3

    name = f"skyedge-fleet-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=name)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{name}/*"}]}
    client.put_bucket_policy(Bucket=name, Policy=json.dumps(policy))
    return f"s3://{name}/registry"


def start_s3_server() -> tuple[subprocess.Popen, str]:
    """moto's S3 server in a process of its own, as a real store would be: in this process (a
    thread) it would compete with the simulated stations for the interpreter lock and slow both."""
    import socket
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            return server, endpoint
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"bench-fleet: moto's S3 server exited ({server.returncode})")
            time.sleep(0.1)
    server.terminate()
    raise SystemExit("bench-fleet: moto's S3 server did not answer within 30 s")


def run_scenario(scenario: str, package: Path, feeds: Path, stations: int, hours: int, release_at: int, pull_every: int, work: Path) -> dict:
    """One scenario against an S3 server of its own: the store down for hours 30-33, 2% of
    responses cut, 2% of cycles killed."""
    import time

    server, endpoint = start_s3_server()
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        faults = fleet_sim.Faults(down_hours=(30, 33), cut_rate=0.02, kill_rate=0.02, seed=0)
        started = time.perf_counter()
        result = fleet_sim.run(Path.cwd() / "params.yaml", bucket(endpoint), endpoint, feeds, package, stations, hours, scenario, release_at, pull_every, faults, work)
        result["wall_s"] = time.perf_counter() - started
        return result
    finally:
        server.terminate()
        server.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=Path("data/package"), help="the release the fleet starts on")
    parser.add_argument("--stations", type=int, default=200)
    parser.add_argument("--hours", type=int, default=72)
    parser.add_argument("--release-at", type=int, default=12)
    parser.add_argument("--pull-every", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("reports/bench_fleet.json"))
    parser.add_argument("--scenario", choices=(fleet_sim.GOOD, fleet_sim.BAD), help=argparse.SUPPRESS)  # one scenario, in the process the bench starts for it
    parser.add_argument("--feeds", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not (args.package / "manifest.json").exists():
        raise SystemExit(f"bench-fleet: {args.package} is not a package: run `make run` first (or pass --package)")

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # as the CLI: offline, telemetry only logs errors
    if args.scenario:
        result = run_scenario(args.scenario, args.package, args.feeds, args.stations, args.hours, args.release_at, args.pull_every, args.out.parent / args.scenario)
        args.out.write_text(json.dumps(result, default=str) + "\n")
        return
    with tempfile.TemporaryDirectory(prefix="skyedge-bench-fleet-") as scratch_dir:
        scratch = Path(scratch_dir)
        from skyedge.data import synthetic

        feeds = scratch / "feeds"
        synthetic.generate(feeds, stations=8, days=-(-args.hours // 24), seed=0, image_size=64, unlabelled_share=0.0)
        # The two fleets are independent: each in a process of its own with its own S3 server, side
        # by side (one after the other, 200 x 72 takes twice as long on 2 cores for the same numbers).
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        common = ["--package", str(args.package), "--feeds", str(feeds), "--stations", str(args.stations), "--hours", str(args.hours),
                  "--release-at", str(args.release_at), "--pull-every", str(args.pull_every)]
        runs = {
            # Each with a Prefect home of its own: two temporary Prefect servers on one SQLite file would lock each other.
            scenario: subprocess.Popen([sys.executable, "-m", "flows.fleet_bench", *common, "--scenario", scenario, "--out", str(scratch / f"{scenario}.json")],
                                       env={**env, "PREFECT_HOME": str(scratch / f"prefect-{scenario}")})
            for scenario in (fleet_sim.GOOD, fleet_sim.BAD)
        }
        failed = [scenario for scenario, run in runs.items() if run.wait() != 0]
        if failed:
            raise SystemExit(f"bench-fleet: the {', '.join(failed)} scenario failed (its output is above)")
        results = [json.loads((scratch / f"{scenario}.json").read_text()) for scenario in runs]
        for result in results:
            print(fleet_sim.summary(result), flush=True)
        server, endpoint = start_s3_server()
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        try:
            one = subprocess.run(
                [sys.executable, "-c", _ONE_AGENT, str(Path.cwd() / "params.yaml"), bucket(endpoint), endpoint, str(feeds), str(args.package), "24", str(scratch / "one")],
                capture_output=True, text=True, check=True, env=env,
            )
        finally:
            server.terminate()
            server.wait()
        agent = json.loads(one.stdout.strip().splitlines()[-1])
    print(text_table(results, COLUMNS))
    print(f"one agent (record + forecast + upload + pull each hour, 24 h, its own process): peak RSS {agent['peak_rss_mb']:.0f} MB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": inference.machine(), "scenarios": results, "one_agent": agent}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()

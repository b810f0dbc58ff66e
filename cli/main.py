"""`skyedge`: the command line. Each command imports what it needs when it runs, so `--help` is fast."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def cmd_generate(args: argparse.Namespace) -> int:
    from skyedge.core.config import load_params
    from skyedge.data import synthetic

    # What is not given comes from params.yaml's synthetic source: defaults have one home.
    source = next((s for s in load_params(args.params).ingest.sources if s.type == "synthetic"), None)
    settings = {key: getattr(args, key) if getattr(args, key) is not None else getattr(source, key, None) for key in ("stations", "days", "seed", "image_size", "unlabelled_share", "camera")}
    missing = [f"--{key.replace('_', '-')}" for key, value in settings.items() if value is None]
    if missing:
        print(f"generate: {args.params} has no synthetic source: pass {', '.join(missing)}", file=sys.stderr)
        return 2
    summary = synthetic.generate(args.out, settings["stations"], settings["days"], settings["seed"], settings["image_size"], settings["unlabelled_share"], settings["camera"], progress=True)
    print(f"wrote {summary['records']} records and {summary['images']} images for {summary['stations']} stations to {args.out}")
    print(f"rain in {summary['rain_fraction']:.1%} of hours; sky classes: {summary['class_counts']}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    """Ingest folders, index.csv files (their folder), s3:// prefixes and fleet:s3:// stores into --out."""
    from skyedge.core.config import ConfigError, load_params
    from skyedge.data import sources as s3
    from skyedge.data.ingest import format_report
    from stages import ingest

    base = load_params(args.params)  # ingest and data settings; a missing file is a ConfigError that says so
    try:
        sources = [s3.parse_source(source) for source in args.sources]
        config = base.ingest.model_validate({**base.ingest.model_dump(), "sources": sources})
    except Exception as error:  # parse_source's or pydantic's message names the bad source
        raise ConfigError(f"skyedge ingest: invalid source: {error}") from None
    try:
        report = ingest.run(config, base.data, args.out)
    except (FileNotFoundError, s3.S3SourceError, ValueError) as error:
        print(f"skyedge ingest: {error}", file=sys.stderr)
        return 1
    print(format_report(report))
    return 0


def cmd_repro(args: argparse.Namespace) -> int:
    """The pipeline as a DVC experiment (`dvc exp run`: `dvc exp show` lists it), on another
    profile when asked: validated first, then only common.profile is written."""
    _venv_on_path()
    from skyedge.core.config import ConfigError, select_profile

    if args.profile:
        try:
            select_profile(Path("params.yaml"), args.profile)
        except ConfigError as error:
            print(f"repro: FAILED: {error}", file=sys.stderr)
            return 2
    command = ["dvc", "exp", "run", *args.stages]
    print("+", " ".join(command), flush=True)
    return subprocess.call(command)


def cmd_report(args: argparse.Namespace) -> int:
    import json

    from skyedge.core import files, paths
    from stages.evaluate import variant_table

    table = (paths.Evaluate(args.evaluate) if args.evaluate else paths.Workspace().evaluate).variants
    if not table.exists():
        print(f"{table} not found: run `dvc repro` (or `make run`) first", file=sys.stderr)
        return 1
    print(variant_table(files.read_rows(table)))
    distilled = paths.Workspace().distill.metrics
    if not args.evaluate and distilled.exists():
        print(chosen_student_line(json.loads(distilled.read_text())))
    return 0


def chosen_student_line(distill_metrics: dict) -> str:
    """Which student was pruned and shipped, and the grouped-validation numbers that chose it."""
    accuracy = {name: distill_metrics[name]["val_sky_accuracy"] for name in ("student", "student_alone")}
    chosen = distill_metrics.get("chosen", "student")  # a run from before the choice always pruned the KD student
    return (
        f"pruned and shipped: {chosen} (grouped validation sky accuracy: "
        f"with KD {accuracy['student']:.3f}, alone {accuracy['student_alone']:.3f})"
    )


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from skyedge.evaluation import packaged

    result = packaged.evaluate(
        args.model,
        args.stations,
        args.images,
        n_boot=args.bootstrap,
        seed=args.seed,
        max_window_gap_hours=args.max_window_gap,
        measure=not args.no_runtime,
        runtime_runs=args.runtime_runs,
        warmup_runs=args.warmup_runs,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result.metrics, indent=2, allow_nan=False) + "\n")
    print(packaged.summary_table(result.metrics))
    print(f"wrote {args.out}")
    if args.report:
        from skyedge.evaluation.report import write_report

        print(f"wrote {write_report(result, args.report)}")
    return 0


def _trusted_public_key(path: Path | None, command: str):
    """The ed25519 key a package must be signed with: --public-key, else the local signing key's."""
    from skyedge.release import signing

    if path:
        return signing.load_public_key(path)
    key_path = signing.key_path_from_env()
    if not key_path.exists():
        print(f"{command}: no trusted key: pass --public-key PEM (no signing key at {key_path})", file=sys.stderr)
        return None
    return signing.load_private_key(key_path).public_key()


def cmd_verify(args: argparse.Namespace) -> int:
    from skyedge.release import manifest, signing

    try:
        public_key = _trusted_public_key(args.public_key, "verify")
        if public_key is None:
            return 2
        document = manifest.verify_package(args.package, public_key)
    except (manifest.PackageError, signing.SigningError) as error:
        print(f"verify: FAILED: {error}", file=sys.stderr)
        return 1
    print(f"verify: OK: {document['name']} version {document['version']} ({len(document['files'])} files, signed by {signing.key_id(public_key)[:16]}…)")
    return 0


def _open_store(args: argparse.Namespace):
    from skyedge.release.store import open_store

    return open_store(args.store, endpoint_url=args.endpoint_url)


def _store_errors() -> tuple[type[Exception], ...]:
    from skyedge.release import manifest, registry, signing, store

    return (registry.RegistryError, store.StoreError, manifest.PackageError, signing.SigningError)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _table(headers: list[str], rows: list[list[object]]) -> str:
    from skyedge.core.tables import Column, text_table

    return text_table([dict(zip(headers, row)) for row in rows], [Column(h, align="left", format=str, missing="-") for h in headers], rule=True)


def cmd_package_inspect(args: argparse.Namespace) -> int:
    import json

    from skyedge.core.tables import Column, text_table
    from skyedge.release import container, manifest, registry

    document = json.loads((args.package / manifest.MANIFEST_FILE).read_text())
    coded = document.get("container")
    if coded is None:
        print(f"package inspect: {args.package} has no container (packaged before model.skc existed): stations download model.onnx whole", file=sys.stderr)
        return 1
    rows = container.inspect((args.package / coded["path"]).read_bytes())
    print(f"{args.package / coded['path']}: version {document['version']}, coded tensors (float32 initializers of at least {container.MIN_CODED_BYTES} bytes)")
    columns = [
        Column("name", align="left"),
        Column("shape", format=lambda v: "x".join(map(str, v)) or "scalar"),
        Column("sparsity", format=".1%"),
        Column("distinct"),
        Column("bits"),
        Column("coding", align="left"),
        Column("raw_bytes", "raw B"),
        Column("coded_bytes", "coded B"),
    ]
    print(text_table(rows, columns, rule=True))
    model_bytes = (args.package / manifest.MODEL_FILE).stat().st_size
    downloads = [{"from": "nothing (new station)", "object": "model.onnx", "bytes": model_bytes}, {"from": "nothing (new station)", "object": coded["path"], "bytes": coded["size_bytes"]}]
    if args.store:
        store = _open_store(args)
        for key, (size, _) in sorted(registry.delta_objects(store, document["version"]).items()):
            downloads.append({"from": f"version {key.rsplit('from-', 1)[1].removesuffix('.skd')}", "object": key, "bytes": size})
    for row in downloads:
        row["of_model"] = row["bytes"] / model_bytes
    print()
    print("what a station downloads to install this version")
    print(text_table(downloads, [Column("from", align="left"), Column("object", align="left"), Column("bytes"), Column("of_model", "of model.onnx", format=".1%")], rule=True))
    return 0


def _params_delta_bases() -> int:
    from skyedge.core.config import load_params

    return load_params(Path("params.yaml")).flow.delta_bases if Path("params.yaml").exists() else 0


def cmd_publish(args: argparse.Namespace) -> int:
    from skyedge.release import registry

    try:
        public_key = _trusted_public_key(args.public_key, "publish")
        if public_key is None:
            return 2
        if args.force and not (args.reason or "").strip():
            print("publish: --force needs --reason TEXT: why this version ships anyway (stored with it as override.json)", file=sys.stderr)
            return 2
        store = _open_store(args)
        rollout = _rollout(args)
        override = {"by": os.environ.get("USER") or "operator", "reason": args.reason.strip(), "at": _now()} if args.force else None
        delta_bases = args.delta_bases if args.delta_bases is not None else _params_delta_bases()
        result = registry.publish(
            store, args.package, channel=args.channel, public_key=public_key, force=args.force, keys=args.keys, rollout=rollout, override=override, delta_bases=delta_bases
        )
    except _store_errors() as error:
        print(f"publish: FAILED: {error}", file=sys.stderr)
        return 1
    uploaded = sorted(n for n, s in result["objects"].items() if s == "uploaded")
    present = sorted(n for n, s in result["objects"].items() if s == "present")
    print(f"uploaded {len(uploaded)} objects ({', '.join(uploaded) or 'none'}); {len(present)} already present and identical")
    previous = result["pointer"].get("previous")
    if result["status"] == "unchanged":
        print(f"publish: {args.channel} already points to version {result['version']} in {store.url}: nothing to do")
    else:
        was = f" (was {previous['version']})" if previous else " (first release on this channel)"
        print(f"publish: OK: {args.channel} -> version {result['version']}{was} in {store.url}")
    if "tuf" in result:
        tuf = result["tuf"]
        print(f"publish: TUF metadata {tuf['status']}: targets v{tuf['targets_version']}, timestamp v{tuf['timestamp_version']}")
    if result["pointer"].get("rollout"):
        print(f"publish: staged rollout {result['pointer']['rollout']}")
    return 0


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _rollout(args: argparse.Namespace) -> dict | None:
    rollout = {}
    if getattr(args, "rollout_percent", None) is not None:
        rollout["percent"] = args.rollout_percent
    if getattr(args, "rollout_devices", None):
        rollout["devices"] = [d for d in args.rollout_devices.split(",") if d]
    return rollout or None


def cmd_keys_init(args: argparse.Namespace) -> int:
    from skyedge.release import tuf

    try:
        expiry = {role: value for role, value in (("timestamp", args.timestamp_expiry), ("snapshot", args.snapshot_expiry), ("targets", args.targets_expiry), ("root", args.root_expiry)) if value}
        root = tuf.init_keys(args.dir, threshold=args.threshold, root_keys=args.root_keys, expiry=expiry)
    except tuf.TrustError as error:
        print(f"keys init: FAILED: {error}", file=sys.stderr)
        return 1
    print(f"keys init: OK: {root} (provision devices with it); root keys in {args.dir / 'root'} (keep offline), online keys in {args.dir / 'online'}")
    return 0


def cmd_keys_refresh(args: argparse.Namespace) -> int:
    from skyedge.release import tuf

    try:
        timestamp = tuf.refresh_timestamp(_open_store(args), args.dir, args.expiry)
    except (tuf.TrustError, *_store_errors()) as error:
        print(f"keys refresh-timestamp: FAILED: {error}", file=sys.stderr)
        return 1
    print(f"keys refresh-timestamp: OK: timestamp v{timestamp.version} expires {timestamp.expires.isoformat()}")
    return 0


def _agent(args: argparse.Namespace):
    from skyedge.device import agent
    from skyedge.release.store import open_store

    base = args.base_url or agent.base_url_for(args.store, args.endpoint_url)
    status_store = None if args.store.startswith(("http://", "https://")) else open_store(args.store, endpoint_url=args.endpoint_url)
    return agent.Agent(args.state, base, channel=args.channel, device_id=args.device_id, trusted_root=args.trusted_root, status_store=status_store)


def _print_status(status: dict) -> None:
    line = f"device {status['device_id']}: {status['state']}; active version {status['version']} (previous {status['previous_version']})"
    if status.get("reason"):
        line += f"; reason {status['reason']}: {status['last_error']}"
    print(line, flush=True)


def cmd_device_pull(args: argparse.Namespace) -> int:
    status = _agent(args).pull()
    _print_status(status)
    return 0 if status["state"] in ("updated", "up-to-date", "not-in-cohort", "held") else 1


def cmd_device_run(args: argparse.Namespace) -> int:
    from skyedge.device import agent, station

    device = _agent(args)
    if args.feed is None:
        agent.run(device, interval_s=args.interval, retry_s=args.retry, iterations=args.iterations, on_status=_print_status)
        return 0
    try:
        config = station.load_config(args.state)
    except ValueError as error:
        print(f"device run: FAILED: {error}", file=sys.stderr)
        return 2
    with station.open_journal(args.state, config) as journal:
        site = station.Station(device, journal, config, args.store, args.endpoint_url)
        # Each cycle: the feed's new readings into the journal, uploads, then the pull and its report.
        agent.run(device, interval_s=args.interval, retry_s=args.retry, iterations=args.iterations, on_status=_print_status, step=lambda: site.cycle(args.feed))
    return 0


def cmd_device_provision(args: argparse.Namespace) -> int:
    """Make the device's upload key and registration, and station.json from params.yaml's station section."""
    from skyedge.core.config import ConfigError, load_params
    from skyedge.device import station

    try:
        params = load_params(args.params)
        config = station.StationConfig(
            device_id=args.device_id, station_id=args.station, photo_budget_bytes=int(params.station.photo_budget_mb * 1e6),
            batch_readings=params.station.batch_readings, latitude=args.latitude, longitude=args.longitude,
        )
        station.provision(args.state, config)
    except (ConfigError, ValueError) as error:
        print(f"device provision: FAILED: {error}", file=sys.stderr)
        return 2
    print(f"device {args.device_id} of station {args.station} provisioned in {args.state}")
    print(f"the operator registers it (once): skyedge fleet register --store s3://BUCKET/PREFIX {args.state / 'device.json'}")
    return 0


def cmd_device_observe(args: argparse.Namespace) -> int:
    """Record readings (a contract CSV, + a photo for its last row) in the journal, forecast, score."""
    from skyedge.device import station

    try:
        config = station.load_config(args.state)
    except ValueError as error:
        print(f"device observe: FAILED: {error}", file=sys.stderr)
        return 2
    readings = station.feed_readings(args.sensors)
    if args.image is not None and readings:
        row, _, source = readings[-1]
        readings[-1] = (row, args.image, source)
    with station.open_journal(args.state, config) as journal:
        for row, photo, _ in readings:
            try:
                result = journal.observe(row, photo)
            except ValueError as error:
                print(f"device observe: {args.sensors}: {error}", file=sys.stderr)
                return 1
            flags = ", ".join(f"{f['field']}: {f['rule']}" for f in result.flags) or "none"
            made = f"forecast by version {result.forecast['model']['version']}" if result.forecast else f"no forecast ({result.forecast_skipped})"
            print(f"reading {result.seq} ({row.get('timestamp')}): flags {flags}; {made}")
    return 0


def cmd_device_status(args: argparse.Namespace) -> int:
    """The station's last status: version, field skill per horizon, drift, uplink."""
    import json

    from skyedge.device import station

    try:
        config = station.load_config(args.state)
    except ValueError as error:
        print(f"device status: FAILED: {error}", file=sys.stderr)
        return 2
    status_path = args.state / "status.json"
    status = json.loads(status_path.read_text()) if status_path.exists() else {}
    with station.open_journal(args.state, config) as journal:
        from skyedge.device.journal import status_sections

        manifest_path = args.state / "active" / "manifest.json"
        reference = json.loads(manifest_path.read_text()).get("training_statistics") if manifest_path.exists() else None
        status.update(status_sections(journal, reference))
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(station.format_status(config, status))
    return 0


def cmd_device_predict(args: argparse.Namespace) -> int:
    import json

    from skyedge.device import predict

    result = predict.forecast(args.state, args.sensors, args.image, args.station, latitude=args.latitude, longitude=args.longitude)
    print(json.dumps(result, indent=2) if args.json else predict.format_forecast(result))
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    """Per station: version (and what its channel says), health, field skill per horizon, drift
    flags, last seen, readings waiting to upload."""
    from skyedge.evaluation import fleet

    if args.fleet_command is None and not args.store:
        print("fleet: --store s3://BUCKET/PREFIX (or a directory) is required", file=sys.stderr)
        return 2
    try:
        store = _open_store(args)
        rows = fleet.station_rows(store)
    except _store_errors() as error:
        print(f"fleet: FAILED: {error}", file=sys.stderr)
        return 1
    if not rows:
        print(f"no device has reported to {store.url} yet")
        return 0
    print(fleet.station_table(rows))
    mismatched = sum(row["check"] != "ok" for row in rows)
    if mismatched:
        print(f"{mismatched} device(s) run a version other than their channel's: see the last pull's reason, or whether the release was signed for devices")
    return 0


def cmd_fleet_register(args: argparse.Namespace) -> int:
    """Upload a device's registration (from `skyedge device provision`): its batches are accepted from then on."""
    import json

    from skyedge.core import batches

    try:
        data = args.registration.read_bytes()
        device_id = str(json.loads(data)["device_id"])
        station_id, _ = batches.parse_registration(data, device_id)
        store = _open_store(args)
        store.put_bytes(batches.registration_key(device_id), data)
    except (OSError, ValueError, KeyError, *_store_errors()) as error:
        print(f"fleet register: FAILED: {args.registration}: {error}", file=sys.stderr)
        return 1
    print(f"fleet register: OK: device {device_id} of station {station_id} at {store.describe(batches.registration_key(device_id))}")
    return 0


def cmd_fleet_report(args: argparse.Namespace) -> int:
    from skyedge.core.config import load_params
    from skyedge.evaluation import fleet

    params = load_params(args.params)
    try:
        page = fleet.report_html(_open_store(args), args.channel, params.rollout.n_boot, params.rollout.seed)
    except _store_errors() as error:
        print(f"fleet report: FAILED: {error}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page)
    print(f"fleet report: {args.out}")
    return 0


def cmd_fleet_simulate(args: argparse.Namespace) -> int:
    """Replay station feeds hour by hour through real agents against the store, with faults, while
    the rollout flow decides; prints what happened."""
    _venv_on_path()
    import json
    import tempfile

    from flows import fleet_sim

    work = args.work or Path(tempfile.mkdtemp(prefix="skyedge-fleet-"))
    feeds = args.feeds
    if feeds is None:
        from skyedge.data import synthetic

        feeds = work / "feeds"
        synthetic.generate(feeds, stations=min(args.stations, 8), days=max(1, -(-args.hours // 24)), seed=0, image_size=64, unlabelled_share=0.0)
    down = tuple(int(x) for x in args.down_hours.split(":")) if args.down_hours else None
    result = fleet_sim.run(
        Path(args.params).resolve(), args.store, args.endpoint_url, feeds, args.package, args.stations, args.hours, args.scenario,
        args.release_at, args.pull_every, fleet_sim.Faults(down, args.cut_rate, args.kill_rate, args.seed), work, use_flow=not args.no_flow,
    )
    print(fleet_sim.summary(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0 if result["readings_taken"] == result["readings_in_store"] and not result["devices_ever_without_verified_model"] else 1


def cmd_registry_show(args: argparse.Namespace) -> int:
    from skyedge.release import registry

    try:
        state = registry.show(_open_store(args))
    except _store_errors() as error:
        print(f"registry show: FAILED: {error}", file=sys.stderr)
        return 1
    if not state["channels"] and not state["versions"]:
        print(f"registry show: nothing is there: no channels/ and no models/ under {state['store']}; check the URL's prefix", file=sys.stderr)
        return 1
    print(f"registry {state['store']}")
    print()
    channel_rows = [
        [name, p["version"], p.get("version_label"), p.get("published_at"), p.get("action", "publish"), (p.get("previous") or {}).get("version")]
        for name, p in sorted(state["channels"].items())
    ]
    print(_table(["channel", "version", "label", "published_at", "by", "replaced"], channel_rows) if channel_rows else "no channels yet")
    print()
    version_rows = [
        [
            v["version"],
            v["name"],
            v["created_at"],
            _size(v["size_bytes"]),
            len(v["objects"]),
            "yes" if v["complete"] else f"NO: {v['problem']}",
            ",".join(v["channels"]) or None,
            (v["decision"] or {}).get("reviewer"),
        ]
        for v in reversed(state["versions"])
    ]
    print(_table(["version", "name", "created_at", "size", "objects", "complete", "channels", "approved_by"], version_rows) if version_rows else "no versions yet")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from skyedge.release import registry

    try:
        store = _open_store(args)
        result = registry.rollback(store, channel=args.channel, keys=args.keys)
    except _store_errors() as error:
        print(f"rollback: FAILED: {error}", file=sys.stderr)
        return 1
    signed = "signed for devices (TUF)" if "tuf" in result else "no TUF metadata on this store: devices read the pointer as is"
    print(f"rollback: OK: {args.channel} -> version {result['version']} (was {result['rolled_back_from']}) in {store.url}; {signed}")
    return 0


def _rollout_context(args: argparse.Namespace):
    """(store, params, now) for the rollout commands."""
    from datetime import datetime, timezone

    from skyedge.core.config import load_params

    params = load_params(Path(args.params))
    return _open_store(args), params, datetime.now(timezone.utc)


def cmd_rollout(args: argparse.Namespace) -> int:
    """start | status | advance | abort a staged rollout (skyedge.evaluation.rollout)."""
    from skyedge.core.config import ConfigError
    from skyedge.evaluation import rollout
    from skyedge.release import registry

    try:
        store, params, now = _rollout_context(args)
        if args.rollout_command == "start":
            if args.package:
                public_key = _trusted_public_key(args.public_key, "rollout start")
                if public_key is None:
                    return 2
                published = registry.publish(
                    store, args.package, channel=args.channel, public_key=public_key, keys=args.keys,
                    rollout={"percent": params.rollout.rings[0]}, delta_bases=params.flow.delta_bases,
                )
                print(f"rollout: published version {published['version']} to {args.channel} for {params.rollout.rings[0]:g}% of the fleet")
            state = rollout.start(store, args.channel, params.rollout, now, keys=args.keys)
            print(f"rollout: OK: version {state['version']} replacing {state['previous_version']} on {args.channel}, rings {' -> '.join(f'{r:g}%' for r in state['rings'])}")
            print(f"the rollout flow (`skyedge rollout check`, or its deployment on {params.rollout.cron!r}) decides from here; `skyedge rollout status` shows why")
            return 0
        state = rollout.read_state(store, args.channel)
        if state is None:
            print(f"rollout: no rollout on {args.channel} in {store.url} (start one with `skyedge rollout start --package DIR`)", file=sys.stderr)
            return 1
        if args.rollout_command == "status":
            print(f"rollout of version {state['version']} (replacing {state['previous_version']}) on {args.channel}: {state['state']}, ring {state['rings'][state['ring']]:g}% of {', '.join(f'{r:g}%' for r in state['rings'])}")
            print()
            print(rollout.ring_history(state))
            if state["state"] == rollout.RUNNING:
                pointer = registry.read_channel(store, args.channel)
                decision = rollout.decide(state, params.rollout, pointer, rollout.device_statuses(store), now)
                print()
                print("the rollout flow would decide now (nothing changed by this command):")
                print(rollout.describe(state, decision))
            return 0
        if state["state"] != rollout.RUNNING:
            print(f"rollout: the rollout of version {state['version']} is {state['state']}: nothing to {args.rollout_command}", file=sys.stderr)
            return 1
        if not (args.reason or "").strip():
            print(f"rollout {args.rollout_command}: needs --reason TEXT (recorded in the rollout's history)", file=sys.stderr)
            return 2
        decision = rollout.operator_decision(state, rollout.ADVANCE if args.rollout_command == "advance" else rollout.ABORT, args.reason.strip(), now)
        updated = rollout.apply(store, state, decision, now, keys=args.keys)
        where = f"ring {updated['rings'][updated['ring']]:g}%" if updated["state"] == rollout.RUNNING else updated["state"]
        print(f"rollout: OK: {decision.action}: version {state['version']} on {args.channel} is now {where}")
        return 0
    except (ConfigError, rollout.RolloutError, *_store_errors()) as error:
        print(f"rollout {args.rollout_command}: FAILED: {error}", file=sys.stderr)
        return 1


def cmd_rollout_check(args: argparse.Namespace) -> int:
    """One run of the rollout flow now (what its deployment does on rollout.cron)."""
    _venv_on_path()
    from flows.rollout import rollout_check

    params_file = Path(args.params).resolve()
    state = rollout_check(
        workspace=str(params_file.parent), params_file=params_file.name, store=args.store, channel=args.channel,
        keys=str(args.keys) if args.keys else None, endpoint_url=args.endpoint_url, return_state=True,
    )
    print(f"rollout check: {state.name}: {state.message}")
    return 0 if state.is_completed() else 1


def _venv_on_path() -> None:
    """Flows run `dvc`, and DVC runs `python -m stages.…`: both must be this environment's."""
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


# `skyedge retrain` exit codes: what happened, for scripts and cron.
RETRAIN_EXIT = {"Published": 0, "NoChange": 0, "Rejected": 3, "NoDecision": 3, "GateRefused": 4}
RETRAIN_EXIT_FAILED, RETRAIN_EXIT_CONFIG, RETRAIN_EXIT_PREFLIGHT = 1, 2, 5


def cmd_retrain(args: argparse.Namespace) -> int:
    """The retrain flow once. Exit 0 published or nothing new, 1 a stage or the publish failed,
    2 bad params or profile, 3 rejected or no decision, 4 refused by the gate, 5 the store or keys
    cannot publish (found before any stage ran)."""
    _venv_on_path()
    from skyedge.core.config import ConfigError, load_params

    root = Path(args.workspace).resolve()
    try:
        params = load_params(root / "params.yaml", profile=args.profile)
    except ConfigError as error:
        print(f"retrain: FAILED: {error}", file=sys.stderr)
        return RETRAIN_EXIT_CONFIG
    from flows.retrain import PreflightFailed, check_publishable, resolve_store, retrain

    try:
        check_publishable(root, params, resolve_store(root, params, args.store))
    except PreflightFailed as error:
        print(f"retrain: FAILED: nothing ran: {error}", file=sys.stderr)
        return RETRAIN_EXIT_PREFLIGHT
    if args.approval == "auto":
        print("approval: auto: the gate decides and no operator is asked", flush=True)
    state = retrain(workspace=str(root), profile=args.profile, store=args.store, approval=args.approval, return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException) or not isinstance(result, dict):
        first_line = str(result).strip().splitlines()[0] if str(result).strip() else type(result).__name__
        print(f"retrain: FAILED: {first_line} (flow run {state.name}; the run's log has the details)", file=sys.stderr)
        return RETRAIN_EXIT_FAILED
    code = RETRAIN_EXIT.get(state.name, RETRAIN_EXIT_FAILED)
    if state.name == "Published":
        print(f"retrain: OK: version {result['version']} published; DVC outputs pushed to {result['dvc_remote']}")
    elif state.name == "NoChange":
        print(f"retrain: OK: the candidate is production version {result['version']} already: nothing published")
    else:
        word = {"GateRefused": "REFUSED", "Rejected": "REJECTED", "NoDecision": "NO DECISION"}.get(state.name, state.name)
        print(f"retrain: {word}: {state.message}", file=sys.stderr)
    return code


def cmd_serve(args: argparse.Namespace) -> int:
    """Register the retrain deployment on `flow.cron` and the rollout check on `rollout.cron` with a
    running Prefect server, and serve both."""
    _venv_on_path()
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        print("serve: no Prefect server: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api; `make serve` starts one)", file=sys.stderr)
        return 2
    from flows import schedule

    schedule.serve(args.workspace, profile=args.profile, store=args.store, approval=args.approval, name=args.name, cron=args.cron)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Student x width x input size x prune ratio x quantization mode on Dask; prints and writes the results table."""
    _venv_on_path()
    from flows import sweep

    configs = sweep.grid(args.students, args.ratios, args.quant, args.widths, args.sizes)
    where = args.dask_address or f"a LocalCluster ({args.workers} workers, torch threads per configuration: {sweep.threads_per_worker(args.workers)})"
    print(f"sweep: {len(configs)} configurations on {where}", flush=True)
    try:
        sweep.run_sweep(dask_address=args.dask_address, n_workers=args.workers, workspace=str(args.workspace), configs=configs, profile=args.profile, out=str(args.out))
    except RuntimeError as error:
        print(f"sweep: FAILED: {error}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skyedge", description="Train, compress, evaluate and ship a sky-camera nowcaster.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    generate = commands.add_parser("generate", help="write synthetic station records with a sky photo per hour")
    generate.add_argument("--out", type=Path, required=True)
    generate.add_argument("--stations", type=int, help="default: params.yaml's synthetic source")
    generate.add_argument("--days", type=int, help="default: params.yaml's synthetic source")
    generate.add_argument("--seed", type=int, help="default: params.yaml's synthetic source")
    generate.add_argument("--image-size", type=int, help="default: params.yaml's synthetic source")
    generate.add_argument("--unlabelled-share", type=float, help="share of photos left without a label in index.csv (default: params.yaml's)")
    generate.add_argument("--camera", choices=("clean", "fisheye"), help="clean: the sky alone; fisheye: a whole-sky camera with its horizon, obstructions, sun and night (default: params.yaml's)")
    generate.add_argument("--params", type=Path, default=Path("params.yaml"))
    generate.set_defaults(func=cmd_generate)

    ingest = commands.add_parser("ingest", help="validate station CSVs / labelled photos (folders, s3://, fleet:s3://) into a dataset")
    ingest.add_argument("sources", nargs="+", type=Path)
    ingest.add_argument("--out", type=Path, required=True)
    ingest.add_argument("--params", type=Path, default=Path("params.yaml"))
    ingest.set_defaults(func=cmd_ingest)

    repro = commands.add_parser("repro", help="run the DVC pipeline as an experiment (dvc exp run; dvc exp show lists it), optionally on another profile")
    repro.add_argument("stages", nargs="*")
    repro.add_argument("--profile", help="default | tiny | real | fisheye (profiles/): make it the active one in params.yaml first")
    repro.set_defaults(func=cmd_repro)

    report = commands.add_parser("report", help="print the variant table of the last evaluate stage")
    report.add_argument("--evaluate", type=Path, default=None, help="the evaluate stage directory (default: data/evaluate of this workspace)")
    report.set_defaults(func=cmd_report)

    evaluate = commands.add_parser("evaluate", help="score a packaged model on station records and/or labelled photos")
    evaluate.add_argument("model", type=Path, help="package dir (model.onnx + manifest.json) or an .onnx file with manifest.json beside it")
    evaluate.add_argument("--stations", type=Path, nargs="+", action="extend", default=[], metavar="CSV_OR_DIR")
    evaluate.add_argument("--images", type=Path, nargs="+", action="extend", default=[], metavar="INDEX_CSV_OR_DIR")
    evaluate.add_argument("--out", type=Path, required=True, help="metrics.json to write")
    evaluate.add_argument("--report", type=Path, help="also write a self-contained HTML report")
    evaluate.add_argument("--no-runtime", action="store_true", help="skip the latency/throughput/memory measurement")
    evaluate.add_argument("--bootstrap", type=int, default=500, help="bootstrap replicates (whole days resampled)")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--max-window-gap", type=int, help="skip station samples missing more window hours than this (default: half the window)")
    evaluate.add_argument("--runtime-runs", type=int, default=200)
    evaluate.add_argument("--warmup-runs", type=int, default=20)
    evaluate.set_defaults(func=cmd_evaluate)

    verify = commands.add_parser("verify", help="check a package's file hashes and manifest signature")
    verify.add_argument("package", type=Path)
    verify.add_argument("--public-key", type=Path, help="trusted ed25519 public key (PEM); default: the local signing key's")
    verify.set_defaults(func=cmd_verify)

    def add_store(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--store", required=True, help="s3://BUCKET/PREFIX or a local directory")
        sub.add_argument("--endpoint-url", help="S3 endpoint (MinIO, moto); default: $AWS_ENDPOINT_URL, else AWS")

    package = commands.add_parser("package", help="look inside a model package")
    package_commands = package.add_subparsers(dest="package_command", required=True, metavar="COMMAND")
    package_inspect = package_commands.add_parser("inspect", help="per tensor: shape, sparsity, bits, coded bytes; bytes a station downloads")
    package_inspect.add_argument("package", type=Path)
    package_inspect.add_argument("--store", help="registry (s3://BUCKET/PREFIX or a directory): also list the deltas published for this version")
    package_inspect.add_argument("--endpoint-url", help="S3 endpoint (MinIO, moto); default: $AWS_ENDPOINT_URL, else AWS")
    package_inspect.set_defaults(func=cmd_package_inspect)

    publish = commands.add_parser("publish", help="upload a package to the registry and move a channel to it")
    publish.add_argument("package", type=Path)
    add_store(publish)
    publish.add_argument("--channel", default="production")
    publish.add_argument("--public-key", type=Path, help="trusted ed25519 public key (PEM); default: the local signing key's")
    publish.add_argument("--force", action="store_true", help="publish a version the gate or an operator refused, or one not newer than the channel's (needs --reason)")
    publish.add_argument("--reason", help="with --force: why; stored with the version (override.json)")
    publish.add_argument("--keys", type=Path, help="TUF keys dir (skyedge keys init) to sign the release for devices; default $SKYEDGE_TUF_KEYS")
    publish.add_argument("--rollout-percent", type=float, help="staged rollout: this percentage of devices (by hash of device id)")
    publish.add_argument("--rollout-devices", help="staged rollout: comma-separated device ids")
    publish.add_argument("--delta-bases", type=int, help="write a delta from each of the last K releases; default: params.yaml flow.delta_bases (0 without params.yaml)")
    publish.set_defaults(func=cmd_publish)

    rollout = commands.add_parser("rollout", help="staged rollouts decided on field skill: start, status, advance, abort, check")
    rollout_commands = rollout.add_subparsers(dest="rollout_command", required=True, metavar="COMMAND")
    for name, text in (
        ("start", "publish a package to the first ring (--package) or take the channel's staged release, and start deciding"),
        ("status", "the rollout's ring, its decisions so far, and what the flow would decide now"),
        ("advance", "widen to the next ring now (an operator's decision, recorded with --reason)"),
        ("abort", "roll the channel back to the release it replaced (recorded with --reason)"),
        ("check", "one run of the rollout flow now: decide and carry it out"),
    ):
        command = rollout_commands.add_parser(name, help=text)
        add_store(command)
        command.add_argument("--channel", default="production")
        command.add_argument("--params", type=Path, default=Path("params.yaml"), help="rings, soak, margins: the rollout section")
        command.add_argument("--keys", type=Path, help="TUF keys dir to sign the rollout's pointer changes; default $SKYEDGE_TUF_KEYS")
        if name == "start":
            command.add_argument("--package", type=Path, help="publish this package to the first ring first")
            command.add_argument("--public-key", type=Path, help="trusted ed25519 public key (PEM); default: the local signing key's")
        if name in ("advance", "abort"):
            command.add_argument("--reason", help="why (recorded in the rollout's history)")
        command.set_defaults(func=cmd_rollout_check if name == "check" else cmd_rollout)

    keys = commands.add_parser("keys", help="TUF signing keys for over-the-air updates")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    keys_init = keys_commands.add_parser("init", help="create root (offline) and online keys and KEYS/root.json")
    keys_init.add_argument("--dir", type=Path, required=True)
    keys_init.add_argument("--threshold", type=int, default=1, help="root signatures needed to trust a root")
    keys_init.add_argument("--root-keys", type=int, help="number of root keys (default: the threshold)")
    keys_init.add_argument("--timestamp-expiry", help="e.g. 1d, 12h (default 7d): devices refuse older metadata (freeze)")
    keys_init.add_argument("--snapshot-expiry", help="default 30d")
    keys_init.add_argument("--targets-expiry", help="default 90d")
    keys_init.add_argument("--root-expiry", help="default 365d")
    keys_init.set_defaults(func=cmd_keys_init)
    keys_refresh = keys_commands.add_parser("refresh-timestamp", help="re-sign timestamp.json (run more often than its expiry)")
    keys_refresh.add_argument("--dir", type=Path, required=True)
    add_store(keys_refresh)
    keys_refresh.add_argument("--expiry", help="this timestamp's expiry (default: the keys' config)")
    keys_refresh.set_defaults(func=cmd_keys_refresh)

    device = commands.add_parser("device", help="the station agent: provision, pull, run, observe, predict, status")
    device_commands = device.add_subparsers(dest="device_command", required=True, metavar="COMMAND")

    def add_agent(sub: argparse.ArgumentParser) -> None:
        add_store(sub)
        sub.add_argument("--base-url", help="read the store over this HTTP(S) URL (default: from --store and the endpoint)")
        sub.add_argument("--channel", default="production")
        sub.add_argument("--state", type=Path, required=True, help="the device's state dir (active/, previous/, metadata)")
        sub.add_argument("--device-id", help="default: kept in the state dir, generated on first pull")
        sub.add_argument("--trusted-root", type=Path, help="KEYS/root.json: provisions the device on its first pull")

    device_pull = device_commands.add_parser("pull", help="check the channel once; install a newer model if there is one")
    add_agent(device_pull)
    device_pull.set_defaults(func=cmd_device_pull)
    device_run = device_commands.add_parser("run", help="pull on an interval with jittered backoff; with --feed also record, forecast, score and upload")
    add_agent(device_run)
    device_run.add_argument("--interval", type=float, default=900.0, help="seconds between checks (jittered ±50%%)")
    device_run.add_argument("--retry", type=float, default=5.0, help="first retry delay after a transient failure (doubles)")
    device_run.add_argument("--iterations", type=int, help="stop after N pulls (default: forever)")
    device_run.add_argument("--feed", type=Path, help="the logger's folder of contract CSVs (+ photos): record, forecast, score and upload them each cycle (needs `device provision`)")
    device_run.set_defaults(func=cmd_device_run)
    device_provision = device_commands.add_parser("provision", help="make the device's upload key and registration; station.json from params.yaml")
    device_provision.add_argument("--state", type=Path, required=True)
    device_provision.add_argument("--device-id", required=True)
    device_provision.add_argument("--station", required=True, help="the station_id its readings carry")
    device_provision.add_argument("--latitude", type=float, help="for the forecast's local solar time")
    device_provision.add_argument("--longitude", type=float)
    device_provision.add_argument("--params", type=Path, default=Path("params.yaml"), help="its station section: photo budget, batch size")
    device_provision.set_defaults(func=cmd_device_provision)
    device_observe = device_commands.add_parser("observe", help="record readings in the journal: forecast with the active model, score matured forecasts")
    device_observe.add_argument("--state", type=Path, required=True)
    device_observe.add_argument("--sensors", type=Path, required=True, help="contract CSV: each row is recorded")
    device_observe.add_argument("--image", type=Path, help="the sky photo taken with the last row")
    device_observe.set_defaults(func=cmd_device_observe)
    device_status = device_commands.add_parser("status", help="version, field skill per horizon, drift and uplink of this station")
    device_status.add_argument("--state", type=Path, required=True)
    device_status.add_argument("--json", action="store_true", help="the whole status.json (schema in the README)")
    device_status.set_defaults(func=cmd_device_status)
    device_predict = device_commands.add_parser("predict", help="print the 4-hour forecast from the active model")
    device_predict.add_argument("--state", type=Path, required=True)
    device_predict.add_argument("--sensors", type=Path, required=True, help="station CSV (data contract); the latest record is t")
    device_predict.add_argument("--image", type=Path, help="sky photo at t (omit when the camera gave nothing)")
    device_predict.add_argument("--station", help="station_id when the CSV holds several (default: the last row's)")
    device_predict.add_argument("--latitude", type=float, help="the station's latitude (default: its row in stations.csv beside the CSV)")
    device_predict.add_argument("--longitude", type=float, help="the station's longitude (default: its row in stations.csv beside the CSV)")
    device_predict.add_argument("--json", action="store_true")
    device_predict.set_defaults(func=cmd_device_predict)

    fleet = commands.add_parser("fleet", help="per station: version, health, field skill, drift, last seen, readings waiting")
    fleet.add_argument("--store", help="s3://BUCKET/PREFIX or a local directory")
    fleet.add_argument("--endpoint-url", help="S3 endpoint (MinIO, moto); default: $AWS_ENDPOINT_URL, else AWS")
    fleet.set_defaults(func=cmd_fleet, fleet_command=None)
    fleet_commands = fleet.add_subparsers(dest="fleet_command", metavar="COMMAND")
    fleet_register = fleet_commands.add_parser("register", help="upload a device's registration (skyedge device provision wrote it)")
    add_store(fleet_register)
    fleet_register.add_argument("registration", type=Path, help="STATE/device.json")
    fleet_register.set_defaults(func=cmd_fleet_register)
    fleet_report = fleet_commands.add_parser("report", help="the fleet report (HTML): field skill per release, drift over time, ring history")
    add_store(fleet_report)
    fleet_report.add_argument("--channel", default="production")
    fleet_report.add_argument("--params", type=Path, default=Path("params.yaml"))
    fleet_report.add_argument("--out", type=Path, default=Path("reports/fleet-report.html"))
    fleet_report.set_defaults(func=cmd_fleet_report)
    simulate = fleet_commands.add_parser("simulate", help="replay station feeds through real agents against the store, with faults, while rollouts decide")
    add_store(simulate)
    simulate.add_argument("--stations", type=int, required=True)
    simulate.add_argument("--hours", type=int, required=True)
    simulate.add_argument("--package", type=Path, default=Path("data/package"), help="the release stations start on (default: the pipeline's)")
    simulate.add_argument("--feeds", type=Path, help="folder of contract CSVs with photos (default: synthetic stations)")
    simulate.add_argument("--scenario", choices=["good", "bad"], default="good", help="what the new release is: the same model, or one degraded on purpose")
    simulate.add_argument("--release-at", type=int, default=12, help="simulated hour the new release starts its rollout")
    simulate.add_argument("--pull-every", type=int, default=3, help="hours between a station's cycles (staggered across the fleet)")
    simulate.add_argument("--down-hours", help="FROM:TO simulated hours the store is unreachable")
    simulate.add_argument("--cut-rate", type=float, default=0.0, help="share of responses cut mid-body")
    simulate.add_argument("--kill-rate", type=float, default=0.0, help="share of cycles whose agent is killed at a random install step")
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--params", type=Path, default=Path("params.yaml"))
    simulate.add_argument("--work", type=Path, help="state directories and releases (default: a temp dir)")
    simulate.add_argument("--no-flow", action="store_true", help="decide rollouts with the library calls instead of Prefect flow runs")
    simulate.add_argument("--json", type=Path, help="write the measurements here")
    simulate.set_defaults(func=cmd_fleet_simulate)

    registry = commands.add_parser("registry", help="inspect the model registry")
    registry_commands = registry.add_subparsers(dest="registry_command", required=True, metavar="COMMAND")
    registry_show = registry_commands.add_parser("show", help="print channels and versions")
    add_store(registry_show)
    registry_show.set_defaults(func=cmd_registry_show)

    rollback = commands.add_parser("rollback", help="re-point a channel to the version it replaced")
    add_store(rollback)
    rollback.add_argument("--channel", default="production")
    rollback.add_argument("--keys", type=Path, help="TUF keys dir (skyedge keys init): devices only follow a rollback signed with them; default $SKYEDGE_TUF_KEYS")
    rollback.set_defaults(func=cmd_rollback)

    def add_flow_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--workspace", type=Path, default=Path("."), help="the project checkout the flow runs DVC in")
        sub.add_argument("--profile", help="default | tiny | real | fisheye: each run selects common.profile in the workspace's params.yaml first (as dvc exp run -S does)")

    retrain = commands.add_parser("retrain", help="run the retrain flow: stages, gate, approval, publish, dvc push")
    add_flow_options(retrain)
    retrain.add_argument("--store", help="s3://BUCKET/PREFIX or a local directory (default: params flow.store)")
    retrain.add_argument("--approval", choices=["required", "auto"], help="override gate.approval")
    retrain.set_defaults(func=cmd_retrain)

    serve = commands.add_parser("serve", help="register the retrain flow on flow.cron and the rollout check on rollout.cron with a Prefect server, and serve both")
    add_flow_options(serve)
    serve.add_argument("--store", help="s3://BUCKET/PREFIX or a local directory (default: params flow.store)")
    serve.add_argument("--approval", choices=["required", "auto"], help="override gate.approval for scheduled runs")
    serve.add_argument("--name", default="scheduled", help="deployment name (skyedge-retrain/NAME and skyedge-rollout/NAME)")
    serve.add_argument("--cron", help="override flow.cron (the retrain schedule)")
    serve.set_defaults(func=cmd_serve)

    sweep = commands.add_parser("sweep", help="compression sweep (student x width x input size x prune ratio x quantization) on Dask")
    add_flow_options(sweep)
    sweep.add_argument("--students", nargs="+", default=["tinycnn", "mobilenet_v3_small"])
    sweep.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5], help="prune.structured.ratio values")
    sweep.add_argument("--quant", nargs="+", default=["per_channel", "per_tensor"], help="quantization modes: per_channel | per_tensor")
    sweep.add_argument("--widths", nargs="+", type=int, help="distill.width values (default: params.yaml's)")
    sweep.add_argument("--sizes", nargs="+", type=int, help="data.image_size values: the input resolution (default: params.yaml's; each size re-runs ingest and the teacher)")
    sweep.add_argument("--out", type=Path, default=Path("reports/sweep"), help="sweep.json, sweep.csv, pareto.png and runs/ go here")
    sweep.add_argument("--dask-address", help="tcp://HOST:PORT of an existing Dask scheduler (default: a LocalCluster)")
    sweep.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes; each configuration gets cores / workers torch threads")
    sweep.set_defaults(func=cmd_sweep)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A temporary Prefect server's telemetry call fails offline and logs an ERROR that operators
    # would chase; the user's own setting wins.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Without PREFECT_API_URL, Prefect starts a temporary server and gives it 20 s; on a busy
    # 2-core machine (a training run beside it) that is too short and the whole run fails.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    try:
        return args.func(args)
    except ValueError as error:  # config and data errors carry a message meant for the user
        print(f"skyedge {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

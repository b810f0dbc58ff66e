"""`skyedge`: the command line. Each command imports what it needs when it runs, so `--help` is fast."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def cmd_generate(args: argparse.Namespace) -> int:
    from skyedge import synthetic

    summary = synthetic.generate(args.out, args.stations, args.days, args.seed, args.image_size, progress=True)
    print(f"wrote {summary['records']} records and {summary['images']} images for {summary['stations']} stations to {args.out}")
    print(f"rain in {summary['rain_fraction']:.1%} of hours; sky classes: {summary['class_counts']}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from skyedge.config import load_params, resolve
    from stages import ingest

    base = load_params(args.params) if args.params.exists() else resolve({})
    sources = [{"type": "folder", "path": str(source)} for source in args.sources]
    config = base.ingest.model_copy(update={"sources": base.ingest.model_validate({"sources": sources}).sources})
    report = ingest.run(config, base.data, args.out)
    ingest.print_report(report)
    return 0


def cmd_repro(args: argparse.Namespace) -> int:
    """`dvc repro` on params.yaml as it is, or an experiment with another profile."""
    if args.profile == "default":
        command = ["dvc", "repro", *args.stages]
    else:
        command = ["dvc", "exp", "run", "-S", f"common.profile={args.profile}", *args.stages]
    print("+", " ".join(command), flush=True)
    return subprocess.call(command)


def cmd_report(args: argparse.Namespace) -> int:
    from skyedge import io
    from stages.evaluate import variant_table

    table = args.evaluate / "variants.csv"
    if not table.exists():
        print(f"{table} not found: run `dvc repro` (or `make run`) first", file=sys.stderr)
        return 1
    print(variant_table(io.read_rows(table)))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from skyedge import scoring

    result = scoring.evaluate(
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
    print(scoring.summary_table(result.metrics))
    print(f"wrote {args.out}")
    if args.report:
        from skyedge.evaluation_report import write_report

        print(f"wrote {write_report(result, args.report)}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from skyedge import manifest, signing

    try:
        if args.public_key:
            public_key = signing.load_public_key(args.public_key)
        else:
            key_path = signing.key_path_from_env()
            if not key_path.exists():
                print(f"verify: no trusted key: pass --public-key PEM (no signing key at {key_path})", file=sys.stderr)
                return 2
            public_key = signing.load_private_key(key_path).public_key()
        document = manifest.verify_package(args.package, public_key)
    except (manifest.PackageError, signing.SigningError) as error:
        print(f"verify: FAILED: {error}", file=sys.stderr)
        return 1
    print(f"verify: OK: {document['name']} version {document['version']} ({len(document['files'])} files, signed by {signing.key_id(public_key)[:16]}…)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skyedge", description="Train, compress, evaluate and ship a sky-camera nowcaster.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    generate = commands.add_parser("generate", help="write synthetic station records with a sky photo per hour")
    generate.add_argument("--out", type=Path, required=True)
    generate.add_argument("--stations", type=int, default=3)
    generate.add_argument("--days", type=int, default=30)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--image-size", type=int, default=64)
    generate.set_defaults(func=cmd_generate)

    ingest = commands.add_parser("ingest", help="validate folders of station CSVs / labelled photos into a dataset")
    ingest.add_argument("sources", nargs="+", type=Path)
    ingest.add_argument("--out", type=Path, required=True)
    ingest.add_argument("--params", type=Path, default=Path("params.yaml"))
    ingest.set_defaults(func=cmd_ingest)

    repro = commands.add_parser("repro", help="run the DVC pipeline (dvc repro), optionally on another profile")
    repro.add_argument("stages", nargs="*")
    repro.add_argument("--profile", default="default", help="default | tiny | real (runs `dvc exp run -S common.profile=...`)")
    repro.set_defaults(func=cmd_repro)

    report = commands.add_parser("report", help="print the variant table of the last evaluate stage")
    report.add_argument("--evaluate", type=Path, default=Path("data/evaluate"))
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as error:  # config and data errors carry a message meant for the user
        print(f"skyedge {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

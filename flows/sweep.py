"""The compression sweep: student x prune ratio x quantization mode, fanned out on Dask.

    base workspace: dvc repro embed            (ingest + teacher, shared by every configuration, once)
    per configuration (a Prefect task on prefect-dask's DaskTaskRunner):
        copy the base workspace -> edit params.yaml there -> dvc repro -> one results row

Every configuration runs in its own copy of the workspace (git, params, dvc.lock and the shared
upstream outputs), so no two DVC runs ever share a workspace and the copies' `dvc repro` only
re-runs what their params change (distill/prune/quantize/evaluate/package). The copies use the
base's DVC cache, and with it DVC's run cache: a stage that one configuration has run with the
same inputs and params (the distill of a student the grid repeats for other prune ratios) is
restored, not run again. The runner is a LocalCluster (2 worker processes on 127.0.0.1, one
configuration at a time each) by default, or an existing Dask cluster by address; the workers of
a remote cluster must see the workspace path (shared disk).
On a LocalCluster each configuration's torch gets cores / workers threads (`common.threads`, which
no stage's DVC params track): two configurations at 2 threads each on 2 cores oversubscribe the
CPU, and OpenMP's spinning threads then slow training far more than 2x.

Writes sweep.json, sweep.csv and pareto.png (skyedge.evaluation.plots.pareto) into the output directory.
Orchestration only: imports no torch.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows import dvc
from skyedge.core import paths
from skyedge.core.config import PROFILES_DIR, load_params
from skyedge.core.tables import Column, text_table

QUANT_MODES = ("per_channel", "per_tensor")  # quantize.per_channel true | false
DEFAULT_STUDENTS = ("tinycnn", "mobilenet_v3_small")
DEFAULT_RATIOS = (0.3, 0.5)
# Never copied into a configuration's workspace: environments and caches anywhere, and (below the
# base) DVC's locks/state, the local registry and the sweep's own outputs.
SKIPPED_NAMES = {".venv", "__pycache__", ".pytest_cache"}
COLUMNS = [
    "rank", "variant", "student", "width", "image_size", "prune_ratio", "quant", "shipped", "macs", "size_bytes", "latency_ms_p50",
    "val_sky_accuracy", "val_rain_brier", "val_temp_rmse", "sky_accuracy",
]
# The axis -> where it lives in params.yaml.
AXES = {"student": ("distill", "student"), "width": ("distill", "width"), "image_size": ("data", "image_size"), "prune_ratio": ("prune", "structured", "ratio")}


def grid(students: list[str], ratios: list[float], quants: list[str], widths: list[int] | None = None, sizes: list[int] | None = None) -> list[dict]:
    """Every combination as {name, student, [width], [image_size], prune_ratio, quant}; names are
    workspace directory names. Width and input size are axes only when given (params otherwise)."""
    unknown = [q for q in quants if q not in QUANT_MODES]
    if unknown:
        raise ValueError(f"quantization mode {unknown[0]!r}: allowed: {', '.join(QUANT_MODES)}")
    configs = []
    for student, width, size, ratio, quant in itertools.product(students, widths or [None], sizes or [None], ratios, quants):
        parts = [student, *([f"w{width}"] if width else []), *([f"s{size}"] if size else []), f"p{ratio:g}", quant]
        config = {"name": "-".join(parts), "student": student, "prune_ratio": float(ratio), "quant": quant}
        config.update({key: value for key, value in (("width", width), ("image_size", size)) if value})
        configs.append(config)
    return configs


def apply_config(params_file: Path, config: dict, threads: int | None = None) -> None:
    """Write one configuration (and the torch thread count, when given) into a (copied)
    params.yaml, and into the active profile's overlay (profiles/<name>.yaml) where that overlay
    sets the same key (it would win otherwise)."""
    raw = yaml.safe_load(params_file.read_text())
    values = {AXES[axis]: config[axis] for axis in AXES if axis in config}
    values["quantize", "per_channel"] = config["quant"] == "per_channel"
    if threads:
        values["common", "threads"] = threads
    profile_file = params_file.parent / PROFILES_DIR / f"{raw['common']['profile']}.yaml"
    overlay = yaml.safe_load(profile_file.read_text()) or {}
    for keys, value in values.items():
        _set(raw, keys, value)
        if _has(overlay, keys):
            _set(overlay, keys, value)
    params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    profile_file.write_text(yaml.safe_dump(overlay, sort_keys=False))
    load_params(params_file)  # fail here, naming the key, on a value the params reject


def _set(tree: dict, keys: tuple[str, ...], value) -> None:
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value


def _has(tree: dict, keys: tuple[str, ...]) -> bool:
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


@task(task_run_name="shared upstream: dvc repro embed")
def prepare_base(workspace: Path) -> None:
    """Ingest and the teacher once, in the base workspace, before the copies are made."""
    dvc.repro(workspace, "embed")


def copy_workspace(base: Path, dest: Path, skip: tuple[Path, ...] = ()) -> Path:
    """A private copy of the workspace (with its .git, dvc.lock, cache and outputs)."""
    skipped = {(base / ".dvc" / "tmp").resolve(), (base / ".skyedge" / "registry").resolve(), *(p.resolve() for p in skip)}

    def ignore(directory: str, names: list[str]) -> set[str]:
        here = Path(directory).resolve()
        return {n for n in names if n in SKIPPED_NAMES or n.endswith(".egg-info") or here / n in skipped}

    if dest.exists():
        shutil.rmtree(dest)
    return Path(shutil.copytree(base, dest, ignore=ignore, symlinks=True))


def use_cache_of(workspace: Path, base: Path) -> None:
    """Point the workspace's DVC cache (run cache included) at the base workspace's."""
    result = subprocess.run(["dvc", "cache", "dir", "--local", str(base / ".dvc" / "cache")], cwd=workspace, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"dvc cache dir in {workspace} failed:\n{result.stdout}{result.stderr}")


@task(task_run_name="sweep {config[name]}")
def run_config(base: Path, runs_dir: Path, config: dict, threads: int | None = None) -> dict:
    """One configuration in its own workspace copy: params edited there, `dvc repro`, one row."""
    dest = copy_workspace(base, runs_dir / config["name"], skip=(runs_dir, base / ".dvc" / "cache"))
    use_cache_of(dest, base)
    apply_config(dest / "params.yaml", config, threads)
    dvc.repro(dest)
    return result_row(dest, config)


def result_row(workspace: Path, config: dict) -> dict:
    """The shipped model of one configuration: MACs, size, latency, its grouped-validation scores
    (what the sweep ranks by) and its test scores (unseen days), skill per horizon."""
    stages = paths.Workspace(workspace)
    params = load_params(stages.params)
    metrics = json.loads(stages.evaluate.metrics.read_text())
    shipped = metrics["variants"]["shipped"]
    report = json.loads(stages.quantize.report.read_text())
    chosen = next(c for c in report["candidates"] if c["name"] == report["shipped"])
    row = {"variant": config["name"], "student": config["student"], "width": params.distill.width, "image_size": params.data.image_size}
    row.update(prune_ratio=config["prune_ratio"], quant=config["quant"], shipped=report.get("shipped"))
    row["macs"] = json.loads(stages.prune.metrics.read_text())["after"]["macs"]
    row.update({key: chosen.get(key) for key in ("val_sky_accuracy", "val_rain_brier", "val_temp_rmse")})
    row.update({k: v for k, v in shipped.items() if not isinstance(v, (dict, list))})
    row["workspace"] = str(workspace)
    return row


def rank(rows: list[dict]) -> list[dict]:
    """Number the configurations by the field estimate on validation: grouped-val sky accuracy,
    then rain Brier and temperature RMSE (lower is better). Test scores never pick anything."""
    scored = [row for row in rows if "error" not in row]
    order = sorted(scored, key=lambda r: (-(r.get("val_sky_accuracy") or 0.0), r.get("val_rain_brier") or 0.0, r.get("val_temp_rmse") or 0.0))
    for position, row in enumerate(order, start=1):
        row["rank"] = position
    return rows


def table(rows: list[dict]) -> str:
    """Aligned text: one row per configuration, skills per horizon after the fixed columns."""
    skills = sorted({k for row in rows for k in row if k.startswith(("rain_bss_persistence_h", "temp_skill_persistence_h"))})
    columns = [
        Column(c, align="left") if c in ("variant", "student", "quant", "shipped")
        else Column(c, "MMACs", ".2f", scale=1e-6) if c == "macs"
        else Column(c, format="d") if c in ("rank", "width", "image_size")
        else c
        for c in COLUMNS
    ]
    return text_table(sorted(rows, key=lambda r: r.get("rank", len(rows) + 1)), [*columns, *skills])


def write_results(rows: list[dict], out_dir: Path) -> dict[str, Path]:
    from skyedge.evaluation import plots

    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {"json": out_dir / "sweep.json", "csv": out_dir / "sweep.csv", "pareto": out_dir / "pareto.png"}
    outputs["json"].write_text(json.dumps(rows, indent=2) + "\n")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with outputs["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    plots.pareto([row for row in rows if row.get("size_bytes") is not None], outputs["pareto"])
    return outputs


def local_cluster_runner(n_workers: int = 2):
    """A LocalCluster on 127.0.0.1: worker processes with one thread each (DVC and ORT are CPU-bound)."""
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(
        cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
    )


@flow(name="skyedge-sweep", log_prints=True)
def sweep(
    workspace: str = ".", configs: list[dict] | None = None, profile: str | None = None, out: str | None = None, runs_dir: str | None = None, threads: int | None = None
) -> list[dict]:
    """Fan the configurations out on the flow's task runner; returns (and writes) one row each.
    `threads`: torch threads per configuration (default: params.yaml's `common.threads`)."""
    base = Path(workspace).resolve()
    if profile:
        dvc.set_profile(base, profile)
    configs = configs or grid(list(DEFAULT_STUDENTS), list(DEFAULT_RATIOS), list(QUANT_MODES))
    out_dir = Path(out).resolve() if out else base / "reports" / "sweep"
    runs = Path(runs_dir).resolve() if runs_dir else out_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    (runs / ".gitignore").write_text("# workspace copies made by skyedge sweep\n*\n")
    prepare_base(base)
    futures = [run_config.submit(base, runs, config, threads) for config in configs]
    rows = []
    for config, future in zip(configs, futures):
        try:
            rows.append(future.result())
        except Exception as error:  # one broken configuration must not hide the others' results
            get_run_logger().error("%s failed: %s", config["name"], error)
            rows.append({"variant": config["name"], "student": config["student"], "prune_ratio": config["prune_ratio"], "quant": config["quant"], "error": str(error)[-500:]})
    rows = rank(rows)
    outputs = write_results(rows, out_dir)
    create_table_artifact([{k: v for k, v in row.items() if k != "workspace"} for row in rows], key="sweep-results", description="Compression sweep: shipped model per configuration")
    print(table(rows))
    print(f"wrote {outputs['json']}, {outputs['csv']} and {outputs['pareto']}")
    failed = [row["variant"] for row in rows if "error" in row]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(rows)} configurations failed: {', '.join(failed)}")
    return rows


def run_sweep(dask_address: str | None = None, n_workers: int = 2, **kwargs) -> list[dict]:
    """`sweep` on a LocalCluster, or on the Dask scheduler at `dask_address` (tcp://host:port).
    On a LocalCluster the configurations share this machine's cores evenly."""
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return sweep.with_options(task_runner=DaskTaskRunner(address=dask_address))(**kwargs)
    kwargs.setdefault("threads", threads_per_worker(n_workers))
    return sweep.with_options(task_runner=local_cluster_runner(n_workers))(**kwargs)


def threads_per_worker(n_workers: int, cores: int | None = None) -> int:
    """Torch threads for each of n_workers concurrent configurations on `cores` (this machine's)."""
    return max(1, (cores or os.cpu_count() or 1) // n_workers)

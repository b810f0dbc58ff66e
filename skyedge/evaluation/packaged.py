"""`skyedge evaluate`: score a packaged ONNX model on any data in the contract (no torch).

Station records and labelled photos are read with the ingest rules (`skyedge.data.read`), turned into
model inputs with `skyedge.core.features` and `skyedge.data.dataset` using the preprocessing recorded in the
model's manifest (never this code's defaults), run through ONNX Runtime, and scored by
`skyedge.evaluation.scores.score` against persistence and the manifest's training climatology. Runtime
(latency, throughput, load time, peak RSS) is measured in a child process
(`skyedge.evaluation.runtime`) so this process's data and memory do not distort it.

The one entry point is `evaluate(...)`; `evaluate_model(...)` returns just the metrics.json dict.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd

from skyedge.core import features, inference, inputs
from skyedge.core.contract import HORIZONS, INPUT_IMAGE, INPUT_IMAGE_PRESENT, INPUT_SENSORS, REQUIRED_COLUMNS, SENSOR_COLUMNS, SKY_CLASSES
from skyedge.core.tables import Column, text_table
from skyedge.data import read, samples
from skyedge.evaluation import scores
from skyedge.release import manifest

FUTURE_TOLERANCE = pd.Timedelta(hours=1)  # clock skew allowed before a record counts as "future"
PREDICT_BATCH = 512  # samples per ORT call: bounds the float32 image memory on long station records
RUNTIME_TIMEOUT_S = 900


class SignatureMismatchError(ValueError):
    """The model (ONNX graph + manifest) and the data or each other disagree; names both sides."""


class RuntimeMeasurementError(ValueError):
    """The runtime child process failed; carries its stderr."""


@dataclass(frozen=True)
class Model:
    onnx_path: Path
    manifest: dict
    session: ort.InferenceSession

    @property
    def image_size(self) -> int:
        return int(self.manifest["preprocessing"]["image"]["size"])

    @property
    def window_hours(self) -> int:
        return int(self.manifest["preprocessing"]["sensors"]["window_hours"])

    def expectation(self) -> str:
        """What the model expects, in words, for error messages."""
        sensors = self.manifest["preprocessing"]["sensors"]
        return (
            f"{self.onnx_path.name} expects {INPUT_SENSORS} [B, {self.window_hours}, {sensors.get('n_features', features.N_FEATURES)}] "
            f"built from the station columns {', '.join(SENSOR_COLUMNS)} (manifest preprocessing.sensors.features: "
            f"{', '.join(sensors['features'])}) and {INPUT_IMAGE} [B, 3, {self.image_size}, {self.image_size}]"
        )


@dataclass(frozen=True)
class Dataset:
    """Evaluation samples: station records (one per record) then labelled photos without sensors."""

    samples: pd.DataFrame  # columns scores.score reads, plus image_idx and source
    windows: np.ndarray  # [N, W, F] float32
    images: np.ndarray  # [M, S, S, 3] uint8; samples point at them with image_idx (-1: none)
    received: int
    quarantine: list[dict]
    unlabelled: int  # index.csv photos without a class: nothing to score them against


@dataclass(frozen=True)
class Evaluation:
    metrics: dict  # the metrics.json document
    dataset: Dataset
    outputs: dict[str, np.ndarray]  # model outputs aligned with dataset.samples
    scored_stations: np.ndarray  # bool mask of station samples that entered the horizon scores


# --- The model ----------------------------------------------------------------------------


def load_model(model_path: Path, threads: int = 1) -> Model:
    """A package dir (model.onnx + manifest.json) or an .onnx file with manifest.json beside it."""
    model_path = Path(model_path)
    if model_path.is_dir():
        onnx_path = model_path / manifest.MODEL_FILE
    elif model_path.suffix == ".onnx" or model_path.is_file():
        onnx_path = model_path
    else:
        raise ValueError(f"{model_path}: no such package directory or ONNX file")
    if not onnx_path.is_file():
        raise ValueError(f"{onnx_path}: model file not found (a package holds {manifest.MODEL_FILE} + {manifest.MANIFEST_FILE})")
    manifest_path = onnx_path.parent / manifest.MANIFEST_FILE
    if not manifest_path.is_file():
        raise ValueError(f"{manifest_path}: not found; the model's preprocessing and climatology come from its manifest")
    try:
        document = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{manifest_path}: not valid JSON ({error})") from None
    for key, inner in (("preprocessing", ("image", "sensors")), ("climatology", ("rain_base_rate", "temp_by_hour_c"))):
        if not isinstance(document.get(key), dict) or any(k not in document[key] for k in inner):
            raise ValueError(f"{manifest_path}: missing {key} ({', '.join(inner)}); evaluation never falls back to code defaults")
    model = Model(onnx_path, document, inference.session(onnx_path, threads))
    check_signature(model)
    return model


def check_signature(model: Model) -> None:
    """The ONNX inputs, the manifest's preprocessing and the features this code builds must agree."""
    graph = {i.name: i.shape for i in model.session.get_inputs()}
    needed = (INPUT_IMAGE, INPUT_IMAGE_PRESENT, INPUT_SENSORS)
    if set(graph) != set(needed):
        raise SignatureMismatchError(f"{model.onnx_path.name} has inputs {sorted(graph)}; SkyEdge data provides {list(needed)}")
    sensors = model.manifest["preprocessing"]["sensors"]
    if list(sensors.get("features", [])) != list(features.RAW_FEATURES):
        raise SignatureMismatchError(
            f"manifest preprocessing.sensors.features is {sensors.get('features')}; this skyedge builds {list(features.RAW_FEATURES)}"
        )
    for name in ("mean", "std"):
        if len(sensors.get(name, [])) != features.N_RAW:
            raise SignatureMismatchError(f"manifest preprocessing.sensors.{name} has {len(sensors.get(name, []))} values; the features need {features.N_RAW}")
    declared_features = int(sensors.get("n_features", features.N_FEATURES))
    _expect_dim(model, INPUT_SENSORS, graph, 1, model.window_hours, "preprocessing.sensors.window_hours")
    _expect_dim(model, INPUT_SENSORS, graph, 2, declared_features, "preprocessing.sensors.n_features")
    if declared_features != features.N_FEATURES:
        raise SignatureMismatchError(f"manifest preprocessing.sensors.n_features is {declared_features}; this skyedge builds {features.N_FEATURES}")
    for axis in (2, 3):
        _expect_dim(model, INPUT_IMAGE, graph, axis, model.image_size, "preprocessing.image.size")


def _expect_dim(model: Model, name: str, graph: dict, axis: int, value: int, manifest_key: str) -> None:
    shape = graph[name]
    actual = shape[axis] if len(shape) > axis else None
    if len(shape) <= axis or (isinstance(actual, int) and actual != value):
        raise SignatureMismatchError(
            f"{model.onnx_path.name} input {name} has shape {list(shape)} but manifest {manifest_key} is {value} (axis {axis})"
        )


# --- The data -----------------------------------------------------------------------------


def read_dataset(model: Model, station_sources: list[Path], image_sources: list[Path], now: pd.Timestamp | None = None) -> Dataset:
    """Station records and labelled photos as model-ready samples, with the ingest quarantine."""
    now = (now or pd.Timestamp.now(tz="UTC")) + FUTURE_TOLERANCE
    outcome = read.Outcome(source="evaluate")
    frames = []
    for source in station_sources:
        source = Path(source)
        if source.is_dir():
            files = [path for path in read.station_files(source) if read.is_station_header(path)]
            if not files:
                raise ValueError(f"--stations {source}: no station CSV found there (a *.csv with the columns {', '.join(REQUIRED_COLUMNS)})")
        elif source.is_file():
            files = [source]
        else:
            raise ValueError(f"--stations {source}: no such file or folder")
        read.read_station_metadata(source if source.is_dir() else source.parent, outcome)
        with warnings.catch_warnings():  # pandas' note on ingest's offset regex group: not for users
            warnings.filterwarnings("ignore", "This pattern is interpreted as a regular expression", UserWarning)
            frames += [read.read_station_csv(path, outcome, now) for path in files]
    _fail_on_missing_columns(model, outcome)
    records = read.drop_repeated_records([frame for frame in frames if not frame.empty], outcome)

    labelled = []
    for source in image_sources:
        source = Path(source)
        folder = source if source.is_dir() else source.parent
        if source.is_file() and source.name != read.INDEX_FILE:
            raise ValueError(f"--images {source}: expected a folder holding {read.INDEX_FILE} or the {read.INDEX_FILE} itself")
        if not (folder / read.INDEX_FILE).is_file():
            raise ValueError(f"--images {source}: no {read.INDEX_FILE} (path,label[,timestamp]) found")
        labelled += read.read_index(folder, outcome)
    _fail_on_missing_columns(model, outcome)
    images, labels, stamps = _read_images(model, records, labelled, outcome)
    return _samples(model, records, images, labels, stamps, outcome)


def _fail_on_missing_columns(model: Model, outcome: read.Outcome) -> None:
    """A file without a contract column does not fit the model: an error, not a quarantine."""
    for entry in outcome.quarantine:
        if entry["rule"].startswith("missing_column:"):
            column = entry["rule"].split(":", 1)[1]
            if Path(entry["file"]).name == read.INDEX_FILE:
                raise SignatureMismatchError(f"{entry['file']}: no column {column!r}; a labelled-photo index needs path,label[,timestamp]")
            raise SignatureMismatchError(f"{entry['file']}: no column {column!r}; {model.expectation()}")


def _read_images(model: Model, records: pd.DataFrame, labelled: list, outcome: read.Outcome) -> tuple[dict, dict, dict]:
    """Photos referenced by station rows or index rows, loaded at the manifest's image size."""
    referenced = set(records["image_path"]) - {""} if not records.empty else set()
    bad_labels = {path: (row, label) for row, path, label, _ in labelled if label and label not in SKY_CLASSES}
    unlabelled = {path for _, path, label, _ in labelled if not label}  # nothing to score them against
    paths = sorted(referenced | {path for _, path, _, _ in labelled} - (unlabelled - referenced))
    outcome.ignored_files += sorted(unlabelled - referenced)
    outcome.received += len(paths)
    images, too_small = {}, []
    for path in paths:
        if path in bad_labels:
            row, label = bad_labels[path]
            outcome.reject(Path(path).parent / read.INDEX_FILE, row, "label_in_classes", label)
            continue
        array, rule, detail = read.load_image(Path(path), model.image_size)
        if array is None:
            outcome.reject(path, None, rule, detail)
            too_small += [f"{path} ({detail})"] if rule == "image_size_usable" else []
        else:
            images[path] = array
    if too_small and not images:
        raise SignatureMismatchError(
            f"no photo can be resized to the model's {INPUT_IMAGE} [B, 3, {model.image_size}, {model.image_size}] "
            f"(manifest preprocessing.image.size): photos are smaller than {read.MIN_IMAGE_SIDE} px, e.g. {too_small[0]}"
        )
    labels = {path: label for _, path, label, _ in labelled if path in images and label}
    stamps = {path: stamp for _, path, _, stamp in labelled if path in images}
    return images, labels, stamps


def _samples(model: Model, records: pd.DataFrame, images: dict, labels: dict, stamps: dict, outcome: read.Outcome) -> Dataset:
    stations, raw = samples.station_samples(records.assign(source=records["_file"]) if not records.empty else records, outcome.coordinates)
    windows, missing = samples.sensor_windows(stations, raw, model.manifest["preprocessing"]["sensors"], model.window_hours)
    stations["has_sensors"] = 1
    stations["window_missing_hours"] = missing
    photos = samples.photo_samples(
        (samples.Photo(path, path, label, stamps.get(path, ""), images[path]) for path, label in labels.items()),
        exclude=set(stations["image_path"]),
        dedupe=False,
    )
    photos["has_sensors"] = 0
    photos["station_id"] = ""
    if stations.empty and photos.empty:
        raise scores.EmptyDatasetError(
            f"nothing to evaluate: no station record or labelled photo was accepted ({outcome.received} received, "
            f"{len(outcome.quarantine)} quarantined{_rules(outcome)})"
        )
    table = pd.concat([part for part in (stations, photos.drop(columns=["md5", "label"])) if not part.empty], ignore_index=True)
    table["station_id"] = table["station_id"].fillna("")
    for column in ("hour_of_day", "window_missing_hours", "rain_now", "temp_now", *(f"{kind}_h{h}" for h in HORIZONS for kind in ("rain", "temp"))):
        table[column] = table[column].astype(float) if column in table else np.nan
    windows = np.concatenate([windows, np.repeat(features.empty_window(model.window_hours)[None], len(photos), axis=0)])
    image_paths = sorted(set(table["image_path"].fillna("")) - {""})
    index = {path: i for i, path in enumerate(image_paths)}
    table["image_idx"] = [index.get(p, -1) if isinstance(p, str) else -1 for p in table["image_path"]]
    table["sky_label"] = [SKY_CLASSES.index(labels[p]) if isinstance(p, str) and p in labels else -1 for p in table["image_path"]]
    table["day_in_train"], table["station_in_train"] = seen_in_training(table, model.manifest.get("training_coverage"))
    size = model.image_size
    pixels = np.stack([images[p] for p in image_paths]) if image_paths else np.zeros((0, size, size, 3), np.uint8)
    return Dataset(table, windows.astype(np.float32), pixels, outcome.received, outcome.quarantine, len(outcome.ignored_files))


def seen_in_training(table: pd.DataFrame, coverage: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """Per sample, 1 where the model's training saw its day (a station's trained time range, a
    photo's capture day) and its station, from the manifest's `training_coverage`; without one,
    every sample counts as unseen."""
    if not coverage:
        return np.zeros(len(table), int), np.zeros(len(table), int)
    stations = table["station_id"].to_numpy()
    station_seen = np.array([s in coverage["stations"] for s in stations]) | (stations == "")
    stamps = pd.to_datetime(table["timestamp"].where(stations != "", None), utc=True, errors="coerce", format="ISO8601")
    day_seen = np.array(
        [
            (station != "" and station in coverage["stations"] and pd.Timestamp(coverage["stations"][station][0]) <= stamp <= pd.Timestamp(coverage["stations"][station][1]))
            or (station == "" and day in coverage["photo_days"])
            for station, stamp, day in zip(stations, stamps, table["day"])
        ]
    )
    return day_seen.astype(int), station_seen.astype(int)


def _is_time(text: str) -> bool:
    return bool(text) and pd.notna(pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601"))


def _rules(outcome: read.Outcome) -> str:
    counts = pd.Series([q["rule"] for q in outcome.quarantine], dtype=str).value_counts()
    return "; " + ", ".join(f"{rule}={n}" for rule, n in counts.items()) if len(counts) else ""


# --- Scoring ------------------------------------------------------------------------------


def predict(model: Model, data: Dataset) -> dict[str, np.ndarray]:
    """Model outputs for every sample, inputs built batch by batch as the manifest says."""
    spec = model.manifest["preprocessing"]["image"]
    attention = model.manifest.get("attention")  # the model was trained on crops: run the package's attention first
    image_idx = data.samples["image_idx"].to_numpy()
    photos = data.images
    if attention is not None:  # every photo cut once, each station's boxes reused as the station does
        session = inference.session(model.onnx_path.parent / attention["file"])
        hours = data.samples["hour"].to_numpy() if "hour" in data.samples else np.zeros(len(image_idx))
        stations, image_hours = inputs.image_stations_hours(data.samples["station_id"].to_numpy(), hours, image_idx, len(photos))
        photos = inputs.attended_crops(session, attention, photos, image_idx, int(spec["size"]), stations, image_hours)
    chunks = []
    for start in range(0, len(image_idx), PREDICT_BATCH):
        batch = slice(start, start + PREDICT_BATCH)
        feed = inputs.model_inputs(photos, image_idx[batch], data.windows[batch], spec)
        chunks.append(inference.predict(model.session, feed, batch_size=PREDICT_BATCH))
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


def evaluate(
    model_path: Path,
    station_sources: list[Path] = (),
    image_sources: list[Path] = (),
    n_boot: int = 500,
    seed: int = 0,
    max_window_gap_hours: int | None = None,
    measure: bool = True,
    runtime_runs: int = 200,
    warmup_runs: int = 20,
    threads: int = 1,
) -> Evaluation:
    """Score MODEL on the sources; the metrics.json document is `.metrics` (schema in README).

    max_window_gap_hours defaults to half the model's window: a forecast made from less than half
    its sensor history is skipped ("gap_in_window") rather than scored.
    """
    if not station_sources and not image_sources:
        raise scores.EmptyDatasetError("nothing to evaluate: pass --stations and/or --images")
    model = load_model(model_path, threads)
    if max_window_gap_hours is None:
        max_window_gap_hours = model.window_hours // 2
    data = read_dataset(model, list(station_sources), list(image_sources))
    outputs = predict(model, data)
    for name, values in outputs.items():
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{model.onnx_path}: output {name} holds NaN or inf on this data")
    found = scores.grouped_score(outputs, data.samples, model.manifest["climatology"], n_boot, seed, max_window_gap_hours)
    found["skipped"]["quarantined_input"] = len(data.quarantine)
    by_rule = pd.Series([q["rule"] for q in data.quarantine], dtype=str).value_counts().sort_index()
    table = data.samples
    metrics = {
        "model": {
            "path": str(model.onnx_path),
            "sha256": manifest.sha256_file(model.onnx_path),
            "size_bytes": model.onnx_path.stat().st_size,
            "version": model.manifest.get("version"),
            "name": model.manifest.get("name"),
        },
        **found,
        "data": {
            "received": data.received,
            "accepted": data.received - len(data.quarantine),
            "quarantined": len(data.quarantine),
            "quarantined_by_rule": {str(k): int(v) for k, v in by_rule.items()},
            "station_samples": int((table["has_sensors"] == 1).sum()),
            "photo_only_samples": int((table["has_sensors"] == 0).sum()),
            "labelled_photos": int((table["sky_label"] >= 0).sum()),
            "stations": sorted(set(table["station_id"]) - {""}),
            "max_window_gap_hours": max_window_gap_hours,
            "training_coverage": "manifest" if model.manifest.get("training_coverage") else "unknown: every sample counted as unseen",
            "coordinates": samples.coordinates_report(data.samples) if "latitude" in data.samples else {},
            "unlabelled_photos_not_scored": data.unlabelled,
            "bootstrap": {"n_boot": n_boot, "seed": seed, "level": 0.95, "groups": "day"},
        },
    }
    listed = {entry.get("path"): entry.get("sha256") for entry in model.manifest.get("files", []) if isinstance(entry, dict)}
    if model.onnx_path.name in listed:
        metrics["model"]["matches_manifest"] = listed[model.onnx_path.name] == metrics["model"]["sha256"]
    if measure:
        metrics["runtime"] = measure_runtime(model.onnx_path, runtime_runs, warmup_runs)
    return Evaluation(metrics, data, outputs, _scored_stations(table, max_window_gap_hours))


def evaluate_model(model_path: Path, station_sources: list[Path], image_sources: list[Path], n_boot: int = 500, seed: int = 0, **options) -> dict:
    """Just the metrics.json document of `evaluate`."""
    return evaluate(model_path, station_sources, image_sources, n_boot, seed, **options).metrics


def _scored_stations(samples: pd.DataFrame, max_window_gap_hours: int) -> np.ndarray:
    return (
        (samples["has_sensors"].to_numpy() == 1)
        & ~(samples["window_missing_hours"].to_numpy(float) > max_window_gap_hours)
        & ~np.isnan(samples["rain_now"].to_numpy(float))
        & ~np.isnan(samples["temp_now"].to_numpy(float))
    )


def measure_runtime(onnx_path: Path, runs: int = 200, warmup: int = 20, timeout: float = RUNTIME_TIMEOUT_S) -> dict:
    """Latency, throughput, load time and peak RSS measured in a fresh child process."""
    command = [sys.executable, "-m", "skyedge.evaluation.runtime", str(onnx_path), "--runs", str(runs), "--warmup", str(warmup)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeMeasurementError(f"{onnx_path}: runtime measurement took more than {timeout:.0f} s") from None
    if result.returncode != 0:
        raise RuntimeMeasurementError(f"{onnx_path}: runtime measurement failed: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout)


HORIZON_COLUMNS = [
    Column("h", format="d"),
    Column("n", format="d"),
    Column("rain_base_rate", "rain_rate"),
    Column("rain_brier", "brier"),
    Column("rain_bss_persistence", "BSS_pers"),
    Column("rain_bss_climatology", "BSS_clim"),
    Column("rain_csi", "CSI"),
    Column("temp_rmse"),
    Column("temp_mae"),
    Column("temp_skill_persistence", "Tskill_pers"),
]


def summary_table(metrics: dict) -> str:
    """The headline numbers as aligned text (what the CLI prints and the report shows)."""
    lines = []
    model = metrics["model"]
    lines.append(f"model {model.get('name')} version {model.get('version')}  {model['size_bytes'] / 1000:.1f} kB  sha256 {model['sha256'][:12]}")
    sky = metrics.get("sky")
    if sky:
        ci = metrics["ci"].get("sky_accuracy")
        lines.append(f"sky: n={sky['n']} accuracy={sky['accuracy']:.3f} {_interval(ci)} macro_f1={sky['macro_f1']:.3f}")
    if metrics["horizons"]:
        lines.append(text_table(metrics["horizons"], HORIZON_COLUMNS))
    lines.append("skipped: " + ", ".join(f"{k}={v}" for k, v in metrics["skipped"].items()))
    run = metrics.get("runtime")
    if run:
        one, many = run["latency_ms"]["batch1_threads1"], run["latency_ms"]["batch1_threads_all"]
        lines.append(
            f"runtime: load {run['load_ms']:.1f} ms; batch 1, 1 thread p50/p95/p99 {one['latency_ms_p50']:.3f}/{one['latency_ms_p95']:.3f}/{one['latency_ms_p99']:.3f} ms; "
            f"{run['threads_all']} threads p50 {many['latency_ms_p50']:.3f} ms; batch {run['throughput_batch']} {run['throughput_samples_per_s']:.0f} samples/s; "
            f"peak RSS {run['peak_rss_bytes'] / 1e6:.1f} MB"
        )
    return "\n".join(lines)


def _interval(ci: list | None) -> str:
    return "[n/a]" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"

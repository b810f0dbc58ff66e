"""The ingest stage's work: read every source, validate, quarantine, build samples, split by time.

Writes under the ingest directory (skyedge.core.paths.Ingest): samples.csv (one row per sample,
its split and labels), windows.npy [N, W, F], images.npy [M, S, S, 3] uint8, normalisation.json
(sensor and image preprocessing + training climatology), quarantine.csv, report.json and the
Great Expectations Data Docs. Every received item is accepted or quarantined with its rule:
received = accepted + quarantined, per source and in total.

It streams, so its memory does not grow with the records (70 bytes a record are spooled to disk
between passes, nothing per record stays in memory), in three passes:

1. **Read** (`read_sources`). Each source is read in chunks: CSVs CHUNK_ROWS rows at a time
   (skyedge.data.read), fleet batches gathered into chunks of as many rows (skyedge.data.fleet).
   Each chunk is validated by the rule table (and buffered for Great Expectations, which runs on
   GE_CHUNK_ROWS rows at a time), its rejections written to quarantine.csv at once, and its
   accepted records handed to the `Intake` (skyedge.data.spool): repeats of a (station, hour)
   dropped by a bitmap, photos decoded and checked once, records appended to one binary spool
   file per station, pixels to one spool file. After this pass the counts, the stations and the
   photos are known; the quarantine threshold and the held-out stations are checked here.
2. **Statistics** (`training_statistics`). The splits need each station's first and last hour,
   the normalisation and the climatology need the training rows of every station: one station's
   spool at a time, summed (`FeatureMoments`, `Climatology`).
3. **Write** (`write_samples`). One station at a time again: samples (labels from its own future
   records, split by its own time blocks) appended to samples.csv, windows appended to
   windows.npy in blocks (`NpyWriter`, shape known from pass 1), then the photo-only samples,
   then images.npy from the pixel spool in path order. The report's counts are summed as the
   rows go by.

Splits are by time, never at random (skyedge.data.splits): per station by time blocks, held-out
stations whole; photos by whole capture day per class. A (station, hour) is accepted once across
all sources (the first source wins; later copies are `unique_station_timestamp`), and a photo path
is read once. Outputs are written under temporary names and renamed when complete; the spools
live beside the output directory (a DVC output) and are removed at the end.

Memory follows the largest chunk (CHUNK_ROWS rows, and GE_CHUNK_ROWS for Great Expectations),
the largest station's history in passes 2 and 3 (about 0.5 kB an hour of it: 15 MB for a Beijing
station's three years) and the photo table (a few hundred bytes a photo, pixels on disk).
Measured on ../shared/datasets (`make bench-ingest`): 414 MB peak RSS at 1x and about the same at
10x (the old all-in-memory ingest: 954 MB and 6.8 GB); Great Expectations' import and context
are 276 MB of it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from skyedge.core import features, inputs, paths
from skyedge.core.config import Data, FleetSource, Ingest, S3Source
from skyedge.core.contract import HORIZONS, SENSOR_COLUMNS, SKY_CLASSES, STATION_ID, TIMESTAMP
from skyedge.core.tables import Column, text_table
from skyedge.data import fleet, read, samples, sources, spool, synthetic, validation
from skyedge.data.splits import BUFFER, SPLITS, class_photo_split, station_split

SAMPLE_COLUMNS = [
    "source", STATION_ID, "latitude", "longitude", TIMESTAMP, "day", "hour", "hour_of_day",
    "temp_now", "rain_now", *(f"{kind}_h{h}" for h in HORIZONS for kind in ("temp", "rain")),
    "split", "station_in_train", "window_missing_hours", "day_in_train", "has_sensors", "image_idx", "sky_label", "labelled", "image_file",
]  # fmt: skip


def source_name(number: int, source) -> str:
    """How a source is named in the report and the quarantine."""
    if source.type == "synthetic":
        return f"synthetic-{number}"
    if source.type == "s3":
        return source.url
    if source.type == "fleet":
        return source.store
    return source.path


def read_sources(params: Ingest, data: Data, out_dir: Path, now: pd.Timestamp, intake: spool.Intake, sink: read.QuarantineFile,
                 runner: validation.SuiteRunner | None = None) -> list[read.Outcome]:
    """Pass 1: every source, chunk by chunk, into the intake; one outcome (counts) per source."""
    outcomes = []
    for number, source in enumerate(params.sources):
        outcome = read.Outcome(source=source_name(number, source), sink=sink)
        intake.add_source(outcome.source)
        if source.type == "synthetic":
            folder = out_dir / "raw" / f"synthetic-{number}"
            synthetic.generate(folder, source.stations, source.days, source.seed, source.image_size, source.unlabelled_share, source.camera, progress=True)
            outcomes.append(read.read_folder(folder, outcome, intake, now, runner))
        elif source.type == "s3":
            outcomes.append(read_s3(source, number, params, out_dir, now, intake, outcome, runner))
        elif source.type == "fleet":
            outcomes.append(read_fleet(source, params, now, intake, outcome, runner))
        else:
            folder = Path(source.path)
            if not folder.is_dir():
                raise FileNotFoundError(f"ingest source {source.path!r}: folder not found; check ingest.sources in params.yaml")
            outcomes.append(read.read_folder(folder, outcome, intake, now, runner))
    return outcomes


def read_s3(source: S3Source, number: int, params: Ingest, out_dir: Path, now: pd.Timestamp, intake: spool.Intake, outcome: read.Outcome,
            runner: validation.SuiteRunner | None = None) -> read.Outcome:
    """Download the prefix into out_dir/s3-cache/<n>/, read it as a folder; failed objects quarantined.

    A photo that never arrived is quarantined (`object_downloaded`) when a row or the index names
    it; any other failed object is one received item of its own."""
    cache = out_dir / "s3-cache" / f"{number}"
    download = sources.download(sources.client_for(source), source.url, cache, params.s3_attempts, params.s3_backoff_seconds)
    failed = {str(sources.cached_path(cache, source.url, url).resolve()): (url, reason) for url, reason in download.failed}
    load_file = read.file_loader(intake.image_size)

    def load(path: str):
        if path in failed:
            url, reason = failed.pop(path)
            return None, {}, (sources.DOWNLOAD_RULE, reason, url)
        return load_file(path)

    read.read_folder(cache, outcome, intake, now, runner, load)
    for url, reason in failed.values():
        outcome.received += 1
        outcome.reject(url, None, sources.DOWNLOAD_RULE, reason)
    return outcome


def read_fleet(source: FleetSource, params: Ingest, now: pd.Timestamp, intake: spool.Intake, outcome: read.Outcome,
               runner: validation.SuiteRunner | None = None) -> read.Outcome:
    """Every registered device's observation batches (skyedge.data.fleet), batch by batch."""
    return fleet.read_fleet(source, fleet.client_for(source), outcome, intake, now, runner, params.s3_attempts, params.s3_backoff_seconds)


def split_photos(photos: pd.DataFrame, fractions: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Photos split per class by whole capture days (skyedge.data.splits.class_photo_split), and
    whether each photo's day is one training saw.

    A photo nobody labelled is trained on (distillation) only when its day holds no val or test
    photo, so held-out days stay unseen; otherwise it is `buffer`.
    """
    split = np.full(len(photos), BUFFER, dtype=object)
    labelled = photos["label"].notna().to_numpy()
    for _, group in photos[labelled].groupby("label", sort=True):
        split[photos.index.get_indexer(group.index)] = class_photo_split(group["day"].to_numpy(), fractions)
    held_out_days = set(photos["day"][labelled & (split != "train")])
    split[~labelled & ~photos["day"].isin(held_out_days).to_numpy()] = "train"
    day_in_train = photos["day"].isin(set(photos["day"][split == "train"])).to_numpy()
    return split, day_in_train


def station_table(intake: spool.Intake, station: str, coordinates: dict, window: int, fractions: tuple[float, float, float], held_out: bool) -> tuple[pd.DataFrame, np.ndarray]:
    """One station's samples (skyedge.data.samples.station_samples) with their split, and raw features."""
    rows = intake.station_records(station)
    records = pd.DataFrame({STATION_ID: station, "hour": rows["hour"], TIMESTAMP: pd.to_datetime(rows["us"], unit="us", utc=True)})
    for column in SENSOR_COLUMNS:
        records[column] = rows[column]
    records["source"] = np.asarray(intake.sources, dtype=object)[rows["source"]]
    records["image_path"] = rows["image"]  # the photo's spool slot, -1 for none (mapped by the caller)
    table, raw = samples.station_samples(records, coordinates)
    table["split"] = station_split(table["hour"].to_numpy(np.int64), window, fractions, held_out=held_out)
    table["station_in_train"] = 0 if held_out else 1
    return table, raw


def training_statistics(intake: spool.Intake, window: int, fractions: tuple[float, float, float], holdout: set[str]) -> tuple[dict, dict, dict]:
    """Pass 2: the sensor normalisation, the climatology and the sensors' drift reference
    (skyedge.core.drift) from every station's training block."""
    moments, climate = samples.FeatureMoments(), samples.Climatology()
    for station in sorted(intake.stations):
        rows = intake.station_records(station)
        hours = rows["hour"]
        train = station_split(hours, window, fractions, held_out=station in holdout) == "train"
        moments.add(features.raw_features({column: rows[column] for column in SENSOR_COLUMNS})[train])
        current = features.horizon_labels(hours, rows["temperature_c"], rows["precip_mm"])  # temp_now, rain_now
        climate.add(pd.DataFrame({"temp_now": current["temp_now"][train], "rain_now": current["rain_now"][train], "hour_of_day": hours[train] % 24}))
    return moments.normalisation(), climate.result(), moments.drift_sensors()


def photo_table(intake: spool.Intake, fractions: tuple[float, float, float]) -> tuple[pd.DataFrame, int]:
    """Photo-only samples (index.csv photos no station record holds), deduplicated by pixels and
    split by capture day; and how many duplicates were dropped.

    Order as read: every source's labelled photos in index order, then the unlabelled ones."""
    listed = [(path, entry) for path, entry in intake.photos.items() if entry.index is not None and not entry.with_record]
    order = {source: i for i, source in enumerate(intake.sources)}
    listed.sort(key=lambda item: (not item[1].index.label, order[item[1].source], item[1].index.position))
    photos = samples.photo_samples(
        samples.Photo(entry.source, path, entry.index.label or None, entry.index.timestamp, intake.pixels(np.array([entry.slot]))[0]) for path, entry in listed
    )
    photos["split"], photos["day_in_train"] = split_photos(photos, fractions)
    return photos, len(listed) - len(photos)


class SplitCounts:
    """The report's per-split counts, summed sample block by sample block."""

    def __init__(self) -> None:
        self.splits = {split: {"samples": 0, "with_image": 0, "by_class": dict.fromkeys(SKY_CLASSES, 0), "by_station": {}} for split in (*SPLITS, BUFFER)}
        self.masked = {f"rain_h{h}_masked": 0 for h in HORIZONS}
        self.unseen = {split: dict.fromkeys(("photos_unseen_day", "photos_seen_day", "station_samples_unseen_station", "station_samples_later_season"), 0) for split in ("val", "test")}

    def add(self, table: pd.DataFrame) -> None:
        split = table["split"].to_numpy()
        has_image = table["image_idx"].to_numpy() >= 0
        label = table["sky_label"].to_numpy()
        station = table[STATION_ID].replace("", "(photos)").to_numpy()
        for name, entry in self.splits.items():
            rows = split == name
            entry["samples"] += int(rows.sum())
            entry["with_image"] += int((rows & has_image).sum())
            for i, sky in enumerate(SKY_CLASSES):
                entry["by_class"][sky] += int((rows & has_image & (label == i)).sum())
            for key, count in zip(*np.unique(station[rows], return_counts=True)):
                entry["by_station"][str(key)] = entry["by_station"].get(str(key), 0) + int(count)
        for h in HORIZONS:
            self.masked[f"rain_h{h}_masked"] += int(table[f"rain_h{h}"].isna().sum())
        is_photo = (table[STATION_ID] == "").to_numpy()
        seen_day = table["day_in_train"].to_numpy() == 1
        seen_station = table["station_in_train"].to_numpy() == 1
        for name, entry in self.unseen.items():
            rows = split == name
            entry["photos_unseen_day"] += int((rows & is_photo & (label >= 0) & ~seen_day).sum())
            entry["photos_seen_day"] += int((rows & is_photo & (label >= 0) & seen_day).sum())
            entry["station_samples_unseen_station"] += int((rows & ~is_photo & ~seen_station).sum())
            entry["station_samples_later_season"] += int((rows & ~is_photo & seen_station).sum())

    def report(self) -> dict:
        for entry in self.splits.values():
            entry["by_station"] = dict(sorted(entry["by_station"].items()))
        return {"splits": self.splits, "masked_labels": self.masked, "unseen": self.unseen}


def has_overlap(table: pd.DataFrame, window: int) -> bool:
    """A leak check the tests also assert: one station's val/test span reaches into its train block."""
    hours, split = table["hour"].to_numpy(np.int64), table["split"].to_numpy()
    train, later = hours[split == "train"], hours[np.isin(split, ["val", "test"])]
    return bool(len(train) and len(later) and (later - window + 1).min() <= train.max() + max(HORIZONS))


def write_samples(files: dict[str, Path], intake: spool.Intake, photos: pd.DataFrame, coordinates: dict, normalisation: dict,
                  window: int, fractions: tuple[float, float, float], holdout: set[str]) -> dict:
    """Pass 3: samples.csv, windows.npy and images.npy, a station at a time; returns the counts."""
    slot_path = {entry.slot: path for path, entry in intake.photos.items()}
    image_paths = sorted({path for path, entry in intake.photos.items() if entry.with_record} | set(photos["image_path"]))
    image_index = {path: i for i, path in enumerate(image_paths)}
    labels = {path: SKY_CLASSES.index(entry.index.label) for path, entry in intake.photos.items() if entry.index is not None and entry.index.label in SKY_CLASSES}
    counts, overlaps, station_places = SplitCounts(), 0, {}
    windows = spool.NpyWriter(files["windows"], (intake.records + len(photos), window, features.N_FEATURES), np.float32)
    with files["samples"].open("w", newline="") as handle:
        handle.write(",".join(SAMPLE_COLUMNS) + "\n")
        for station in sorted(intake.stations):
            table, raw = station_table(intake, station, coordinates, window, fractions, station in holdout)
            missing = []
            for block, block_missing in samples.window_blocks(table["hour"].to_numpy(np.int64), raw, normalisation, window, table["latitude"].iat[0], table["longitude"].iat[0]):
                windows.write(block)
                missing.append(block_missing)
            photo_paths = [slot_path.get(int(slot), "") for slot in table["image_path"]]
            table["image_path"] = photo_paths
            table["window_missing_hours"] = np.concatenate(missing)
            table["day_in_train"] = (table["split"] == "train").astype(int)
            table["has_sensors"] = 1
            table["image_idx"] = [image_index.get(path, -1) for path in photo_paths]
            table["sky_label"] = [labels.get(path, -1) for path in photo_paths]
            table["labelled"] = (table["sky_label"] >= 0).astype(int)
            table["image_file"] = photo_paths
            overlaps += has_overlap(table, window)
            station_places.update(samples.coordinates_report(table))
            counts.add(table)
            table.reindex(columns=SAMPLE_COLUMNS).to_csv(handle, header=False, index=False)
            del table, raw
        if len(photos):
            table = photos.drop(columns=["md5", "label"]).assign(
                **{STATION_ID: "", "station_in_train": 1, "has_sensors": 0, "image_file": photos["image_path"]},
                day_in_train=photos["day_in_train"].astype(int),
                image_idx=[image_index[path] for path in photos["image_path"]],
                sky_label=[labels.get(path, -1) for path in photos["image_path"]],
            )
            table["labelled"] = (table["sky_label"] >= 0).astype(int)
            for h in HORIZONS:
                table[f"rain_h{h}"] = np.nan
            counts.add(table)
            table.reindex(columns=SAMPLE_COLUMNS).to_csv(handle, header=False, index=False)
            empty = features.empty_window(window)
            for start in range(0, len(photos), samples.WINDOW_BLOCK):
                windows.write(np.repeat(empty[None], min(samples.WINDOW_BLOCK, len(photos) - start), axis=0))
    windows.close()
    images = spool.NpyWriter(files["images"], (len(image_paths), intake.image_size, intake.image_size, 3), np.uint8)
    for start in range(0, len(image_paths), 256):
        images.write(intake.pixels(np.array([intake.photos[path].slot for path in image_paths[start : start + 256]], dtype=np.int64)))
    images.close()
    return {**counts.report(), "stations_with_overlap": overlaps, "coordinates": station_places}


def run(params: Ingest, data: Data, out_dir: Path, now: pd.Timestamp | None = None) -> dict:
    """Ingest every configured source into out_dir; return the report."""
    now = (now or pd.Timestamp.now(tz="UTC")) + pd.Timedelta(hours=params.future_tolerance_hours)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = paths.Ingest(out_dir)
    runner = validation.SuiteRunner(files.data_docs) if params.great_expectations else None
    fractions = (params.split.train, params.split.val, params.split.test)
    window = data.window_hours
    holdout = set(params.split.holdout_stations)
    # Spools beside out_dir (same disk, for the final renames), not in it: out_dir is a DVC output.
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.resolve().name}-spool-", dir=out_dir.resolve().parent))
    try:
        intake = spool.Intake(work / "intake", data.image_size, runner)
        with read.QuarantineFile(files.quarantine) as sink:
            outcomes = read_sources(params, data, out_dir, now, intake, sink, runner)
        report = {"sources": source_report(outcomes)}
        report["total"] = total_report(report["sources"])
        total = report["total"]
        if total["received"] and total["quarantined"] / total["received"] > params.max_quarantine_fraction:
            raise ValueError(
                f"ingest: {total['quarantined']} of {total['received']} items quarantined, more than "
                f"ingest.max_quarantine_fraction={params.max_quarantine_fraction}; see {files.quarantine}"
            )
        unknown = sorted(holdout - set(intake.stations))
        if unknown:
            raise ValueError(f"ingest.split.holdout_stations names {', '.join(unknown)}, which no source has; stations: {', '.join(sorted(intake.stations))}")
        coordinates = {station: place for o in reversed(outcomes) for station, place in o.coordinates.items()}  # the first source wins
        normalisation, climate, drift_sensors = training_statistics(intake, window, fractions, holdout)
        photos, duplicates = photo_table(intake, fractions)
        partial = {name: work / f"{name}.partial" for name in ("samples", "windows", "images")}
        written = write_samples(partial, intake, photos, coordinates, normalisation, window, fractions, holdout)
        intake.close()
        report.update(splits=written["splits"], masked_labels=written["masked_labels"])
        if runner is not None:
            report["validation"] = validation_report(runner, out_dir)
        report["split_checks"] = {
            "stations_with_overlap": written["stations_with_overlap"],
            **photo_checks(photos),
            "photo_duplicates_dropped": duplicates,
        }
        report["stations"] = {"coordinates": written["coordinates"], "held_out": sorted(holdout)}
        report["unseen"] = written["unseen"]
        report["classes_without_estimate"] = classes_without_estimate(photos)
        preprocessing = {
            "sensors": {**normalisation, "window_hours": window, "n_features": features.N_FEATURES},
            "image": inputs.image_spec(data.image_size),
            "climatology": climate,
            # The station's drift tests compare its readings with these (the package stage adds
            # the training photos' statistics and puts the whole in the manifest).
            "drift_sensors": drift_sensors,
        }
        for name, target in (("samples", files.samples), ("windows", files.windows), ("images", files.images)):
            partial[name].replace(target)
        files.normalisation.write_text(json.dumps(preprocessing, indent=2) + "\n")
        files.report.write_text(json.dumps(report, indent=2) + "\n")
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def source_report(outcomes: list[read.Outcome]) -> dict:
    """received = accepted + quarantined per source, with counts per rule."""
    per_source = {}
    for outcome in outcomes:
        quarantined = outcome.quarantined
        entry = per_source[outcome.source] = {
            "received": outcome.received,
            "accepted": outcome.received - quarantined,
            "quarantined": quarantined,
            "by_rule": {str(k): int(v) for k, v in sorted(outcome.by_rule.items())},
        }
        if outcome.ignored_files:  # CSVs with no contract column (camera logs...): not records
            entry["ignored_files"] = outcome.ignored_files
        entry.update(outcome.details)
    return per_source


def total_report(per_source: dict) -> dict:
    total_rules: dict[str, int] = {}
    for entry in per_source.values():
        for rule, count in entry["by_rule"].items():
            total_rules[rule] = total_rules.get(rule, 0) + count
    total = {key: sum(e[key] for e in per_source.values()) for key in ("received", "accepted", "quarantined")}
    total["by_rule"] = dict(sorted(total_rules.items()))
    return total


def classes_without_estimate(photos: pd.DataFrame) -> dict[str, str]:
    """Sky classes whose photos come from one capture day: all of them train, none can be held out."""
    labelled = photos[photos["label"].notna()]
    days = labelled.groupby("label")["day"].nunique()
    return {label: f"one capture day ({labelled.loc[labelled['label'] == label, 'day'].iloc[0]}): no unseen-day estimate is possible" for label in days.index[days == 1]}


def validation_report(runner: validation.SuiteRunner, out_dir: Path) -> dict:
    """The GE suites' totals; Data Docs under out_dir/data-docs/, paths relative to out_dir."""
    result = runner.finish()
    for key in ("data_docs", "summary_html"):
        result[key] = str(Path(result[key]).resolve().relative_to(out_dir.resolve()))
    return result


def photo_checks(photos: pd.DataFrame) -> dict:
    """Leak checks the tests also assert: no photo (by pixels) and no capture day on two sides."""
    md5_splits = photos.groupby("md5")["split"].nunique() if not photos.empty else pd.Series(dtype=int)
    days = photos.groupby("day")["split"].nunique() if not photos.empty else pd.Series(dtype=int)
    return {"md5_in_two_splits": int((md5_splits > 1).sum()), "days_in_two_splits": int((days > 1).sum())}


def format_report(report: dict) -> str:
    """Received / accepted / quarantined per source, the splits per class and per station."""
    sources_rows = [{"source": name[-28:], **entry, "rules": ", ".join(f"{k}={v}" for k, v in entry["by_rule"].items()) or "-"} for name, entry in {**report["sources"], "TOTAL": report["total"]}.items()]
    parts = [text_table(sources_rows, [Column("source", align="left"), "received", "accepted", "quarantined", Column("rules", align="left")])]
    for name, entry in report["sources"].items():
        if "fleet" in entry:
            f = entry["fleet"]
            parts.append(
                f"fleet {name}: {f['batches']} batches from {f['devices']} devices ({f['batches_quarantined']} quarantined), "
                f"{f['rows']} rows, {f['photos']} photos, newest {f['newest_timestamp'] or 'n/a'}; batches sha256 {f['batches_sha256'][:12]}"
            )
    split_rows = [{"split": split, "samples": e["samples"], "with image": e["with_image"], **e["by_class"]} for split, e in report["splits"].items()]
    parts.append(text_table(split_rows, [Column("split", align="left"), "samples", "with image", *SKY_CLASSES]))
    stations = sorted({s for entry in report["splits"].values() for s in entry["by_station"]})
    if stations:
        station_rows = [{"station": s, **{split: e["by_station"].get(s, 0) for split, e in report["splits"].items()}} for s in stations]
        parts.append(text_table(station_rows, [Column("station", align="left"), *report["splits"]]))
    if "validation" in report:
        checks = report.get("split_checks", {})
        parts.append(
            f"validation (Great Expectations, {report['validation']['seconds']} s): {report['validation']['data_docs']}"
            f"; split checks: {', '.join(f'{k}={v}' for k, v in checks.items())}"
        )
    return "\n\n".join(parts)

"""The ingest stage's work: read every source, validate, quarantine, build samples, split by time.

Writes under the ingest directory (skyedge.core.paths.Ingest): samples.csv (one row per sample,
its split and labels), windows.npy [N, W, F], images.npy [M, S, S, 3] uint8, normalisation.json
(sensor and image preprocessing + training climatology), quarantine.csv, report.json and the
Great Expectations Data Docs. Every received item is accepted or quarantined with its rule:
received = accepted + quarantined, per source and in total.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from skyedge.core import features, inputs, paths
from skyedge.core.config import Data, Ingest, S3Source
from skyedge.core.contract import HORIZONS, SKY_CLASSES, STATION_ID
from skyedge.core.tables import Column, text_table
from skyedge.data import read, samples, sources, synthetic, validation
from skyedge.data.splits import BUFFER, SPLITS, class_photo_split, station_split


def read_sources(params: Ingest, data: Data, out_dir: Path, now: pd.Timestamp, runner: validation.SuiteRunner | None = None) -> list[read.Outcome]:
    outcomes = []
    for number, source in enumerate(params.sources):
        if source.type == "synthetic":
            folder = out_dir / "raw" / f"synthetic-{number}"
            synthetic.generate(folder, source.stations, source.days, source.seed, source.image_size, source.unlabelled_share, progress=True)
            outcomes.append(read.read_folder(folder, f"synthetic-{number}", data.image_size, now, runner))
        elif source.type == "s3":
            outcomes.append(read_s3(source, number, params, data, out_dir, now, runner))
        else:
            folder = Path(source.path)
            if not folder.is_dir():
                raise FileNotFoundError(f"ingest source {source.path!r}: folder not found; check ingest.sources in params.yaml")
            outcomes.append(read.read_folder(folder, source.path, data.image_size, now, runner))
    return outcomes


def read_s3(source: S3Source, number: int, params: Ingest, data: Data, out_dir: Path, now: pd.Timestamp, runner: validation.SuiteRunner | None = None) -> read.Outcome:
    """Download the prefix into out_dir/s3-cache/<n>/, read it as a folder; failed objects quarantined."""
    cache = out_dir / "s3-cache" / f"{number}"
    download = sources.download(sources.client_for(source), source.url, cache, params.s3_attempts, params.s3_backoff_seconds)
    outcome = read.read_folder(cache, source.url, data.image_size, now, runner)
    failed = {str(sources.cached_path(cache, source.url, url).resolve()): (url, reason) for url, reason in download.failed}
    # A photo that never arrived was already counted (image_exists) by the row or index that names
    # it: re-label that outcome; any other failed object is one received item of its own.
    for entry in outcome.quarantine:
        if entry["rule"] == "image_exists" and entry["file"] in failed:
            url, reason = failed.pop(entry["file"])
            entry.update(file=url, rule=sources.DOWNLOAD_RULE, value=reason)
    for url, reason in failed.values():
        outcome.received += 1
        outcome.reject(url, None, sources.DOWNLOAD_RULE, reason)
    return outcome


def split_stations(station_rows: pd.DataFrame, window_hours: int, fractions: tuple[float, float, float], holdout: set[str]) -> np.ndarray:
    """train / val / test / buffer of each station sample, by time blocks of its own station;
    held-out stations contribute their later blocks to val and test only."""
    split = np.empty(len(station_rows), dtype=object)
    hours = station_rows["hour"].to_numpy(np.int64)
    for station, rows in station_rows.groupby(STATION_ID, sort=False).indices.items():
        split[rows] = station_split(hours[rows], window_hours, fractions, held_out=station in holdout)
    return split


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


def run(params: Ingest, data: Data, out_dir: Path, now: pd.Timestamp | None = None) -> dict:
    """Ingest every configured source into out_dir; return the report."""
    now = (now or pd.Timestamp.now(tz="UTC")) + pd.Timedelta(hours=params.future_tolerance_hours)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = paths.Ingest(out_dir)
    runner = validation.SuiteRunner(files.data_docs) if params.great_expectations else None
    outcomes = read_sources(params, data, out_dir, now, runner)
    fractions = (params.split.train, params.split.val, params.split.test)
    window = data.window_hours

    records = [o.records.assign(source=o.source) for o in outcomes if not o.records.empty]
    coordinates = {station: place for o in reversed(outcomes) for station, place in o.coordinates.items()}  # the first source wins
    stations, raw = samples.station_samples(pd.concat(records, ignore_index=True) if records else pd.DataFrame(columns=[STATION_ID]), coordinates)
    holdout = set(params.split.holdout_stations)
    unknown = sorted(holdout - set(stations[STATION_ID]))
    if unknown:
        raise ValueError(f"ingest.split.holdout_stations names {', '.join(unknown)}, which no source has; stations: {', '.join(sorted(set(stations[STATION_ID])))}")
    stations["split"] = split_stations(stations, window, fractions, holdout)
    stations["station_in_train"] = (~stations[STATION_ID].isin(holdout)).astype(int)
    normalisation = features.fit_normalisation(raw[(stations["split"] == "train").to_numpy()])
    windows, missing_hours = samples.sensor_windows(stations, raw, normalisation, window)
    stations["window_missing_hours"] = missing_hours

    labelled = [samples.Photo(o.source, path, label, o.timestamps.get(path, ""), o.images[path]) for o in outcomes for path, label in o.labels.items()]
    unlabelled = [samples.Photo(o.source, path, None, o.timestamps.get(path, ""), o.images[path]) for o in outcomes for path in o.unlabelled]
    with_record = set(stations["image_path"])
    photos = samples.photo_samples(labelled + unlabelled, exclude=with_record)
    photos["split"], photos["day_in_train"] = split_photos(photos, fractions)
    table = pd.concat([stations, photos.drop(columns=["md5", "label"])], ignore_index=True)
    table[STATION_ID] = table[STATION_ID].fillna("")
    windows = np.concatenate([windows, np.repeat(features.empty_window(window)[None], len(photos), axis=0)])
    table["has_sensors"] = table[STATION_ID].ne("").astype(int)

    all_images = {path: array for o in outcomes for path, array in o.images.items()}
    all_labels = {path: label for o in outcomes for path, label in o.labels.items()}
    image_paths = sorted(set(table["image_path"].dropna()) - {""})
    image_index = {path: i for i, path in enumerate(image_paths)}
    table["image_idx"] = [image_index.get(p, -1) if isinstance(p, str) else -1 for p in table["image_path"]]
    table["sky_label"] = [SKY_CLASSES.index(all_labels[p]) if isinstance(p, str) and p in all_labels else -1 for p in table["image_path"]]
    table["labelled"] = (table["sky_label"] >= 0).astype(int)  # photos without one still teach (distillation)
    # A station's val and test blocks are later seasons: days training never saw. Photo-only rows
    # carry their own day's status; they belong to no station.
    table["day_in_train"] = table["day_in_train"].fillna(table["split"].eq("train")).astype(int)
    table["station_in_train"] = table["station_in_train"].fillna(1).astype(int)
    images = np.stack([all_images[p] for p in image_paths]) if image_paths else np.zeros((0, data.image_size, data.image_size, 3), np.uint8)

    report = build_report(outcomes, table)
    if runner is not None:
        report["validation"] = validation_report(runner, out_dir)
    report["split_checks"] = split_checks(table, photos, window)
    report["split_checks"]["photo_duplicates_dropped"] = sum(p.path not in with_record for p in labelled + unlabelled) - len(photos)
    report["stations"] = {"coordinates": samples.coordinates_report(stations), "held_out": sorted(holdout)}
    report["unseen"] = unseen_report(table)
    report["classes_without_estimate"] = classes_without_estimate(photos)
    if report["total"]["received"] and report["total"]["quarantined"] / report["total"]["received"] > params.max_quarantine_fraction:
        raise ValueError(
            f"ingest: {report['total']['quarantined']} of {report['total']['received']} items quarantined, more than "
            f"ingest.max_quarantine_fraction={params.max_quarantine_fraction}; see {files.quarantine}"
        )
    preprocessing = {
        "sensors": {**normalisation, "window_hours": window, "n_features": features.N_FEATURES},
        "image": inputs.image_spec(data.image_size),
        "climatology": samples.climatology(table),
    }
    write_outputs(files, table, windows, images, outcomes, report, preprocessing)
    return report


def classes_without_estimate(photos: pd.DataFrame) -> dict[str, str]:
    """Sky classes whose photos come from one capture day: all of them train, none can be held out."""
    labelled = photos[photos["label"].notna()]
    days = labelled.groupby("label")["day"].nunique()
    return {label: f"one capture day ({labelled.loc[labelled['label'] == label, 'day'].iloc[0]}): no unseen-day estimate is possible" for label in days.index[days == 1]}


def unseen_report(table: pd.DataFrame) -> dict:
    """Per split, how many samples come from groups training never saw (days, stations)."""
    photos = table[table[STATION_ID].eq("") & (table["sky_label"] >= 0)]
    stations = table[table[STATION_ID].ne("")]
    return {
        split: {
            "photos_unseen_day": int(((photos["split"] == split) & (photos["day_in_train"] == 0)).sum()),
            "photos_seen_day": int(((photos["split"] == split) & (photos["day_in_train"] == 1)).sum()),
            "station_samples_unseen_station": int(((stations["split"] == split) & (stations["station_in_train"] == 0)).sum()),
            "station_samples_later_season": int(((stations["split"] == split) & (stations["station_in_train"] == 1)).sum()),
        }
        for split in ("val", "test")
    }


def validation_report(runner: validation.SuiteRunner, out_dir: Path) -> dict:
    """The GE suites' totals; Data Docs under out_dir/data-docs/, paths relative to out_dir."""
    result = runner.finish()
    for key in ("data_docs", "summary_html"):
        result[key] = str(Path(result[key]).resolve().relative_to(out_dir.resolve()))
    return result


def split_checks(table: pd.DataFrame, photos: pd.DataFrame, window: int) -> dict:
    """Leak checks the tests also assert: per station, no val/test span reaches into train; no
    photo (by pixels) and no capture day on two sides."""
    overlaps = 0
    for _, group in table[table[STATION_ID].ne("")].groupby(STATION_ID):
        train = group.loc[group["split"] == "train", "hour"]
        later = group.loc[group["split"].isin(["val", "test"]), "hour"]
        if len(train) and len(later) and (later - window + 1).min() <= train.max() + max(HORIZONS):
            overlaps += 1
    md5_splits = photos.groupby("md5")["split"].nunique() if not photos.empty else pd.Series(dtype=int)
    days = photos.groupby("day")["split"].nunique() if not photos.empty else pd.Series(dtype=int)
    return {
        "stations_with_overlap": overlaps,
        "md5_in_two_splits": int((md5_splits > 1).sum()),
        "days_in_two_splits": int((days > 1).sum()),
    }


def build_report(outcomes: list[read.Outcome], table: pd.DataFrame) -> dict:
    """received = accepted + quarantined per source and in total, plus the split report."""
    per_source = {}
    for outcome in outcomes:
        by_rule = pd.Series([q["rule"] for q in outcome.quarantine], dtype=str).value_counts().to_dict()
        quarantined = len(outcome.quarantine)
        per_source[outcome.source] = {
            "received": outcome.received,
            "accepted": outcome.received - quarantined,
            "quarantined": quarantined,
            "by_rule": {str(k): int(v) for k, v in sorted(by_rule.items())},
        }
        if outcome.ignored_files:  # CSVs with no contract column (camera logs...): not records
            per_source[outcome.source]["ignored_files"] = outcome.ignored_files
    total_rules: dict[str, int] = {}
    for entry in per_source.values():
        for rule, count in entry["by_rule"].items():
            total_rules[rule] = total_rules.get(rule, 0) + count
    total = {key: sum(e[key] for e in per_source.values()) for key in ("received", "accepted", "quarantined")}
    total["by_rule"] = dict(sorted(total_rules.items()))
    has_image = table["image_path"].fillna("").ne("")
    splits = {
        split: {
            "samples": int((table["split"] == split).sum()),
            "with_image": int(((table["split"] == split) & has_image).sum()),
            "by_class": {c: int(((table["split"] == split) & has_image & (table["sky_label"] == i)).sum()) for i, c in enumerate(SKY_CLASSES)},
            "by_station": table[table["split"] == split][STATION_ID].replace("", "(photos)").value_counts().sort_index().to_dict(),
        }
        for split in (*SPLITS, "buffer")
    }
    gaps = {f"rain_h{h}_masked": int(table[f"rain_h{h}"].isna().sum()) for h in HORIZONS if f"rain_h{h}" in table}
    return {"sources": per_source, "total": total, "splits": splits, "masked_labels": gaps}


def write_outputs(files: paths.Ingest, table: pd.DataFrame, windows: np.ndarray, images: np.ndarray, outcomes: list[read.Outcome], report: dict, preprocessing: dict) -> None:
    quarantine = [q for o in outcomes for q in o.quarantine]
    pd.DataFrame(quarantine, columns=read.QUARANTINE_COLUMNS).to_csv(files.quarantine, index=False)
    table.drop(columns=["image_path"]).assign(image_file=table["image_path"].fillna("")).to_csv(files.samples, index=False)
    np.save(files.windows, windows)
    np.save(files.images, images)
    files.normalisation.write_text(json.dumps(preprocessing, indent=2) + "\n")
    files.report.write_text(json.dumps(report, indent=2) + "\n")


def format_report(report: dict) -> str:
    """Received / accepted / quarantined per source, the splits per class and per station."""
    sources_rows = [{"source": name[-28:], **entry, "rules": ", ".join(f"{k}={v}" for k, v in entry["by_rule"].items()) or "-"} for name, entry in {**report["sources"], "TOTAL": report["total"]}.items()]
    parts = [text_table(sources_rows, [Column("source", align="left"), "received", "accepted", "quarantined", Column("rules", align="left")])]
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

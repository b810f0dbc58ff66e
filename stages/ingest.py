"""ingest: read every source, validate, quarantine, build windows and labels, split by time.

Writes under data/ingest/: samples.csv (one row per sample, its split and labels),
windows.npy [N, W, F], images.npy [M, S, S, 3] uint8, normalisation.json (sensor and image
preprocessing + training climatology), quarantine.csv, report.json, splits.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from skyedge import features, ingest, sources, synthetic, validation
from skyedge.config import Data, Ingest, S3Source, load_params
from skyedge.contract import HORIZONS, SKY_CLASSES
from skyedge.splits import SPLITS, day_split, station_split

# ImageNet statistics: the pretrained teacher expects them; the manifest records them.
IMAGE_MEAN = [0.485, 0.456, 0.406]
IMAGE_STD = [0.229, 0.224, 0.225]


def read_sources(params: Ingest, data: Data, out_dir: Path, now: pd.Timestamp, runner: validation.SuiteRunner | None = None) -> list[ingest.Outcome]:
    outcomes = []
    for number, source in enumerate(params.sources):
        if source.type == "synthetic":
            folder = out_dir / "raw" / f"synthetic-{number}"
            synthetic.generate(folder, source.stations, source.days, source.seed, source.image_size, progress=True)
            outcomes.append(ingest.read_folder(folder, f"synthetic-{number}", data.image_size, now, runner))
        elif source.type == "s3":
            outcomes.append(read_s3(source, number, data, out_dir, now, runner))
        else:
            folder = Path(source.path)
            if not folder.is_dir():
                raise FileNotFoundError(f"ingest source {source.path!r}: folder not found; check ingest.sources in params.yaml")
            outcomes.append(ingest.read_folder(folder, source.path, data.image_size, now, runner))
    return outcomes


def read_s3(source: S3Source, number: int, data: Data, out_dir: Path, now: pd.Timestamp, runner: validation.SuiteRunner | None = None) -> ingest.Outcome:
    """Download the prefix into out_dir/s3-cache/<n>/, read it as a folder; failed objects quarantined."""
    client = sources.make_client(source.endpoint_url, source.region, source.profile)
    cache = out_dir / "s3-cache" / f"{number}"
    download = sources.download(client, source.url, cache, source.attempts, source.backoff_seconds)
    outcome = ingest.read_folder(cache, source.url, data.image_size, now, runner)
    failed = {str((cache / url.split("/", 3)[3][len(sources.split_url(source.url)[1]):]).resolve()): (url, reason) for url, reason in download.failed}
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


def station_samples(records: pd.DataFrame, window_hours: int, fractions: tuple[float, float, float]) -> tuple[pd.DataFrame, np.ndarray]:
    """One sample per accepted station record: split, labels and the raw features of its station."""
    parts, raw_parts = [], []
    for station, group in records.groupby("station_id", sort=True):
        group = group.sort_values("hour").reset_index(drop=True)
        hours = group["hour"].to_numpy(dtype=np.int64)
        labels = features.horizon_labels(hours, group["temperature_c"].to_numpy(float), group["precip_mm"].to_numpy(float))
        part = pd.DataFrame(
            {
                "source": group["source"],
                "station_id": station,
                "timestamp": group["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "hour": hours,
                "hour_of_day": hours % 24,
                "split": station_split(hours, window_hours, fractions),
                "image_path": group["image_path"],
                **labels,
            }
        )
        parts.append(part)
        raw_parts.append(features.raw_features({c: group[c].to_numpy() for c in group.columns if c in ("temperature_c", "pressure_hpa", "humidity_pct", "wind_speed_ms", "wind_dir_deg", "precip_mm")}))
    return pd.concat(parts, ignore_index=True), np.concatenate(raw_parts)


def image_only_samples(outcomes: list[ingest.Outcome], used: set[str], fractions: tuple[float, float, float]) -> pd.DataFrame:
    """Labelled photos with no station record, deduplicated by pixels and split per class by time.

    Each sky class is split on its own, earliest first, so every split gets every class (a
    global day split of SWIMCAT, where each class comes from one to four days, leaves whole
    classes out of test). The unit is the capture day when the class has at least four days
    (one for each of val and test, two for train), else the capture time (one whole-sky frame:
    its patches never cross splits). Same-day frames
    minutes apart can then sit in different splits: the price of having the class in test at all.
    """
    rows, seen = [], set()
    for outcome in outcomes:
        for path, label in outcome.labels.items():
            if path in used:
                continue
            digest = ingest.content_hash(outcome.images[path])
            if digest in seen:  # an exact copy would leak across splits; keep the first
                continue
            seen.add(digest)
            # The capture day as the camera saw it (local time when the stamp has an offset).
            stamp = pd.to_datetime(outcome.timestamps.get(path) or None, errors="coerce")
            day = stamp.strftime("%Y-%m-%d") if pd.notna(stamp) else f"unknown-{digest[:2]}"
            capture = stamp.strftime("%Y-%m-%dT%H:%M:%S") if pd.notna(stamp) else day
            rows.append({"source": outcome.source, "image_path": path, "day": day, "capture": capture, "label": label, "md5": digest})
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    frame["split"] = None
    for _, group in frame.groupby("label", sort=True):
        unit = group["day"] if group["day"].nunique() >= 4 else group["capture"]
        frame.loc[group.index, "split"] = day_split(unit.to_numpy(), fractions)
    return frame.drop(columns=["capture", "label"])


def climatology(samples: pd.DataFrame) -> dict:
    """Training base rate of rain and hour-of-day mean temperature: the climatology baselines."""
    train = samples[(samples["split"] == "train") & samples["station_id"].ne("")]
    if "rain_now" not in train or train.empty:  # no station records at all (photos only)
        return {"rain_base_rate": 0.0, "temp_by_hour_c": [0.0] * 24}
    rain = train["rain_now"].dropna()
    by_hour = train.groupby("hour_of_day")["temp_now"].mean()
    overall = float(train["temp_now"].mean()) if train["temp_now"].notna().any() else 0.0
    return {
        "rain_base_rate": float(rain.mean()) if len(rain) else 0.0,
        "temp_by_hour_c": [float(by_hour.get(hour, overall)) if pd.notna(by_hour.get(hour, np.nan)) else overall for hour in range(24)],
    }


def run(params: Ingest, data: Data, out_dir: Path, now: pd.Timestamp | None = None) -> dict:
    """Ingest every configured source into out_dir; return the report."""
    now = (now or pd.Timestamp.now(tz="UTC")) + pd.Timedelta(hours=params.future_tolerance_hours)
    out_dir.mkdir(parents=True, exist_ok=True)
    runner = validation.SuiteRunner(out_dir / "data-docs") if params.great_expectations else None
    outcomes = read_sources(params, data, out_dir, now, runner)
    fractions = (params.split.train, params.split.val, params.split.test)
    window = data.window_hours

    frames = [o.records.assign(source=o.source) for o in outcomes if not o.records.empty]
    if frames:
        stations, raw = station_samples(pd.concat(frames, ignore_index=True), window, fractions)
    else:
        stations, raw = pd.DataFrame(columns=["station_id", "split", "image_path", "hour"]), np.zeros((0, features.N_RAW))
    normalisation = features.fit_normalisation(raw[(stations["split"] == "train").to_numpy()] if len(raw) else raw)
    windows, missing_hours = station_windows(stations, raw, normalisation, window)
    stations["window_missing_hours"] = missing_hours

    photos = image_only_samples(outcomes, set(stations["image_path"]), fractions)
    samples = pd.concat([stations, photos.drop(columns=["md5"], errors="ignore")], ignore_index=True)
    samples["station_id"] = samples["station_id"].fillna("")
    windows = np.concatenate([windows, np.repeat(features.empty_window(window)[None], len(photos), axis=0)])
    samples["has_sensors"] = samples["station_id"].ne("").astype(int)

    all_images = {path: array for o in outcomes for path, array in o.images.items()}
    all_labels = {path: label for o in outcomes for path, label in o.labels.items()}
    image_paths = sorted(set(samples["image_path"].dropna()) - {""})
    image_index = {path: i for i, path in enumerate(image_paths)}
    samples["image_idx"] = [image_index.get(p, -1) if isinstance(p, str) else -1 for p in samples["image_path"]]
    samples["sky_label"] = [SKY_CLASSES.index(all_labels[p]) if isinstance(p, str) and p in all_labels else -1 for p in samples["image_path"]]
    images = np.stack([all_images[p] for p in image_paths]) if image_paths else np.zeros((0, data.image_size, data.image_size, 3), np.uint8)

    report = build_report(outcomes, samples)
    if runner is not None:
        report["validation"] = validation_report(runner, out_dir)
    report["split_checks"] = split_checks(samples, photos, window)
    used = set(stations["image_path"])
    report["split_checks"]["photo_duplicates_dropped"] = sum(p not in used for o in outcomes for p in o.labels) - len(photos)
    if report["total"]["received"] and report["total"]["quarantined"] / report["total"]["received"] > params.max_quarantine_fraction:
        raise ValueError(
            f"ingest: {report['total']['quarantined']} of {report['total']['received']} items quarantined, more than "
            f"ingest.max_quarantine_fraction={params.max_quarantine_fraction}; see {out_dir / 'quarantine.csv'}"
        )
    write_outputs(out_dir, samples, windows, images, outcomes, report, normalisation, data)
    return report


def validation_report(runner: validation.SuiteRunner, out_dir: Path) -> dict:
    """The GE suites' totals; Data Docs under out_dir/data-docs/, paths relative to out_dir."""
    result = runner.finish()
    for key in ("data_docs", "summary_html"):
        result[key] = str(Path(result[key]).resolve().relative_to(out_dir.resolve()))
    return result


def split_checks(samples: pd.DataFrame, photos: pd.DataFrame, window: int) -> dict:
    """Leak checks the tests also assert: per station, no val/test span reaches into train."""
    overlaps = 0
    station_rows = samples[samples["station_id"].ne("")]
    for _, group in station_rows.groupby("station_id"):
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


def station_windows(stations: pd.DataFrame, raw: np.ndarray, normalisation: dict, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Sensor windows for every station sample, built station by station (rows are grouped)."""
    if stations.empty:
        return np.zeros((0, window, features.N_FEATURES), np.float32), np.zeros(0, np.int32)
    windows, missing = [], []
    for _, rows in stations.groupby("station_id", sort=False).indices.items():
        w, m = features.build_windows(stations["hour"].to_numpy(np.int64)[rows], raw[rows], normalisation, window)
        windows.append(w)
        missing.append(m)
    return np.concatenate(windows), np.concatenate(missing)


def build_report(outcomes: list[ingest.Outcome], samples: pd.DataFrame) -> dict:
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
    splits = {
        split: {
            "samples": int((samples["split"] == split).sum()),
            "with_image": int(((samples["split"] == split) & samples["image_path"].fillna("").ne("")).sum()),
            "by_class": {c: int(((samples["split"] == split) & samples["image_path"].fillna("").ne("") & (samples.get("sky_label", -1) == i)).sum()) for i, c in enumerate(SKY_CLASSES)} if "sky_label" in samples else {},
            "by_station": samples[samples["split"] == split]["station_id"].replace("", "(photos)").value_counts().sort_index().to_dict(),
        }
        for split in (*SPLITS, "buffer")
    }
    gaps = {f"rain_h{h}_masked": int(samples[f"rain_h{h}"].isna().sum()) for h in HORIZONS if f"rain_h{h}" in samples}
    return {"sources": per_source, "total": total, "splits": splits, "masked_labels": gaps}


def write_outputs(out_dir: Path, samples, windows, images, outcomes, report, normalisation, data: Data) -> None:
    quarantine = [q for o in outcomes for q in o.quarantine]
    pd.DataFrame(quarantine, columns=ingest.QUARANTINE_COLUMNS).to_csv(out_dir / "quarantine.csv", index=False)
    samples.drop(columns=["image_path"]).assign(image_file=samples["image_path"].fillna("")).to_csv(out_dir / "samples.csv", index=False)
    np.save(out_dir / "windows.npy", windows)
    np.save(out_dir / "images.npy", images)
    preprocessing = {
        "sensors": {**normalisation, "window_hours": data.window_hours, "n_features": features.N_FEATURES},
        "image": {"size": data.image_size, "mean": IMAGE_MEAN, "std": IMAGE_STD, "resize": "bilinear", "layout": "NCHW RGB /255"},
        "climatology": climatology(samples),
    }
    (out_dir / "normalisation.json").write_text(json.dumps(preprocessing, indent=2) + "\n")
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")


def print_report(report: dict) -> None:
    print(f"{'source':<28} {'received':>9} {'accepted':>9} {'quarantined':>11}  rules")
    for name, entry in {**report["sources"], "TOTAL": report["total"]}.items():
        rules = ", ".join(f"{k}={v}" for k, v in entry["by_rule"].items()) or "-"
        print(f"{name[-28:]:<28} {entry['received']:>9} {entry['accepted']:>9} {entry['quarantined']:>11}  {rules}")
    stations = sorted({s for entry in report["splits"].values() for s in entry["by_station"]})
    print(f"\n{'split':<8} {'samples':>8} {'with image':>10}  " + " ".join(f"{c[:12]:>12}" for c in SKY_CLASSES))
    for split, entry in report["splits"].items():
        classes = " ".join(f"{entry['by_class'].get(c, 0):>12}" for c in SKY_CLASSES)
        print(f"{split:<8} {entry['samples']:>8} {entry['with_image']:>10}  {classes}")
    if stations:
        width = max(len(s) for s in stations)
        print(f"\n{'station':<{width}} " + " ".join(f"{split:>8}" for split in report["splits"]))
        for station in stations:
            print(f"{station:<{width}} " + " ".join(f"{entry['by_station'].get(station, 0):>8}" for entry in report["splits"].values()))
    if "validation" in report:
        checks = report.get("split_checks", {})
        print(f"\nvalidation (Great Expectations, {report['validation']['seconds']} s): {report['validation']['data_docs']}"
              f"; split checks: {', '.join(f'{k}={v}' for k, v in checks.items())}")


def bench(folders: list[Path], data: Data, out_dir: Path, report_path: Path) -> dict:
    """Ingest folders as `type: folder` sources; time it, peak RSS, records/s -> report_path (JSON)."""
    import resource
    import time

    params = Ingest(sources=[{"type": "folder", "path": str(folder)} for folder in folders], max_quarantine_fraction=1.0)
    started = time.perf_counter()
    report = run(params, data, out_dir)
    seconds = time.perf_counter() - started
    received = report["total"]["received"]
    result = {
        "sources": [str(folder) for folder in folders],
        "received": received,
        "accepted": report["total"]["accepted"],
        "seconds": round(seconds, 2),
        "records_per_s": round(received / seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # Linux: KiB
        "validation_seconds": report.get("validation", {}).get("seconds"),
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/ingest"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--bench", type=Path, nargs="+", metavar="FOLDER", help="benchmark: ingest these folders instead of params' sources")
    parser.add_argument("--bench-report", type=Path, default=Path("reports/bench_ingest.json"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if args.bench:
        missing = [str(folder) for folder in args.bench if not folder.is_dir()]
        if missing:
            raise SystemExit(f"bench-ingest: {', '.join(missing)} not found (the benchmark reads ../shared/datasets)")
        result = bench(args.bench, params.data, args.out, args.bench_report)
        print(f"ingest bench: {result['received']} items in {result['seconds']} s = {result['records_per_s']:.0f} records/s, "
              f"peak RSS {result['peak_rss_mb']:.0f} MB -> {args.bench_report}")
        return
    report = run(params.ingest, params.data, args.out)
    print_report(report)


if __name__ == "__main__":
    main()

"""The synthetic generator: deterministic, on-contract, causal, and its images carry signal."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skyedge.core import contract
from skyedge.data.synthetic import generate

STATIONS, DAYS, IMAGE_SIZE = 3, 40, 64
TRAIN_DAYS = int(0.7 * DAYS)
HORIZON = 2  # hours ahead for the rain forecast test
SENSOR_FEATURES = [
    "temperature_c",
    "pressure_hpa",
    "pressure_tendency",
    "humidity_pct",
    "wind_speed_ms",
    "rain_now",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out_dir = tmp_path_factory.mktemp("synthetic")
    summary = generate(out_dir, stations=STATIONS, days=DAYS, seed=0, image_size=IMAGE_SIZE, unlabelled_share=0.0)
    return out_dir, summary


@pytest.fixture(scope="module")
def records(dataset: tuple[Path, dict]) -> pd.DataFrame:
    """All station rows, joined to their index.csv label and to the image features."""
    out_dir, _ = dataset
    frames = [pd.read_csv(path) for path in sorted((out_dir / "stations").glob("syn-*.csv"))]
    rows = pd.concat(frames, ignore_index=True)
    # Station CSVs point at images relative to their own folder; index.csv relative to out_dir.
    stations_dir, root = (out_dir / "stations").resolve(), out_dir.resolve()
    rows["path"] = [(stations_dir / image).resolve().relative_to(root).as_posix() for image in rows["image"]]
    index = pd.read_csv(out_dir / "index.csv")
    rows = rows.merge(index[["path", "label"]], on="path", how="left", validate="one_to_one")
    rows["time"] = pd.to_datetime(rows["timestamp"])
    rows["day"] = (rows["time"] - rows["time"].min()).dt.days
    rows["raining"] = rows["precip_mm"] > contract.RAIN_THRESHOLD_MM
    by_station = rows.groupby("station_id")
    rows["pressure_tendency"] = rows["pressure_hpa"] - by_station["pressure_hpa"].shift(3)
    rows["rain_now"] = rows["raining"].astype(float)
    rows["rain_later"] = by_station["raining"].shift(-HORIZON)
    image_features = np.stack([_image_features(out_dir / path) for path in rows["path"]])
    return rows.assign(**{f"img_{i}": image_features[:, i] for i in range(image_features.shape[1])})


def _image_features(path: Path) -> np.ndarray:
    """Cheap hand-made features: colour statistics, brightness, bright fraction, blueness, texture."""
    image = np.asarray(Image.open(path), dtype=np.float64) / 255.0
    small = image.reshape(16, image.shape[0] // 16, 16, image.shape[1] // 16, 3).mean(axis=(1, 3))
    brightness = small.mean(axis=2)
    blueness = small[..., 2] - small[..., :2].mean(axis=2)
    gradient_energy = np.mean(np.diff(brightness, axis=0) ** 2) + np.mean(np.diff(brightness, axis=1) ** 2)
    return np.concatenate(
        [
            small.mean(axis=(0, 1)),
            small.std(axis=(0, 1)),
            [brightness.mean(), (brightness > 0.7).mean(), blueness.mean(), blueness.std(), gradient_energy],
            [blueness.mean() / (brightness.mean() + 1e-3), (blueness < 0.05).mean()],
        ]
    )


def _fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int) -> Callable[[np.ndarray], np.ndarray]:
    """Full-batch multinomial logistic regression by gradient descent; returns predict_proba."""
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-9

    def design(features: np.ndarray) -> np.ndarray:
        return np.column_stack([(features - mean) / std, np.ones(len(features))])

    inputs, targets = design(x), np.eye(n_classes)[y]
    # A step of 1 / largest curvature of the squared design cannot diverge on a softmax loss.
    step = 1.0 / np.linalg.eigvalsh(inputs.T @ inputs / len(inputs)).max()
    weights = np.zeros((inputs.shape[1], n_classes))
    for _ in range(3000):
        gradient = inputs.T @ (_softmax(inputs @ weights) - targets) / len(inputs) + 1e-4 * weights
        weights -= step * gradient
    return lambda features: _softmax(design(features) @ weights)


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def _files(root: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob(pattern))}


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path: Path) -> None:
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        generate(tmp_path / name, stations=2, days=2, seed=seed, image_size=IMAGE_SIZE, unlabelled_share=0.5)
    first, again, other = (tmp_path / name for name in "abc")
    assert _files(first, "stations/*.csv") == _files(again, "stations/*.csv")
    assert _files(first, "index.csv") == _files(again, "index.csv")
    images = _files(first, "images/*/*.png")
    assert len(images) == 2 * 2 * 24
    sample = sorted(images)[::7]
    assert all(images[name] == (again / name).read_bytes() for name in sample)
    assert _files(first, "stations/*.csv") != _files(other, "stations/*.csv")


def test_files_follow_the_data_contract(dataset: tuple[Path, dict]) -> None:
    out_dir, summary = dataset
    csv_paths = sorted((out_dir / "stations").glob("syn-*.csv"))
    assert [p.stem for p in csv_paths] == [f"syn-{i:02d}" for i in range(STATIONS)]
    assert summary["records"] == summary["images"] == STATIONS * DAYS * 24
    for path in csv_paths:
        with path.open() as f:
            assert tuple(next(csv.reader(f))) == contract.STATION_COLUMNS
        rows = pd.read_csv(path)
        for column, (low, high) in contract.SENSOR_RANGES.items():
            assert low is None or rows[column].min() >= low, column
            assert high is None or rows[column].max() <= high, column
        assert rows["wind_dir_deg"].max() < 360.0
        assert rows["timestamp"].str.endswith("Z").all()
        times = pd.to_datetime(rows["timestamp"])
        assert times.is_unique and len(times) == DAYS * 24
        assert (times.diff().dropna() == pd.Timedelta(hours=1)).all()
        for image in rows["image"].iloc[::50]:
            with Image.open(path.parent / image) as photo:
                assert photo.mode == "RGB" and photo.size == (IMAGE_SIZE, IMAGE_SIZE)
    index = pd.read_csv(out_dir / "index.csv")
    assert list(index.columns) == ["path", "label", "timestamp"]
    assert len(index) == summary["images"]
    assert set(index["label"]) <= set(contract.SKY_CLASSES)
    assert all((out_dir / path).is_file() for path in index["path"])
    assert sum(summary["class_counts"].values()) == summary["images"]


def test_image_size_outside_64_to_128_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="image_size"):
        generate(tmp_path, stations=1, days=1, seed=0, image_size=40, unlabelled_share=0.0)


def test_pressure_falls_and_humidity_rises_before_rain(records: pd.DataFrame) -> None:
    onset = records["raining"] & ~records.groupby("station_id")["raining"].shift(1, fill_value=True)
    onset_by_station = onset.groupby(records["station_id"])
    lead_ins = [onset_by_station.shift(-lag, fill_value=False) for lag in (1, 2, 3)]
    before_onset = pd.concat(lead_ins, axis=1).any(axis=1)
    assert onset.sum() >= 10
    assert records.loc[before_onset, "pressure_tendency"].mean() < -0.2
    assert records.loc[before_onset, "humidity_pct"].mean() > records["humidity_pct"].mean() + 5.0


def test_rain_only_under_thick_dark_clouds_and_at_a_plausible_rate(
    records: pd.DataFrame, dataset: tuple[Path, dict]
) -> None:
    assert records["label"].notna().all()
    assert set(records.loc[records["raining"], "label"]) == {"thick_dark_clouds"}
    assert 0.04 <= records["raining"].mean() <= 0.25
    assert dataset[1]["rain_fraction"] == pytest.approx(records["raining"].mean())


def test_image_features_alone_classify_the_sky_on_later_days(records: pd.DataFrame) -> None:
    image_columns = [c for c in records.columns if c.startswith("img_")]
    labels = records["label"].map(contract.SKY_CLASSES.index).to_numpy()
    train, test = records["day"] < TRAIN_DAYS, records["day"] >= TRAIN_DAYS
    predict = _fit_logistic(records.loc[train, image_columns].to_numpy(), labels[train], len(contract.SKY_CLASSES))
    accuracy = (predict(records.loc[test, image_columns].to_numpy()).argmax(axis=1) == labels[test]).mean()
    assert accuracy >= 0.7, f"accuracy {accuracy:.3f}"


def test_images_improve_the_rain_forecast_over_sensors_alone(records: pd.DataFrame) -> None:
    usable = records.dropna(subset=["pressure_tendency", "rain_later"])
    target = usable["rain_later"].astype(int).to_numpy()
    train, test = (usable["day"] < TRAIN_DAYS).to_numpy(), (usable["day"] >= TRAIN_DAYS).to_numpy()
    image_columns = [c for c in usable.columns if c.startswith("img_")]

    def brier(columns: list[str]) -> float:
        features = usable[columns].to_numpy()
        predict = _fit_logistic(features[train], target[train], 2)
        return float(np.mean((predict(features[test])[:, 1] - target[test]) ** 2))

    sensors_only = brier(SENSOR_FEATURES)
    with_images = brier(SENSOR_FEATURES + image_columns)
    assert with_images < 0.97 * sensors_only, f"Brier: sensors {sensors_only:.4f}, +images {with_images:.4f}"


def test_every_station_has_coordinates_in_stations_csv_and_its_day_follows_its_own_sun(dataset, records):
    out_dir, summary = dataset
    sites = pd.read_csv(out_dir / "stations" / contract.STATION_METADATA_FILE)
    assert list(sites.columns) == list(contract.STATION_METADATA_COLUMNS)
    assert sorted(sites["station_id"]) == sorted(records["station_id"].unique())
    for column, (low, high) in contract.STATION_METADATA_RANGES.items():
        assert sites[column].between(low, high).all()
    assert sites["longitude"].nunique() == STATIONS  # different time zones: UTC is nobody's clock
    # The warmest hour of each station is mid-afternoon of ITS local solar time, not of UTC.
    for _, site in sites.iterrows():
        rows = records[records["station_id"] == site["station_id"]]
        warmest_utc = rows.groupby(rows["time"].dt.hour)["temperature_c"].mean().idxmax()
        local = (warmest_utc + site["longitude"] / 15) % 24
        assert 11 <= local <= 18, (site["station_id"], warmest_utc, local)


def test_the_unlabelled_share_of_photos_has_an_empty_label(tmp_path):
    summary = generate(tmp_path, stations=2, days=3, seed=1, image_size=IMAGE_SIZE, unlabelled_share=0.5)
    index = pd.read_csv(tmp_path / "index.csv", keep_default_na=False)
    assert summary["unlabelled"] == int((index["label"] == "").sum())
    assert 0.35 < summary["unlabelled"] / len(index) < 0.65

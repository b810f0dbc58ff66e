"""The synthetic generator: deterministic, on-contract, causal, and its images carry signal; its
camera sees a whole sky through a fisheye, with fixed obstructions, the real sun, and a true sky
mask per frame that ingest never takes for a photo."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skyedge.core import contract, solar
from skyedge.core.config import SyntheticSource
from skyedge.data import camera, read
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


@pytest.mark.parametrize("camera_model", ["clean", "fisheye"])
def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path: Path, camera_model: str) -> None:
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        generate(tmp_path / name, stations=2, days=2, seed=seed, image_size=IMAGE_SIZE, unlabelled_share=0.5, camera_model=camera_model)
    first, again, other = (tmp_path / name for name in "abc")
    assert _files(first, "stations/*.csv") == _files(again, "stations/*.csv")
    assert _files(first, "index.csv") == _files(again, "index.csv")
    images = _files(first, "images/*/*.png")
    assert len(images) == 2 * 2 * 24
    sample = sorted(images)[::7]
    assert all(images[name] == (again / name).read_bytes() for name in sample)
    masks = _files(first, "masks/*/*.png")
    assert masks == _files(again, "masks/*/*.png")
    assert len(masks) == (len(images) if camera_model == "fisheye" else 0)  # the clean camera has no obstructions to mask
    assert any(images[name] != (other / name).read_bytes() for name in sample)
    assert _files(first, "stations/*.csv") != _files(other, "stations/*.csv")


def test_both_cameras_record_the_same_weather_and_an_unknown_camera_is_rejected(tmp_path: Path) -> None:
    for camera_model in ("clean", "fisheye"):
        generate(tmp_path / camera_model, stations=1, days=2, seed=5, image_size=IMAGE_SIZE, unlabelled_share=0.5, camera_model=camera_model)
    assert _files(tmp_path / "clean", "stations/*.csv") == _files(tmp_path / "fisheye", "stations/*.csv")
    assert _files(tmp_path / "clean", "index.csv") == _files(tmp_path / "fisheye", "index.csv")
    with pytest.raises(ValueError, match="camera_model"):
        generate(tmp_path / "x", stations=1, days=2, seed=5, image_size=IMAGE_SIZE, unlabelled_share=0.5, camera_model="pinhole")


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


def test_image_size_outside_64_to_256_is_rejected(tmp_path: Path) -> None:
    for size in (40, 300):
        with pytest.raises(ValueError, match="image_size"):
            generate(tmp_path, stations=1, days=1, seed=0, image_size=size, unlabelled_share=0.0)


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


# --- the camera -------------------------------------------------------------------------------

CAMERA_SIZE = 96


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three stations, three days, rendered at 96 px: photos and their masks."""
    out_dir = tmp_path_factory.mktemp("frames")
    generate(out_dir, stations=3, days=3, seed=3, image_size=CAMERA_SIZE, unlabelled_share=0.0, camera_model="fisheye")
    return out_dir


def _station_masks(out_dir: Path, station: str) -> np.ndarray:
    paths = sorted((out_dir / "masks" / station).glob("*.png"))
    return np.stack([np.asarray(Image.open(path)) for path in paths]).astype(bool)


def _sun(out_dir: Path, station: str, stamps: pd.Series) -> solar.SunPosition:
    site = pd.read_csv(out_dir / "stations" / contract.STATION_METADATA_FILE).set_index("station_id").loc[station]
    hours = pd.to_datetime(stamps).dt.tz_localize(None).to_numpy().astype("datetime64[h]").astype(int)
    return solar.sun_position(hours, site["latitude"], site["longitude"])


def test_resolution_comes_from_params_and_every_photo_has_a_mask_of_its_size(frames: Path) -> None:
    index = pd.read_csv(frames / "index.csv")
    for path in index["path"].iloc[::17]:
        with Image.open(frames / path) as photo, Image.open(frames / camera.mask_path(path)) as mask:
            assert photo.mode == "RGB" and photo.size == (CAMERA_SIZE, CAMERA_SIZE)
            assert mask.size == (CAMERA_SIZE, CAMERA_SIZE)
            assert set(np.unique(np.asarray(mask).astype(int))) <= {0, 1}
    assert camera.mask_path("images/syn-01/20240301T0500.png") == "masks/syn-01/20240301T0500.png"
    # params.yaml's synthetic source takes the rendered side up to 256 px, and no more.
    source = {"type": "synthetic", "stations": 1, "days": 2, "seed": 0, "unlabelled_share": 0.0, "camera": "fisheye"}
    assert SyntheticSource(**source, image_size=256).image_size == 256
    with pytest.raises(ValueError, match="image_size"):
        SyntheticSource(**source, image_size=257)


def test_obstructions_are_fixed_for_a_station_and_differ_between_stations(frames: Path) -> None:
    fixed = {}
    for station in ("syn-00", "syn-01", "syn-02"):
        masks = _station_masks(frames, station)
        # Sky seen in any frame is sky of the fixed geometry; a leaf on the dome only hides more.
        geometry = masks.any(axis=0)
        assert (masks <= geometry).all()
        # Most frames show exactly the fixed geometry; the others lose a small patch to debris.
        identical = (masks == geometry).all(axis=(1, 2))
        assert identical.mean() >= 0.5, f"{station}: {identical.mean():.2f} of frames show the fixed geometry"
        assert (masks != geometry).mean(axis=(1, 2)).max() < 0.05
        sky_share = geometry.mean() / (np.pi / 4)  # of the image circle, roughly
        assert 0.45 < sky_share < 0.95, f"{station}: sky is {sky_share:.2f} of the circle"
        fixed[station] = geometry
    for a, b in (("syn-00", "syn-01"), ("syn-00", "syn-02"), ("syn-01", "syn-02")):
        assert (fixed[a] != fixed[b]).mean() > 0.02, (a, b)


def test_mask_is_zero_outside_the_circle_in_the_horizon_ring_and_behind_obstructions() -> None:
    lens = camera.make_camera(np.random.default_rng(5), CAMERA_SIZE)
    sky = lens.mask
    assert not sky[~lens.inside].any()  # outside the image circle
    assert not sky[lens.ring].any() and lens.ring.any()  # the ground between horizon and circle edge
    assert (lens.zenith[sky] <= np.pi / 2).all()
    assert not sky[lens.obstruction >= 0.5].any() and (lens.obstruction[lens.above_horizon] >= 0.5).any()
    row, col = np.nonzero(sky)
    assert np.hypot(row - lens.centre[0], col - lens.centre[1]).max() <= lens.radius_px * 90 / np.rad2deg(lens.edge) + 1
    # The rendered frame: black outside the circle; the mask it returns is the geometry's.
    clean = camera.Dome(drops=0, dust=0.0, debris=None)
    pixels, mask = camera.render(lens, np.random.default_rng(0), 0, 0.5, 40.0, 150.0, clean)
    assert (pixels[~lens.inside] == 0).all() and (pixels[lens.inside].max(axis=1) > 0).mean() > 0.99
    assert (mask.astype(bool) == sky).all()


def test_frames_on_disk_are_black_outside_the_circle_where_the_mask_is_zero(frames: Path) -> None:
    photos = np.stack([np.asarray(Image.open(p)) for p in sorted((frames / "images" / "syn-01").glob("*.png"))])
    masks = _station_masks(frames, "syn-01")
    black = (photos.max(axis=3) == 0).all(axis=0)  # black in every frame: outside the circle
    assert black[0, 0] and black[-1, -1] and not black[CAMERA_SIZE // 2, CAMERA_SIZE // 2]
    assert not masks[:, black].any()


def test_the_brightest_spot_is_the_sun_where_the_ephemeris_puts_it() -> None:
    lens = camera.make_camera(np.random.default_rng(11), 128)
    clean = camera.Dome(drops=0, dust=0.0, debris=None)
    # Beijing, 2016-06-21: 04:00 UTC is about local noon, 10:00 UTC the evening.
    noon_hour, evening_hour = (int(np.datetime64(t, "h").astype(int)) for t in ("2016-06-21T04", "2016-06-21T10"))
    sun = solar.sun_position(np.array([noon_hour, evening_hour]), 39.929, 116.417)
    spots = []
    for elevation, azimuth in zip(sun.elevation_deg, sun.azimuth_deg):
        pixels, _ = camera.render(lens, np.random.default_rng(1), 0, 0.5, float(elevation), float(azimuth), clean)
        brightness = pixels.astype(float).sum(axis=2)
        saturated = np.argwhere(brightness >= brightness.max() - 3)
        row, col = camera.sun_pixel(lens, float(elevation), float(azimuth))
        spot = saturated.mean(axis=0)
        assert np.hypot(spot[0] - row, spot[1] - col) < 4, (elevation, azimuth, spot, (row, col))
        # The sun pixel sits where the lens maps that zenith angle and azimuth.
        at = int(round(row)), int(round(col))
        assert np.rad2deg(lens.zenith[at]) == pytest.approx(90 - elevation, abs=2.5)
        assert np.angle(np.exp(1j * (lens.azimuth[at] - np.deg2rad(azimuth))), deg=True) == pytest.approx(0, abs=6)
        spots.append(spot)
    centre = np.array(lens.centre)
    assert np.linalg.norm(spots[1] - spots[0]) > 20  # the sun moved across the frame
    assert np.linalg.norm(spots[0] - centre) < np.linalg.norm(spots[1] - centre)  # and sank towards the horizon


def test_night_frames_are_dark_and_flat(frames: Path) -> None:
    for station in ("syn-00", "syn-01", "syn-02"):
        rows = pd.read_csv(frames / "stations" / f"{station}.csv")
        sun = _sun(frames, station, rows["timestamp"])
        photos = [np.asarray(Image.open(frames / "stations" / image), dtype=float) for image in rows["image"]]
        inside = np.asarray(Image.open(frames / camera.mask_path(rows["image"].iloc[0][3:]))).astype(bool)
        brightness = np.array([photo[inside].mean() for photo in photos])
        contrast = np.array([photo[inside].mean(axis=1).std() for photo in photos])
        night, day = sun.elevation_deg < -10, sun.elevation_deg > 20
        assert night.any() and day.any()
        assert brightness[night].mean() < 0.4 * brightness[day].mean(), station
        assert brightness[night].max() < 110, station
        assert contrast[night].mean() < contrast[day].mean(), station


def test_masks_are_never_ingested_as_photos(frames: Path, tmp_path: Path) -> None:
    from skyedge.data import ingest
    from tests.conftest import data_params, folder_source, ingest_params

    params = ingest_params([folder_source(frames)], holdout_stations=("syn-02",), great_expectations=False)
    report = ingest.run(params, data_params(), tmp_path / "ingest")
    photos = len(pd.read_csv(frames / "index.csv"))
    masks = list((frames / "masks").rglob("*.png"))
    assert len(masks) == photos == 3 * 3 * 24
    # Received: every station row, every photo and the three stations.csv rows; no mask among them.
    assert report["total"]["received"] == 2 * photos + 3
    assert report["total"]["quarantined"] == 0
    samples = pd.read_csv(tmp_path / "ingest" / "samples.csv", keep_default_na=False)
    used = set(samples["image_file"]) - {""}
    assert len(used) == photos and not [path for path in used if "/masks/" in path]
    assert not [path for path in read.station_files(frames) if "masks" in path.parts]

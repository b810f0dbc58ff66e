"""The ingest stage's outputs, loaded as arrays (numpy only: evaluation uses it without torch)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from skyedge.core import crop, inference, inputs, paths
from skyedge.core.contract import HORIZONS


@dataclass(frozen=True)
class Ingested:
    samples: pd.DataFrame  # one row per sample (split, labels, image_idx, sky_label, ...)
    windows: np.ndarray  # [N, W, F] float32 sensor windows
    images: np.ndarray  # [M, S, S, 3] uint8 photos; samples point at them with image_idx
    preprocessing: dict  # normalisation.json: sensors, image, climatology
    # The whole frames [M, S, S, 3] the teacher scores when `images` are attention crops
    # (attended()); None: the teacher sees `images`.
    teacher_images: np.ndarray | None = None

    @property
    def rain(self) -> np.ndarray:
        return self.samples[[f"rain_h{h}" for h in HORIZONS]].to_numpy(np.float32)

    @property
    def temp(self) -> np.ndarray:
        return self.samples[[f"temp_h{h}" for h in HORIZONS]].to_numpy(np.float32)

    def split(self, name: str) -> np.ndarray:
        """Row indices of one split (train, val or test)."""
        return np.flatnonzero(self.samples["split"].to_numpy() == name)

    def grouped(self, name: str) -> np.ndarray:
        """Rows of a split that come from groups training never saw (capture days, stations,
        seasons): the field estimate, which every decision that picks something reads. Photos of
        a class with one capture day only (split by capture time) are left out here."""
        return np.flatnonzero((self.samples["split"].to_numpy() == name) & (self.samples["day_in_train"].to_numpy() == 0))


def load_ingested(directory: Path) -> Ingested:
    files = paths.Ingest(directory)
    samples = pd.read_csv(files.samples, keep_default_na=True, dtype={"station_id": str, "image_file": str})
    samples["station_id"] = samples["station_id"].fillna("")
    return Ingested(
        samples=samples,
        windows=np.load(files.windows),
        images=np.load(files.images),
        preprocessing=json.loads(files.normalisation.read_text()),
    )


def attended(data: Ingested, boxes: np.ndarray, boxes_file: Path | str = "boxes") -> Ingested:
    """The same samples with every photo cut to its attention box (the attend stage's boxes.npy,
    one box per image of images.npy) and resized back to the ingest's size: what a student that
    looks through selective attention sees, at its own resolution."""
    if boxes.shape != (len(data.images), 4):
        raise ValueError(f"{boxes_file}: shape {boxes.shape}, but images.npy holds {len(data.images)} images: one box [top, left, bottom, right] per image; re-run the attend stage on this ingest")
    return replace(data, images=crop.crop_photos(data.images, boxes, data.images.shape[1]), teacher_images=data.images)


def student_view(data: Ingested, student_input: str, boxes_file: Path) -> Ingested:
    """The ingest as the student sees it (params attend.student_input): `crop` cuts every photo
    to its box in the attend stage's boxes.npy and keeps the whole frames for the teacher; `full`
    returns it unchanged."""
    if student_input == "full":
        return data
    if student_input != "crop":
        raise ValueError(f"attend.student_input: {student_input!r} is neither 'crop' nor 'full'")
    return attended(data, np.load(boxes_file), boxes_file)


def teacher_view(data: Ingested) -> Ingested:
    """The ingest as the teacher sees it: the whole frames, also when the student's are crops."""
    return data if data.teacher_images is None else replace(data, images=data.teacher_images, teacher_images=None)


def model_inputs(data: Ingested, rows: np.ndarray, drop_images: bool = False) -> dict[str, np.ndarray]:
    """The ONNX model's three inputs for some samples, preprocessed as the manifest records."""
    image_idx = data.samples["image_idx"].to_numpy()[rows]
    if drop_images:
        image_idx = np.full_like(image_idx, -1)
    return inputs.model_inputs(data.images, image_idx, data.windows[rows], data.preprocessing["image"])


def inputs_for_model(data: Ingested, rows: np.ndarray, preprocessing: dict) -> dict[str, np.ndarray]:
    """Model inputs for another model's recorded preprocessing (e.g. production's manifest):
    windows re-normalised with its statistics, photos resized to its input size."""
    windows = inputs.renormalise_windows(data.windows[rows], data.preprocessing["sensors"], preprocessing["sensors"])
    return inputs.model_inputs(data.images, data.samples["image_idx"].to_numpy()[rows], windows, preprocessing["image"])


def inputs_for_package(data: Ingested, rows: np.ndarray, document: dict, package_dir: Path) -> dict[str, np.ndarray]:
    """inputs_for_model for a package, through its attention.onnx when its manifest has an
    `attention` section (the model was trained on crops; each station's boxes reused as the
    station reuses them, over all of `data`'s frames); whole frames otherwise."""
    attention = document.get("attention")
    if attention is None:
        return inputs_for_model(data, rows, document["preprocessing"])
    windows = inputs.renormalise_windows(data.windows[rows], data.preprocessing["sensors"], document["preprocessing"]["sensors"])
    session = inference.session(Path(package_dir) / attention["file"])
    image_idx = data.samples["image_idx"].to_numpy()
    stations, hours = inputs.image_stations_hours(data.samples["station_id"].to_numpy(), data.samples["hour"].to_numpy(), image_idx, len(data.images))
    crops = inputs.attended_crops(session, attention, data.images, image_idx, int(document["preprocessing"]["image"]["size"]), stations, hours)
    return inputs.model_inputs(crops, image_idx[rows], windows, document["preprocessing"]["image"])


def training_coverage(data: Ingested) -> dict:
    """What training saw, for the manifest: each station's first and last training hour and the
    capture days of training photos without a station, so `skyedge evaluate` can tell seen data
    from unseen."""
    train = data.samples[data.samples["split"] == "train"]
    stations = train[train["station_id"] != ""].groupby("station_id")["timestamp"]
    return {
        "stations": {station: [first, last] for station, (first, last) in zip(stations.groups, zip(stations.min(), stations.max()))},
        "photo_days": sorted(set(train.loc[train["station_id"] == "", "day"].dropna())),
    }

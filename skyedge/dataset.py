"""The ingest stage's outputs, loaded as arrays (numpy only: evaluation uses it without torch)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from skyedge.contract import HORIZONS


@dataclass(frozen=True)
class Ingested:
    samples: pd.DataFrame  # one row per sample (split, labels, image_idx, sky_label, ...)
    windows: np.ndarray  # [N, W, F] float32 sensor windows
    images: np.ndarray  # [M, S, S, 3] uint8 photos; samples point at them with image_idx
    preprocessing: dict  # normalisation.json: sensors, image, climatology

    @property
    def rain(self) -> np.ndarray:
        return self.samples[[f"rain_h{h}" for h in HORIZONS]].to_numpy(np.float32)

    @property
    def temp(self) -> np.ndarray:
        return self.samples[[f"temp_h{h}" for h in HORIZONS]].to_numpy(np.float32)

    def split(self, name: str) -> np.ndarray:
        """Row indices of one split (train, val or test)."""
        return np.flatnonzero(self.samples["split"].to_numpy() == name)


def load_ingested(directory: Path) -> Ingested:
    directory = Path(directory)
    samples = pd.read_csv(directory / "samples.csv", keep_default_na=True, dtype={"station_id": str, "image_file": str})
    samples["station_id"] = samples["station_id"].fillna("")
    return Ingested(
        samples=samples,
        windows=np.load(directory / "windows.npy"),
        images=np.load(directory / "images.npy"),
        preprocessing=json.loads((directory / "normalisation.json").read_text()),
    )


def model_inputs(data: Ingested, rows: np.ndarray, drop_images: bool = False) -> dict[str, np.ndarray]:
    """The ONNX model's three inputs for some samples, preprocessed as the manifest records."""
    spec = data.preprocessing["image"]
    image_idx = data.samples["image_idx"].to_numpy()[rows]
    present = (image_idx >= 0) & (not drop_images)
    size = spec["size"]
    pixels = np.zeros((len(rows), size, size, 3), np.float32)
    pixels[present] = data.images[image_idx[present]].astype(np.float32) / 255.0
    image = normalise_image(pixels, spec)
    image[~present] = 0.0
    return {
        "image": image,
        "image_present": present.astype(np.float32)[:, None],
        "sensors": data.windows[rows],
    }


def normalise_image(pixels: np.ndarray, spec: dict) -> np.ndarray:
    """[B, S, S, 3] floats in 0..1 -> [B, 3, S, S] normalised with the recorded mean and std."""
    mean = np.asarray(spec["mean"], np.float32)
    std = np.asarray(spec["std"], np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(0, 3, 1, 2), dtype=np.float32)


def inputs_for_model(data: Ingested, rows: np.ndarray, preprocessing: dict) -> dict[str, np.ndarray]:
    """Model inputs for another model's recorded preprocessing (e.g. production's manifest).

    Windows are stored normalised with this dataset's statistics; values are mapped back to units
    and normalised with the model's own, exactly (missing flags say which values to leave at 0).
    A model with a shorter window gets the latest hours; photos are resized to its input size.
    """
    ours, theirs = data.preprocessing["sensors"], preprocessing["sensors"]
    window = int(theirs["window_hours"])
    if window > data.windows.shape[1] or theirs["n_features"] != data.windows.shape[2]:
        raise ValueError(
            f"model expects sensor windows of {window} h x {theirs['n_features']} features; "
            f"this dataset has {data.windows.shape[1]} h x {data.windows.shape[2]}: re-ingest with data.window_hours >= {window}"
        )
    windows = data.windows[rows][:, -window:].copy()
    n_raw = len(ours["mean"])
    observed = windows[..., n_raw : 2 * n_raw] == 0
    values = windows[..., :n_raw] * np.asarray(ours["std"]) + np.asarray(ours["mean"])
    windows[..., :n_raw] = np.where(observed, (values - np.asarray(theirs["mean"])) / np.asarray(theirs["std"]), 0.0)

    spec = preprocessing["image"]
    image_idx = data.samples["image_idx"].to_numpy()[rows]
    present = image_idx >= 0
    pixels = np.zeros((len(rows), spec["size"], spec["size"], 3), np.float32)
    for i in np.flatnonzero(present):
        photo = data.images[image_idx[i]]
        if photo.shape[0] != spec["size"]:
            photo = np.asarray(Image.fromarray(photo).resize((spec["size"], spec["size"]), Image.Resampling.BILINEAR))
        pixels[i] = photo.astype(np.float32) / 255.0
    image = normalise_image(pixels, spec)
    image[~present] = 0.0
    return {"image": image, "image_present": present.astype(np.float32)[:, None], "sensors": windows.astype(np.float32)}

"""The ingest stage's outputs, loaded as arrays (numpy only: evaluation uses it without torch)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

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

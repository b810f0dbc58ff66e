"""Composite frames: real sky photos as the sky of rendered station scenes (`make bench-attention`).

A real-photo check of selective attention. Each labelled photo of a photo folder (index.csv, the
data contract's; SWIMCAT's patches are all sky) takes the place of the sky in one fisheye frame
of the ingest (skyedge.data.camera.composite): a daytime frame (sun above
DAYTIME_ELEVATION_DEG, as SWIMCAT was shot by day) of the chosen split whose own sky class is
the photo's. So the label is kept, the station's sensor window agrees with the sky the frame
shows, and the horizon ring, obstructions and dome stay the station's. The frame's true sky mask
(the generator's, for evaluation only) says where the photo goes and is what attention should
find in the composite.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skyedge.core import contract, inputs, solar
from skyedge.data import camera
from skyedge.data.dataset import Ingested
from skyedge.data.read import Outcome, read_index

DAYTIME_ELEVATION_DEG = 10.0


@dataclass(frozen=True)
class Composites:
    data: Ingested  # one sample per composite: its host frame's sensors and labels, the composite as its photo
    masks: np.ndarray  # [N, S, S] bool: the true sky of each composite (its host frame's)
    photos: list[str]  # the photo each composite shows
    skipped: dict[str, int]  # photos of the folder not used, by reason


def sun_elevation(samples) -> np.ndarray:
    """The sun's elevation (degrees) at each sample's station and hour."""
    elevation = np.full(len(samples), np.nan)
    for (latitude, longitude), group in samples.groupby(["latitude", "longitude"]):
        elevation[group.index.to_numpy()] = solar.sun_position(group["hour"].to_numpy(), float(latitude), float(longitude)).elevation_deg
    return elevation


def daytime_hosts(data: Ingested, split: str) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """The frames a photo of each class may be shown in (sample rows of `split` with a labelled
    daytime photo of that class and a true sky mask), and the true masks of all samples' photos."""
    samples = data.samples.reset_index(drop=True)
    size = int(data.images.shape[1])
    masks, found = camera.read_true_masks(samples["image_file"].fillna("").astype(str).tolist(), size)
    usable = (
        (samples["split"].to_numpy() == split)
        & (samples["labelled"].to_numpy() == 1)
        & (samples["image_idx"].to_numpy() >= 0)
        & found
        & masks.any(axis=(1, 2))
        & (sun_elevation(samples) > DAYTIME_ELEVATION_DEG)
    )
    labels = samples["sky_label"].to_numpy()
    return {k: np.flatnonzero(usable & (labels == k)) for k in range(len(contract.SKY_CLASSES))}, masks


def build(data: Ingested, photo_dir: Path, split: str = "test", seed: int = 0) -> Composites:
    """One composite per labelled photo of `photo_dir` whose class has a host frame in `split`
    (hosts drawn at random with `seed`); the rest counted in `skipped` with the reason."""
    outcome = Outcome(source=str(photo_dir))
    rows = read_index(Path(photo_dir), outcome)
    if not rows:
        raise FileNotFoundError(f"{photo_dir}: no index.csv rows (a photo folder: index.csv with path,label)")
    hosts, masks = daytime_hosts(data, split)
    rng = np.random.default_rng(seed)
    size = int(data.images.shape[1])
    chosen, frames, photos = [], [], []
    skipped: dict[str, int] = {}
    for _, path, label, _ in rows:
        reason = None
        if label not in contract.SKY_CLASSES:
            reason = "no sky class (unlabelled or unknown)"
        elif not len(hosts[contract.SKY_CLASSES.index(label)]):
            reason = f"no daytime {split} frame of its class"
        else:
            try:
                photo = inputs.read_photo(Path(path), 2 * size)
            except (OSError, ValueError):
                reason = "unreadable"
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        host = int(rng.choice(hosts[contract.SKY_CLASSES.index(label)]))
        frame = data.images[int(data.samples["image_idx"].iloc[host])]
        chosen.append(host)
        frames.append(camera.composite(frame, masks[host], photo))
        photos.append(path)
    if not chosen:
        raise ValueError(f"{photo_dir}: no photo could be composited ({skipped}); the ingest needs daytime {split} frames with true masks (a fisheye synthetic source)")
    host_rows = np.array(chosen)
    samples = data.samples.iloc[host_rows].reset_index(drop=True).assign(image_idx=np.arange(len(host_rows)), image_file=photos, split=split)
    composite_data = Ingested(samples=samples, windows=data.windows[host_rows], images=np.stack(frames), preprocessing=data.preprocessing)
    return Composites(composite_data, masks[host_rows], photos, skipped)

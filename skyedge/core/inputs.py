"""The model's three inputs, built one way for training, evaluation and the station (numpy + Pillow).

`image` [B, 3, S, S] float32: RGB / 255, resized bilinearly to the manifest's size, minus the
recorded mean, over the recorded std; zeros where there is no photo. `image_present` [B, 1]: 1
with a photo, 0 without (the model then uses its learned "no image" embedding). `sensors`
[B, W, F]: windows from skyedge.core.features. Every parameter comes from the preprocessing the
manifest records (`spec`), never from code defaults, so a model sees on a station exactly what
it saw in training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from skyedge.core import crop
from skyedge.core.contract import INPUT_IMAGE, INPUT_IMAGE_PRESENT, INPUT_SENSORS

# ImageNet statistics: the pretrained teacher expects them; the manifest records them.
IMAGE_MEAN = [0.485, 0.456, 0.406]
IMAGE_STD = [0.229, 0.224, 0.225]


def image_spec(size: int) -> dict:
    """The image preprocessing a pipeline records in its manifest."""
    return {"size": size, "mean": IMAGE_MEAN, "std": IMAGE_STD, "resize": "bilinear", "layout": "NCHW RGB /255"}


def resize_photo(photo: np.ndarray, size: int) -> np.ndarray:
    """An HxWx3 uint8 photo at size x size (bilinear), unchanged when it already is."""
    if photo.shape[0] == size and photo.shape[1] == size:
        return photo
    from PIL import Image

    return np.asarray(Image.fromarray(photo).resize((size, size), Image.Resampling.BILINEAR))


def read_photo(path: Path, size: int) -> np.ndarray:
    """A photo file as size x size x 3 uint8 RGB; OSError / ValueError when it is not readable."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def normalise_image(pixels: np.ndarray, spec: dict) -> np.ndarray:
    """[B, S, S, 3] floats in 0..1 -> [B, 3, S, S] normalised with the recorded mean and std."""
    mean = np.asarray(spec["mean"], np.float32)
    std = np.asarray(spec["std"], np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(0, 3, 1, 2), dtype=np.float32)


def image_input(photos: np.ndarray, image_idx: np.ndarray, spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """`image` and `image_present` for samples pointing into photos [M, s, s, 3] uint8 (-1: none)."""
    size = int(spec["size"])
    present = image_idx >= 0
    pixels = np.zeros((len(image_idx), size, size, 3), np.float32)
    if photos.shape[1:3] == (size, size):
        pixels[present] = photos[image_idx[present]].astype(np.float32) / 255.0
    else:  # another model's input size (e.g. production's, re-scored on the candidate's data)
        for row in np.flatnonzero(present):
            pixels[row] = resize_photo(photos[image_idx[row]], size).astype(np.float32) / 255.0
    image = normalise_image(pixels, spec)
    image[~present] = 0.0  # what training feeds when the camera gave nothing
    return image, present.astype(np.float32)[:, None]


def attended_photos(attention, frames: np.ndarray, present: np.ndarray, settings: dict, size: int) -> np.ndarray:
    """Whole frames [B, s, s, 3] uint8 cut to the boxes the attention graph (`attention`, an ORT
    session) finds, at size x size. Rows without a photo (present 0: the camera is down) skip
    attention and stay zeros, which image_input never reads."""
    crops = np.zeros((len(frames), size, size, 3), np.uint8)
    rows = np.flatnonzero(np.asarray(present).reshape(-1) > 0)
    if len(rows):
        crops[rows] = crop.crop_photos(frames[rows], crop.attention_boxes(attention, frames[rows], settings), size)
    return crops


def attended_image_input(attention, frames: np.ndarray, present: np.ndarray, settings: dict, spec: dict) -> np.ndarray:
    """The model's `image` input behind attention: each present frame cut to its attention box,
    then preprocessed as image_input does; zeros where there is no photo."""
    crops = attended_photos(attention, frames, present, settings, int(spec["size"]))
    image_idx = np.where(np.asarray(present).reshape(-1) > 0, np.arange(len(frames)), -1)
    return image_input(crops, image_idx, spec)[0]


def attended_crops(attention_session, attention: dict, photos: np.ndarray, image_idx: np.ndarray, size: int, image_stations: np.ndarray | None = None, image_hours: np.ndarray | None = None) -> np.ndarray:
    """[M, size, size, 3] uint8: every photo samples point at (image_idx), resized to attention's
    frame_size, cut to its attention box at the model's size (zeros for photos nobody uses); each
    photo goes through attention once however many samples share it. With each photo's station
    and epoch hour (`image_stations`, `image_hours`, aligned with photos) a station's boxes are
    reused within the manifest's refresh_hours, as the station does (crop.reused_boxes)."""
    image_idx = np.asarray(image_idx)
    frame_size = int(attention["frame_size"])
    used = np.unique(image_idx[image_idx >= 0])
    crops = np.zeros((len(photos), size, size, 3), np.uint8)
    if not len(used):
        return crops
    frames = np.stack([resize_photo(photos[i], frame_size) for i in used])
    boxes = crop.attention_boxes(attention_session, frames, attention)
    if image_stations is not None and image_hours is not None:
        boxes, _ = crop.reused_boxes(boxes, np.asarray(image_stations)[used], np.asarray(image_hours)[used], int(attention.get("refresh_hours", 0)))
    crops[used] = crop.crop_photos(frames, boxes, size)
    return crops


def image_stations_hours(stations: np.ndarray, hours: np.ndarray, image_idx: np.ndarray, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Each photo's station and epoch hour ([M] str, [M] int64) from the last sample that names
    it (samples' station_id, hour, image_idx); "" and 0 for a photo without a station or hour."""
    image_idx = np.asarray(image_idx)
    named = image_idx >= 0
    image_stations, image_hours = np.full(n_images, "", dtype=object), np.zeros(n_images, dtype=np.int64)
    image_stations[image_idx[named]] = np.asarray(stations, dtype=object)[named]
    image_hours[image_idx[named]] = np.nan_to_num(np.asarray(hours, dtype=np.float64)[named]).astype(np.int64)
    return image_stations.astype(str), image_hours


def model_inputs(photos: np.ndarray, image_idx: np.ndarray, windows: np.ndarray, spec: dict) -> dict[str, np.ndarray]:
    """The ONNX model's feed for a batch of samples."""
    image, present = image_input(photos, np.asarray(image_idx), spec)
    return {INPUT_IMAGE: image, INPUT_IMAGE_PRESENT: present, INPUT_SENSORS: np.ascontiguousarray(windows, dtype=np.float32)}


def renormalise_windows(windows: np.ndarray, ours: dict, theirs: dict) -> np.ndarray:
    """Windows normalised with `ours` re-expressed in another model's normalisation `theirs`.

    Values are mapped back to units and normalised again, exactly; the missing flags say which
    values to leave at 0. A model with a shorter window gets the latest hours.
    """
    window = int(theirs["window_hours"])
    if window > windows.shape[1] or theirs["n_features"] != windows.shape[2]:
        raise ValueError(
            f"model expects sensor windows of {window} h x {theirs['n_features']} features; "
            f"this dataset has {windows.shape[1]} h x {windows.shape[2]}: re-ingest with data.window_hours >= {window}"
        )
    out = windows[:, -window:].copy()
    n_raw = len(ours["mean"])
    observed = out[..., n_raw : 2 * n_raw] == 0
    values = out[..., :n_raw] * np.asarray(ours["std"]) + np.asarray(ours["mean"])
    out[..., :n_raw] = np.where(observed, (values - np.asarray(theirs["mean"])) / np.asarray(theirs["std"]), 0.0)
    return out.astype(np.float32)

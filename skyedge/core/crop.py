"""Selective attention's crop: the box around the sky a mask shows, and the frame cut to it (numpy + Pillow).

A box is four fractions of the frame, (top, left, bottom, right), bottom and right exclusive, so
one box fits the same frame at any resolution: the attend stage finds it on the ingest's small
images, a station applies it to its camera's full frame. Both sides crop with these functions,
so a model sees on a station exactly the crop it saw in training. No torch: a station runs this.
"""

from __future__ import annotations

import numpy as np

BOX_FIELDS = ("top", "left", "bottom", "right")
WHOLE_FRAME = np.array([0.0, 0.0, 1.0, 1.0], dtype=np.float32)


def _span(coordinates: np.ndarray, side: int, outlier_share: float) -> tuple[float, float]:
    """First and one-past-last pixel of the sky along one axis, the outer `outlier_share` of sky
    pixels on each end ignored: a few stray false positives in a corner must not widen the box."""
    low, high = np.quantile(coordinates, [outlier_share, 1.0 - outlier_share])
    return float(low), float(min(high + 1.0, side))


def _squared(low: float, high: float, side: float, length: float) -> tuple[float, float]:
    """[low, high) grown about its centre to `length`, shifted back inside [0, side)."""
    centre = (low + high) / 2
    low, high = centre - length / 2, centre + length / 2
    shift = max(0.0, -low) - max(0.0, high - side)
    return max(0.0, low + shift), min(side, high + shift)


def box_from_mask(sky: np.ndarray, padding: float, outlier_share: float, min_sky_share: float) -> np.ndarray:
    """The crop box of a sky mask [H, W] (bool, or 1 where sky): the bounding box of its sky
    pixels, grown by `padding` of the frame side on every side and made square (the student's
    input is square: a square crop keeps the sky's shape), clipped to the frame.

    A mask with less sky than `min_sky_share` of the frame gives the whole frame: a few stray
    pixels are no sky to attend to (a net that has never seen such a frame finds a handful, and
    their box would cut away almost everything), so the student sees everything."""
    sky = np.asarray(sky) > 0
    if sky.ndim != 2:
        raise ValueError(f"box_from_mask: a mask is [H, W], got shape {sky.shape}")
    height, width = sky.shape
    rows, cols = np.nonzero(sky)
    if not len(rows) or len(rows) < min_sky_share * height * width:
        return WHOLE_FRAME.copy()
    top, bottom = _span(rows, height, outlier_share)
    left, right = _span(cols, width, outlier_share)
    top, bottom = max(0.0, top - padding * height), min(float(height), bottom + padding * height)
    left, right = max(0.0, left - padding * width), min(float(width), right + padding * width)
    # Square in pixels: the longer side wins (at most the frame's shorter side).
    length = min(max(bottom - top, right - left), float(min(height, width)))
    top, bottom = _squared(top, bottom, height, length)
    left, right = _squared(left, right, width, length)
    return np.array([top / height, left / width, bottom / height, right / width], dtype=np.float32)


def box_pixels(box: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """A fractional box as whole pixels of an H x W frame (top, left, bottom, right), at least one pixel."""
    top, left, bottom, right = (float(v) for v in box)
    if not (0 <= top < bottom <= 1 and 0 <= left < right <= 1):
        raise ValueError(f"crop box {tuple(box)}: needs 0 <= top < bottom <= 1 and 0 <= left < right <= 1 (fractions of the frame)")
    r0, c0 = int(np.floor(top * height)), int(np.floor(left * width))
    r1, c1 = max(int(np.ceil(bottom * height)), r0 + 1), max(int(np.ceil(right * width)), c0 + 1)
    return r0, c0, min(r1, height), min(c1, width)


def crop_photo(photo: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """An H x W x 3 uint8 frame cut to `box` and resized (bilinear) to size x size uint8."""
    from PIL import Image

    r0, c0, r1, c1 = box_pixels(box, photo.shape[0], photo.shape[1])
    return np.asarray(Image.fromarray(np.ascontiguousarray(photo[r0:r1, c0:c1])).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def crop_photos(photos: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """[M, H, W, 3] uint8 frames, each cut to its box [M, 4], as [M, size, size, 3] uint8."""
    if len(photos) != len(boxes):
        raise ValueError(f"crop_photos: {len(photos)} photos but {len(boxes)} boxes; one box per photo")
    out = np.empty((len(photos), size, size, 3), dtype=np.uint8)
    for i, (photo, box) in enumerate(zip(photos, boxes)):
        out[i] = crop_photo(photo, box, size)
    return out


# --- the attention path a station runs: attention.onnx on the frame, its box, the crop ---------

# The attention ONNX graph's names (skyedge.train.attention exports it under these).
ATTENTION_INPUT, ATTENTION_OUTPUT = "frame", "sky_probability"
ATTENTION_BATCH = 256  # frames per ONNX Runtime call when boxes are computed for a whole ingest
# The box rules a manifest's `attention` section records (params `attend`), so a station cuts
# exactly the box training cut.
BOX_SETTINGS = ("threshold", "padding", "outlier_share", "min_sky_share")


def box_settings(attend) -> dict:
    """The box rules of params `attend` (or any object with them as attributes) by BOX_SETTINGS' names."""
    return {name: getattr(attend, name) for name in BOX_SETTINGS}


def attention_feed(frames: np.ndarray) -> dict[str, np.ndarray]:
    """The attention graph's input for frames [N, H, W, 3] uint8: RGB / 255 is its only preprocessing."""
    return {ATTENTION_INPUT: np.ascontiguousarray(frames.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0}


def sky_probability(session, frames: np.ndarray) -> np.ndarray:
    """Sky probability [N, H, W] float32 of frames [N, H, W, 3] uint8 through the attention ONNX
    graph (`session`: an onnxruntime InferenceSession)."""
    out = np.empty(frames.shape[:3], dtype=np.float32)
    for start in range(0, len(frames), ATTENTION_BATCH):
        out[start : start + ATTENTION_BATCH] = session.run([ATTENTION_OUTPUT], attention_feed(frames[start : start + ATTENTION_BATCH]))[0][:, 0]
    return out


def attention_boxes(session, frames: np.ndarray, settings: dict) -> np.ndarray:
    """[N, 4] crop boxes of frames [N, H, W, 3] uint8: the attention graph's sky mask (probability
    above settings["threshold"]) through box_from_mask with the recorded padding, outlier share
    and minimum sky share. The attend stage, evaluation and the station all call this."""
    return boxes_of(sky_probability(session, frames), settings)


def boxes_of(probability: np.ndarray, settings: dict) -> np.ndarray:
    """[N, 4] crop boxes of sky probabilities [N, H, W] under the recorded box rules."""
    masks = probability > settings["threshold"]
    return np.stack([box_from_mask(m, settings["padding"], settings["outlier_share"], settings["min_sky_share"]) for m in masks]).reshape(-1, 4).astype(np.float32)


# --- a fixed camera: attention once per refresh period, its box reused in between ---------------


def is_whole_frame(box: np.ndarray) -> bool:
    """True for the fallback box (box_from_mask found too little sky): nothing worth reusing."""
    return bool(np.allclose(box, WHOLE_FRAME))


def box_is_fresh(found_hour: int, hour: int, refresh_hours: int) -> bool:
    """May a frame at `hour` reuse the box its station found at `found_hour`? Yes within
    `refresh_hours` after it (hours since the epoch); refresh_hours 0 never reuses."""
    return 0 <= hour - found_hour < refresh_hours


def reused_boxes(boxes: np.ndarray, stations: np.ndarray, hours: np.ndarray, refresh_hours: int) -> tuple[np.ndarray, np.ndarray]:
    """The boxes a fixed camera cuts when it runs attention once per `refresh_hours` (params
    attend.refresh_hours) instead of on every frame, and [N] bool: where attention ran.

    Per station, in time order, a frame runs attention unless its station found a box in the
    last refresh_hours hours (box_is_fresh), and then it is cut with that box. The camera does
    not move, so the sky does not either. A whole-frame fallback is never kept (a frame at night
    or behind debris must not blind the station for a day: the next frame runs attention again).
    Frames without a station (photos, station "") run attention every time. The device follows
    the same rule frame by frame (skyedge.device.predict)."""
    out, ran = np.array(boxes, dtype=np.float32, copy=True), np.ones(len(boxes), dtype=bool)
    if refresh_hours <= 0:
        return out, ran
    stations, hours = np.asarray(stations).astype(str), np.nan_to_num(np.asarray(hours, dtype=np.float64)).astype(np.int64)  # photos: no hour
    for station in np.unique(stations[stations != ""]):
        kept_box, kept_hour = None, 0
        for i in sorted(np.flatnonzero(stations == station), key=lambda row: hours[row]):
            if kept_box is not None and box_is_fresh(kept_hour, int(hours[i]), refresh_hours):
                out[i], ran[i] = kept_box, False
            elif not is_whole_frame(boxes[i]):
                kept_box, kept_hour = out[i], int(hours[i])
    return out, ran

"""Selective attention: a tiny network that finds the sky in a frame, trained without hand labels.

Pseudo-labels. A station's camera does not move: its mast, buildings, trees and horizon ring look
the same in every frame (only lit differently), while the sky changes from hour to hour (clouds,
sun, day and night). So each pixel's variance over a station's training frames separates them:

1. pixels that never change at all (outside the fisheye's image circle, black in every frame)
   are split from the rest by Otsu's threshold on log variance (variance spans decades there);
2. among the pixels that do change, Otsu's threshold on the variance itself splits the sky
   (changes most) from the ground, the horizon ring and the obstructions (change with the light).

A photo with no station (a SWIMCAT-like patch, already cropped to the sky) has no history to take
a variance over; its pseudo-label is the whole frame: sky everywhere, so the net learns to keep a
patch that is all sky whole. A station with fewer training frames than `min_frames` has no
reliable variance and is left out of training (reported, not guessed).

The net (`SkyMaskNet`) predicts the sky probability of every pixel of one frame from that frame
alone: dilated convolutions for a receptive field of the whole small frame, and one frame-level
context vector (day or night, clear or overcast) added to every pixel's features. A few thousand
parameters; exported to ONNX with the sigmoid inside. The crop box the student sees comes from the
predicted mask (skyedge.core.crop, numpy: a station crops without torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from skyedge.core.crop import box_from_mask

# ONNX names of the attention net: RGB / 255 in, the probability that each pixel is sky out.
INPUT_FRAME = "frame"
OUTPUT_SKY_PROBABILITY = "sky_probability"
PHOTO_ONLY = ""  # samples.csv's station_id of a photo without a station
# Pixels outside the image circle are 0 in every frame: their variance is exactly 0, and the log
# needs a floor, far below one 8-bit step squared (1.5e-5), so it never merges live pixels with them.
VARIANCE_FLOOR = 1e-8


# --- pseudo-labels from temporal variance ------------------------------------------------------


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the cut of `values` into two classes with the largest between-class variance."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size < 2 or values.min() == values.max():
        raise ValueError(f"otsu_threshold: needs at least two distinct values, got {values.size} values, {len(np.unique(values))} distinct")
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(counts)
    above = below[-1] - below
    sum_below = np.cumsum(counts * centres)
    mean_below = sum_below / np.maximum(below, 1)
    mean_above = (sum_below[-1] - sum_below) / np.maximum(above, 1)
    between = below * above * (mean_below - mean_above) ** 2
    return float(edges[np.argmax(between) + 1])  # the upper edge of the last bin of the lower class


def temporal_variance(frames: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] uint8 frames of one camera -> [H, W]: each pixel's variance over time, summed
    over the colour channels (a sunset changes colour more than brightness), in (0..1 pixel)^2."""
    if len(frames) < 2:
        raise ValueError(f"temporal_variance: needs at least 2 frames of a station, got {len(frames)}")
    pixels = frames.astype(np.float32) / 255.0
    return pixels.var(axis=0).sum(axis=-1)


def variance_pseudo_label(variance: np.ndarray) -> np.ndarray:
    """[H, W] temporal variance -> bool sky mask: live pixels (Otsu on log variance), then the
    most variable of those (Otsu on variance). See the module docstring for why two steps."""
    log_variance = np.log(variance + VARIANCE_FLOOR)
    live = log_variance > otsu_threshold(log_variance)
    if live.sum() < 2 or variance[live].min() == variance[live].max():
        return live  # nothing to split further: every live pixel changes alike
    return live & (variance > otsu_threshold(variance[live]))


@dataclass(frozen=True)
class PseudoLabels:
    """One mask per source of frames: each station's own, and all-sky for photos without a station."""

    masks: dict[str, np.ndarray]  # station_id -> [H, W] bool
    frames_used: dict[str, int]  # station_id -> training frames its mask came from
    left_out: dict[str, str]  # station_id -> why it has no pseudo-label

    def of(self, stations: np.ndarray) -> np.ndarray:
        """[N, H, W] bool labels for frames of these stations (each must have a mask)."""
        return np.stack([self.masks[s] for s in stations])


def station_pseudo_labels(images: np.ndarray, image_idx: np.ndarray, stations: np.ndarray, min_frames: int) -> PseudoLabels:
    """Pseudo-labels from the frames images[image_idx] (training frames only: the variance must
    not see val or test), grouped by their station; photo-only frames get the whole frame."""
    masks, used, left_out = {}, {}, {}
    side = images.shape[1:3]
    for station in sorted(set(stations)):
        mine = image_idx[stations == station]
        if station == PHOTO_ONLY:
            masks[station], used[station] = np.ones(side, dtype=bool), len(mine)
        elif len(mine) < min_frames:
            left_out[station] = f"{len(mine)} training frames, fewer than attend.min_station_frames={min_frames}"
        else:
            try:
                masks[station], used[station] = variance_pseudo_label(temporal_variance(images[mine])), len(mine)
            except ValueError as error:  # every pixel alike over time (a dead camera): nothing to split
                left_out[station] = f"no pseudo-label from its {len(mine)} training frames: {error}"
    return PseudoLabels(masks, used, left_out)


# --- the net ---------------------------------------------------------------------------------


DILATIONS = (1, 2, 4, 8)
# Each 3x3 layer of dilation d sees d pixels further on each side: 15 px in all, 31 px across,
# the whole of a 32 px frame.
REACH = sum(DILATIONS)


def _conv(cin: int, cout: int, dilation: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, dilation=dilation, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SkyMaskNet(nn.Module):
    """Frame [N, 3, H, W] (RGB / 255) -> sky logits [N, 1, H, W]. Fully convolutional: any size."""

    def __init__(self, width: int) -> None:
        super().__init__()
        widths = (3, width, width, 2 * width, 2 * width)
        self.local = nn.Sequential(*(_conv(cin, cout, d) for cin, cout, d in zip(widths, widths[1:], DILATIONS)))
        # One vector per frame added to every pixel: whether dark means night sky or ground
        # depends on the whole frame, not on the pixel's neighbourhood.
        self.context = nn.Linear(2 * width, 2 * width)
        self.head = nn.Conv2d(2 * width, 1, 1)

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        # The frame's edge pixels repeated once by the layers' whole reach, then unpadded layers
        # bring it back to its size: a patch that is all sky continues as sky past its border
        # (zero padding would paint it black, like a fisheye's corners), at the cost of one pad,
        # not one per layer.
        features = self.local(nn.functional.pad(frame, (REACH,) * 4, mode="replicate"))
        context = self.context(features.mean(dim=(2, 3)))[:, :, None, None]
        return self.head(torch.relu(features + context))


class SkyProbability(nn.Module):
    """What ships: the net with its sigmoid, so the ONNX output is a probability."""

    def __init__(self, net: SkyMaskNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(frame))


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """[N, H, W, 3] uint8 -> [N, 3, H, W] float32 in 0..1 (the net's only preprocessing)."""
    return torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))).float().div_(255.0)


# --- training --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskFit:
    epochs: int
    batch_size: int
    lr: float
    seed: int
    device: str


def _augment(frames: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random flip and quarter turn of a batch's frames and labels, and an exposure gain
    per frame: stations differ in mounting angle and auto-exposure, and the net must find the sky
    at a station it never saw."""
    turns = int(torch.randint(4, (1,), generator=generator))
    frames, labels = torch.rot90(frames, turns, (2, 3)), torch.rot90(labels, turns, (2, 3))
    if bool(torch.randint(2, (1,), generator=generator)):
        frames, labels = frames.flip(3), labels.flip(3)
    gain = torch.empty(len(frames), 1, 1, 1).uniform_(0.6, 1.4, generator=generator).to(frames.device)
    return (frames * gain).clamp_(0, 1), labels


def train_mask_net(net: SkyMaskNet, frames: np.ndarray, labels: np.ndarray, config: MaskFit) -> list[dict]:
    """Fit the net to per-pixel pseudo-labels [N, H, W] of frames [N, H, W, 3] uint8 (binary
    cross-entropy, Adam, cosine-decayed learning rate); returns the loss per epoch."""
    if len(frames) != len(labels) or not len(frames):
        raise ValueError(f"train_mask_net: {len(frames)} frames and {len(labels)} labels; needs the same number, at least one")
    generator = torch.Generator().manual_seed(config.seed)
    x, y = to_tensor(frames), torch.from_numpy(labels[:, None].astype(np.float32))
    net.to(config.device).train()
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr)
    steps = config.epochs * ((len(x) + config.batch_size - 1) // config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
    loss_fn = nn.BCEWithLogitsLoss()
    history = []
    for epoch in tqdm(range(1, config.epochs + 1), desc="attention net", unit="epoch"):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), config.batch_size):
            batch = order[start : start + config.batch_size]
            frame, label = _augment(x[batch].to(config.device), y[batch].to(config.device), generator)
            loss = loss_fn(net(frame), label)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
        history.append({"epoch": epoch, "train_loss": total / len(x)})
    return history


@torch.no_grad()
def predict_sky(net: SkyMaskNet, frames: np.ndarray, batch_size: int, device: str = "cpu") -> np.ndarray:
    """Sky probability [N, H, W] float32 of frames [N, H, W, 3] uint8."""
    model = SkyProbability(net).to(device).eval()
    out = np.empty(frames.shape[:3], dtype=np.float32)
    for start in range(0, len(frames), batch_size):
        out[start : start + batch_size] = model(to_tensor(frames[start : start + batch_size]).to(device))[:, 0].cpu().numpy()
    return out


def export_onnx(net: SkyMaskNet, path: Path, image_size: int) -> Path:
    """The net with its sigmoid, batch, height and width dynamic (a station may run it at its
    own frame size); TorchScript exporter, as the other stages'."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model = SkyProbability(net).cpu().eval()
    axes = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(
        model,
        (torch.rand(2, 3, image_size, image_size),),
        str(path),
        dynamo=False,
        input_names=[INPUT_FRAME],
        output_names=[OUTPUT_SKY_PROBABILITY],
        dynamic_axes={INPUT_FRAME: axes, OUTPUT_SKY_PROBABILITY: axes},
        opset_version=17,
    )
    return path


# --- boxes and scores ------------------------------------------------------------------------


def boxes_from_masks(masks: np.ndarray, padding: float, outlier_share: float, min_sky_share: float) -> np.ndarray:
    """[N, H, W] bool -> [N, 4] float32 crop boxes (skyedge.core.crop: fractions of the frame)."""
    return np.stack([box_from_mask(mask, padding, outlier_share, min_sky_share) for mask in masks]).astype(np.float32)


def iou(predicted: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Intersection over union per frame of [N, H, W] bool masks (1 where both are empty: they agree)."""
    axes = tuple(range(1, predicted.ndim))
    union = (predicted | true).sum(axis=axes)
    return np.where(union > 0, (predicted & true).sum(axis=axes) / np.maximum(union, 1), 1.0)


def box_masks(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """[N, 4] fractional boxes -> [N, H, W] bool: the pixels each box keeps (centres inside it)."""
    rows = (np.arange(height) + 0.5) / height
    cols = (np.arange(width) + 0.5) / width
    inside_rows = (rows[None] >= boxes[:, 0:1]) & (rows[None] < boxes[:, 2:3])
    inside_cols = (cols[None] >= boxes[:, 1:2]) & (cols[None] < boxes[:, 3:4])
    return inside_rows[:, :, None] & inside_cols[:, None, :]


def sky_kept(boxes: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Share of each frame's true sky pixels [N, H, W] inside its box (1 for a frame with no sky)."""
    kept = box_masks(boxes, *true.shape[1:]) & true
    sky = true.sum(axis=(1, 2))
    return np.where(sky > 0, kept.sum(axis=(1, 2)) / np.maximum(sky, 1), 1.0)


def summary(values: np.ndarray) -> dict:
    """n, mean, median and min of per-frame scores (n = 0 and nothing else when there are none)."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return {"n": 0}
    return {"n": len(values), "mean": float(values.mean()), "median": float(np.median(values)), "min": float(values.min())}


# --- a picture for people --------------------------------------------------------------------


def preview(frames: np.ndarray, true: np.ndarray, predicted: np.ndarray, boxes: np.ndarray, captions: list[str], out: Path, tile: int = 128) -> Path:
    """One row per frame: the frame, its true mask, the predicted mask, the frame with its crop
    box drawn, and the crop; caption under each row."""
    from PIL import Image, ImageDraw

    from skyedge.core.crop import box_pixels, crop_photo

    gap, caption_height = 4, 14
    sheet = Image.new("RGB", (5 * (tile + gap), max(len(frames), 1) * (tile + caption_height + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    if not len(frames):
        draw.text((4, 4), "no val or test frames to show", fill="black")

    def big(pixels: np.ndarray) -> Image.Image:
        return Image.fromarray(pixels).convert("RGB").resize((tile, tile), Image.Resampling.NEAREST)

    for row, (frame, mask, guess, box, caption) in enumerate(zip(frames, true, predicted, boxes, captions)):
        y = row * (tile + caption_height + gap)
        boxed = big(frame)
        top, left, bottom, right = box_pixels(box, tile, tile)
        ImageDraw.Draw(boxed).rectangle((left, top, right - 1, bottom - 1), outline=(255, 40, 40), width=2)
        tiles = (big(frame), big(mask.astype(np.uint8) * 255), big(guess.astype(np.uint8) * 255), boxed, big(crop_photo(frame, box, frame.shape[0])))
        for column, image in enumerate(tiles):
            sheet.paste(image, (column * (tile + gap), y))
        draw.text((2, y + tile + 1), caption, fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out

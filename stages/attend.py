"""attend: selective attention, where the sky is in each frame, learnt without hand labels.

Each station's training frames give its pseudo-label: the pixels whose colour changes most over
time (skyedge.train.attention; photos without a station are all sky). A tiny net learns to
predict the sky mask of one frame from that frame alone, so it works on a frame of a station it
never saw and on the first frame of a new one; the crop box around the predicted sky is what the
student would see at its own resolution (skyedge.core.crop). The true masks of synthetic frames
(beside their photos, see skyedge.data.synthetic) are read to score the net on val and test frames
and never to train it. Writes under data/attend/ (skyedge.core.paths.Attend): attention.onnx,
boxes.npy (one box per image of images.npy), history.csv, metrics.json and preview.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from skyedge.core import crop, files, inference, paths
from skyedge.core.config import Attend, Common, Data, load_params
from skyedge.data.camera import read_true_masks
from skyedge.data.dataset import load_ingested
from skyedge.train import attention
from skyedge.train.training import resolve_device

SCORED_SPLITS = ("val", "test")
# Which frames a score pools: stations the net trained on, stations it never saw (held out, or
# with too few frames for a pseudo-label), photos without a station.
TRAINED, UNSEEN, PHOTOS = "trained_stations", "unseen_stations", "photo_only"
AGREEMENT_FRAMES = 32  # frames ONNX Runtime and PyTorch both score: the export is checked, not assumed


def frame_table(samples: pd.DataFrame, n_images: int, samples_file: Path) -> pd.DataFrame:
    """One row per image of images.npy (index = image_idx): its station, hour, split and file,
    from the first sample that names it."""
    named = samples[samples["image_idx"] >= 0].drop_duplicates("image_idx").set_index("image_idx")
    missing = sorted(set(range(n_images)) - set(named.index))
    if missing:
        raise ValueError(f"{samples_file}: no sample names images {missing[:5]} of images.npy ({len(missing)} in all): every ingested image belongs to a sample; re-run ingest")
    return named.loc[range(n_images), ["station_id", "hour", "split", "image_file"]]


def frame_groups(stations: np.ndarray, trained: set[str]) -> np.ndarray:
    return np.where(stations == attention.PHOTO_ONLY, PHOTOS, np.where(np.isin(stations, sorted(trained)), TRAINED, UNSEEN))


def mask_scores(predicted: np.ndarray, true: np.ndarray, boxes: np.ndarray, pseudo: attention.PseudoLabels, frames: pd.DataFrame, groups: np.ndarray, has_truth: np.ndarray) -> dict:
    """Per split and group: the net's IoU against the true masks, the pseudo-labels' IoU on the
    same frames (stations that have one), and what the crop boxes keep of the true sky."""
    net_iou = attention.iou(predicted, true)
    kept = attention.sky_kept(boxes, true)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    scores = {}
    for split in SCORED_SPLITS:
        for group in (TRAINED, UNSEEN):
            rows = np.flatnonzero((frames["split"].to_numpy() == split) & (groups == group) & has_truth)
            stations = frames["station_id"].to_numpy()[rows]
            labelled = np.isin(stations, sorted(pseudo.masks))  # stations the net trained on: all; unseen: none
            pseudo_iou = attention.iou(pseudo.of(stations[labelled]), true[rows[labelled]]) if labelled.any() else np.array([])
            scores[f"{split}_{group}"] = {
                "net_iou": attention.summary(net_iou[rows]),
                "pseudo_label_iou": attention.summary(pseudo_iou),
                "box_sky_kept": attention.summary(kept[rows]),
                "box_area_share": attention.summary(area[rows]),
            }
    return scores


def photo_scores(probability: np.ndarray, boxes: np.ndarray, frames: pd.DataFrame, groups: np.ndarray, threshold: float) -> dict:
    """Photos without a station (already cropped to the sky): how much of each the net keeps."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    scores = {}
    for split in SCORED_SPLITS:
        rows = np.flatnonzero((frames["split"].to_numpy() == split) & (groups == PHOTOS))
        scores[split] = {"sky_share": attention.summary((probability[rows] > threshold).mean(axis=(1, 2))), "box_area_share": attention.summary(area[rows])}
    return scores


def onnx_agreement(onnx_path: Path, net: attention.SkyMaskNet, frames: np.ndarray) -> float:
    """Largest |ONNX Runtime - PyTorch| sky probability on these frames."""
    expected = attention.predict_sky(net, frames, batch_size=len(frames))
    got = inference.session(onnx_path).run(None, {attention.INPUT_FRAME: attention.to_tensor(frames).numpy()})[0][:, 0]
    return float(np.abs(got - expected).max())


def preview_rows(frames: pd.DataFrame, has_truth: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` val/test images, spread over the stations (the photo-only source counts as one)."""
    scored = frames["split"].isin(SCORED_SPLITS).to_numpy()
    candidates = frames[scored & (has_truth | (frames["station_id"] == attention.PHOTO_ONLY).to_numpy())]
    rng = np.random.default_rng(seed)
    by_station = [rng.permutation(group.index.to_numpy()) for _, group in candidates.groupby("station_id")]
    picked = [rows[k] for k in range(max(map(len, by_station), default=0)) for rows in by_station if k < len(rows)]
    return np.asarray(picked[:count], dtype=np.int64)


def run(params: Attend, data_params: Data, common: Common, ingest_dir: Path, out_dir: Path) -> dict:
    torch.set_num_threads(common.threads)
    torch.manual_seed(common.seed)
    device = resolve_device(common.device)
    data = load_ingested(ingest_dir)
    out = paths.Attend(out_dir)
    images = data.images
    frames = frame_table(data.samples, len(images), paths.Ingest(ingest_dir).samples)
    stations = frames["station_id"].to_numpy()

    training = np.flatnonzero(frames["split"].to_numpy() == "train")
    pseudo = attention.station_pseudo_labels(images, training, stations[training], params.min_station_frames)
    training = training[np.isin(stations[training], sorted(pseudo.masks))]
    if not len(training):
        raise ValueError(f"attend: no training frames with a pseudo-label in {paths.Ingest(ingest_dir).samples} (left out: {pseudo.left_out}); lower attend.min_station_frames or ingest more frames")
    net = attention.SkyMaskNet(params.width)
    history = attention.train_mask_net(net, images[training], pseudo.of(stations[training]).astype(np.float32), attention.MaskFit(params.epochs, params.batch_size, params.lr, common.seed, device))
    net = net.cpu().eval()

    out_dir.mkdir(parents=True, exist_ok=True)
    attention.export_onnx(net, out.onnx, data_params.image_size)
    # Masks and boxes through the exported graph, the one a station runs (skyedge.core.crop), so
    # the crops training sees are the crops a station cuts.
    probability = crop.sky_probability(inference.session(out.onnx, common.threads), images)
    predicted = probability > params.threshold
    # A station runs attention once per attend.refresh_hours and reuses the box in between: the
    # boxes training cuts are the ones the station will cut.
    boxes, attention_ran = crop.reused_boxes(crop.boxes_of(probability, crop.box_settings(params)), stations, frames["hour"].to_numpy(), params.refresh_hours)
    true, has_truth = read_true_masks(frames["image_file"].tolist(), data_params.image_size)
    groups = frame_groups(stations, {s for s in pseudo.masks if s != attention.PHOTO_ONLY})

    np.save(out.boxes, boxes)
    files.write_rows(out.history, history)
    shown = preview_rows(frames, has_truth, params.preview_frames, common.seed)
    captions = [f"{stations[i] or 'photo'} {frames['split'].iat[i]}  IoU {attention.iou(predicted[i : i + 1], true[i : i + 1])[0]:.2f}" if has_truth[i] else f"{stations[i] or 'photo'} {frames['split'].iat[i]}  no true mask" for i in shown]
    attention.preview(images[shown], true[shown], predicted[shown], boxes[shown], captions, out.preview)

    metrics = {
        "net": {
            "width": params.width,
            "params": attention.count_parameters(net),
            "onnx_bytes": out.onnx.stat().st_size,
            "onnx_max_abs_diff": onnx_agreement(out.onnx, net, images[:AGREEMENT_FRAMES]),
        },
        "training": {
            "frames": len(training),
            "frames_per_source": {s or "photo_only": n for s, n in pseudo.frames_used.items()},
            "left_out": pseudo.left_out,
            "final_train_loss": history[-1]["train_loss"],
        },
        "pseudo_label_sky_share": {s or "photo_only": float(m.mean()) for s, m in pseudo.masks.items()},
        "true_masks": {"found": int(has_truth.sum()), "images": len(images)},
        # Frames with less predicted sky than attend.min_sky_share: their box is the whole frame.
        "whole_frame_fallbacks": int((predicted.mean(axis=(1, 2)) < params.min_sky_share).sum()),
        # Frames on which attention ran (attend.refresh_hours): the station's attention cost per frame is its cost times this share.
        "attention_runs": {"refresh_hours": params.refresh_hours, "frames": len(images), "ran": int(attention_ran.sum()), "share": float(attention_ran.mean())},
        "scores": mask_scores(predicted, true, boxes, pseudo, frames, groups, has_truth),
        "photo_only": photo_scores(probability, boxes, frames, groups, params.threshold),
    }
    files.write_json(out.metrics, metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("ingest", "out"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    print(run(params.attend, params.data, params.common, args.ingest, args.out))


if __name__ == "__main__":
    main()

"""Full frame vs attention crop (`make bench-attention`): does the student gain from looking only at the sky?

The same student (params `distill`: architecture, width, epochs, batch, learning rate, seed,
augmentation), trained twice on the same ingest without the teacher, so the only difference is
what its camera input shows: the whole ingested frame, or each frame cut to its attention box
(the attend stage's boxes.npy) and resized back to the same input resolution. Both are scored on
val and test (sky accuracy on labelled photos, rain Brier, temperature RMSE). A table goes to
stdout and the rows to reports/bench_attention.json.

The crop here is cut from the ingested frame, so the student gains no pixels, only the share of
its input that is sky; a station would cut its camera's full-resolution frame, which also gains
resolution. So this measures the lower bound of what attention can give.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from skyedge.core import paths
from skyedge.core.config import Params, load_params
from skyedge.core.tables import Column, text_table
from skyedge.data.dataset import Ingested, attended, load_ingested
from skyedge.train import models
from skyedge.train.training import Augmentation, Batches, FitConfig, fit, quick_scores, resolve_device

VIEWS = ("full_frame", "attention_crop")
SCORED_SPLITS = ("val", "test")


def views(data: Ingested, boxes: np.ndarray, boxes_file: Path) -> dict[str, Ingested]:
    return {"full_frame": data, "attention_crop": attended(data, boxes, boxes_file)}


def train_and_score(data: Ingested, params: Params, view: str) -> list[dict]:
    """The distill section's student, trained without the teacher on this view; one row per scored split."""
    distill, common = params.distill, params.common
    config = FitConfig(
        distill.epochs, distill.batch_size, distill.lr, common.seed, distill.image_dropout, params.data.photo_share,
        Augmentation(**params.augment.model_dump()), resolve_device(common.device),
    )
    torch.manual_seed(common.seed)  # both views start from the same weights
    student = models.build_student(distill.student, distill.width, params.data.window_hours, data.preprocessing["sensors"]["std"][0])
    fit(student, data, config, f"student on {view}")
    rows = []
    for split in SCORED_SPLITS:
        split_rows = data.split(split)
        scores = quick_scores(student, Batches(data, split_rows), split_rows)
        rows.append({"view": view, "split": split, "sky_accuracy": scores["val_sky_accuracy"], "rain_brier": scores["val_rain_brier"], "temp_rmse": scores["val_temp_rmse"]})
    return rows


def compare(params: Params, ingest_dir: Path, attend_dir: Path) -> dict:
    """Both views' rows, and attention's change (crop - full) per split."""
    torch.set_num_threads(params.common.threads)
    data = load_ingested(ingest_dir)
    boxes_file = paths.Attend(attend_dir).boxes
    boxes = np.load(boxes_file)
    rows = [row for view, view_data in views(data, boxes, boxes_file).items() for row in train_and_score(view_data, params, view)]
    by = {(row["view"], row["split"]): row for row in rows}
    change = [
        {"split": split, **{key: by["attention_crop", split][key] - by["full_frame", split][key] for key in ("sky_accuracy", "rain_brier", "temp_rmse")}}
        for split in SCORED_SPLITS
    ]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return {"student": params.distill.student, "epochs": params.distill.epochs, "mean_box_area_share": float(area.mean()), "rows": rows, "attention_minus_full": change}


def format_result(result: dict) -> str:
    columns = [Column("view", align="left"), Column("split", align="left"), Column("sky_accuracy", format=".3f"), Column("rain_brier", format=".4f"), Column("temp_rmse", format=".3f")]
    return "\n".join([
        f"student {result['student']}, {result['epochs']} epochs, no teacher; attention boxes keep {result['mean_box_area_share']:.0%} of the frame on average",
        text_table(result["rows"], columns, rule=True),
        "",
        text_table(result["attention_minus_full"], [Column("split", align="left"), Column("sky_accuracy", format="+.3f"), Column("rain_brier", format="+.4f"), Column("temp_rmse", format="+.3f")], rule=True),
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingest", type=Path, default=Path("data/ingest"))
    parser.add_argument("--attend", type=Path, default=Path("data/attend"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("reports/bench_attention.json"))
    args = parser.parse_args(argv)
    result = compare(load_params(args.params), args.ingest, args.attend)
    print(format_result(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

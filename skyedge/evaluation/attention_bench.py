"""Full frame vs attention crop (`make bench-attention`): does the student gain from looking only at the sky?

The same student (params `distill`: architecture, width, epochs, batch, learning rate,
augmentation), trained on the same ingest without the teacher from the same seeds (--seeds,
paired: each seed starts both views from the same weights), so the only difference is
what its camera input shows: the whole ingested frame, or each frame cut to its attention box
(the attend stage's boxes.npy) and resized back to the same input resolution. Both are scored on
val and test (sky accuracy on labelled photos, rain Brier, temperature RMSE), as means and
standard deviations over seeds, and attention's change paired by seed. A table goes to
stdout and the rows to reports/bench_attention.json.

The crop here is cut from the ingested frame, so the student gains no pixels, only the share of
its input that is sky; a station would cut its camera's full-resolution frame, which also gains
resolution. So this measures the crop alone, without the extra detail a station's crop would add.
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
METRICS = ("sky_accuracy", "rain_brier", "temp_rmse")  # quick_scores' val_<metric>, on whichever split it is given


def views(data: Ingested, boxes: np.ndarray, boxes_file: Path) -> dict[str, Ingested]:
    return {"full_frame": data, "attention_crop": attended(data, boxes, boxes_file)}


def train_and_score(data: Ingested, params: Params, view: str, seed: int) -> list[dict]:
    """The distill section's student, trained without the teacher on this view from this seed;
    one row per scored split."""
    distill = params.distill
    config = FitConfig(
        distill.epochs, distill.batch_size, distill.lr, seed, distill.image_dropout, params.data.photo_share,
        Augmentation(**params.augment.model_dump()), resolve_device(params.common.device),
    )
    torch.manual_seed(seed)  # both views start from the same weights
    student = models.build_student(distill.student, distill.width, params.data.window_hours, data.preprocessing["sensors"]["std"][0])
    fit(student, data, config, f"student on {view}, seed {seed}")
    rows = []
    for split in SCORED_SPLITS:
        split_rows = data.split(split)
        scores = quick_scores(student, Batches(data, split_rows), split_rows)  # keys say val_ whatever the split
        rows.append({"view": view, "split": split, "seed": seed, **{metric: scores[f"val_{metric}"] for metric in METRICS}})
    return rows


def mean_and_spread(rows: list[dict]) -> dict:
    """Mean and sample standard deviation over seeds of each metric (spread 0 with one seed)."""
    out = {}
    for metric in METRICS:
        values = np.array([row[metric] for row in rows], dtype=np.float64)
        out[metric] = float(values.mean())
        out[f"{metric}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


def compare(params: Params, ingest_dir: Path, attend_dir: Path, seeds: int) -> dict:
    """Both views' rows for `seeds` seeds (from common.seed on), their mean per view and split,
    and attention's change (crop - full, paired by seed) per split."""
    torch.set_num_threads(params.common.threads)
    data = load_ingested(ingest_dir)
    boxes_file = paths.Attend(attend_dir).boxes
    boxes = np.load(boxes_file)
    seed_list = list(range(params.common.seed, params.common.seed + seeds))
    rows = [row for view, view_data in views(data, boxes, boxes_file).items() for seed in seed_list for row in train_and_score(view_data, params, view, seed)]
    by = {(row["view"], row["split"], row["seed"]): row for row in rows}
    summary = [{"view": view, "split": split, **mean_and_spread([by[view, split, seed] for seed in seed_list])} for view in VIEWS for split in SCORED_SPLITS]
    change = [
        {"split": split, **mean_and_spread([{m: by["attention_crop", split, seed][m] - by["full_frame", split, seed][m] for m in METRICS} for seed in seed_list])}
        for split in SCORED_SPLITS
    ]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return {
        "student": params.distill.student,
        "epochs": params.distill.epochs,
        "seeds": seed_list,
        "mean_box_area_share": float(area.mean()),
        "rows": rows,
        "summary": summary,
        "attention_minus_full": change,
    }


def metric_columns(signed: bool) -> list[Column]:
    """Each metric and its spread over seeds; a change (`signed`) shows its sign, a spread never has one."""
    sign = "+" if signed else ""
    return [column for metric, spec in zip(METRICS, (".3f", ".4f", ".3f")) for column in (Column(metric, format=sign + spec), Column(f"{metric}_sd", format=spec))]


def format_result(result: dict) -> str:
    return "\n".join([
        f"student {result['student']}, {result['epochs']} epochs, no teacher, seeds {result['seeds']}; attention boxes keep {result['mean_box_area_share']:.0%} of the frame on average",
        text_table(result["summary"], [Column("view", align="left"), Column("split", align="left"), *metric_columns(signed=False)], rule=True),
        "",
        "attention crop - full frame, paired by seed:",
        text_table(result["attention_minus_full"], [Column("split", align="left"), *metric_columns(signed=True)], rule=True),
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingest", type=Path, default=Path("data/ingest"))
    parser.add_argument("--attend", type=Path, default=Path("data/attend"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--seeds", type=int, default=3, help="students per view, from common.seed on: one seed's difference is mostly noise")
    parser.add_argument("--out", type=Path, default=Path("reports/bench_attention.json"))
    args = parser.parse_args(argv)
    result = compare(load_params(args.params), args.ingest, args.attend, args.seeds)
    print(format_result(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

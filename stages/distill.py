"""distill: train the small student from labels and the teacher's view of the same photos, online.

The teacher (data/embed/teacher.pt) scores every augmented batch the student sees, labelled
photos and unlabelled ones alike (skyedge.train.training: patient and consistent distillation).
The same student is also trained WITHOUT the teacher (same data, augmentation, epochs and seed)
so the gain of distillation is always measured, not assumed, and the one that scores better on
the grouped validation rows (days and stations training never saw) is the one the prune stage
compresses and the pipeline ships (`chosen` in metrics.json): a teacher no better than the
student alone can only pull it towards its own mistakes. Writes under data/distill/
(skyedge.core.paths.Distill): student.pt and student.onnx (with KD), student_alone.pt and
student_alone.onnx (without), history.csv, metrics.json.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from skyedge.core import files, paths
from skyedge.core.config import Attend, Augment, Common, Data, Distill, load_params
from skyedge.core.features import N_FEATURES
from skyedge.data.dataset import load_ingested, student_view
from skyedge.train import checkpoints, models
from skyedge.train.training import Augmentation, FitConfig, Teacher, fit, resolve_device


def run(params: Distill, data_params: Data, augment: Augment, common: Common, ingest_dir: Path, embed_dir: Path, out_dir: Path, attend: Attend, attend_dir: Path) -> dict:
    torch.set_num_threads(common.threads)
    data = student_view(load_ingested(ingest_dir), attend.student_input, paths.Attend(attend_dir).boxes)  # crops or whole frames; the teacher's stay whole
    out = paths.Distill(out_dir)
    config = FitConfig(
        params.epochs, params.batch_size, params.lr, common.seed, params.image_dropout, data_params.photo_share,
        Augmentation(**augment.model_dump()), resolve_device(common.device), params.balance_classes,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics, curves = {"student": params.student, "student_input": attend.student_input}, []
    for name, teacher in zip(paths.Distill.MODELS, (Teacher.load(paths.Embed(embed_dir).teacher_module, params), None)):
        torch.manual_seed(common.seed)  # both start from the same weights
        student = models.build_student(params.student, params.width, data_params.window_hours, data.preprocessing["sensors"]["std"][0])
        history = fit(student, data, config, name, teacher=teacher)
        checkpoints.save_module(student, out.module(name))
        models.export_onnx(student, out.onnx(name), data_params.image_size, data_params.window_hours, N_FEATURES)
        curves += [{"model": name, **row} for row in history]
        metrics[name] = next(row for row in history if row["best"])
    metrics["kd_gain_val_sky_accuracy"] = metrics["student"]["val_sky_accuracy"] - metrics["student_alone"]["val_sky_accuracy"]
    metrics["chosen"] = choose_student({name: metrics[name] for name in paths.Distill.MODELS})
    files.write_rows(out.history, curves)
    files.write_json(out.metrics, metrics)
    return metrics


def choose_student(kept_epochs: dict[str, dict]) -> str:
    """The student to compress and ship: the higher grouped-validation sky accuracy (what
    distillation is for), then the lower validation loss (rain and temperature too); a tie keeps
    the first named, the distilled one. Without labelled validation photos the loss decides."""

    def rank(name: str) -> tuple[float, float]:
        scores = kept_epochs[name]
        accuracy = scores["val_sky_accuracy"]
        return (0.0 if math.isnan(accuracy) else accuracy, -scores["val_loss"])

    return max(kept_epochs, key=rank)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("ingest", "attend", "embed", "out"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    print(run(params.distill, params.data, params.augment, params.common, args.ingest, args.embed, args.out, params.attend, args.attend))


if __name__ == "__main__":
    main()

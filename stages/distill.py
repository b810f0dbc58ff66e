"""distill: train the small student from labels and the teacher's soft targets and embeddings.

The same student is also trained WITHOUT the teacher (same data, epochs and seed) so the gain of
distillation is always measured, not assumed. Writes under data/distill/: student.pt and
student.onnx (with KD), student_alone.pt and student_alone.onnx (without), history.csv,
metrics.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from skyedge.core import files, paths
from skyedge.core.config import Common, Data, Distill, load_params
from skyedge.core.features import N_FEATURES
from skyedge.data.dataset import load_ingested
from skyedge.train import checkpoints, models
from skyedge.train.training import FitConfig, TeacherTargets, fit, resolve_device


def run(params: Distill, data_params: Data, common: Common, ingest_dir: Path, embed_dir: Path, out_dir: Path) -> dict:
    torch.set_num_threads(common.threads)
    data = load_ingested(ingest_dir)
    sensors = data.preprocessing["sensors"]
    out = paths.Distill(out_dir)
    teacher_outputs = np.load(paths.Embed(embed_dir).teacher_outputs)
    kd = TeacherTargets(
        sky_logits=torch.from_numpy(teacher_outputs["sky_logits"]),
        embeddings=torch.from_numpy(teacher_outputs["embeddings"]),
        temperature=params.kd_temperature,
        alpha=params.kd_alpha,
        embed_weight=params.embed_weight,
    )
    config = FitConfig(
        params.epochs, params.batch_size, params.lr, common.seed, params.image_dropout, data_params.photo_share, data_params.augment,
        device=resolve_device(common.device),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics, curves = {"student": params.student}, []
    for name, targets in zip(paths.Distill.MODELS, (kd, None)):
        torch.manual_seed(common.seed)  # both start from the same weights
        student = models.build_student(params.student, params.width, data_params.window_hours, N_FEATURES, sensors["mean"][0], sensors["std"][0])
        history = fit(student, data, config, name, kd=targets)
        checkpoints.save_module(student, out.module(name))
        models.export_onnx(student, out.onnx(name), data_params.image_size, data_params.window_hours, N_FEATURES)
        curves += [{"model": name, **row} for row in history]
        metrics[name] = history[-1]
    metrics["kd_gain_val_sky_accuracy"] = metrics["student"]["val_sky_accuracy"] - metrics["student_alone"]["val_sky_accuracy"]
    files.write_rows(out.history, curves)
    files.write_json(out.metrics, metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("ingest", "embed", "out"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    print(run(params.distill, params.data, params.common, args.ingest, args.embed, args.out))


if __name__ == "__main__":
    main()

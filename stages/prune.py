"""prune: structured channel pruning of the distilled student, then fine-tuning with the teacher.

Writes under data/prune/: pruned.pt (whole module: pruned shapes no longer fit the class
defaults), pruned.onnx, history.csv and metrics.json with params, MACs, bytes and val scores
before and after.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from skyedge import io, models
from skyedge.config import Common, Data, Distill, Prune, load_params
from skyedge.dataset import load_ingested
from skyedge.features import N_FEATURES
from skyedge.pruning import count_macs_params, structured_prune
from skyedge.training import Batches, FitConfig, TeacherTargets, fit, quick_scores


def describe(model: torch.nn.Module, onnx_path: Path, data, inputs) -> dict:
    macs, params = count_macs_params(model, inputs)
    scores = quick_scores(model, Batches(data, data.split("val")), data.split("val"))
    return {"macs": macs, "params": params, "onnx_bytes": os.path.getsize(onnx_path), **scores}


def run(params: Prune, distill: Distill, data_params: Data, common: Common, ingest_dir: Path, embed_dir: Path, distill_dir: Path, out_dir: Path) -> dict:
    torch.set_num_threads(common.threads)
    data = load_ingested(ingest_dir)
    student = io.load_module(distill_dir / "student.pt")
    inputs = models.example_inputs(data_params.image_size, data_params.window_hours, N_FEATURES)
    before = describe(student, distill_dir / "student.onnx", data, inputs)

    structured_prune(student, inputs, params.ratio)
    teacher_outputs = np.load(embed_dir / "teacher_outputs.npz")
    kd = TeacherTargets(
        torch.from_numpy(teacher_outputs["sky_logits"]), torch.from_numpy(teacher_outputs["embeddings"]),
        distill.kd_temperature, distill.kd_alpha, distill.embed_weight,
    )
    history = []
    if params.finetune_epochs:
        config = FitConfig(params.finetune_epochs, distill.batch_size, params.lr, common.seed, distill.image_dropout)
        history = fit(student, data, config, "pruned fine-tune", kd=kd)
    out_dir.mkdir(parents=True, exist_ok=True)
    io.save_module(student, out_dir / "pruned.pt")
    models.export_onnx(student, out_dir / "pruned.onnx", data_params.image_size, data_params.window_hours, N_FEATURES)
    after = describe(student, out_dir / "pruned.onnx", data, inputs)
    if history:
        io.write_rows(out_dir / "history.csv", history)
    else:
        io.write_rows(out_dir / "history.csv", [{"epoch": 0, "train_loss": float("nan"), **{k: after[k] for k in after if k.startswith("val_")}}])
    metrics = {"ratio": params.ratio, "before": before, "after": after, "macs_reduction": 1 - after["macs"] / before["macs"]}
    io.write_json(out_dir / "metrics.json", metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("ingest", "embed", "distill"):
        parser.add_argument(f"--{name}", type=Path, default=Path(f"data/{name}"))
    parser.add_argument("--out", type=Path, default=Path("data/prune"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    print(run(params.prune, params.distill, params.data, params.common, args.ingest, args.embed, args.distill, args.out))


if __name__ == "__main__":
    main()

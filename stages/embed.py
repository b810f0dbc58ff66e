"""embed: fine-tune the pretrained teacher: the model whose view of each photo the student learns.

The teacher is fine-tuned end to end for `finetune_epochs` on augmented photos (params
`augment`), then its image features are cached, for the clean photo and `cache_views - 1`
augmented views of it, and the heads train on them for `epochs` (cheap: the backbone runs
cache_views times per photo, not once per step). With `ensemble`, more teachers are trained the
same way (each for its own fine-tune epochs, from the same start) and the teacher is their mean.
The distill and prune stages run it online on the very views they train the student on. Writes
under data/embed/ (skyedge.core.paths.Embed): teacher.pt (whole module), teacher.onnx,
history.csv and metrics.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from skyedge.core import files, paths
from skyedge.core.config import Augment, Common, Data, Embed, load_params
from skyedge.core.features import N_FEATURES
from skyedge.data.dataset import load_ingested
from skyedge.train import checkpoints, models
from skyedge.train.training import Augmentation, FitConfig, resolve_device, sky_hits, train_teacher


def run(params: Embed, data_params: Data, augment: Augment, common: Common, ingest_dir: Path, out_dir: Path) -> dict:
    torch.set_num_threads(common.threads)
    data = load_ingested(ingest_dir)
    config = FitConfig(
        params.finetune_epochs, params.batch_size, params.lr, common.seed, params.image_dropout, data_params.photo_share,
        Augmentation(**augment.model_dump()), resolve_device(common.device), params.balance_classes,
    )
    teacher, history = train_teacher(params, data, config, data_params.window_hours)

    out_dir.mkdir(parents=True, exist_ok=True)
    out = paths.Embed(out_dir)
    checkpoints.save_module(teacher, out.teacher_module)
    models.export_onnx(teacher, out.teacher_onnx, data_params.image_size, data_params.window_hours, N_FEATURES)
    files.write_rows(out.history, history)
    # Each member's last curve row; the teacher's own sky accuracy on the grouped validation rows
    # (an ensemble's is not any member's).
    members = [
        {"finetune_epochs": epochs, **[row for row in history if row["member"] == number][-1]}
        for number, epochs in enumerate([params.finetune_epochs, *params.ensemble])
    ]
    val_hits = sky_hits(teacher, data, data.grouped("val"))
    metrics = {
        "teacher": params.teacher,
        "weights": params.weights,
        "embedding_dim": teacher.backbone.channels,
        "val_sky_accuracy": float(val_hits.mean()) if len(val_hits) else None,
        "members": members,
    }
    files.write_json(out.metrics, metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingest", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    print(run(params.embed, params.data, params.augment, params.common, args.ingest, args.out))


if __name__ == "__main__":
    main()

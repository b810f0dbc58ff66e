"""prune: compress the distilled student three ways, fine-tuning each with the teacher.

1. structured channel pruning (Torch-Pruning, DepGraph) of the student -> pruned: the model the
   quantize stage calibrates and the pipeline ships (fewer MACs, really lower latency);
2. unstructured global magnitude pruning of `pruned` -> pruned_sparse: sparsity and compressed
   (gzip) bytes; dense ONNX Runtime kernels do not skip zeros, so no latency gain is claimed;
3. low-rank SVD factorization of the Linear and 1x1 conv layers of `pruned` -> pruned_lowrank.

Every step reports params, MACs, ONNX bytes, gzip bytes, weight sparsity, batch-1 latency (ORT,
1 thread) and val scores before and after. Writes under data/prune/: pruned, pruned_sparse and
pruned_lowrank as .pt (whole modules: pruned shapes no longer fit the class defaults) and .onnx,
history.csv and metrics.json.
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

import numpy as np
import torch

from skyedge.compress.pruning import (
    apply_magnitude_masks,
    count_macs_params,
    gzip_bytes,
    low_rank,
    remove_masks,
    structured_prune,
    weight_sparsity,
)
from skyedge.core import files, inference
from skyedge.core.config import Common, Data, Distill, Prune, load_params
from skyedge.core.features import N_FEATURES
from skyedge.data.dataset import load_ingested, model_inputs
from skyedge.train import checkpoints, models
from skyedge.train.training import Batches, FitConfig, TeacherTargets, fit, quick_scores


def describe(model: torch.nn.Module, onnx_path: Path, data, inputs, latency_runs: int = 100) -> dict:
    macs, params = count_macs_params(model, inputs)
    scores = quick_scores(model, Batches(data, data.split("val")), data.split("val"))
    one = model_inputs(data, data.split("val")[:1])
    latency = inference.latency_ms(onnx_path, one, latency_runs)
    return {
        "macs": macs,
        "params": params,
        "onnx_bytes": os.path.getsize(onnx_path),
        "gzip_bytes": gzip_bytes(onnx_path),
        "weight_sparsity": weight_sparsity(model),
        "latency_ms_p50": latency["latency_ms_p50"],
        "latency_ms_p95": latency["latency_ms_p95"],
        **scores,
    }


def run(params: Prune, distill: Distill, data_params: Data, common: Common, ingest_dir: Path, embed_dir: Path, distill_dir: Path, out_dir: Path) -> dict:
    torch.set_num_threads(common.threads)
    data = load_ingested(ingest_dir)
    student = checkpoints.load_module(distill_dir / "student.pt")
    inputs = models.example_inputs(data_params.image_size, data_params.window_hours, N_FEATURES)
    before = describe(student, distill_dir / "student.onnx", data, inputs, params.latency_runs)
    teacher_outputs = np.load(embed_dir / "teacher_outputs.npz")
    kd = TeacherTargets(
        torch.from_numpy(teacher_outputs["sky_logits"]), torch.from_numpy(teacher_outputs["embeddings"]),
        distill.kd_temperature, distill.kd_alpha, distill.embed_weight,
    )
    config = FitConfig(
        params.finetune_epochs, distill.batch_size, params.lr, common.seed, distill.image_dropout, data_params.photo_share, data_params.augment
    )
    out_dir.mkdir(parents=True, exist_ok=True)

    def finish(model: torch.nn.Module, name: str) -> tuple[dict, list[dict]]:
        history = fit(model, data, config, f"{name} fine-tune", kd=kd) if params.finetune_epochs else []
        return save(model, name), history

    def save(model: torch.nn.Module, name: str) -> dict:
        checkpoints.save_module(model, out_dir / f"{name}.pt")
        models.export_onnx(model, out_dir / f"{name}.onnx", data_params.image_size, data_params.window_hours, N_FEATURES)
        return describe(model, out_dir / f"{name}.onnx", data, inputs, params.latency_runs)

    structured_prune(student, inputs, params.ratio)
    after, history = finish(student, "pruned")

    sparse = copy.deepcopy(student)
    masked = apply_magnitude_masks(sparse, params.unstructured_sparsity) if params.unstructured_sparsity > 0 else []
    sparse_history = fit(sparse, data, config, "pruned_sparse fine-tune", kd=kd) if params.finetune_epochs and masked else []
    remove_masks(masked)
    sparse_after = save(sparse, "pruned_sparse")

    factored = copy.deepcopy(student)
    layers = low_rank(factored, params.lowrank_energy)
    lowrank_after, lowrank_history = finish(factored, "pruned_lowrank") if any(r["replaced"] for r in layers) else (save(factored, "pruned_lowrank"), [])

    curves = [{"model": name, **row} for name, rows in (("pruned", history), ("pruned_sparse", sparse_history), ("pruned_lowrank", lowrank_history)) for row in rows]
    if not curves:
        curves = [{"model": "pruned", "epoch": 0, "train_loss": float("nan"), **{k: after[k] for k in after if k.startswith("val_")}}]
    files.write_rows(out_dir / "history.csv", curves)
    metrics = {
        "ratio": params.ratio,
        "before": before,
        "after": after,
        "macs_reduction": 1 - after["macs"] / before["macs"],
        "unstructured": {
            "target_sparsity": params.unstructured_sparsity,
            "before": after,
            "after": sparse_after,
            "gzip_reduction": 1 - sparse_after["gzip_bytes"] / after["gzip_bytes"],
            "latency_note": "no latency claim: ONNX Runtime's dense kernels multiply the zeros too",
        },
        "lowrank": {
            "energy": params.lowrank_energy,
            "before": after,
            "after": lowrank_after,
            "layers": layers,
            "params_reduction": 1 - lowrank_after["params"] / after["params"],
        },
    }
    files.write_json(out_dir / "metrics.json", metrics)
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

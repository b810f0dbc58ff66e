"""prune: compress the student three ways, fine-tuning each with the teacher.

The student is the one the distill stage chose by the grouped validation estimate (`chosen` in
data/distill/metrics.json: with KD, or alone).

1. structured channel pruning (Torch-Pruning, DepGraph) of the student -> pruned: the model the
   quantize stage calibrates and the pipeline ships (fewer MACs, really lower latency);
2. unstructured global magnitude pruning of `pruned` -> pruned_sparse: sparsity and compressed
   (gzip) bytes; dense ONNX Runtime kernels do not skip zeros, so no latency gain is claimed;
3. low-rank SVD factorization of the Linear and 1x1 conv layers of `pruned` -> pruned_lowrank.

Each is `skyedge.compress.pruning.prune(model, method, ...)` with its typed config from params
`prune`, then fine-tuning. Every result reports params, MACs, ONNX bytes, gzip bytes, weight
sparsity, batch-1 latency (ORT, 1 thread) and val scores before and after. Writes under
data/prune/ (skyedge.core.paths.Prune): each variant as .pt (whole module: pruned shapes no longer
fit the class defaults) and .onnx, history.csv and metrics.json.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from skyedge.compress.pruning import Pruned, count_macs_params, gzip_bytes, prune, weight_sparsity
from skyedge.core import files, inference, paths
from skyedge.core.config import Attend, Augment, Common, Data, Distill, Prune, load_params
from skyedge.core.features import N_FEATURES
from skyedge.data.dataset import Ingested, load_ingested, model_inputs, student_view
from skyedge.train import checkpoints, models
from skyedge.train.training import Augmentation, Batches, FitConfig, Teacher, fit, quick_scores, resolve_device


def describe(model: torch.nn.Module, onnx_path: Path, data: Ingested, inputs: tuple[torch.Tensor, ...], latency_runs: int) -> dict:
    """Size, MACs, sparsity, batch-1 latency and val scores of one variant."""
    macs, params = count_macs_params(model, inputs)
    val = data.split("val")
    latency = inference.latency_ms(onnx_path, model_inputs(data, val[:1]), latency_runs)
    return {
        "macs": macs,
        "params": params,
        "onnx_bytes": onnx_path.stat().st_size,
        "gzip_bytes": gzip_bytes(onnx_path),
        "weight_sparsity": weight_sparsity(model),
        "latency_ms_p50": latency["latency_ms_p50"],
        "latency_ms_p95": latency["latency_ms_p95"],
        **quick_scores(model, Batches(data, val), val),
    }


def run(params: Prune, distill: Distill, data_params: Data, augment: Augment, common: Common, ingest_dir: Path, embed_dir: Path, distill_dir: Path, out_dir: Path, attend: Attend, attend_dir: Path) -> dict:
    torch.set_num_threads(common.threads)
    data = student_view(load_ingested(ingest_dir), attend.student_input, paths.Attend(attend_dir).boxes)
    out = paths.Prune(out_dir)
    student_files = paths.Distill(distill_dir)
    chosen = json.loads(student_files.metrics.read_text())["chosen"]  # with or without KD: the grouped estimate chose
    student = checkpoints.load_module(student_files.module(chosen))
    inputs = models.example_inputs(data_params.image_size, data_params.window_hours, N_FEATURES)
    before = describe(student, student_files.onnx(chosen), data, inputs, params.latency_runs)
    teacher = Teacher.load(paths.Embed(embed_dir).teacher_module, distill)
    config = FitConfig(
        params.finetune_epochs, distill.batch_size, params.lr, common.seed, distill.image_dropout, data_params.photo_share,
        Augmentation(**augment.model_dump()), resolve_device(common.device), distill.balance_classes,
    )
    out_dir.mkdir(parents=True, exist_ok=True)

    def finish(result: Pruned, name: str) -> tuple[dict, list[dict]]:
        """Fine-tune (masks, if any, keep their zeros), make masks permanent, save, describe."""
        changed = result.report["macs_after"] != result.report["macs_before"] or result.masked or any(layer["replaced"] for layer in result.report.get("layers", []))
        history = fit(result.model, data, config, f"{name} fine-tune", teacher=teacher) if params.finetune_epochs and changed else []
        model = result.finish()
        checkpoints.save_module(model, out.module(name))
        models.export_onnx(model, out.onnx(name), data_params.image_size, data_params.window_hours, N_FEATURES)
        return describe(model, out.onnx(name), data, inputs, params.latency_runs), history

    structured = prune(student, params.structured, inputs)
    after, history = finish(structured, "pruned")
    sparse = prune(copy.deepcopy(student), params.unstructured, inputs)
    sparse_after, sparse_history = finish(sparse, "pruned_sparse")
    factored = prune(copy.deepcopy(student), params.lowrank, inputs)
    lowrank_after, lowrank_history = finish(factored, "pruned_lowrank")

    curves = [{"model": name, **row} for name, rows in (("pruned", history), ("pruned_sparse", sparse_history), ("pruned_lowrank", lowrank_history)) for row in rows]
    if not curves:
        curves = [{"model": "pruned", "epoch": 0, "train_loss": float("nan"), **{k: after[k] for k in after if k.startswith("val_")}}]
    files.write_rows(out.history, curves)
    metrics = {
        "student": chosen,
        "ratio": params.structured.ratio,
        "before": before,
        "after": after,
        "macs_reduction": 1 - after["macs"] / before["macs"],
        "unstructured": {
            "target_sparsity": params.unstructured.sparsity,
            "before": after,
            "after": sparse_after,
            "gzip_reduction": 1 - sparse_after["gzip_bytes"] / after["gzip_bytes"],
            "latency_note": "no latency claim: ONNX Runtime's dense kernels multiply the zeros too",
        },
        "lowrank": {
            "energy": params.lowrank.energy,
            "before": after,
            "after": lowrank_after,
            "layers": factored.report["layers"],
            "params_reduction": 1 - lowrank_after["params"] / after["params"],
        },
    }
    files.write_json(out.metrics, metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("ingest", "attend", "embed", "distill", "out"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    print(run(params.prune, params.distill, params.data, params.augment, params.common, args.ingest, args.embed, args.distill, args.out, params.attend, args.attend))


if __name__ == "__main__":
    main()

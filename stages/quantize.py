"""quantize: build every quantization candidate, measure them, and ship by measurement.

Each candidate of `quantize.candidates` (fp32, ORT static / dynamic int8, fp16, QAT, weight
sharing; a typed config each) is built by skyedge.compress.quantization.quantize, scored on the val
split, timed with the others in turns (ONNX Runtime, batch 1, 1 intra-op thread, warm-up excluded:
the timing code `make bench` uses) and sized as a station downloads it (the model container,
skyedge.release.container). skyedge.compress.selection picks what ships and says why.

Writes under data/quantize/ (skyedge.core.paths.Quantize): candidates/<name>.onnx, model_int8.onnx
(evaluate's `quantized` row), shipped.onnx (a copy of the choice), report.json (the candidate
table, the choice and why).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch

from skyedge.compress import selection
from skyedge.compress.quantization import Calibration, FloatModel, quantize, stratified_rows
from skyedge.core import files, inference, paths
from skyedge.core.config import Attend, Augment, Common, Data, Distill, Quantize, load_params
from skyedge.core.tables import Column, text_table
from skyedge.data.dataset import load_ingested, model_inputs, student_view
from skyedge.release import container
from skyedge.train.training import Augmentation, Teacher, resolve_device

CANDIDATE_COLUMNS = [
    Column("name", "candidate", align="left"),
    Column("method", align="left"),
    Column("size_bytes", "size_kB", ".1f", scale=1e-3),
    Column("ota_bytes", "ota_kB", ".1f", scale=1e-3),
    Column("val_sky_accuracy", "val_sky_acc", ".4f"),
    Column("val_rain_brier", format=".4f"),
    Column("val_temp_rmse", format=".4f"),
    Column("latency_ms_p50", "p50_ms"),
    Column("latency_ms_p95", "p95_ms"),
    Column("outcome", "", align="left"),
]


def run(params: Quantize, data_params: Data, augment: Augment, common: Common, distill: Distill, ingest_dir: Path, embed_dir: Path, prune_dir: Path, out_dir: Path, attend: Attend, attend_dir: Path) -> dict:
    torch.set_num_threads(common.threads)
    data = student_view(load_ingested(ingest_dir), attend.student_input, paths.Attend(attend_dir).boxes)
    out = paths.Quantize(out_dir)
    pruned = paths.Prune(prune_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out.candidates, ignore_errors=True)  # nothing stale from another candidate list
    calibration_rows = stratified_rows(data.samples["sky_label"].to_numpy(), data.split("train"), params.calibration_samples, common.seed)
    calibration = Calibration(
        feeds=[model_inputs(data, calibration_rows[i : i + 1]) for i in range(len(calibration_rows))],
        data=data, seed=common.seed, photo_share=data_params.photo_share, augmentation=Augmentation(**augment.model_dump()),
        threads=common.threads, device=resolve_device(common.device),
        teacher=Teacher.load(paths.Embed(embed_dir).teacher_module, distill), balance_classes=distill.balance_classes,
    )
    model = FloatModel(pruned.onnx("pruned"), pruned.module("pruned"))
    val = data.grouped("val")  # days, stations and seasons never trained on: what the field will see
    candidates = []
    for name, config in params.candidates.items():
        path = out.candidate(name)
        try:
            built = quantize(model, config, calibration, path, params.per_channel, params.reduce_range)
            inference.session(path)  # one ORT cannot load (an op without a kernel for its type) is reported, not fatal
        except Exception as error:  # noqa: BLE001 - one broken candidate must not hide the others
            if config.method == "fp32":
                raise
            candidates.append({"name": name, "method": config.method, "error": f"{type(error).__name__}: {error}"[:500]})
            print(f"quantize: candidate {name} failed: {candidates[-1]['error']}")
            continue
        ota_bytes = len(container.encode(path.read_bytes()))  # what a station downloads (model.skc)
        candidates.append({"name": name, "path": str(path), **built, "ota_bytes": ota_bytes, **selection.val_scores(path, data, val)})
    measured = [c for c in candidates if "error" not in c]
    speeds = inference.interleaved_latency_ms({c["name"]: Path(c["path"]) for c in measured}, model_inputs(data, val[:1]), params.latency_runs)
    for candidate in measured:
        candidate.update(speeds[candidate["name"]])
    best, reason = selection.choose(candidates, params.max_accuracy_drop, params.max_error_increase, params.min_speedup)
    int8 = selection.best_int8(candidates, params.max_accuracy_drop, params.max_error_increase)
    print(reason)
    for candidate, outcome in zip(candidates, selection.outcomes(candidates, best, int8, params.max_accuracy_drop, params.max_error_increase)):
        candidate["outcome"] = outcome
    print(text_table(candidates, CANDIDATE_COLUMNS))
    shutil.copyfile(best["path"], out.shipped)
    shutil.copyfile(int8["path"], out.int8)
    skills = selection.horizon_skills(out.shipped, data, val)
    fallback = selection.fallback_heads(skills)
    for path in (out.shipped, out.int8):
        selection.set_fallback(path, fallback)
    if any(fallback["rain"] + fallback["temp"]):
        print(f"quantize: persistence ships for {fallback_text(fallback)}: the model's validation skill there is below zero")
    report = {
        "candidates": candidates,
        "shipped": best["name"],
        "reason": reason,
        "int8": int8["name"],
        "val_skill": skills,
        "fallback": fallback,
        "calibration_samples": len(calibration_rows),
        "calibration_classes": {str(k): int(v) for k, v in zip(*np.unique(data.samples["sky_label"].to_numpy()[calibration_rows], return_counts=True))},
        "config": params.model_dump(mode="json"),
    }
    files.write_json(out.report, report)
    return report


def fallback_text(fallback: dict[str, list[bool]]) -> str:
    return ", ".join(f"{head} h{h + 1}" for head, masks in fallback.items() for h, on in enumerate(masks) if on)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingest", type=Path, required=True)
    parser.add_argument("--attend", type=Path, required=True)
    parser.add_argument("--embed", type=Path, required=True)
    parser.add_argument("--prune", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    run(params.quantize, params.data, params.augment, params.common, params.distill, args.ingest, args.embed, args.prune, args.out, params.attend, args.attend)


if __name__ == "__main__":
    main()

"""quantize: int8 post-training quantization, and the choice of what ships, by measurement.

Each candidate (the pruned fp32 model and its static int8 version) is scored on the val split and
timed on this machine (ONNX Runtime, batch 1, 1 thread). The fastest candidate whose val sky
accuracy is within `max_accuracy_drop` of fp32 ships; int8 that is slower than fp32 does not.
Writes under data/quantize/: model_int8.onnx, shipped.onnx (a copy of the choice), report.json.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from skyedge import io, metrics, runtime
from skyedge.config import Common, Quantize, load_params
from skyedge.dataset import load_ingested, model_inputs
from skyedge.quantization import static_int8, stratified_rows


def val_sky_accuracy(path: Path, data, rows: np.ndarray) -> float:
    outputs = runtime.predict(runtime.session(path), model_inputs(data, rows))
    labels = data.samples["sky_label"].to_numpy()[rows]
    return metrics.accuracy(labels, outputs["sky_logits"].argmax(1))


def choose(candidates: list[dict], max_drop: float) -> tuple[dict, str]:
    """The fastest candidate within the accuracy budget of the fp32 reference, and why."""
    reference = next(c for c in candidates if c["name"] == "fp32")
    allowed = [c for c in candidates if c["val_sky_accuracy"] >= reference["val_sky_accuracy"] - max_drop]
    best = min(allowed, key=lambda c: c["latency_ms_p50"])
    speedup = reference["latency_ms_p50"] / best["latency_ms_p50"]
    if best["name"] == "fp32":
        others = ", ".join(f"{c['name']} {c['latency_ms_p50']:.3f} ms acc {c['val_sky_accuracy']:.3f}" for c in candidates if c is not best)
        reason = f"fp32 ships: it is the fastest within the accuracy budget (fp32 {best['latency_ms_p50']:.3f} ms; {others})"
    else:
        reason = f"{best['name']} ships: {speedup:.2f}x faster than fp32 at val sky accuracy {best['val_sky_accuracy']:.3f} (fp32 {reference['val_sky_accuracy']:.3f})"
    return best, reason


def run(params: Quantize, common: Common, ingest_dir: Path, prune_dir: Path, out_dir: Path) -> dict:
    data = load_ingested(ingest_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = data.split("train")
    calibration_rows = stratified_rows(data.samples["sky_label"].to_numpy(), train, params.calibration_samples, common.seed)
    calibration = [model_inputs(data, calibration_rows[i : i + 1]) for i in range(len(calibration_rows))]
    fp32 = prune_dir / "pruned.onnx"
    int8 = static_int8(
        fp32, out_dir / "model_int8.onnx", calibration, params.weight_type, params.activation_type,
        params.format, params.calibration_method, params.per_channel,
    )
    val = data.split("val")
    val_photos = val[data.samples["sky_label"].to_numpy()[val] >= 0]
    one = model_inputs(data, val[:1])
    candidates = []
    for name, path in (("fp32", fp32), ("int8", int8)):
        candidates.append(
            {
                "name": name,
                "path": str(path),
                "size_bytes": path.stat().st_size,
                "val_sky_accuracy": val_sky_accuracy(path, data, val_photos),
                **runtime.latency_ms(path, one, params.latency_runs),
            }
        )
    best, reason = choose(candidates, params.max_accuracy_drop)
    print(reason)
    shutil.copyfile(best["path"], out_dir / "shipped.onnx")
    report = {"candidates": candidates, "shipped": best["name"], "reason": reason, "calibration_samples": len(calibration_rows), "config": params.model_dump(mode="json")}
    io.write_json(out_dir / "report.json", report)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingest", type=Path, default=Path("data/ingest"))
    parser.add_argument("--prune", type=Path, default=Path("data/prune"))
    parser.add_argument("--out", type=Path, default=Path("data/quantize"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    run(params.quantize, params.common, args.ingest, args.prune, args.out)


if __name__ == "__main__":
    main()

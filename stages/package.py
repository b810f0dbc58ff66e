"""package: the chosen model as ONNX + a signed manifest (ARCHITECTURE §5).

Writes under data/package/: model.onnx, model.skc (the same model entropy coded: what a station
downloads; it rebuilds model.onnx bit for bit), canary.npz (inputs a device runs as its smoke test),
with attend.student_input = crop also attention.onnx (the station runs it on the whole frame and
feeds model.onnx the crop; the canary then covers that path: canary.npz carries the whole frames),
manifest.json and manifest.sig.json (ed25519 over the exact manifest bytes). The signing key
comes from $SKYEDGE_SIGNING_KEY or .skyedge/signing_key.pem, generated on first use and never
committed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import yaml

from skyedge import __version__
from skyedge.core import crop, drift, inference, paths
from skyedge.core import inputs as model_input
from skyedge.core.config import Attend, Package, Params, load_params
from skyedge.core.contract import INPUT_IMAGE, INPUT_IMAGE_PRESENT
from skyedge.data.dataset import Ingested, load_ingested, model_inputs, training_coverage
from skyedge.release import container, manifest, signing


def io_signature(model_path: Path) -> tuple[list[dict], list[dict]]:
    """Names, shapes (None = any batch) and dtypes of the ONNX graph's inputs and outputs."""
    graph = onnx.load(str(model_path), load_external_data=False).graph

    def describe(values) -> list[dict]:
        return [
            {
                "name": v.name,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                "shape": [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim],
            }
            for v in values
        ]

    return describe(graph.input), describe(graph.output)


def canary_inputs(data, count: int, attention=None, box_settings: dict | None = None) -> dict[str, np.ndarray]:
    """Test samples with photos, the last one with its photo removed (the camera-down path).

    With `attention` (an ORT session of the packaged attention.onnx) the image input is what the
    station computes: each whole frame through attention, its box and the crop
    (skyedge.core.inputs.attended_image_input); the whole frames ride along under
    manifest.CANARY_FRAMES so the station's canary runs that path too."""
    test = data.split("test")
    with_photo = test[data.samples["image_idx"].to_numpy()[test] >= 0][:count]
    rows = with_photo if len(with_photo) else test[:count]
    inputs = model_inputs(data, rows)
    inputs[INPUT_IMAGE_PRESENT][-1] = 0.0
    inputs[INPUT_IMAGE][-1] = 0.0
    if attention is not None:
        frames = data.images[np.clip(data.samples["image_idx"].to_numpy()[rows], 0, None)]
        inputs[manifest.CANARY_FRAMES] = frames
        inputs[INPUT_IMAGE] = model_input.attended_image_input(attention, frames, inputs[INPUT_IMAGE_PRESENT], box_settings, data.preprocessing["image"])
    return inputs


def attention_section(attend: Attend, frame_size: int) -> dict:
    """The manifest's `attention` rules: the frame side the station reads the photo at (the
    ingest's, which attention.onnx and the boxes were made at), the box rules and how long a
    station reuses a box it found (refresh_hours)."""
    return {"frame_size": frame_size, **crop.box_settings(attend), "refresh_hours": attend.refresh_hours}


def container_entry(out: paths.Package) -> dict:
    """The manifest's pointer to model.skc: signed like every file, and what it decodes to."""
    entry = manifest.file_entry(out.container, out.dir)
    return {**entry, "format_version": container.FORMAT_VERSION, "decodes_to": out.model.name}


def lineage(params: Params) -> dict:
    """Git commit, DVC stage hashes and the resolved params that made this model."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    stages = {}
    lock = Path("dvc.lock")
    if lock.exists():
        for name, stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).items():
            stages[name] = {out["path"]: out.get("md5") for out in stage.get("outs", [])}
    return {"git_commit": commit, "dvc_stages": stages, "params": params.model_dump(mode="json")}


def training_statistics(data: Ingested) -> dict:
    """What the station's drift tests compare its inputs with: the training rows' sensor summary
    (from ingest) and the training photos' brightness and contrast."""
    train = data.samples[(data.samples["split"] == "train") & (data.samples["image_idx"] >= 0)]
    photo_values = np.array([drift.photo_features(data.images[i]) for i in np.unique(train["image_idx"].to_numpy())]).reshape(-1, 2)
    return drift.reference(data.preprocessing["drift_sensors"], photo_values)


def run(params: Params, ingest_dir: Path, quantize_dir: Path, evaluate_dir: Path, out_dir: Path, key_path: Path, attend_dir: Path) -> dict:
    config: Package = params.package
    data = load_ingested(ingest_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    out = paths.Package(out_dir)
    quantized = paths.Quantize(quantize_dir)
    shutil.copyfile(quantized.shipped, out.model)
    out.container.write_bytes(container.encode(out.model.read_bytes()))

    attention = None
    if params.attend.student_input == "crop":  # the model was trained on attention crops: ship the attention too
        shutil.copyfile(paths.Attend(attend_dir).onnx, out.attention)
        attention = attention_section(params.attend, int(data.images.shape[1]))
    session = None if attention is None else inference.session(out.attention)
    inputs = canary_inputs(data, config.canaries, session, attention)
    np.savez(out.canary, **inputs)
    inputs.pop(manifest.CANARY_FRAMES, None)
    expected = inference.predict(inference.session(out.model), inputs)
    signature_in, signature_out = io_signature(out.model)
    quantize_report = json.loads(quantized.report.read_text())
    evaluated = json.loads(paths.Evaluate(evaluate_dir).metrics.read_text())
    now = datetime.now(timezone.utc)
    version = int(now.strftime("%Y%m%d%H%M%S"))  # monotonic across builds; the registry may renumber
    document = manifest.build_manifest(
        out_dir,
        name=config.name,
        version=version,
        version_label=f"{__version__}+{version}",
        created_at=now.isoformat(timespec="seconds"),
        inputs=signature_in,
        outputs=signature_out,
        preprocessing={"image": data.preprocessing["image"], "sensors": data.preprocessing["sensors"]},
        climatology=data.preprocessing["climatology"],
        metrics={key: evaluated[key] for key in ("sky", "horizons", "ci", "skipped", "variants") if key in evaluated},
        lineage=lineage(params),
        canary_expected={k: v.tolist() for k, v in expected.items()},
        canary_atol=config.canary_atol,
        latency_budget_ms=config.latency_budget_ms,
        min_agent_version=config.min_agent_version,
        quantization={"shipped": quantize_report["shipped"], "reason": quantize_report["reason"]},
        fallback=quantize_report["fallback"],
        training_coverage=training_coverage(data),
        training_statistics=training_statistics(data),
        container=container_entry(out),
        attention=attention,
    )
    manifest.write_manifest(out_dir, document)
    manifest.sign_package(out_dir, signing.load_or_create_private_key(key_path))
    manifest.verify_package(out_dir, signing.load_private_key(key_path).public_key())
    return {"version": version, "model_bytes": out.model.stat().st_size, "container_bytes": out.container.stat().st_size, "shipped": quantize_report["shipped"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("ingest", "attend", "quantize", "evaluate", "out"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    print(run(params, args.ingest, args.quantize, args.evaluate, args.out, signing.key_path_from_env(), args.attend))


if __name__ == "__main__":
    main()

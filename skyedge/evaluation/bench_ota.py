"""`make bench-ota`: the bytes a station downloads, measured on the last pipeline run.

For the weight-shared model (the quantize stage's candidate of method `shared`: Deep
Compression's bytes), the model that shipped (data/quantize/shipped.onnx, whichever candidate the
quantize budget chose; its row's format is its method, and its bytes can differ from its
candidate's by the persistence fallback written into it), and the shared model's fp32 parent and the teacher,
each also as int8: the ONNX bytes, gzip -9 and zstd -19 of each, and the model container
(skyedge.release.container). For the shared model, deltas from the release before
in two cases, each beside the generic binary deltas (bsdiff4, zstd --patch-from):

- retrain: every weight moves (the weight-shared model fine-tuned one more epoch from its fp32
  parent with another seed, then shared again), as a weekly retrain does;
- heads only: the sky, rain and temperature heads fine-tuned, the backbone untouched (a
  re-publish that adapts the heads).

On the device side: decode time of the container (median of 20, one thread, in a subprocess that
imports what a station imports) and that subprocess's peak RSS. And what weight sharing costs:
the shared model against its fp32 parent (`pruned`) on the field estimate (evaluate's rows).

Writes the table and each target, met or not with its number, to reports/bench_ota.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import zstandard

from skyedge.compress import selection
from skyedge.core import inference, paths
from skyedge.core.config import WeightSharing, load_params
from skyedge.core.tables import Column, text_table
from skyedge.release import container

HEADS = ("sky_head", "rain_head", "temp_head", "rain_persistence")
DECODE_RUNS = 20

_DECODE = """
import json, sys, time
from skyedge.core.inference import peak_rss_bytes
from skyedge.release import container
blob, sha, runs = open(sys.argv[1], "rb").read(), sys.argv[2], int(sys.argv[3])
times = []
for _ in range(runs):
    t = time.perf_counter(); container.decode(blob, sha); times.append((time.perf_counter() - t) * 1000)
times.sort()
print(json.dumps({"decode_ms_p50": times[len(times) // 2], "peak_rss_mb": peak_rss_bytes() / 2**20}))
"""


def byte_sizes(onnx_bytes: bytes) -> dict[str, int]:
    return {
        "onnx": len(onnx_bytes),
        "gzip": len(gzip.compress(onnx_bytes, compresslevel=9)),
        "zstd": len(zstandard.ZstdCompressor(level=19).compress(onnx_bytes)),
        "container": len(container.encode(onnx_bytes)),
    }


def int8_of(onnx_path: Path, out: Path) -> Path:
    """ONNX Runtime dynamic int8 of a model (the teacher has no int8 of its own in the pipeline)."""
    from skyedge.compress.quantization import dynamic_int8

    return dynamic_int8(onnx_path, out, per_channel=True, reduce_range=True)


def decode_cost(container_bytes: bytes, sha256: str, scratch: Path) -> dict[str, float]:
    """Median decode time and peak RSS in a fresh one-thread process (what a station pays)."""
    blob = scratch / "model.skc"
    blob.write_bytes(container_bytes)
    env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", _DECODE, str(blob), sha256, str(DECODE_RUNS)], capture_output=True, text=True, check=True, env={**env, **_pythonpath()})
    return json.loads(out.stdout)


def _pythonpath() -> dict[str, str]:
    return {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def quantize_report(data_dir: Path) -> dict:
    """The run's data/quantize/report.json: its candidates and what shipped."""
    return json.loads(paths.Quantize(data_dir / "quantize").report.read_text())


def weight_sharing(data_dir: Path, candidates: list[dict]) -> tuple[str, WeightSharing]:
    """The name of the weight-sharing candidate among the run's candidates and its config
    (params.yaml's quantize.candidates, for the next releases' fine-tunes)."""
    shared = selection.weight_shared(candidates)
    if shared is None:
        failed = [f"{c['name']} failed: {c['error']}" for c in candidates if c["method"] == "shared"]
        why = "; ".join(failed) or "quantize.candidates has no {method: shared}"
        raise SystemExit(f"bench-ota: the run built no weight-sharing candidate ({why}): nothing to measure")
    config = load_params(data_dir.parent / "params.yaml").quantize.candidates.get(shared["name"])
    if not isinstance(config, WeightSharing):
        raise SystemExit(f"bench-ota: params.yaml's quantize.candidates has no weight-sharing {shared['name']} as the run had: run the pipeline again (dvc repro)")
    return shared["name"], config


def next_releases(data_dir: Path, shared_name: str, config: WeightSharing, scratch: Path) -> dict[str, Path]:
    """The shared model's two successors (module doc) as ONNX files."""
    import torch

    from skyedge.compress import sharing
    from skyedge.data.dataset import load_ingested
    from skyedge.train import checkpoints
    from skyedge.train.models import export_onnx
    from skyedge.train.training import FitConfig, Teacher, fit

    params = load_params(data_dir.parent / "params.yaml")
    data = load_ingested(data_dir / "ingest")
    teacher = Teacher.load(paths.Embed(data_dir / "embed").teacher_module, params.distill)
    quantized, pruned = paths.Quantize(data_dir / "quantize"), paths.Prune(data_dir / "prune")
    size, window = data.preprocessing["image"]["size"], data.windows.shape[1]
    base = FitConfig(1, config.batch_size, config.lr, params.common.seed + 1, photo_share=params.data.photo_share)
    torch.set_num_threads(params.common.threads)

    retrained = sharing.share_weights(checkpoints.load_module(pruned.module("pruned")), config.model_copy(update={"epochs": 1}), data, base, teacher).model
    export_onnx(retrained, scratch / "retrain.onnx", size, window, data.windows.shape[2])

    heads = checkpoints.load_module(quantized.candidate(shared_name).with_suffix(".pt"))
    for name, parameter in heads.named_parameters():
        parameter.requires_grad = name.split(".")[0] in HEADS
    fit(heads, data, dataclasses.replace(base, lr=config.lr / 2), "heads-only fine-tune", teacher=teacher)
    sharing.cluster(heads, {name: config.bits for name in sharing.shareable_layers(heads) if name.split(".")[0] in HEADS})
    sharing.bake(heads)
    export_onnx(heads, scratch / "heads.onnx", size, window, data.windows.shape[2])
    return {"retrain": scratch / "retrain.onnx", "heads only": scratch / "heads.onnx"}


def sharing_cost(data_dir: Path) -> dict[str, float | None]:
    """Shared model minus its fp32 parent on the field estimate: sky accuracy, and the worst horizon's skills."""
    metrics = json.loads(paths.Evaluate(data_dir / "evaluate").metrics.read_text())
    rows = metrics["variants"]
    shared, parent = rows.get("shared"), rows.get("pruned")
    if shared is None or parent is None:
        return {"sky_accuracy": None, "rain_bss": None, "temp_skill": None}

    def worst(row_a: dict, row_b: dict, prefix: str) -> float:
        return min(row_a[f"{prefix}_h{h}"] - row_b[f"{prefix}_h{h}"] for h in (1, 2, 3, 4))

    return {
        "sky_accuracy": shared["sky_accuracy"] - parent["sky_accuracy"],
        "rain_bss": worst(shared, parent, "rain_bss_persistence"),
        "temp_skill": worst(shared, parent, "temp_skill_persistence"),
    }


def targets(models: dict[str, dict], deltas: list[dict], decode: dict, cost: dict) -> list[dict]:
    shared, teacher = models["shared"], models["teacher"]
    heads = next(d for d in deltas if d["release"] == "heads only")

    def target(name: str, value: float | None, met: bool | None, detail: str) -> dict:
        return {"target": name, "value": value, "met": met, "detail": detail}

    container_bytes = shared["fp32"]["container"]
    ratio_teacher = teacher["fp32"]["onnx"] / container_bytes
    ratio_gzip = shared["fp32"]["gzip"] / container_bytes
    ratio_parent = models["fp32 parent"]["fp32"]["gzip"] / container_bytes
    return [
        target("container >= 500x below the teacher's ONNX", ratio_teacher, ratio_teacher >= 500, f"{teacher['fp32']['onnx']} / {container_bytes} bytes"),
        target("container >= 4x below gzip of the shared ONNX", ratio_gzip, ratio_gzip >= 4, f"{shared['fp32']['gzip']} / {container_bytes} bytes (the shared ONNX already holds only shared values, which gzip also finds)"),
        target("container >= 4x below gzip of the fp32 parent's ONNX", ratio_parent, ratio_parent >= 4, "pruned fp32 ONNX, gzip -9"),
        target("sky accuracy within 1 point of the fp32 parent", cost["sky_accuracy"], None if cost["sky_accuracy"] is None else cost["sky_accuracy"] >= -0.01, "shared - pruned, field estimate"),
        target("rain and temperature skill within 0.01 of the fp32 parent", min(cost["rain_bss"], cost["temp_skill"]) if cost["rain_bss"] is not None else None,
               None if cost["rain_bss"] is None else min(cost["rain_bss"], cost["temp_skill"]) >= -0.01, "worst horizon of shared - pruned"),
        target("decode under 100 ms on one core", decode["decode_ms_p50"], decode["decode_ms_p50"] < 100, f"median of {DECODE_RUNS}, peak RSS {decode['peak_rss_mb']:.0f} MB"),
        target("heads-only delta under 10% of the container", heads["delta"] / container_bytes, heads["delta"] < 0.1 * container_bytes, f"{heads['delta']} / {container_bytes} bytes"),
    ]


SIZE_COLUMNS = [Column("model", align="left"), Column("format", align="left"), Column("onnx", "ONNX"), Column("gzip"), Column("zstd"), Column("container")]
DELTA_COLUMNS = [Column("release", "next release", align="left"), Column("full", "container"), Column("delta", "our delta"), Column("bsdiff4"), Column("zstd_patch", "zstd patch-from")]
TARGET_COLUMNS = [Column("status", align="left"), Column("target", align="left"), Column("value", format=".4g"), Column("detail", align="left")]


def run(data_dir: Path, out: Path) -> dict:
    quantized = paths.Quantize(data_dir / "quantize")
    report = quantize_report(data_dir)
    shared_name, sharing_config = weight_sharing(data_dir, report["candidates"])
    shipped = next(c for c in report["candidates"] if c["name"] == report["shipped"])
    shared_path = quantized.candidate(shared_name)
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        teacher = paths.Embed(data_dir / "embed").teacher_onnx
        onnx_files = {  # model -> {format: ONNX file}
            "shared": {"fp32": shared_path},  # fp32 compute; its bytes are the 2**bits shared values
            f"shipped ({shipped['name']})": {shipped["method"]: quantized.shipped},
            "fp32 parent": {"fp32": paths.Prune(data_dir / "prune").onnx("pruned"), "int8": quantized.int8},  # int8: the quantize stage's best int8 of it
            "teacher": {"fp32": teacher, "int8": int8_of(teacher, scratch / "teacher_int8.onnx")},
        }
        models = {name: {fmt: byte_sizes(path.read_bytes()) for fmt, path in by_format.items()} for name, by_format in onnx_files.items()}
        shared_bytes = shared_path.read_bytes()  # the deltas' base: a station running the shared model
        decode = decode_cost(container.encode(shared_bytes), hashlib.sha256(shared_bytes).hexdigest(), scratch)
        deltas = []
        for release, path in next_releases(data_dir, shared_name, sharing_config, scratch).items():
            new = path.read_bytes()
            deltas.append({
                "release": release, "full": len(container.encode(new)), "delta": len(container.encode_delta(shared_bytes, new)),
                "bsdiff4": container.bsdiff_size(shared_bytes, new), "zstd_patch": container.zstd_patch_size(shared_bytes, new),
            })
    cost = sharing_cost(data_dir)  # evaluate's row `shared` is the same candidate
    status = targets(models, deltas, decode, cost)
    result = {"data": str(data_dir.resolve()), "machine": inference.machine(), "shipped": shipped["name"], "models": models, "deltas": deltas, "decode": decode, "sharing_cost": cost, "targets": status}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    size_rows = [{"model": name, "format": fmt, **sizes} for name, formats in models.items() for fmt, sizes in formats.items()]
    print(text_table(size_rows, SIZE_COLUMNS))
    print()
    print(text_table(deltas, DELTA_COLUMNS))
    print()
    print(f"device side: decode {decode['decode_ms_p50']:.1f} ms (median of {DECODE_RUNS}, one thread), peak RSS {decode['peak_rss_mb']:.0f} MB")
    print()
    print(text_table([{**t, "status": "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")} for t in status], TARGET_COLUMNS))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Bytes over the air: ONNX, gzip, zstd, the container and deltas, with the targets")
    parser.add_argument("--data", type=Path, default=paths.Workspace().data)
    parser.add_argument("--out", type=Path, default=Path("reports/bench_ota.json"))
    args = parser.parse_args(argv)
    run(args.data, args.out)


if __name__ == "__main__":
    main()

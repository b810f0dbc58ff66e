"""`make bench`: every model variant of the last pipeline run, side by side, and the product's targets.

One row per variant: teacher_fp32, student_alone_fp32 (no KD), student_fp32, the pruning variants,
every quantization candidate and shipped. Size, MACs and batch-1 latency (ONNX Runtime, 1 intra-op
thread, warm-up excluded) are measured here, in one process, the variants taking turns in blocks
of 10 runs, so machine drift spreads over all of them and their ratios are fair. Test-split
scores come from the evaluate stage's variant rows where it scored that file (same frozen split)
and are computed here for the others.
Writes the table and each target's status (met / not met, with its number) to reports/bench.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from skyedge.core import inference, paths
from skyedge.core.contract import HORIZONS
from skyedge.core.tables import Column, text_table
from skyedge.data.dataset import load_ingested, model_inputs
from skyedge.evaluation import scores

SCORE_KEYS = ["sky_accuracy", "sky_macro_f1"] + [f"rain_bss_persistence_h{h}" for h in HORIZONS] + [f"temp_skill_persistence_h{h}" for h in HORIZONS]
COLUMNS = ["variant", "size_bytes", "macs", "latency_ms_p50", "latency_ms_p95", *SCORE_KEYS]


def variants(data: Path) -> dict[str, dict]:
    """name -> {onnx, module (for MACs), evaluate (the evaluate stage's row name, if any)}."""
    embed, distill, prune, quantize = paths.Embed(data / "embed"), paths.Distill(data / "distill"), paths.Prune(data / "prune"), paths.Quantize(data / "quantize")
    pruned_module = prune.module("pruned")  # MACs of the float graph the quantized candidates come from
    found = {
        "teacher_fp32": {"onnx": embed.teacher_onnx, "module": embed.teacher_module, "evaluate": "teacher"},
        "student_alone_fp32": {"onnx": distill.onnx("student_alone"), "module": distill.module("student_alone"), "evaluate": "student_alone"},
        "student_fp32": {"onnx": distill.onnx("student"), "module": distill.module("student"), "evaluate": "student"},
        **{f"{name}_fp32": {"onnx": prune.onnx(name), "module": prune.module(name)} for name in paths.Prune.VARIANTS},
    }
    found["pruned_fp32"]["evaluate"] = "pruned"
    report = json.loads(quantize.report.read_text()) if quantize.report.exists() else {"candidates": []}
    for candidate in report["candidates"]:
        if candidate["method"] == "fp32" or "error" in candidate:
            continue
        entry = {"onnx": quantize.candidate(candidate["name"]), "module": pruned_module}
        if candidate["name"] == report.get("int8"):
            entry["evaluate"] = "quantized"
        found[f"pruned_{candidate['name']}"] = entry
    found["shipped"] = {"onnx": quantize.shipped, "module": pruned_module, "evaluate": "shipped"}
    return {name: entry for name, entry in found.items() if entry["onnx"].exists()}


def macs_of(module_path: Path, image_size: int, window: int) -> int | None:
    if not module_path.exists():
        return None
    from skyedge.compress.pruning import count_macs_params
    from skyedge.core.features import N_FEATURES
    from skyedge.train import checkpoints, models

    return count_macs_params(checkpoints.load_module(module_path), models.example_inputs(image_size, window, N_FEATURES))[0]


def measure(data_dir: Path, runs: int, warmup: int) -> list[dict]:
    data = load_ingested(paths.Ingest(data_dir / "ingest").dir)
    test = data.split("test")
    samples = data.samples.iloc[test].reset_index(drop=True)
    one = model_inputs(data, test[:1])
    evaluate_path = paths.Evaluate(data_dir / "evaluate").metrics
    evaluated = json.loads(evaluate_path.read_text())["variants"] if evaluate_path.exists() else {}
    size, window = data.preprocessing["image"]["size"], data.windows.shape[1]
    inputs = None
    rows = []
    found = variants(data_dir)
    print(f"bench: timing {len(found)} variants in turns, {runs} runs each", flush=True)
    speeds = inference.interleaved_latency_ms({name: entry["onnx"] for name, entry in found.items()}, one, runs, warmup)
    for name, entry in found.items():
        row = {"variant": name, "size_bytes": entry["onnx"].stat().st_size, "macs": macs_of(entry["module"], size, window)}
        row.update(latency_ms_p50=speeds[name]["latency_ms_p50"], latency_ms_p95=speeds[name]["latency_ms_p95"])
        if entry.get("evaluate") in evaluated:
            found = evaluated[entry["evaluate"]]
            row["scores_from"] = "evaluate stage"
        else:
            inputs = inputs if inputs is not None else model_inputs(data, test)
            outputs = inference.predict(inference.session(entry["onnx"]), inputs)
            found = scores.summary_row(name, scores.score(outputs, samples, data.preprocessing["climatology"], n_boot=50))
            row["scores_from"] = "bench"
        row.update({key: found.get(key) for key in SCORE_KEYS})
        rows.append(row)
        print(f"bench: {name} {row['latency_ms_p50']:.3f} ms", flush=True)
    return rows


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def targets(rows: list[dict]) -> list[dict]:
    """The product's targets (README), each with its number and met / not met (None: not measurable)."""
    by = {row["variant"]: row for row in rows}
    teacher, shipped, student, alone = (by.get(n, {}) for n in ("teacher_fp32", "shipped", "student_fp32", "student_alone_fp32"))
    out = []

    def add(name: str, value: float | None, met: bool | None, detail: str) -> None:
        out.append({"target": name, "value": value, "met": met, "detail": detail})

    gap = None if shipped.get("sky_accuracy") is None or teacher.get("sky_accuracy") is None else 100 * (shipped["sky_accuracy"] - teacher["sky_accuracy"])
    add("shipped sky accuracy within 1 point of teacher (or above)", gap, None if gap is None else gap >= -1.0, "points, shipped - teacher")
    smaller = _ratio(teacher.get("size_bytes"), shipped.get("size_bytes"))
    add("shipped file >= 50x smaller than teacher_fp32", smaller, None if smaller is None else smaller >= 50, "teacher bytes / shipped bytes")
    faster = _ratio(teacher.get("latency_ms_p50"), shipped.get("latency_ms_p50"))
    add("shipped latency >= 20x lower than teacher_fp32", faster, None if faster is None else faster >= 20, "teacher p50 / shipped p50")
    vs_student = _ratio(student.get("latency_ms_p50"), shipped.get("latency_ms_p50"))
    add("shipped >= 1.5x faster than student_fp32", vs_student, None if vs_student is None else vs_student >= 1.5, "student p50 / shipped p50")
    kd = None if student.get("sky_accuracy") is None or alone.get("sky_accuracy") is None else 100 * (student["sky_accuracy"] - alone["sky_accuracy"])
    headroom = None if alone.get("sky_accuracy") is None or teacher.get("sky_accuracy") is None else 100 * (teacher["sky_accuracy"] - alone["sky_accuracy"])
    # KD can only add what the student alone is missing of the teacher: say how much that was.
    room = "" if headroom is None else f"; headroom teacher - student_alone {headroom:+.1f} points"
    add("KD gain >= +2 points of sky accuracy", kd, None if kd is None else kd >= 2.0, f"points, student - student_alone (test split){room}")
    for h in HORIZONS:
        bss = shipped.get(f"rain_bss_persistence_h{h}")
        add(f"rain Brier skill vs persistence > 0 at h{h}", bss, None if bss is None else bss > 0, "shipped")
    for h in HORIZONS:
        skill = shipped.get(f"temp_skill_persistence_h{h}")
        add(f"temperature skill vs persistence >= 0.2 at h{h}", skill, None if skill is None else skill >= 0.2, "shipped")
    return out


TABLE_COLUMNS = [
    Column("variant", align="left"),
    Column("size_bytes", "size_kB", ".1f", scale=1e-3),
    Column("macs", "MMACs", ".2f", scale=1e-6),
    Column("latency_ms_p50", "p50_ms"),
    Column("latency_ms_p95", "p95_ms"),
    Column("sky_accuracy", "sky_acc"),
    Column("sky_macro_f1", "sky_F1"),
    *(Column(f"rain_bss_persistence_h{h}", f"rBSS{h}") for h in HORIZONS),
    *(Column(f"temp_skill_persistence_h{h}", f"tSk{h}") for h in HORIZONS),
]


def table(rows: list[dict]) -> str:
    return text_table(rows, TABLE_COLUMNS)


def target_lines(status: list[dict]) -> str:
    """One row per target: met / NOT met / n/a (not measurable), the number and what it is."""
    rows = [{**t, "status": "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")} for t in status]
    return text_table(rows, [Column("status", align="left"), Column("target", align="left"), "value", Column("detail", align="left")])


def run(data_dir: Path, out: Path, runs: int = 1000, warmup: int = 20) -> dict:
    rows = measure(data_dir, runs, warmup)
    status = targets(rows)
    result = {"data": str(data_dir.resolve()), "latency": {"batch": 1, "intra_op_threads": 1, "runs": runs, "warmup_runs": warmup}, "variants": rows, "targets": status}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=lambda v: None if isinstance(v, float) and np.isnan(v) else v) + "\n")
    print(table(rows))
    print("targets:")
    print(target_lines(status))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Re-time and score every model variant of the last run; the product's targets")
    parser.add_argument("--data", type=Path, default=paths.Workspace().data, help="the data/ directory of the last pipeline run")
    parser.add_argument("--out", type=Path, default=Path("reports/bench.json"))
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args(argv)
    run(args.data, args.out, args.runs, args.warmup)


if __name__ == "__main__":
    main()

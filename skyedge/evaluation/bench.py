"""`make bench`: every model variant of the last pipeline run, side by side, and the product's targets.

One row per variant: teacher_fp32, student_alone_fp32 (no KD), student_fp32, the pruning variants,
every quantization candidate and shipped. Size, MACs and batch-1 latency (ONNX Runtime, 1 intra-op
thread, warm-up excluded) are measured here, in one process, the variants taking turns in blocks
of 10 runs, so machine drift spreads over all of them and their ratios are fair. Every variant is
scored here on the same test split, as the field will see it (skyedge.evaluation.scores.
grouped_score): the headline rows come from days and stations training never saw, and the groups
(seen photo days, the later season of training stations, each held-out station) sit beside them.
With attend.student_input = crop (as the evaluate stage recorded it) every variant but the
teacher is scored on its attention crops, the teacher on whole frames, and the shipped row's
latency includes attention.onnx's, as in the evaluate stage: what a station runs.
Differences between variants (KD gain, shipped vs teacher) come with paired bootstrap intervals
that resample whole capture days. The test split holds out few capture days (on SWIMCAT, 57
photos of 2 days), so the KD gain target is also read from `make bench-crossval`'s
leave-one-capture-day-out estimate, when that estimate is of this run's photos and recipe. Writes
the table, the groups and each target's status (met / not met, with its number and interval) to
reports/bench.json.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skyedge.core import crop, inference, paths
from skyedge.core.config import Params, load_params
from skyedge.core.contract import HORIZONS
from skyedge.core.tables import Column, text_table
from skyedge.data.dataset import Ingested, load_ingested, model_inputs, student_view, teacher_view
from skyedge.evaluation import crossval, metrics, scores

BOOTSTRAP = 500  # replicates of every interval the targets show
SCORE_KEYS = ["sky_accuracy", "sky_macro_f1"] + [f"rain_bss_persistence_h{h}" for h in HORIZONS] + [f"temp_skill_persistence_h{h}" for h in HORIZONS]


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


@dataclass
class Measured:
    """Every variant's row, and what the targets need beyond it: the grouped score documents
    and, on the field-estimate photos, which each variant got right."""

    rows: list[dict]
    scored: dict[str, dict]  # variant -> scores.grouped_score document
    photo_hits: dict[str, np.ndarray]  # variant -> 1/0 per unseen-day labelled photo of the test split
    photo_days: np.ndarray  # the capture day of each of those photos (bootstrap groups)
    chosen: str = "student"  # the student the distill stage chose, pruned and shipped (with KD or alone)


def student_input_of(data_dir: Path) -> str:
    """What the last evaluate stage fed the students: `crop` (attention) or `full` frames."""
    evaluated = paths.Evaluate(data_dir / "evaluate").metrics
    return json.loads(evaluated.read_text()).get("student_input", "full") if evaluated.exists() else "full"


def attention_latency_ms(data_dir: Path, data: Ingested, rows: np.ndarray, runs: int, warmup: int) -> dict[str, float]:
    """Batch-1 latency of the attention graph on one whole test frame, as the station feeds it."""
    frame = data.teacher_images[data.samples["image_idx"].to_numpy()[rows]][:1]
    return inference.latency_ms(paths.Attend(data_dir / "attend").onnx, crop.attention_feed(frame), runs, warmup)


def measure(data_dir: Path, runs: int, warmup: int) -> Measured:
    student_input = student_input_of(data_dir)
    data = student_view(load_ingested(paths.Ingest(data_dir / "ingest").dir), student_input, paths.Attend(data_dir / "attend").boxes)
    test = data.split("test")
    samples = data.samples.iloc[test].reset_index(drop=True)
    inputs = {"student": model_inputs(data, test), "teacher": model_inputs(teacher_view(data), test)}
    size, window = data.preprocessing["image"]["size"], data.windows.shape[1]
    unseen_photos = (samples["sky_label"].to_numpy() >= 0) & (samples["day_in_train"].to_numpy() == 0)
    found = variants(data_dir)
    print(f"bench: timing {len(found)} variants in turns, {runs} runs each", flush=True)
    speeds = inference.interleaved_latency_ms({name: entry["onnx"] for name, entry in found.items()}, model_inputs(data, test[:1]), runs, warmup)
    if student_input == "crop":
        photos = test[data.samples["image_idx"].to_numpy()[test] >= 0]
        attention = attention_latency_ms(data_dir, data, photos, runs, warmup)
        speeds["shipped"] = {key: speeds["shipped"][key] + attention[key] for key in inference.LATENCY_KEYS}
    pruned = paths.Prune(data_dir / "prune").metrics  # names the student it pruned (a run before the choice: the KD one)
    chosen = json.loads(pruned.read_text()).get("student", "student") if pruned.exists() else "student"
    measured = Measured([], {}, {}, samples["day"].to_numpy()[unseen_photos], chosen)
    for name, entry in found.items():
        outputs = inference.predict(inference.session(entry["onnx"]), inputs["teacher" if name == "teacher_fp32" else "student"])
        scored = scores.grouped_score(outputs, samples, data.preprocessing["climatology"], n_boot=BOOTSTRAP)
        row = {"variant": name, "size_bytes": entry["onnx"].stat().st_size, "macs": macs_of(entry["module"], size, window)}
        row.update(latency_ms_p50=speeds[name]["latency_ms_p50"], latency_ms_p95=speeds[name]["latency_ms_p95"])
        row.update({key: scores.summary_row(name, scored).get(key) for key in SCORE_KEYS})
        measured.rows.append(row)
        measured.scored[name] = scored
        measured.photo_hits[name] = (outputs["sky_logits"][unseen_photos].argmax(1) == samples["sky_label"].to_numpy()[unseen_photos]).astype(float)
        print(f"bench: {name} {row['latency_ms_p50']:.3f} ms", flush=True)
    return measured


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _difference(measured: Measured, better: str, worse: str) -> tuple[float | None, list[float] | None]:
    """Points of sky accuracy, better - worse, on the same unseen-day photos, with a paired
    bootstrap interval that resamples whole capture days."""
    if better not in measured.photo_hits or worse not in measured.photo_hits or not len(measured.photo_days):
        return None, None
    diff = measured.photo_hits[better] - measured.photo_hits[worse]
    interval = metrics.bootstrap_ci(lambda idx: 100 * float(diff[idx].mean()), measured.photo_days, BOOTSTRAP, seed=0)
    return 100 * float(diff.mean()), [round(v, 2) for v in interval]


KD_GAIN_LODO = "KD gain >= +2 points of sky accuracy, leave-one-capture-day-out"


def leave_one_day_out_target(estimate: dict | None, samples_sha256: str, recipe: dict | None, machine: dict | None = None) -> dict:
    """The KD gain target on `make bench-crossval`'s estimate (reports/crossval.json): every
    capture day held out in turn, where the test split holds out two. It counts only when that
    estimate is of this run's photos (samples.csv) and recipe, at the pipeline's schedule, over
    every day; else the row says why not (met None). An estimate from another CPU than `machine`
    (this run's) still counts, and the row says where it was measured."""
    def not_measured(why: str) -> dict:
        return {"target": KD_GAIN_LODO, "value": None, "interval": None, "met": None, "detail": why}

    if estimate is None:
        return not_measured("not measured: run make bench-crossval (45 to 80 min on the real profile on 2 cores)")
    if estimate.get("samples_sha256") != samples_sha256:
        return not_measured("stale: reports/crossval.json was measured on other photos; re-run make bench-crossval")
    if recipe is None or estimate.get("recipe") != recipe:
        return not_measured("stale: the recipe (embed, distill, augment, photo_share, seed) changed since make bench-crossval; re-run it")
    if not (estimate.get("pipeline_schedule") and estimate.get("every_day")):
        return not_measured("a quick look (--repeats, --batch-size or --max-folds), not the estimate; re-run make bench-crossval without them")
    pooled = estimate["pooled"]
    gain = pooled["kd_gain_points"]
    detail = f"points, student - student_alone, {pooled['photos']} photos of {pooled['days']} held-out days; headroom teacher - student_alone {pooled['teacher_headroom_points']['value']:+.1f} points"
    measured_on = (estimate.get("machine") or {}).get("cpu")
    if machine is not None and measured_on != machine["cpu"]:
        detail += f"; measured on {measured_on or 'a machine it does not record'}, not this CPU: training repeats on one machine, not across machines"
    return {"target": KD_GAIN_LODO, "value": gain["value"], "interval": gain["interval"], "met": None if gain["value"] is None else gain["value"] >= 2.0, "detail": detail}


def targets(measured: Measured, leave_one_day_out: dict | None = None) -> list[dict]:
    """The product's targets (README), each with its number, 95% interval where it has one, and
    met / not met (None: not measurable), on the field estimate (days and stations never trained on).
    `leave_one_day_out`: the KD gain row of the cross-validated estimate, shown beside the test split's."""
    by = {row["variant"]: row for row in measured.rows}
    teacher, shipped, student = (by.get(n, {}) for n in ("teacher_fp32", "shipped", f"{measured.chosen}_fp32"))
    days = len(set(measured.photo_days))
    out = []

    def add(name: str, value: float | None, met: bool | None, detail: str, interval: list | None = None) -> None:
        out.append({"target": name, "value": value, "interval": interval, "met": met, "detail": detail})

    gap, gap_ci = _difference(measured, "shipped", "teacher_fp32")
    add("shipped sky accuracy within 1 point of teacher (or above), unseen days", gap, None if gap is None else gap >= -1.0, f"points, shipped - teacher, {len(measured.photo_days)} photos of {days} days", gap_ci)
    kd, kd_ci = _difference(measured, "student_fp32", "student_alone_fp32")
    room, _ = _difference(measured, "teacher_fp32", "student_alone_fp32")
    headroom = "" if room is None else f"; headroom teacher - student_alone {room:+.1f} points"
    add("KD gain >= +2 points of sky accuracy, unseen days", kd, None if kd is None else kd >= 2.0, f"points, student - student_alone, same data, epochs and seed{headroom}", kd_ci)
    if leave_one_day_out is not None:
        out.append(leave_one_day_out)
    smaller = _ratio(teacher.get("size_bytes"), shipped.get("size_bytes"))
    add("shipped file >= 50x smaller than teacher_fp32", smaller, None if smaller is None else smaller >= 50, "teacher bytes / shipped bytes")
    faster = _ratio(teacher.get("latency_ms_p50"), shipped.get("latency_ms_p50"))
    add("shipped latency >= 20x lower than teacher_fp32", faster, None if faster is None else faster >= 20, "teacher p50 / shipped p50")
    vs_student = _ratio(student.get("latency_ms_p50"), shipped.get("latency_ms_p50"))
    add(f"shipped >= 1.5x faster than {measured.chosen}_fp32 (pruned from it)", vs_student, None if vs_student is None else vs_student >= 1.5, f"{measured.chosen} p50 / shipped p50")
    groups = measured.scored.get("shipped", {}).get("groups", {})
    for group in [g for g in groups if g == "later_season" or g.startswith("station:")]:
        entries = {entry["h"]: entry for entry in groups[group]["horizons"]}
        ci = groups[group]["ci"]
        for key, limit, label in (("rain_bss_persistence", 0.0, "rain Brier skill vs persistence > 0"), ("temp_skill_persistence", 0.2, "temperature skill vs persistence >= 0.2")):
            values = {h: entry.get(key) for h, entry in entries.items()}
            if not values or any(v is None for v in values.values()):
                add(f"{label}, every horizon, {group}", None, None, "undefined at some horizon")
                continue
            worst = min(values, key=values.get)
            met = values[worst] > limit if key.startswith("rain") else values[worst] >= limit
            add(f"{label}, every horizon, {group}", values[worst], met, f"worst at h{worst}; h1..h4 " + " / ".join(f"{values[h]:.2f}" for h in sorted(values)), ci.get(f"{key}_h{worst}"))
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


GROUP_COLUMNS = [Column("group", align="left"), Column("n_samples", "n", format="d"), *TABLE_COLUMNS[5:]]


def table(rows: list[dict]) -> str:
    return text_table(rows, TABLE_COLUMNS)


def target_lines(status: list[dict]) -> str:
    """One row per target: met / NOT met / n/a (not measurable), the number, its 95% interval and what it is."""
    rows = [{**t, "status": "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")} for t in status]
    interval = Column("interval", "95% interval", format=lambda ci: f"[{ci[0]:.2f}, {ci[1]:.2f}]")
    return text_table(rows, [Column("status", align="left"), Column("target", align="left"), "value", interval, Column("detail", align="left")])


def run(data_dir: Path, out: Path, runs: int = 1000, warmup: int = 20, params: Params | None = None, crossval_json: Path | None = None) -> dict:
    """`params`: the run's recipe, to check that `crossval_json` (default: crossval.json beside
    `out`) estimates it."""
    measured = measure(data_dir, runs, warmup)
    crossval_json = crossval_json or out.parent / "crossval.json"
    estimate = json.loads(crossval_json.read_text()) if crossval_json.exists() else None
    here = inference.machine()
    lodo = leave_one_day_out_target(estimate, crossval.samples_digest(data_dir / "ingest"), None if params is None else crossval.recipe(params), here)
    rows, status = measured.rows, targets(measured, lodo)
    result = {
        "data": str(data_dir.resolve()),
        "machine": here,
        "estimate": "test split, rows from days and stations never trained on (skyedge.evaluation.scores.groups_of)",
        "latency": {"batch": 1, "intra_op_threads": 1, "runs": runs, "warmup_runs": warmup},
        "variants": rows,
        "groups": {name: {group: scores.summary_row(group, doc) | {"n_samples": doc["n_samples"]} for group, doc in scored.get("groups", {}).items()} for name, scored in measured.scored.items()},
        "targets": status,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=lambda v: None if isinstance(v, float) and np.isnan(v) else v) + "\n")
    print(inference.machine_line(here))
    print(table(rows))
    print("shipped, per group (seen vs unseen):")
    print(text_table([{"group": g, **r} for g, r in result["groups"].get("shipped", {}).items()], GROUP_COLUMNS))
    print("targets:")
    print(target_lines(status))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Re-time and score every model variant of the last run; the product's targets")
    parser.add_argument("--data", type=Path, default=paths.Workspace().data, help="the data/ directory of the last pipeline run")
    parser.add_argument("--out", type=Path, default=Path("reports/bench.json"))
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="the run's params.yaml (its active profile): the recipe the cross-validated estimate must match")
    parser.add_argument("--crossval", type=Path, default=None, help="make bench-crossval's estimate (default: crossval.json beside --out)")
    args = parser.parse_args(argv)
    run(args.data, args.out, args.runs, args.warmup, load_params(args.params), args.crossval)


if __name__ == "__main__":
    main()

"""Full frame vs attention crop (`make bench-attention`): does the student gain from looking only at the sky?

The same student (params `distill`: architecture, width, epochs, batch, learning rate,
augmentation), trained on the same ingest without the teacher from the same seeds (--seeds,
paired: each seed starts both views from the same weights), so the only difference is
what its camera input shows: the whole ingested frame, or each frame cut to its attention box
(the attend stage's boxes.npy) and resized back to the same input resolution. Both are scored on
val and test (sky accuracy on labelled photos, rain Brier, temperature RMSE), as means and
standard deviations over seeds, and attention's change paired by seed. A table goes to
stdout and the rows to reports/bench_attention.json.

The crop here is cut from the ingested frame, so the student gains no pixels, only the share of
its input that is sky; a station would cut its camera's full-resolution frame, which also gains
resolution. So this measures the crop alone, without the extra detail a station's crop would add.

`--costs` adds what ships: the student distilled from the whole-frame teacher (the distill stage's
loss; the crop student's teacher sees the whole frame) on the full frame and behind attention at
the ingest's input size and at smaller crop sizes, each exported to ONNX and scored on the test
split as evaluate scores (sky accuracy, rain Brier skill and temperature skill over persistence,
mean over horizons), with its MACs, batch-1 latency and bytes, the attention net's own MACs,
latency and bytes added to the crop rows, the KD gain of both views at the ingest's size, and the
targets: at equal MACs attention raises sky accuracy >= 3 points; at equal accuracy it cuts MACs
>= 2x. Attention's cost is counted per frame: a station runs it on the share of frames the attend
stage's metrics count (attend.refresh_hours: once a day, the box reused in between).

`--photos DIR` (labelled real sky photos; ../shared/datasets/swimcat by default, skipped when
absent) adds composite frames (skyedge.evaluation.composites): each photo as the sky of a daytime
test-split station frame of its class. Every shipped row is scored on them (composite_acc: the
full-frame student on the composite, the crop students behind attention.onnx's box of it), with
the teacher's accuracy and the attention mask's IoU against the composites' true sky.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from skyedge.compress.pruning import count_macs_params
from skyedge.core import crop, inference, paths
from skyedge.core.config import Params, load_params
from skyedge.core.contract import OUTPUT_SKY_LOGITS
from skyedge.core.features import N_FEATURES
from skyedge.core.tables import Column, text_table
from skyedge.data.dataset import Ingested, attended, load_ingested, model_inputs
from skyedge.evaluation import composites
from skyedge.evaluation import scores as scoring
from skyedge.train import attention, models
from skyedge.train.training import Augmentation, Batches, FitConfig, Teacher, fit, quick_scores, resolve_device, sky_hits

VIEWS = ("full_frame", "attention_crop")
SCORED_SPLITS = ("val", "test")
METRICS = ("sky_accuracy", "rain_brier", "temp_rmse")  # quick_scores' val_<metric>, on whichever split it is given


def views(data: Ingested, boxes: np.ndarray, boxes_file: Path) -> dict[str, Ingested]:
    return {"full_frame": data, "attention_crop": attended(data, boxes, boxes_file)}


def train_and_score(data: Ingested, params: Params, view: str, seed: int) -> list[dict]:
    """The distill section's student, trained without the teacher on this view from this seed;
    one row per scored split."""
    distill = params.distill
    config = FitConfig(
        distill.epochs, distill.batch_size, distill.lr, seed, distill.image_dropout, params.data.photo_share,
        Augmentation(**params.augment.model_dump()), resolve_device(params.common.device), distill.balance_classes,
    )
    torch.manual_seed(seed)  # both views start from the same weights
    student = models.build_student(distill.student, distill.width, params.data.window_hours, data.preprocessing["sensors"]["std"][0])
    fit(student, data, config, f"student on {view}, seed {seed}")
    rows = []
    for split in SCORED_SPLITS:
        split_rows = data.split(split)
        scores = quick_scores(student, Batches(data, split_rows), split_rows)  # keys say val_ whatever the split
        rows.append({"view": view, "split": split, "seed": seed, **{metric: scores[f"val_{metric}"] for metric in METRICS}})
    return rows


def mean_and_spread(rows: list[dict]) -> dict:
    """Mean and sample standard deviation over seeds of each metric (spread 0 with one seed)."""
    out = {}
    for metric in METRICS:
        values = np.array([row[metric] for row in rows], dtype=np.float64)
        out[metric] = float(values.mean())
        out[f"{metric}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


def compare(params: Params, ingest_dir: Path, attend_dir: Path, seeds: int) -> dict:
    """Both views' rows for `seeds` seeds (from common.seed on), their mean per view and split,
    and attention's change (crop - full, paired by seed) per split."""
    torch.set_num_threads(params.common.threads)
    data = load_ingested(ingest_dir)
    boxes_file = paths.Attend(attend_dir).boxes
    boxes = np.load(boxes_file)
    seed_list = list(range(params.common.seed, params.common.seed + seeds))
    rows = [row for view, view_data in views(data, boxes, boxes_file).items() for seed in seed_list for row in train_and_score(view_data, params, view, seed)]
    by = {(row["view"], row["split"], row["seed"]): row for row in rows}
    summary = [{"view": view, "split": split, **mean_and_spread([by[view, split, seed] for seed in seed_list])} for view in VIEWS for split in SCORED_SPLITS]
    change = [
        {"split": split, **mean_and_spread([{m: by["attention_crop", split, seed][m] - by["full_frame", split, seed][m] for m in METRICS} for seed in seed_list])}
        for split in SCORED_SPLITS
    ]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return {
        "student": params.distill.student,
        "epochs": params.distill.epochs,
        "seeds": seed_list,
        "mean_box_area_share": float(area.mean()),
        "rows": rows,
        "summary": summary,
        "attention_minus_full": change,
    }


def metric_columns(signed: bool) -> list[Column]:
    """Each metric and its spread over seeds; a change (`signed`) shows its sign, a spread never has one."""
    sign = "+" if signed else ""
    return [column for metric, spec in zip(METRICS, (".3f", ".4f", ".3f")) for column in (Column(metric, format=sign + spec), Column(f"{metric}_sd", format=spec))]


def format_result(result: dict) -> str:
    return "\n".join([
        f"student {result['student']}, {result['epochs']} epochs, no teacher, seeds {result['seeds']}; attention boxes keep {result['mean_box_area_share']:.0%} of the frame on average",
        text_table(result["summary"], [Column("view", align="left"), Column("split", align="left"), *metric_columns(signed=False)], rule=True),
        "",
        "attention crop - full frame, paired by seed:",
        text_table(result["attention_minus_full"], [Column("split", align="left"), *metric_columns(signed=True)], rule=True),
    ])


# --- what ships: distilled students, their costs, and the attention net's ------------------------

ACCURACY_TARGET = 0.03  # at equal MACs, attention raises sky accuracy by at least 3 points ...
MACS_TARGET = 2.0  # ... and at equal accuracy it needs at most half the MACs


def cropped_at(data: Ingested, boxes: np.ndarray, size: int) -> Ingested:
    """Every photo cut to its box at size x size for the student; the whole frames for the teacher."""
    image = {**data.preprocessing["image"], "size": size}
    return replace(data, images=crop.crop_photos(data.images, boxes, size), teacher_images=data.images, preprocessing={**data.preprocessing, "image": image})


def test_skill(onnx_path: Path, data: Ingested, params: Params) -> dict:
    """Sky accuracy and mean rain / temperature skill over persistence on the test split, as evaluate scores them."""
    test = data.split("test")
    outputs = inference.predict(inference.session(onnx_path, params.common.threads), model_inputs(data, test))
    row = scoring.summary_row("", scoring.grouped_score(outputs, data.samples.iloc[test].reset_index(drop=True), data.preprocessing["climatology"], params.evaluate.bootstrap, params.common.seed))
    return {"sky_accuracy": row["sky_accuracy"], "rain_skill": horizon_mean(row, "rain_bss_persistence_h"), "temp_skill": horizon_mean(row, "temp_skill_persistence_h")}


def horizon_mean(row: dict, prefix: str) -> float:
    """The mean over horizons of a summary row's per-horizon skill (NaN when none was scored)."""
    values = [v for k, v in row.items() if k.startswith(prefix) and v is not None]
    return float(np.mean(values)) if values else float("nan")


def shipped_student(data: Ingested, params: Params, teacher: Teacher | None, seed: int, onnx_path: Path) -> dict:
    """The distill stage's student trained on `data` (with the teacher when given), exported;
    its test skill, MACs, bytes and batch-1 latency."""
    distill, size = params.distill, int(data.preprocessing["image"]["size"])
    config = FitConfig(
        distill.epochs, distill.batch_size, distill.lr, seed, distill.image_dropout, params.data.photo_share,
        Augmentation(**params.augment.model_dump()), resolve_device(params.common.device), distill.balance_classes,
    )
    torch.manual_seed(seed)
    student = models.build_student(distill.student, distill.width, params.data.window_hours, data.preprocessing["sensors"]["std"][0])
    fit(student, data, config, f"student {size} px{' with teacher' if teacher else ''}, seed {seed}", teacher=teacher)
    models.export_onnx(student, onnx_path, size, params.data.window_hours, N_FEATURES)
    macs, _ = count_macs_params(student, models.example_inputs(size, params.data.window_hours, N_FEATURES))
    latency = inference.latency_ms(onnx_path, model_inputs(data, data.split("test")[:1]), params.evaluate.latency_runs, params.evaluate.warmup_runs)
    return {"input_size": size, **test_skill(onnx_path, data, params), "student_macs": macs, "student_bytes": onnx_path.stat().st_size, "student_latency_ms_p50": latency["latency_ms_p50"]}


def attention_cost(attention_onnx: Path, params: Params, frame_size: int, runs_share: float) -> dict:
    """The attention net's MACs (counted on its architecture at the frame size), bytes and batch-1
    latency per run, and per frame: times the share of frames it runs on (a station reuses its
    box within attend.refresh_hours: the attend stage's metrics count the runs)."""
    macs, _ = count_macs_params(attention.SkyMaskNet(params.attend.width), (torch.zeros(1, 3, frame_size, frame_size),))
    feed = {crop.ATTENTION_INPUT: np.random.default_rng(params.common.seed).random((1, 3, frame_size, frame_size), dtype=np.float32)}
    latency = inference.latency_ms(attention_onnx, feed, params.evaluate.latency_runs, params.evaluate.warmup_runs)["latency_ms_p50"]
    return {"macs": macs, "bytes": attention_onnx.stat().st_size, "latency_ms_p50": latency, "runs_share": runs_share, "macs_per_frame": macs * runs_share, "latency_ms_per_frame": latency * runs_share}


def runs_share(attend_metrics: Path) -> float:
    """Share of frames the attend stage ran attention on (1.0 for metrics older than refresh_hours)."""
    return float(json.loads(attend_metrics.read_text()).get("attention_runs", {}).get("share", 1.0))


def with_attention(row: dict, cost: dict | None) -> dict:
    """A student row with what the station runs per frame in all: the student, plus attention behind a crop."""
    extra = cost or {"macs_per_frame": 0, "bytes": 0, "latency_ms_per_frame": 0.0}
    return {**row, "attention_macs": extra["macs_per_frame"], "macs": row["student_macs"] + extra["macs_per_frame"], "bytes": row["student_bytes"] + extra["bytes"], "latency_ms_p50": row["student_latency_ms_p50"] + extra["latency_ms_per_frame"]}


def targets(rows: list[dict]) -> dict:
    """The issue's two targets, each with the rows it compares (None: no crop row qualifies)."""
    full = next(r for r in rows if r["view"] == "full_frame" and r["teacher"])
    crops = [r for r in rows if r["view"] == "attention_crop" and r["teacher"]]
    within = [r for r in crops if r["macs"] <= full["macs"]]
    equal_macs = max(within, key=lambda r: r["macs"]) if within else None
    as_good = [r for r in crops if r["sky_accuracy"] >= full["sky_accuracy"]]
    equal_accuracy = min(as_good, key=lambda r: r["macs"]) if as_good else None
    gain = None if equal_macs is None else equal_macs["sky_accuracy"] - full["sky_accuracy"]
    cut = None if equal_accuracy is None else full["macs"] / equal_accuracy["macs"]
    return {
        "equal_macs": {"full_macs": full["macs"], "crop_input_size": equal_macs and equal_macs["input_size"], "crop_macs": equal_macs and equal_macs["macs"], "sky_accuracy_gain": gain, "target": ACCURACY_TARGET, "met": gain is not None and gain >= ACCURACY_TARGET},
        "equal_accuracy": {"full_sky_accuracy": full["sky_accuracy"], "crop_input_size": equal_accuracy and equal_accuracy["input_size"], "macs_cut": cut, "target": MACS_TARGET, "met": cut is not None and cut >= MACS_TARGET},
    }


def composite_views(composite_set: composites.Composites, attention_onnx: Path, params: Params) -> tuple[np.ndarray, dict]:
    """The attention boxes of the composite frames (through attention.onnx, as a station cuts
    them, each frame on its own) and how well its sky mask finds the true sky there (IoU)."""
    session = inference.session(attention_onnx, params.common.threads)
    probability = crop.sky_probability(session, composite_set.data.images)
    iou = attention.iou(probability > params.attend.threshold, composite_set.masks)
    boxes = crop.boxes_of(probability, crop.box_settings(params.attend))
    return boxes, {"frames": len(boxes), "photos_skipped": composite_set.skipped, "mask_iou": attention.summary(iou), "sky_kept_by_box": attention.summary(attention.sky_kept(boxes, composite_set.masks))}


def composite_accuracy(onnx_path: Path, composite_data: Ingested, params: Params, drop_images: bool = False) -> float:
    """Sky accuracy of an exported model on composite frames (every composite is a labelled
    photo); `drop_images`: on the same samples with the camera down, what the sensor window alone
    gives (a host frame's weather agrees with its class, so the window carries some of it)."""
    rows = np.arange(len(composite_data.samples))
    outputs = inference.predict(inference.session(onnx_path, params.common.threads), model_inputs(composite_data, rows, drop_images))
    return float((outputs[OUTPUT_SKY_LOGITS].argmax(1) == composite_data.samples["sky_label"].to_numpy()).mean())


# What a shipped row averages over seeds (the rest, MACs and bytes, does not depend on the seed).
SEED_AVERAGED = ("sky_accuracy", "composite_sky_accuracy", "composite_sky_accuracy_no_image", "rain_skill", "temp_skill", "student_latency_ms_p50", "latency_ms_p50")


def seed_mean(rows: list[dict]) -> dict:
    """One configuration's row over its seeds: the measured values averaged, with the sky
    accuracy's standard deviation over seeds beside it (0 with one seed)."""
    out = {key: value for key, value in rows[0].items() if key not in SEED_AVERAGED and key != "seed"}
    out.update({key: float(np.mean([row[key] for row in rows])) for key in SEED_AVERAGED if key in rows[0]})
    accuracy = [row["sky_accuracy"] for row in rows]
    return {**out, "sky_accuracy_sd": float(np.std(accuracy, ddof=1)) if len(accuracy) > 1 else 0.0, "seeds": len(rows)}


def paired_gains(per_seed: list[dict], crop_size: int, frame_size: int, metric: str) -> list[float]:
    """Per seed: the distilled crop student at crop_size minus the distilled full-frame student."""
    by = {(r["view"], r["teacher"], r["input_size"], r["seed"]): r for r in per_seed}
    seeds = sorted({r["seed"] for r in per_seed})
    return [by["attention_crop", True, crop_size, seed][metric] - by["full_frame", True, frame_size, seed][metric] for seed in seeds]


def costs(params: Params, ingest_dir: Path, attend_dir: Path, embed_dir: Path, crop_sizes: list[int], seeds: list[int], photo_dir: Path | None = None) -> dict:
    """Full frame vs attention crop as shipped (distilled), at the ingest's size and at
    `crop_sizes`, each trained from every seed of `seeds` and averaged over them; with
    `photo_dir` (labelled real sky photos) each student is also scored on composite frames,
    the photos as the sky of the test split's station frames."""
    torch.set_num_threads(params.common.threads)
    data = load_ingested(ingest_dir)
    attend_files = paths.Attend(attend_dir)
    boxes = np.load(attend_files.boxes)
    size = int(data.images.shape[1])
    teacher = Teacher.load(paths.Embed(embed_dir).teacher_module, params.distill)
    cost = attention_cost(attend_files.onnx, params, size, runs_share(attend_files.metrics))
    composite_set = composites.build(data, photo_dir, "test", seeds[0]) if photo_dir else None
    composite_report = None
    if composite_set:
        composite_boxes, composite_report = composite_views(composite_set, attend_files.onnx, params)
        composite_report["teacher_sky_accuracy"] = float(sky_hits(teacher.model, composite_set.data, np.arange(len(composite_set.data.samples))).mean())
    runs = [("full_frame", data, teacher), ("full_frame", data, None)]
    runs += [("attention_crop", cropped_at(data, boxes, size), teacher), ("attention_crop", cropped_at(data, boxes, size), None)]
    runs += [("attention_crop", cropped_at(data, boxes, s), teacher) for s in crop_sizes if s != size]
    per_seed = []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in seeds:
            for i, (view, view_data, view_teacher) in enumerate(runs):
                onnx_path = Path(scratch) / f"{seed}-{i}.onnx"
                row = shipped_student(view_data, params, view_teacher, seed, onnx_path)
                if composite_set:
                    seen = composite_set.data if view == "full_frame" else cropped_at(composite_set.data, composite_boxes, row["input_size"])
                    row["composite_sky_accuracy"] = composite_accuracy(onnx_path, seen, params)
                    row["composite_sky_accuracy_no_image"] = composite_accuracy(onnx_path, seen, params, drop_images=True)
                per_seed.append(with_attention({"view": view, "teacher": view_teacher is not None, "seed": seed, **row}, cost if view == "attention_crop" else None))
    configurations = list(dict.fromkeys((r["view"], r["teacher"], r["input_size"]) for r in per_seed))
    rows = [seed_mean([r for r in per_seed if (r["view"], r["teacher"], r["input_size"]) == key]) for key in configurations]
    at = {(r["view"], r["teacher"], r["input_size"]): r for r in rows}
    kd_gain = {view: at[view, True, size]["sky_accuracy"] - at[view, False, size]["sky_accuracy"] for view in VIEWS}
    result_targets = targets(rows)
    crop_size = result_targets["equal_macs"]["crop_input_size"]
    if crop_size is not None:  # the equal-MACs gain seed by seed: how far one seed's difference is from the mean
        result_targets["equal_macs"]["sky_accuracy_gain_by_seed"] = paired_gains(per_seed, crop_size, size, "sky_accuracy")
        if composite_set:
            result_targets["equal_macs"]["composite_sky_accuracy_gain_by_seed"] = paired_gains(per_seed, crop_size, size, "composite_sky_accuracy")
    return {"seeds": list(seeds), "frame_size": size, "attention": cost, "rows": rows, "per_seed": per_seed, "kd_gain_sky_accuracy": kd_gain, "targets": result_targets, "composites": composite_report}


COST_COLUMNS = [
    Column("view", align="left"),
    Column("teacher", format="d"),
    Column("input_size", "px", "d"),
    Column("sky_accuracy", "sky_acc", ".3f"),
    Column("sky_accuracy_sd", "sd", ".3f"),
    Column("composite_sky_accuracy", "composite_acc", ".3f"),
    Column("composite_sky_accuracy_no_image", "no_image", ".3f"),
    Column("rain_skill", format="+.3f"),
    Column("temp_skill", format="+.3f"),
    Column("student_macs", "student_MMACs", ".2f", scale=1e-6),
    Column("attention_macs", "attention_MMACs", ".3f", scale=1e-6),
    Column("macs", "total_MMACs", ".2f", scale=1e-6),
    Column("latency_ms_p50", "p50_ms", ".3f"),
    Column("bytes", "kB", ".1f", scale=1e-3),
]


def signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def by_seed(target: dict, key: str) -> str:
    return f" (by seed: {', '.join(signed(g) for g in target[key])})" if key in target else ""


def format_costs(result: dict) -> str:
    a, t = result["attention"], result["targets"]
    m, e = t["equal_macs"], t["equal_accuracy"]
    cut = "no crop size is as accurate" if e["macs_cut"] is None else f"crop at {e['crop_input_size']} px cuts MACs {e['macs_cut']:.3g}x"
    where = "no crop size fits within the full-frame student's MACs" if m["crop_input_size"] is None else f"crop at {m['crop_input_size']} px"
    return "\n".join([
        (
            f"as shipped (distilled from the whole-frame teacher), mean over seeds {result['seeds']} (sd: of sky_acc over seeds); attention net: {a['macs'] / 1e6:.2f} MMACs, {a['latency_ms_p50']:.3f} ms, {a['bytes'] / 1e3:.1f} kB at {result['frame_size']} px per run;"
            f" it ran on {a['runs_share']:.1%} of frames (attend.refresh_hours), so {a['macs_per_frame'] / 1e6:.2f} MMACs and {a['latency_ms_per_frame']:.3f} ms per frame (attention_MMACs, total_MMACs, p50_ms below)"
        ),
        text_table(result["rows"], COST_COLUMNS, rule=True),
        "KD gain (sky accuracy, teacher - none): " + ", ".join(f"{v} {g:+.3f}" for v, g in result["kd_gain_sky_accuracy"].items()),
        f"equal MACs: {where}: sky accuracy gain {signed(m['sky_accuracy_gain'])}{by_seed(m, 'sky_accuracy_gain_by_seed')}, target >= {m['target']}: {'met' if m['met'] else 'NOT met'}"
        + (f"; on composite frames {signed(float(np.mean(m['composite_sky_accuracy_gain_by_seed'])))}{by_seed(m, 'composite_sky_accuracy_gain_by_seed')}" if "composite_sky_accuracy_gain_by_seed" in m else ""),
        f"equal accuracy: {cut}, target >= {e['target']}x: {'met' if e['met'] else 'NOT met'}",
        *format_composites(result["composites"]),
    ])


def format_composites(report: dict | None) -> list[str]:
    if report is None:
        return ["composite frames: not measured (--photos DIR: labelled real sky photos, e.g. ../shared/datasets/swimcat)"]
    iou, kept = report["mask_iou"], report["sky_kept_by_box"]
    return [
        f"composite frames (real photos as the sky of test-split station frames; composite_acc above, no_image: the same samples with the camera down): {report['frames']} frames, photos skipped {report['photos_skipped'] or 'none'}",
        f"  teacher (whole frame) sky accuracy {report['teacher_sky_accuracy']:.3f}; attention mask IoU mean {iou['mean']:.3f} (min {iou['min']:.3f}); boxes keep {kept['mean']:.1%} of the true sky on average",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingest", type=Path, default=Path("data/ingest"))
    parser.add_argument("--attend", type=Path, default=Path("data/attend"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--seeds", type=int, default=3, help="students per view, from common.seed on: one seed's difference is mostly noise")
    parser.add_argument("--out", type=Path, default=Path("reports/bench_attention.json"))
    parser.add_argument("--costs", action="store_true", help="also the distilled students as shipped, their MACs, latency and bytes, and the targets (needs --embed)")
    parser.add_argument("--embed", type=Path, default=Path("data/embed"))
    parser.add_argument("--crop-sizes", type=int, nargs="+", default=[48, 32], help="smaller crop inputs, for the equal-MACs and equal-accuracy comparisons")
    parser.add_argument("--photos", type=Path, default=Path("../shared/datasets/swimcat"), help="labelled real sky photos for composite frames (skipped when the folder is absent)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    result = {"machine": inference.machine(), **compare(params, args.ingest, args.attend, args.seeds)}
    print(format_result(result))
    if args.costs:
        photos = args.photos if args.photos and args.photos.is_dir() else None
        result["costs"] = costs(params, args.ingest, args.attend, args.embed, args.crop_sizes, result["seeds"], photos)
        print(format_costs(result["costs"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

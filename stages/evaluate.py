"""evaluate: every model variant and the baselines on the same frozen test split.

Variants: teacher, student_alone (no distillation), student, pruned, quantized and shipped (what
the quantize stage chose). `quantized` is the best int8 candidate of the quantize stage (the
fastest within its accuracy budget, else the most accurate: data/quantize/report.json "int8");
every other candidate keeps its val scores and latency in that report, and `make bench` scores
them all on the test split side by side. Each gets size, batch-1 latency and the §3 scores.

Scores are the field estimate: test rows from capture days training never saw (later seasons of
every station, held-out stations, held-out photo days). Beside it, per group
(skyedge.evaluation.scores.groups_of): photos of seen days (a class with one capture day), the
later season of training stations, each held-out station, and the fleet's newest two weeks when a
fleet store is an ingest source. Writes under data/evaluate/:
metrics.json (the shipped model's scores with its groups + one summary row per variant; `dvc
metrics`), variants.csv (`dvc plots`), report.md and PNG plots.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from skyedge.compress import selection
from skyedge.core import crop, files, inference, paths
from skyedge.core.config import Attend, Common, Evaluate, load_params
from skyedge.core.contract import HORIZONS
from skyedge.core.tables import Column, text_table
from skyedge.data.dataset import Ingested, load_ingested, model_inputs, student_view, teacher_view
from skyedge.evaluation import plots, scores


def variant_paths(embed_dir: Path, distill_dir: Path, prune_dir: Path, quantize_dir: Path) -> dict[str, Path]:
    """The ONNX file of every variant evaluate scores, by the name its row has."""
    distilled, pruned, quantized = paths.Distill(distill_dir), paths.Prune(prune_dir), paths.Quantize(quantize_dir)
    shared = selection.weight_shared(json.loads(quantized.report.read_text())["candidates"])
    return {
        "teacher": paths.Embed(embed_dir).teacher_onnx,
        "student_alone": distilled.onnx("student_alone"),
        "student": distilled.onnx("student"),
        "pruned": pruned.onnx("pruned"),
        "quantized": quantized.int8,
        **({"shared": quantized.candidate(shared["name"])} if shared else {}),  # weight sharing (Deep Compression) of `pruned`
        "shipped": quantized.shipped,
    }


def attention_cost(attention_onnx: Path, data: Ingested, rows, params: Evaluate) -> dict:
    """What the attention graph a station runs before the model costs: bytes and batch-1 latency
    on one test frame (the whole frame, as the station feeds it)."""
    frame = data.teacher_images[data.samples["image_idx"].to_numpy()[rows]][:1]
    return {"size_bytes": attention_onnx.stat().st_size, **inference.latency_ms(attention_onnx, crop.attention_feed(frame), params.latency_runs, params.warmup_runs)}


def run(params: Evaluate, common: Common, ingest_dir: Path, variants: dict[str, Path], out_dir: Path, attend: Attend, attend_dir: Path) -> dict:
    # Every variant but the teacher sees what the student saw (attention crops with
    # attend.student_input = crop: the boxes the station's attention graph cuts); the teacher
    # sees whole frames.
    data = student_view(load_ingested(ingest_dir), attend.student_input, paths.Attend(attend_dir).boxes)
    test = data.split("test")
    samples = data.samples.iloc[test].reset_index(drop=True)
    views = {"student": data, "teacher": teacher_view(data)}
    photos = test[data.samples["image_idx"].to_numpy()[test] >= 0]
    attention = attention_cost(paths.Attend(attend_dir).onnx, data, photos, params) if attend.student_input == "crop" else None
    climatology = data.preprocessing["climatology"]
    fleet_sources = fleet_source_names(ingest_dir)
    rows, full = [], {}
    for name, path in variants.items():
        view = views["teacher" if name == "teacher" else "student"]
        outputs = inference.predict(inference.session(path, common.threads), model_inputs(view, test))
        one = model_inputs(view, test[:1])
        full[name] = scores.grouped_score(outputs, samples, climatology, params.bootstrap, common.seed, fleet_sources=fleet_sources)
        speed = inference.latency_ms(path, one, params.latency_runs, params.warmup_runs)
        # What a station waits for: attention, then the model (percentiles summed: p95/p99 an upper bound).
        if name == "shipped" and attention is not None:
            speed = {key: speed[key] + attention[key] for key in inference.LATENCY_KEYS}
        rows.append({"variant": name, "size_bytes": path.stat().st_size, **speed, **scores.summary_row(name, full[name])})
        if name == "shipped":
            shipped_outputs = outputs
    out_dir.mkdir(parents=True, exist_ok=True)
    out = paths.Evaluate(out_dir)
    shipped = full["shipped"]
    if "sky" in shipped:
        plots.confusion_matrix(shipped["sky"]["confusion"], "shipped model, test split", out.confusion_shipped)
        plots.confusion_matrix(full["teacher"]["sky"]["confusion"], "teacher, test split", out.confusion_teacher)
    plots.pareto(rows, out.pareto)
    stations = samples["has_sensors"].to_numpy() == 1
    plots.reliability(shipped_outputs["rain_prob"][stations], data.rain[test][stations], out.reliability)
    plots.skill_bars(shipped["horizons"], shipped["ci"], out.skill)
    files.write_rows(out.variants, rows)
    metrics = {**shipped, "student_input": attend.student_input, "variants": {row["variant"]: {k: v for k, v in row.items() if k != "variant"} for row in rows}}
    if attention is not None:  # the station runs attention.onnx before every model; shipped's latency includes it
        metrics["attention"] = attention
    files.write_json(out.metrics, metrics)
    files.write_json(out.summary, headline(next(row for row in rows if row["variant"] == "shipped")))
    out.report.write_text(markdown_report(rows, shipped))
    return metrics


def fleet_source_names(ingest_dir: Path) -> frozenset[str]:
    """The ingest sources that are the fleet's stores (their rows make the `fleet_newest` group)."""
    report = json.loads(paths.Ingest(ingest_dir).report.read_text())
    return frozenset(name for name, entry in report["sources"].items() if "fleet" in entry)


def headline(shipped: dict) -> dict:
    """The shipped model's few numbers DVC tracks as its metric (the rest stays in metrics.json),
    rounded so `dvc metrics show` and `dvc exp show` stay narrow."""
    keep = ["sky_accuracy", *(f"{kind}_h{h}" for kind in ("rain_bss_persistence", "temp_skill_persistence") for h in HORIZONS)]
    summary = {key.replace("_persistence", ""): None if shipped.get(key) is None else round(shipped[key], 4) for key in keep}
    return {**summary, "size_kB": round(shipped["size_bytes"] / 1000, 1), "latency_ms_p50": round(shipped["latency_ms_p50"], 4)}


def variant_columns(rows: list[dict]) -> list[Column]:
    """Size, latency, sky accuracy and skill per horizon: the columns of the variant table."""
    horizons = sorted({int(k.rsplit("h", 1)[1]) for row in rows for k in row if k.startswith("rain_bss_persistence_h")})
    return [
        Column("variant", align="left"),
        Column("size_bytes", "size_kB", ".1f", scale=1e-3),
        Column("latency_ms_p50", "p50_ms"),
        Column("latency_ms_p95", "p95_ms"),
        Column("sky_accuracy", "sky_acc"),
        *([Column("sky_accuracy_seen_days", "sky_acc_seen_days")] if any("sky_accuracy_seen_days" in row for row in rows) else []),
        *(Column(f"rain_bss_persistence_h{h}", f"rainBSS_h{h}") for h in horizons),
        *(Column(f"temp_skill_persistence_h{h}", f"tempSkill_h{h}") for h in horizons),
    ]


def variant_table(rows: list[dict]) -> str:
    """The variant table as aligned text (also what `skyedge report` prints)."""
    return text_table(rows, variant_columns(rows))


GROUP_COLUMNS = [
    Column("group", align="left"),
    Column("n_samples", "n", format="d"),
    Column("sky_accuracy", "sky_acc"),
    *(Column(f"rain_bss_persistence_h{h}", f"rainBSS_h{h}") for h in HORIZONS),
    *(Column(f"temp_skill_persistence_h{h}", f"tempSkill_h{h}") for h in HORIZONS),
]


def group_rows(metrics: dict) -> list[dict]:
    """One row per group of the test split (seen vs unseen side by side)."""
    return [{"group": name, "n_samples": group["n_samples"], **scores.summary_row(name, group)} for name, group in metrics.get("groups", {}).items()]


def markdown_report(rows: list[dict], shipped: dict) -> str:
    return "\n".join(
        [
            "# SkyEdge evaluation (test split)",
            "",
            "Every variant on the field estimate: test rows from days training never saw.",
            "",
            "```",
            variant_table(rows),
            "```",
            "",
            "The shipped model per group: unseen days, photos of days training saw, the later season of",
            "training stations, each held-out station.",
            "",
            "```",
            text_table(group_rows(shipped), GROUP_COLUMNS),
            "```",
            "",
            "Skills are against persistence (1 = perfect, 0 = no better than persistence).",
            "",
            "![pareto](pareto.png)",
            "![confusion](confusion_shipped.png)",
            "![reliability](reliability.png)",
            "![skill](skill.png)",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("ingest", "attend", "embed", "distill", "prune", "quantize", "out"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    variants = variant_paths(args.embed, args.distill, args.prune, args.quantize)
    run(params.evaluate, params.common, args.ingest, variants, args.out, params.attend, args.attend)
    print(variant_table(files.read_rows(paths.Evaluate(args.out).variants)))


if __name__ == "__main__":
    main()

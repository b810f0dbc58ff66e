"""evaluate: every model variant and the baselines on the same frozen test split.

Variants: teacher, student_alone (no distillation), student, pruned, quantized and shipped (what
the quantize stage chose). `quantized` is the best int8 candidate of the quantize stage (the
fastest within its accuracy budget, else the most accurate: data/quantize/report.json "int8");
every other candidate keeps its val scores and latency in that report, and `make bench` scores
them all on the test split side by side. Each gets size, batch-1 latency and the §3 scores.
Writes under data/evaluate/: metrics.json (the shipped model's full scores + one summary row per
variant; `dvc metrics`), variants.csv (`dvc plots`), report.md and PNG plots.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from skyedge.core import files, inference
from skyedge.core.config import Common, Evaluate, load_params
from skyedge.data.dataset import load_ingested, model_inputs
from skyedge.evaluation import plots, scores

VARIANT_COLUMNS = ["variant", "size_bytes", "latency_ms_p50", "latency_ms_p95", "sky_accuracy", "sky_macro_f1"]


def variant_paths(embed_dir: Path, distill_dir: Path, prune_dir: Path, quantize_dir: Path) -> dict[str, Path]:
    return {
        "teacher": embed_dir / "teacher.onnx",
        "student_alone": distill_dir / "student_alone.onnx",
        "student": distill_dir / "student.onnx",
        "pruned": prune_dir / "pruned.onnx",
        "quantized": quantize_dir / "model_int8.onnx",
        "shipped": quantize_dir / "shipped.onnx",
    }


def run(params: Evaluate, common: Common, ingest_dir: Path, paths: dict[str, Path], out_dir: Path) -> dict:
    data = load_ingested(ingest_dir)
    test = data.split("test")
    samples = data.samples.iloc[test].reset_index(drop=True)
    inputs = model_inputs(data, test)
    one = model_inputs(data, test[:1])
    climatology = data.preprocessing["climatology"]
    rows, full = [], {}
    for name, path in paths.items():
        outputs = inference.predict(inference.session(path, common.threads), inputs)
        full[name] = scores.score(outputs, samples, climatology, params.bootstrap, common.seed)
        speed = inference.latency_ms(path, one, params.latency_runs, params.warmup_runs)
        rows.append({"variant": name, "size_bytes": path.stat().st_size, **speed, **scores.summary_row(name, full[name])})
        if name == "shipped":
            shipped_outputs = outputs
    out_dir.mkdir(parents=True, exist_ok=True)
    shipped = full["shipped"]
    if "sky" in shipped:
        plots.confusion_matrix(shipped["sky"]["confusion"], "shipped model, test split", out_dir / "confusion_shipped.png")
        plots.confusion_matrix(full["teacher"]["sky"]["confusion"], "teacher, test split", out_dir / "confusion_teacher.png")
    plots.pareto(rows, out_dir / "pareto.png")
    stations = samples["has_sensors"].to_numpy() == 1
    plots.reliability(shipped_outputs["rain_prob"][stations], data.rain[test][stations], out_dir / "reliability.png")
    plots.skill_bars(shipped["horizons"], shipped["ci"], out_dir / "skill.png")
    files.write_rows(out_dir / "variants.csv", rows)
    metrics = {**shipped, "variants": {row["variant"]: {k: v for k, v in row.items() if k != "variant"} for row in rows}}
    files.write_json(out_dir / "metrics.json", metrics)
    (out_dir / "report.md").write_text(markdown_report(rows, shipped))
    return metrics


def variant_table(rows: list[dict]) -> str:
    """The variant table as aligned text (also what `skyedge report` prints)."""
    horizons = sorted({int(k.rsplit("h", 1)[1]) for row in rows for k in row if k.startswith("rain_bss_persistence_h")})
    header = ["variant", "size_kB", "p50_ms", "p95_ms", "sky_acc"] + [f"rainBSS_h{h}" for h in horizons] + [f"tempSkill_h{h}" for h in horizons]
    lines = [header]
    for row in rows:
        cells = [row["variant"], f"{row['size_bytes'] / 1000:.1f}", f"{row['latency_ms_p50']:.3f}", f"{row['latency_ms_p95']:.3f}", _fmt(row.get("sky_accuracy"))]
        cells += [_fmt(row.get(f"rain_bss_persistence_h{h}")) for h in horizons]
        cells += [_fmt(row.get(f"temp_skill_persistence_h{h}")) for h in horizons]
        lines.append(cells)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(c).rjust(w) for c, w in zip(line, widths)) for line in lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def markdown_report(rows: list[dict], shipped: dict) -> str:
    return "\n".join(
        [
            "# SkyEdge evaluation (test split)",
            "",
            "```",
            variant_table(rows),
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
    for name in ("ingest", "embed", "distill", "prune", "quantize"):
        parser.add_argument(f"--{name}", type=Path, default=Path(f"data/{name}"))
    parser.add_argument("--out", type=Path, default=Path("data/evaluate"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    paths = variant_paths(args.embed, args.distill, args.prune, args.quantize)
    run(params.evaluate, params.common, args.ingest, paths, args.out)
    print(variant_table(files.read_rows(args.out / "variants.csv")))


if __name__ == "__main__":
    main()

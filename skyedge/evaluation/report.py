"""The HTML report of `skyedge evaluate`: one self-contained file, plots embedded as base64 PNGs.

Summary tables (model, data, sky, per-horizon scores with baselines and 95% day-bootstrap
intervals, skipped counts, runtime), the confusion matrix, the rain reliability diagram and the
per-horizon skill bars, drawn by `skyedge.evaluation.plots`.
"""

from __future__ import annotations

import base64
import html
import tempfile
from pathlib import Path

from skyedge.core import inference
from skyedge.core.contract import HORIZONS, SKY_CLASSES
from skyedge.evaluation.packaged import Evaluation, summary_table

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.bad { color: #b00; } .good { color: #070; } pre { background: #f7f7f7; padding: 0.6em; }
"""


def write_report(result: Evaluation, path: Path, title: str = "SkyEdge evaluation") -> Path:
    """Write the report to `path` (a single HTML file needing nothing beside it)."""
    from skyedge.evaluation import plots  # matplotlib only when a report is asked for

    metrics = result.metrics
    figures: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        if "sky" in metrics:
            figures.append(("Sky class confusion (rows: true, columns: predicted)", _png(plots.confusion_matrix(metrics["sky"]["confusion"], "sky class", tmp_dir / "confusion.png"))))
        stations = result.scored_stations
        if stations.any() and metrics["horizons"]:
            rain_obs = result.dataset.samples[[f"rain_h{h}" for h in HORIZONS]].to_numpy(float)
            path_png = plots.reliability(result.outputs["rain_prob"][stations], rain_obs[stations], tmp_dir / "reliability.png")
            figures.append(("Reliability of rain_h: observed rain frequency per forecast-probability bin", _png(path_png)))
            figures.append(("Skill vs persistence per horizon, with 95% day-bootstrap intervals", _png(plots.skill_bars(metrics["horizons"], metrics["ci"], tmp_dir / "skill.png"))))
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Summary</h2>",
        f"<pre>{html.escape(summary_table(metrics))}</pre>",
        _model_table(metrics),
        _sky_table(metrics),
        _horizon_table(metrics),
        _dict_table("Skipped samples (by reason)", metrics["skipped"]),
        _dict_table("Input quarantined by ingest rule", metrics["data"]["quarantined_by_rule"]) if metrics["data"]["quarantined_by_rule"] else "",
        _runtime_table(metrics.get("runtime")),
        "<h2>Plots</h2>",
        *(f"<h3>{html.escape(caption)}</h3><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>" for caption, data in figures),
        "<p>Skill is 1 − score/score<sub>reference</sub>: 1 is perfect, 0 is no better than the reference, "
        "negative is worse. Persistence forecasts rain now and temperature now; climatology is the training "
        "rain base rate and hour-of-day mean temperature recorded in the manifest. Intervals resample whole days.</p>",
        "</body></html>",
    ]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(p for p in parts if p), encoding="utf-8")
    return path


def _png(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"
    return html.escape(str(value))


def _ci(metrics: dict, key: str) -> str:
    interval = metrics["ci"].get(key)
    return "n/a" if not interval else f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def _skill(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"<span class='{'good' if value > 0 else 'bad'}'>{value:.3f}</span>"


def _dict_table(caption: str, values: dict) -> str:
    rows = "".join(f"<tr><td class='l'>{html.escape(str(k))}</td><td>{_fmt(v)}</td></tr>" for k, v in values.items())
    return f"<h2>{html.escape(caption)}</h2><table>{rows}</table>"


def _model_table(metrics: dict) -> str:
    model, data = metrics["model"], metrics["data"]
    values = {
        "model": model.get("path"),
        "name / version": f"{model.get('name')} / {model.get('version')}",
        "sha256": model["sha256"],
        "size (bytes)": model["size_bytes"],
        "matches manifest": model.get("matches_manifest", "n/a"),
        "received / accepted / quarantined": f"{data['received']} / {data['accepted']} / {data['quarantined']}",
        "station samples / photo-only samples / labelled photos": f"{data['station_samples']} / {data['photo_only_samples']} / {data['labelled_photos']}",
        "stations": ", ".join(data["stations"]) or "none",
    }
    return _dict_table("Model and data", values)


def _sky_table(metrics: dict) -> str:
    sky = metrics.get("sky")
    if not sky:
        return "<h2>Sky class</h2><p>No labelled photos: no sky scores.</p>"
    recall = "".join(f"<tr><td class='l'>{c}</td><td>{_fmt(sky['per_class_recall'].get(c))}</td><td>{sum(sky['confusion'][i])}</td></tr>" for i, c in enumerate(SKY_CLASSES))
    return (
        "<h2>Sky class</h2>"
        f"<table><tr><th>n</th><th>accuracy</th><th>95% CI</th><th>macro F1</th></tr>"
        f"<tr><td>{sky['n']}</td><td>{sky['accuracy']:.3f}</td><td>{_ci(metrics, 'sky_accuracy')}</td><td>{sky['macro_f1']:.3f}</td></tr></table>"
        f"<table><tr><th class='l'>class</th><th>recall</th><th>support</th></tr>{recall}</table>"
    )


def _horizon_table(metrics: dict) -> str:
    if not metrics["horizons"]:
        return "<h2>Rain and temperature</h2><p>No station samples with current and future records: no horizon scores.</p>"
    head = (
        "<tr><th>h</th><th>n</th><th>rain rate</th><th>Brier</th><th>Brier pers.</th><th>Brier clim.</th>"
        "<th>BSS vs pers.</th><th>95% CI</th><th>BSS vs clim.</th><th>95% CI</th><th>CSI</th>"
        "<th>temp RMSE</th><th>temp MAE</th><th>RMSE pers.</th><th>RMSE clim.</th>"
        "<th>skill vs pers.</th><th>95% CI</th><th>skill vs clim.</th><th>95% CI</th></tr>"
    )
    rows = []
    for e in metrics["horizons"]:
        h = e["h"]
        rows.append(
            "<tr>"
            + "".join(f"<td>{_fmt(e[k])}</td>" for k in ("h", "n", "rain_base_rate", "rain_brier", "rain_brier_persistence", "rain_brier_climatology"))
            + f"<td>{_skill(e['rain_bss_persistence'])}</td><td>{_ci(metrics, f'rain_bss_persistence_h{h}')}</td>"
            + f"<td>{_skill(e['rain_bss_climatology'])}</td><td>{_ci(metrics, f'rain_bss_climatology_h{h}')}</td>"
            + "".join(f"<td>{_fmt(e[k])}</td>" for k in ("rain_csi", "temp_rmse", "temp_mae", "temp_rmse_persistence", "temp_rmse_climatology"))
            + f"<td>{_skill(e['temp_skill_persistence'])}</td><td>{_ci(metrics, f'temp_skill_persistence_h{h}')}</td>"
            + f"<td>{_skill(e['temp_skill_climatology'])}</td><td>{_ci(metrics, f'temp_skill_climatology_h{h}')}</td>"
            + "</tr>"
        )
    return f"<h2>Rain and temperature per horizon (model beside persistence and climatology)</h2><table>{head}{''.join(rows)}</table>"


def _runtime_table(run: dict | None) -> str:
    if not run:
        return "<h2>Runtime</h2><p>Not measured (--no-runtime).</p>"
    latency = run["latency_ms"]
    rows = "".join(
        f"<tr><td class='l'>{label}</td><td>{latency[key]['latency_ms_p50']:.3f}</td><td>{latency[key]['latency_ms_p95']:.3f}</td><td>{latency[key]['latency_ms_p99']:.3f}</td></tr>"
        for key, label in (("batch1_threads1", "batch 1, 1 thread"), ("batch1_threads_all", f"batch 1, {run['threads_all']} threads"))
    )
    return (
        "<h2>Runtime (child process, warm-up excluded)</h2>"
        f"<table><tr><th class='l'>latency (ms)</th><th>p50</th><th>p95</th><th>p99</th></tr>{rows}</table>"
        + _dict_table_inner(
            {
                "load time (ms)": f"{run['load_ms']:.1f}",
                f"throughput, batch {run['throughput_batch']} (samples/s)": f"{run['throughput_samples_per_s']:.0f}",
                "peak RSS (MB)": f"{run['peak_rss_bytes'] / 1e6:.1f}",
                "peak RSS before loading the model (MB)": f"{run['peak_rss_before_load_bytes'] / 1e6:.1f}",
                "measured on": inference.machine_text(run["machine"]),
            }
        )
    )


def _dict_table_inner(values: dict) -> str:
    return "<table>" + "".join(f"<tr><td class='l'>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in values.items()) + "</table>"


"""Plots people look at instead of tables: confusion matrix, Pareto fronts, reliability, skill."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend first: no display on servers)
import numpy as np  # noqa: E402

from skyedge.core.contract import HORIZONS, SKY_CLASSES  # noqa: E402


def confusion_matrix(confusion: list[list[int]], title: str, path: Path) -> Path:
    matrix = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    ax.imshow(matrix, cmap="Blues")
    short = [c.replace("_clouds", "").replace("_", " ") for c in SKY_CLASSES]
    ax.set_xticks(range(len(short)), short, rotation=35, ha="right")
    ax.set_yticks(range(len(short)), short)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > matrix.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return _save(fig, path)


def pareto(rows: list[dict], path: Path) -> Path:
    """Size, latency (and MACs, when the rows have them) against sky accuracy on unseen days,
    one point per variant (log x: they span 100x)."""
    panels = [("size_bytes", "model file size (bytes)"), ("latency_ms_p50", "latency p50, batch 1, 1 thread (ms)")]
    if any(row.get("macs") for row in rows):
        panels.insert(0, ("macs", "multiply-accumulates per forecast"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (key, label) in zip(axes, panels):
        for row in rows:
            if row.get("sky_accuracy") is None or row.get(key) is None:
                continue
            ax.scatter(row[key], row["sky_accuracy"], s=40)
            ax.annotate(row["variant"], (row[key], row["sky_accuracy"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("sky accuracy, test, unseen days")
        ax.grid(alpha=0.3)
    fig.suptitle("Size and speed vs accuracy")
    return _save(fig, path)


def reliability(rain_prob: np.ndarray, rain_obs: np.ndarray, path: Path, bins: int = 10) -> Path:
    """Observed rain frequency per forecast-probability bin, per horizon; the diagonal is perfect."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    edges = np.linspace(0, 1, bins + 1)
    for i, h in enumerate(HORIZONS):
        known = ~np.isnan(rain_obs[:, i])
        prob, obs = rain_prob[known, i], rain_obs[known, i]
        which = np.clip(np.digitize(prob, edges) - 1, 0, bins - 1)
        centres = [prob[which == b].mean() for b in range(bins) if (which == b).any()]
        freqs = [obs[which == b].mean() for b in range(bins) if (which == b).any()]
        ax.plot(centres, freqs, "o-", label=f"h={h}")
    ax.set_xlabel("forecast probability of rain")
    ax.set_ylabel("observed frequency")
    ax.set_title("Reliability of rain_h (shipped model, test)")
    ax.legend()
    return _save(fig, path)


def skill_bars(horizons: list[dict], ci: dict, path: Path) -> Path:
    """Rain Brier skill and temperature skill against persistence per horizon, with 95% intervals."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, title in ((axes[0], "rain_bss_persistence", "rain Brier skill vs persistence"), (axes[1], "temp_skill_persistence", "temperature skill vs persistence")):
        hs = [e["h"] for e in horizons]
        values = [e[key] if e[key] is not None else 0.0 for e in horizons]
        intervals = [ci.get(f"{key}_h{h}") or [v, v] for h, v in zip(hs, values)]
        low = [v - lo for v, (lo, _) in zip(values, intervals)]
        high = [hi - v for v, (_, hi) in zip(values, intervals)]
        ax.bar(hs, values, yerr=[np.maximum(low, 0), np.maximum(high, 0)], capsize=4, color="tab:blue")
        ax.axhline(0, color="k", lw=1)
        ax.set_xticks(hs, [f"h={h}" for h in hs])
        ax.set_title(title)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

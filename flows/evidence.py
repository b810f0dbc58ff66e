"""What an operator sees in the Prefect UI before and after saying yes: Markdown for artifacts and
the approval form, built from the files the stages wrote (no torch, no model runs).

The approval form names the version and its lineage, every gate criterion with its meaning,
direction, value, interval, limit and pass/fail, size and latency, and which heads ship
persistence. Plots travel inside the Markdown as PNG data URIs, so the UI shows them without a
file server (a file:// link is refused by browsers and overwritten by the next run).
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path

from skyedge.core import paths
from skyedge.core.config import Params
from skyedge.core.tables import Column, formatted_rows
from skyedge.evaluation import gate

VARIANT_COLUMNS = [
    Column("variant", align="left"),
    Column("size_bytes", "size (kB)", ".1f", scale=1e-3),
    Column("latency_ms_p50", "latency p50 (ms)"),
    Column("latency_ms_p95", "latency p95 (ms)"),
    Column("sky_accuracy", "sky accuracy, unseen days"),
    *(Column(f"rain_bss_persistence_h{h}", f"rain skill h{h}") for h in (1, 2, 3, 4)),
    *(Column(f"temp_skill_persistence_h{h}", f"temp skill h{h}") for h in (1, 2, 3, 4)),
]


def variant_rows(workspace: paths.Workspace) -> list[dict[str, str]]:
    """Every variant as rows of text (3 decimals, n/a where undefined): the evaluate-variants table."""
    variants = json.loads(workspace.evaluate.metrics.read_text())["variants"]
    return formatted_rows([{"variant": name, **row} for name, row in variants.items()], VARIANT_COLUMNS)


def inline_images(markdown: str, folder: Path) -> str:
    """Replace `![alt](file.png)` links to files in folder by data URIs the UI can render."""

    def embed(match: re.Match) -> str:
        path = folder / match.group(2)
        if not path.is_file():
            return match.group(0)
        return f"![{match.group(1)}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"

    return re.sub(r"!\[([^\]]*)\]\(([^)/:]+\.png)\)", embed, markdown)


def evaluation_report(workspace: paths.Workspace) -> str:
    """data/evaluate/report.md with its plots inside it."""
    return inline_images(workspace.evaluate.report.read_text(), workspace.evaluate.dir)


def _git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def approval_form(workspace: paths.Workspace, params: Params, verdict: gate.Verdict, version: int, pointer: dict | None) -> str:
    """The description of the resume form: everything needed to decide, on one page."""
    document = json.loads(workspace.package.manifest.read_text())
    ingest = json.loads(workspace.ingest.report.read_text())
    shipped = verdict.candidate["variants"]["shipped"]
    production = f"version {pointer['version']} ({pointer.get('version_label')})" if pointer else "none yet: this would be the first release"
    sources = ", ".join(f"`{name}` ({entry['accepted']} accepted, {entry['quarantined']} quarantined)" for name, entry in ingest["sources"].items())
    fallback = document.get("fallback") or {}
    persistence = [f"{head} h{h + 1}" for head, masks in fallback.items() for h, on in enumerate(masks) if on]
    failed = [c.name for c in verdict.failed]
    lines = [
        f"## Promote version {version} to `{params.flow.channel}`?",
        "",
        f"**Gate: {'every criterion passes' if not failed else 'FAILED: ' + ', '.join(failed)}.** Production now: {production}.",
        "",
        "| | |",
        "|---|---|",
        f"| version | {version} ({document.get('version_label')}), built {document.get('created_at')} |",
        f"| code | git commit `{_git_commit(workspace.root)}`, profile `{params.common.profile}` |",
        f"| data | {sources} |",
        f"| model | `{document['quantization']['shipped']}`: {shipped['size_bytes'] / 1000:.1f} kB, latency p50 {shipped['latency_ms_p50']:.3f} ms / p95 {shipped['latency_ms_p95']:.3f} ms (batch 1, 1 thread) |",
        f"| persistence ships for | {', '.join(persistence) or 'no head: every head beats persistence on validation'} |",
        "",
        "### Criteria",
        "Scores are on the test split's rows from days and stations training never saw. Skill: 1 is perfect, 0 is no better than",
        "persistence (forecasting the current reading), below 0 worse. `vs_production_*` is candidate minus production on the same",
        "rows, with a 95% interval that resamples whole days; it passes when the interval stays above the negative margin.",
        "",
        gate.criteria_markdown(verdict.criteria),
        "",
        "Switch **Approve** on to publish, fill in **Reviewer** (required: stored with the version), then **Submit**.",
        "Leaving Approve off rejects the candidate; the registry remembers it, and a later hand publish must give a reason.",
    ]
    return "\n".join(lines)


def decision_markdown(decision: dict, version: int, published: bool, message: str) -> str:
    """What was decided and what it did (written after the effect, never before)."""
    verb = "approved and published" if published else ("not decided in time" if decision.get("timed_out") else "rejected: nothing published")
    return f"**Version {version} {verb}** by `{decision['reviewer'] or '-'}` at {decision['decided_at']}.\n\n{decision['comment']}\n\n{message}"

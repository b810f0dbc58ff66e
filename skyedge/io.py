"""Small file helpers shared by the stages: JSON and CSV writing, whole-module checkpoints."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
from torch import nn


def write_json(path: Path, payload: dict | list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    return path


def write_rows(path: Path, rows: list[dict]) -> Path:
    """A list of same-keyed dicts as CSV (training curves for `dvc plots`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def save_module(model: nn.Module, path: Path) -> Path:
    """Save the WHOLE module (architecture + weights): pruned shapes no longer fit the class defaults."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, path)
    return path


def load_module(path: Path) -> nn.Module:
    """Load a module saved by `save_module` (trusted: written by our own pipeline)."""
    return torch.load(path, map_location="cpu", weights_only=False).eval()


def read_rows(path: Path) -> list[dict]:
    """Rows written by `write_rows`, with numbers parsed back (empty cells become None)."""
    with Path(path).open(newline="") as handle:
        return [{key: _number(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def _number(text: str) -> float | str | None:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text

"""Whole-module checkpoints: what a stage hands to the next after it changed the architecture.

A pruned or factorised network no longer fits its class's default shapes, so the whole module is
saved (Torch-Pruning's README warns that a bare state_dict of a pruned model does not load back).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def save_module(model: nn.Module, path: Path) -> Path:
    """Save the WHOLE module (architecture + weights): pruned shapes no longer fit the class defaults."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, path)
    return path


def load_module(path: Path) -> nn.Module:
    """Load a module saved by `save_module` (trusted: written by our own pipeline)."""
    return torch.load(path, map_location="cpu", weights_only=False).eval()

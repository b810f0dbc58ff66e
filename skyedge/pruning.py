"""Structured channel pruning with Torch-Pruning (DepGraph): fewer channels, really fewer MACs.

Only the image backbone is pruned, and never its last conv: the embedding width is shared with
the learned "no image" vector and the heads, so it stays fixed and the model keeps its contract.
"""

from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn

from skyedge.models import NowcastNet


def count_macs_params(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> tuple[int, int]:
    """Multiply-accumulates and parameters for one forward pass at the example batch size."""
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    return int(macs), int(params)


def structured_prune(model: NowcastNet, example_inputs: tuple[torch.Tensor, ...], ratio: float) -> NowcastNet:
    """Remove `ratio` of the prunable channels by L2 magnitude, in place; returns the model."""
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    backbone_modules = set(model.backbone.modules())
    ignored = [m for m in model.modules() if m not in backbone_modules and isinstance(m, (nn.Linear, nn.Conv2d))]
    ignored.append(convs[-1])
    pruner = tp.pruner.MagnitudePruner(
        model,
        example_inputs,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=ignored,
        unwrapped_parameters=[(model.no_image, 0)],
    )
    pruner.step()
    return model

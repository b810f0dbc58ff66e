"""Three ways to make the student smaller: `prune(model, method, example_inputs)` applies the
method a typed config names (skyedge.core.config: StructuredPruning, UnstructuredPruning, LowRank)
and returns its before/after report; the prune stage fine-tunes after it.

- structured channel pruning with Torch-Pruning (DepGraph): fewer channels, really fewer MACs and
  lower latency. Only the image backbone is pruned, and never its last conv: the embedding width
  is shared with the learned "no image" vector and the heads, so the model keeps its contract;
- unstructured global magnitude pruning (torch.nn.utils.prune): zeros in the weights. Dense ONNX
  Runtime kernels do not skip zeros, so the gain is in compressed bytes (gzip), not latency;
- low-rank factorization of Linear and 1x1 Conv2d layers by truncated SVD, the rank of each the
  smallest that keeps `energy` of its squared singular values, applied only where the two thin
  layers hold fewer parameters than the one they replace.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from skyedge.core.config import LowRank, StructuredPruning, UnstructuredPruning
from skyedge.train.models import NowcastNet


def count_macs_params(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> tuple[int, int]:
    """Multiply-accumulates of the Conv2d and Linear layers in one forward pass, and all parameters.

    Counted from each layer's real output shape during the pass: a static counter undercounts
    EfficientNet-Lite, whose "same" padding is computed at run time (Torch-Pruning's counter
    saw 2.4M MACs of Lite2's ~50M at 64 px).
    """
    macs = 0

    def count(layer: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(layer, nn.Conv2d):
            macs += output.numel() * (layer.in_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1]
        else:
            macs += output.numel() * layer.in_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    model.eval()
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return macs, sum(p.numel() for p in model.parameters())


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


def _weighted_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def apply_magnitude_masks(model: nn.Module, sparsity: float) -> list[nn.Module]:
    """Global unstructured L1 pruning of every Conv2d/Linear weight to `sparsity` (masks stay on,
    so fine-tuning keeps the zeros); returns the masked layers for `remove_masks`."""
    from torch.nn.utils import prune

    layers = _weighted_layers(model)
    prune.global_unstructured([(m, "weight") for m in layers], pruning_method=prune.L1Unstructured, amount=sparsity)
    return layers


def remove_masks(layers: list[nn.Module]) -> None:
    """Make the masks permanent: plain weights with zeros, a module that saves like any other."""
    from torch.nn.utils import prune

    for layer in layers:
        prune.remove(layer, "weight")


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero weights over all Conv2d/Linear weights."""
    weights = [m.weight.detach() for m in _weighted_layers(model)]
    total = sum(w.numel() for w in weights)
    return float(sum(int((w == 0).sum()) for w in weights) / total) if total else 0.0


def gzip_bytes(path) -> int:
    """Size of a file after gzip -9: what sparsity really saves on disk and over the wire."""
    import gzip
    from pathlib import Path

    return len(gzip.compress(Path(path).read_bytes(), compresslevel=9))


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest rank whose singular values keep `energy` of the squared Frobenius norm."""
    squared = singular_values.double() ** 2
    kept = torch.cumsum(squared, 0) / squared.sum()
    return int(torch.searchsorted(kept, torch.tensor(energy, dtype=kept.dtype)).item()) + 1


def _factorize(weight: torch.Tensor, energy: float) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """W [out, in] ~ B [out, r] @ A [r, in] by truncated SVD, when that has fewer parameters."""
    u, s, vh = torch.linalg.svd(weight.detach(), full_matrices=False)
    rank = energy_rank(s, energy)
    out_features, in_features = weight.shape
    if rank * (out_features + in_features) >= out_features * in_features:
        return None
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank], rank


def low_rank(model: nn.Module, energy: float, skip: tuple[nn.Module, ...] = ()) -> list[dict]:
    """Replace Linear and 1x1 Conv2d layers by two thinner ones (rank by energy), in place.

    Only where the factorization has fewer parameters than the layer; returns one record per
    layer considered: name, shape, rank, and whether it was replaced.
    """
    records = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if child in skip:
                continue
            full = f"{parent_name}.{name}" if parent_name else name
            if isinstance(child, nn.Linear):
                result = _factorize(child.weight, energy)
                record = {"layer": full, "shape": list(child.weight.shape), "rank": result[2] if result else None}
                if result:
                    b, a, rank = result
                    first = nn.Linear(child.in_features, rank, bias=False)
                    second = nn.Linear(rank, child.out_features, bias=child.bias is not None)
                    first.weight.data.copy_(a)
                    second.weight.data.copy_(b)
                    if child.bias is not None:
                        second.bias.data.copy_(child.bias.detach())
                    setattr(parent, name, nn.Sequential(first, second))
            elif isinstance(child, nn.Conv2d) and child.kernel_size == (1, 1) and child.groups == 1:
                result = _factorize(child.weight.flatten(1), energy)
                record = {"layer": full, "shape": list(child.weight.shape[:2]), "rank": result[2] if result else None}
                if result:
                    b, a, rank = result
                    first = nn.Conv2d(child.in_channels, rank, 1, child.stride, 0, bias=False)
                    second = nn.Conv2d(rank, child.out_channels, 1, 1, 0, bias=child.bias is not None)
                    first.weight.data.copy_(a[:, :, None, None])
                    second.weight.data.copy_(b[:, :, None, None])
                    if child.bias is not None:
                        second.bias.data.copy_(child.bias.detach())
                    setattr(parent, name, nn.Sequential(first, second))
            else:
                continue
            record["replaced"] = record["rank"] is not None
            records.append(record)
    return records


@dataclass
class Pruned:
    """What `prune` did to a model (in place): its before/after report and, for unstructured
    pruning, the layers that still carry masks until `finish()` (fine-tuning keeps the zeros)."""

    model: nn.Module
    report: dict
    masked: list[nn.Module] = field(default_factory=list)

    def finish(self) -> nn.Module:
        """Make masks permanent (plain weights with zeros) and record the final sparsity."""
        remove_masks(self.masked)
        self.masked = []
        self.report["weight_sparsity_after"] = weight_sparsity(self.model)
        return self.model


def prune(model: NowcastNet, method: StructuredPruning | UnstructuredPruning | LowRank, example_inputs: tuple[torch.Tensor, ...]) -> Pruned:
    """Apply one pruning method (a typed config from params `prune`) to model, in place."""
    macs, params = count_macs_params(model, example_inputs)
    report: dict = {"method": method.method, "config": method.model_dump(), "macs_before": macs, "params_before": params, "weight_sparsity_before": weight_sparsity(model)}
    masked: list[nn.Module] = []
    if method.method == "structured":
        structured_prune(model, example_inputs, method.ratio)
    elif method.method == "unstructured":
        masked = apply_magnitude_masks(model, method.sparsity) if method.sparsity > 0 else []
    else:
        report["layers"] = low_rank(model, method.energy)
    report["macs_after"], report["params_after"] = count_macs_params(model, example_inputs)
    report["weight_sparsity_after"] = weight_sparsity(model)
    return Pruned(model, report, masked)

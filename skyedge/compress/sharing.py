"""Weight sharing (Deep Compression's trained quantization, Han et al., ICLR 2016, §3), after pruning.

`share_weights(model, config, data, base, teacher)` clusters every Conv2d and Linear weight with
1-D k-means into at most 2**b shared values (b per layer: params `WeightSharing`), fine-tunes the
shared values (the centroids) with the usual losses and the teacher while each weight keeps its
cluster, and returns a plain module whose layers hold only those values. The exported ONNX is
ordinary fp32; the model container (skyedge.release.coding, `shared`) stores each such tensor as a
codebook of its float32 values, entropy-coded indices into it and the zeros' relative positions.

- What is clustered is what ships. BatchNorm is folded into its conv first
  (skyedge.compress.qat.fold_batchnorm), as the ONNX exporter would do anyway: folding afterwards
  would multiply each output channel's shared values by its own BN scale, 2**b values per channel
  instead of per layer. Biases (the folded BN shift included), `no_image` and the persistence
  weights are not shared: they are few, the paper leaves biases float too, and they keep training
  during the fine-tune.
- Pruned zeros are not clustered: a mask keeps them +0.0 (bit pattern 0, which the container codes
  as positions) through fine-tuning, whatever the centroids do.
- Linear initialisation: k centroids evenly spaced between the smallest and largest non-zero
  weight, then Lloyd iterations. The paper found it best of random, density-based and linear:
  the large weights are few but matter most, and only linear init keeps centroids near them.
- The centroid gradient. Each weight is parameterised as centroids[index] (masked) with
  torch.nn.utils.parametrize, so the backward of that gather is a scatter-add: dL/dc_k is the sum of
  dL/dW over the weights assigned to k, the paper's eq. 3, with no gradient hook to keep in step
  with the optimiser. The layers stay Conv2d/Linear, so skyedge.train.training.fit (losses, online
  distillation, best epoch on the grouped validation rows) trains them unchanged; `bake` then
  removes the parametrization and leaves plain weights.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from skyedge.compress.qat import fold_batchnorm
from skyedge.compress.quantization import Calibration
from skyedge.core.config import WeightSharing
from skyedge.core.features import N_FEATURES
from skyedge.data.dataset import Ingested
from skyedge.train import checkpoints
from skyedge.train.models import export_onnx
from skyedge.train.training import FitConfig, Teacher, fit

KMEANS_ITERATIONS = 100  # Lloyd iterations at most; 1-D clusterings of our layers settle in a few dozen


def shareable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The Conv2d and Linear layers by name: the weights that are shared."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def layer_bits(model: nn.Module, config: WeightSharing) -> dict[str, int]:
    """Bits of every shareable layer: the first override whose glob matches its name, else config.bits.
    A pattern that matches no layer is refused: a typo would silently change nothing."""
    names = list(shareable_layers(model))
    unused = [pattern for pattern in config.overrides if not fnmatch.filter(names, pattern)]
    if unused:
        raise ValueError(f"sharing.overrides: {unused} match no Conv2d/Linear layer; layers: {names}")
    return {name: next((bits for pattern, bits in config.overrides.items() if fnmatch.fnmatchcase(name, pattern)), config.bits) for name in names}


def linear_init(values: torch.Tensor, k: int) -> torch.Tensor:
    """k centroids evenly spaced between the smallest and largest value (float64)."""
    values = values.double()
    return torch.linspace(float(values.min()), float(values.max()), k, dtype=torch.float64)


def nearest(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of ascending centroids, for every value."""
    return torch.bucketize(values, (centroids[1:] + centroids[:-1]) / 2)


def kmeans_1d(values: torch.Tensor, centroids: torch.Tensor, iterations: int = KMEANS_ITERATIONS) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means of 1-D values from initial centroids: (ascending float64 centroids, each
    value's cluster). A cluster left empty keeps its centroid (it is simply never used)."""
    values, centroids = values.double(), centroids.double().sort().values
    assignment = nearest(values, centroids)
    for _ in range(iterations):
        counts = torch.bincount(assignment, minlength=len(centroids))
        sums = torch.zeros_like(centroids).index_add_(0, assignment, values)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids).sort().values
        moved = nearest(values, centroids)
        if torch.equal(moved, assignment):
            break
        assignment = moved
    return centroids, assignment


class SharedWeight(nn.Module):
    """A weight as shared values: centroids[index] where the weight was non-zero, +0.0 elsewhere.

    A parametrization (torch.nn.utils.parametrize): the layer's `weight` is this module's output,
    the original tensor is kept but unused. Only the centroids train; index and mask are fixed.
    """

    def __init__(self, centroids: torch.Tensor, index: torch.Tensor, mask: torch.Tensor):
        super().__init__()
        self.centroids = nn.Parameter(centroids.float())
        self.register_buffer("index", index.long())
        self.register_buffer("mask", mask.bool())

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        # torch.where, not a product with the mask: -c * 0 would be -0.0, a non-zero bit pattern.
        return torch.where(self.mask, self.centroids[self.index], torch.zeros((), dtype=original.dtype, device=original.device))


def share_layer(layer: nn.Module, bits: int) -> SharedWeight | None:
    """Cluster one layer's non-zero weights into at most 2**bits values and parameterise its
    weight by them, in place; None (layer untouched) when every weight is zero."""
    if hasattr(layer, "weight_mask") or parametrize.is_parametrized(layer, "weight"):
        raise ValueError("layer still carries a pruning mask or is already shared: make masks permanent (Pruned.finish) first")
    weight = layer.weight.detach()
    mask = weight != 0  # -0.0 too: it leaves as +0.0
    values = weight[mask]
    if not len(values):
        return None
    distinct = torch.unique(values)
    if len(distinct) <= 2**bits:  # already shared: the values are the centroids
        centroids, assignment = distinct.double(), torch.searchsorted(distinct, values)
    else:
        centroids, assignment = kmeans_1d(values, linear_init(values, 2**bits))
    index = torch.zeros(weight.shape, dtype=torch.long)
    index[mask] = assignment
    shared = SharedWeight(centroids, index, mask)
    parametrize.register_parametrization(layer, "weight", shared)
    layer.parametrizations.weight.original.requires_grad_(False)  # only the centroids move
    return shared


def cluster(model: nn.Module, bits: dict[str, int] | int) -> dict[str, int]:
    """Share the weights of the named layers (or of every Conv2d/Linear at one bit width), in
    place; returns the bits of each layer shared. Fold BatchNorm first (share_weights does)."""
    layers = shareable_layers(model)
    plan = dict.fromkeys(layers, bits) if isinstance(bits, int) else dict(bits)
    unknown = sorted(set(plan) - set(layers))
    if unknown:
        raise ValueError(f"no Conv2d/Linear layer named {unknown}; layers: {list(layers)}")
    for name, b in plan.items():
        share_layer(layers[name], b)
    return plan


def shared_weights(model: nn.Module) -> dict[str, SharedWeight]:
    """The parametrizations of the layers `cluster` shared, by layer name."""
    return {name: m.parametrizations.weight[0] for name, m in shareable_layers(model).items() if parametrize.is_parametrized(m, "weight")}


def fine_tune_centroids(model: nn.Module, data: Ingested, config: FitConfig, teacher: Teacher | None = None) -> list[dict[str, float]]:
    """Train a clustered model with the shared loop (losses, online distillation, best epoch on the
    grouped validation rows): autograd sums each centroid's gradient over its weights (module
    docstring); every other trainable parameter (biases, no_image, ...) trains as usual."""
    if not shared_weights(model):
        raise ValueError("model has no shared layers: cluster it first")
    return fit(model, data, config, "sharing fine-tune", teacher=teacher)


def bake(model: nn.Module) -> nn.Module:
    """Replace each shared weight by a plain float32 parameter holding its values (in place): a
    module that saves, loads and exports like any other."""
    for layer in shareable_layers(model).values():
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    return model


def summary(model: nn.Module, bits: dict[str, int]) -> list[dict]:
    """Per shared layer (clustered or baked): name, shape, bits, distinct non-zero values, zeros
    kept and sparsity."""
    layers = shareable_layers(model)
    rows = []
    for name, b in bits.items():
        weight = layers[name].weight.detach()
        zeros = int((weight == 0).sum())
        rows.append(
            {
                "layer": name,
                "shape": list(weight.shape),
                "bits": b,
                "distinct": len(torch.unique(weight[weight != 0])),
                "zeros": zeros,
                "sparsity": zeros / weight.numel(),
            }
        )
    return rows


@dataclass
class Shared:
    """A weight-shared model (plain module, BatchNorm folded), what each layer holds, and the fine-tune curve."""

    model: nn.Module
    layers: list[dict]
    history: list[dict[str, float]]


def share_weights(model: nn.Module, config: WeightSharing, data: Ingested, base: FitConfig, teacher: Teacher | None = None) -> Shared:
    """Fold BatchNorm, cluster, fine-tune the centroids for config.epochs at config.lr (batch size,
    seed, dropout, augmentation and device from base), bake. The input model is not changed."""
    shared = fold_batchnorm(copy.deepcopy(model).eval())
    bits = layer_bits(shared, config)
    cluster(shared, bits)
    history = []
    if config.epochs:
        history = fine_tune_centroids(shared, data, dataclasses.replace(base, epochs=config.epochs, lr=config.lr), teacher)
    bake(shared.eval())
    return Shared(shared, summary(shared, bits), history)


def train_and_export(module_path: Path, candidate: WeightSharing, calibration: Calibration, out_path: Path) -> dict:
    """The quantize candidate: share the float module's weights, fine-tune with the teacher, export
    fp32 ONNX to out_path (the module beside it as .pt); returns the per-layer summary."""
    torch.set_num_threads(calibration.threads)
    base = FitConfig(candidate.epochs, candidate.batch_size, candidate.lr, calibration.seed, photo_share=calibration.photo_share, augmentation=calibration.augmentation, device=calibration.device, balance_classes=calibration.balance_classes)
    shared = share_weights(checkpoints.load_module(module_path), candidate, calibration.data, base, calibration.teacher)
    size, window = calibration.data.preprocessing["image"]["size"], calibration.data.windows.shape[1]
    export_onnx(shared.model, out_path, size, window, N_FEATURES)
    checkpoints.save_module(shared.model, out_path.with_suffix(".pt"))
    record = {"layers": shared.layers, "epochs": candidate.epochs, "teacher": calibration.teacher is not None}
    if shared.history:
        record["val_sky_accuracy_after_sharing_fine_tune"] = shared.history[-1]["val_sky_accuracy"]
    return record

"""Weight sharing (Deep Compression's trained quantization): at most 2**b values per layer, zeros
kept, the centroid gradient, fine-tuning, and the exported ONNX in the entropy-coded container."""

import copy
import gzip
import hashlib
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from skyedge.compress import sharing
from skyedge.compress.pruning import apply_magnitude_masks, remove_masks
from skyedge.core.config import WeightSharing
from skyedge.core.contract import HORIZONS, SKY_CLASSES
from skyedge.core.features import N_FEATURES
from skyedge.data.dataset import Ingested
from skyedge.release import container
from skyedge.train import models
from skyedge.train.training import Batches, FitConfig, Teacher, fit, forward, quick_scores, supervised_loss

SIZE, WINDOW = 16, 2


def config(bits: int = 4, overrides: dict | None = None, epochs: int = 1, lr: float = 1e-3) -> WeightSharing:
    return WeightSharing(method="shared", bits=bits, overrides=overrides or {}, epochs=epochs, lr=lr, batch_size=64)


def student(width: int = 8, seed: int = 0) -> models.NowcastNet:
    torch.manual_seed(seed)
    model = models.build_student("tinycnn", width, WINDOW, 1.0)
    for norm in model.modules():  # BN statistics and scales that folding really changes
        if isinstance(norm, nn.BatchNorm2d):
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.data.uniform_(-1.5, 1.5)  # negative scales too: folded zeros become -0.0
    return model.eval()


def pruned_student(sparsity: float = 0.5) -> models.NowcastNet:
    model = student()
    remove_masks(apply_magnitude_masks(model, sparsity))
    return model


def tiny_data(n: int = 192, seed: int = 0) -> Ingested:
    """A learnable toy problem: the sky class is the photo's colour, rain follows the sensors."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(len(SKY_CLASSES), size=n)
    palette = rng.integers(0, 256, size=(len(SKY_CLASSES), 3))
    images = np.clip(palette[classes][:, None, None, :] + rng.normal(0, 20, (n, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    windows = rng.normal(size=(n, WINDOW, N_FEATURES)).astype(np.float32)
    split = np.where(np.arange(n) < 3 * n // 4, "train", "val")
    samples = pd.DataFrame({"split": split, "day_in_train": 0, "image_idx": np.arange(n), "sky_label": classes})
    for h in HORIZONS:
        samples[f"rain_h{h}"] = (windows[:, -1, 0] > 0).astype(np.float32)
        samples[f"temp_h{h}"] = windows[:, -1, 1] * 2
    spec = {"size": SIZE, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    return Ingested(samples=samples, windows=windows, images=images, preprocessing={"image": spec})


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared machine: one thread is faster than two fighting for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


FIT = FitConfig(epochs=1, batch_size=16, lr=1e-3, seed=0, image_dropout=0.0)


def distinct_nonzero(weight: torch.Tensor) -> int:
    return len(torch.unique(weight[weight != 0]))


def zero_bits(weight: torch.Tensor) -> torch.Tensor:
    """Where the float32 bit pattern is 0: +0.0 only (the container codes -0.0 as a value)."""
    return weight.detach().contiguous().view(torch.int32) == 0


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_clustering_leaves_at_most_2_to_the_b_values_per_layer_and_keeps_every_zero(bits):
    model = sharing.fold_batchnorm(pruned_student())
    zeros = {name: layer.weight.detach() == 0 for name, layer in sharing.shareable_layers(model).items()}
    few = {name: layer.weight.detach().clone() for name, layer in sharing.shareable_layers(model).items() if distinct_nonzero(layer.weight.detach()) <= 2**bits}
    assert sum(int(z.sum()) for z in zeros.values()) > 1000
    assert any((torch.signbit(layer.weight) & (layer.weight == 0)).any() for layer in sharing.shareable_layers(model).values())  # -0.0 from folding
    plan = sharing.cluster(model, bits)
    assert set(plan) == set(zeros) and len(plan) == 11  # 4 convs + 7 linears, no BatchNorm left to fold later
    for name, layer in sharing.shareable_layers(model).items():
        weight = layer.weight.detach()
        assert distinct_nonzero(weight) <= 2**bits, name
        assert torch.equal(zero_bits(weight), zeros[name]), name  # pruned zeros are +0.0, nothing else is zero
        assert weight.dtype == torch.float32
    for name, weight in few.items():  # a layer that already holds few enough values keeps them exactly
        assert torch.equal(sharing.shareable_layers(model)[name].weight.detach(), weight.where(weight != 0, 0.0)), name
    assert bool(few) == (bits == 8)


def test_a_layer_that_still_carries_a_pruning_mask_is_refused():
    model = student()
    apply_magnitude_masks(model, 0.5)
    with pytest.raises(ValueError, match="pruning mask"):
        sharing.cluster(model, 4)


def test_linear_init_spans_the_non_zero_weights_evenly_and_kmeans_improves_on_it():
    values = torch.cat([torch.randn(2000) * 0.05, torch.tensor([0.9, -0.7])])  # a few large weights
    start = sharing.linear_init(values, 8)
    assert start[0] == values.min().double() and start[-1] == values.max().double()
    assert torch.allclose(start.diff(), start.diff()[0].expand(7))
    centroids, assignment = sharing.kmeans_1d(values, start)
    error = lambda c, a: float(((values.double() - c[a]) ** 2).sum())
    assert error(centroids, assignment) < error(start, sharing.nearest(values.double(), start))
    assert torch.equal(assignment, sharing.nearest(values.double(), centroids))  # converged: each value at its nearest
    assert centroids[-1] > 0.5 and centroids[0] < -0.5  # linear init keeps centroids at the rare large weights


def test_the_centroid_gradient_is_the_sum_of_the_gradients_of_its_weights():
    layer = nn.Linear(4, 3, bias=False)
    layer.weight.data = torch.tensor([[0.10, 0.11, -0.50, 0.0], [0.90, 0.0, -0.52, 0.12], [0.88, 0.09, 0.0, -0.49]])
    plain = copy.deepcopy(layer)
    shared = sharing.share_layer(layer, bits=2)  # 4 centroids: ~0.1, ~0.9, ~-0.5 and one more
    x, upstream = torch.randn(5, 4), torch.randn(5, 3)
    (layer(x) * upstream).sum().backward()

    plain.weight.data = layer.weight.detach().clone()  # the same shared values, as free weights
    (plain(x) * upstream).sum().backward()
    expected = torch.zeros(len(shared.centroids)).index_add_(0, shared.index[shared.mask], plain.weight.grad[shared.mask])
    torch.testing.assert_close(shared.centroids.grad, expected)
    assert layer.parametrizations.weight.original.grad is None  # nothing but the centroids learns
    assert (layer.weight.detach() == 0).sum() == 3


def test_fine_tuning_the_centroids_alone_wins_back_most_of_the_loss_and_keeps_assignments_and_zeros():
    data = tiny_data()
    model = sharing.fold_batchnorm(pruned_student(0.3))
    fit(model, data, FitConfig(epochs=4, batch_size=16, lr=5e-3, seed=0, image_dropout=0.0), "pretrain")
    batch = Batches(data, data.split("train")).batch(data.split("train"))

    def train_loss() -> float:
        with torch.no_grad():
            return float(supervised_loss(forward(model.eval(), batch, None), batch, 1.0))

    trained = train_loss()
    sharing.cluster(model, 2)
    clustered = train_loss()
    before = {name: (s.index.clone(), s.mask.clone(), s.centroids.detach().clone()) for name, s in sharing.shared_weights(model).items()}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.endswith("centroids"))  # only the shared values may move
    history = sharing.fine_tune_centroids(model, data, FitConfig(epochs=3, batch_size=16, lr=1e-3, seed=0, image_dropout=0.0))
    assert len(history) == 3
    # Clustering to 4 values a layer costs loss; moving the 4 values alone wins most of it back.
    assert clustered > trained + 0.05
    assert train_loss() < clustered - 0.5 * (clustered - trained), (trained, clustered, train_loss())
    for name, s in sharing.shared_weights(model).items():
        index, mask, centroids = before[name]
        assert torch.equal(s.index, index) and torch.equal(s.mask, mask)
        assert not torch.equal(s.centroids.detach(), centroids), name
    sharing.bake(model)
    for name, layer in sharing.shareable_layers(model).items():
        assert not hasattr(layer, "parametrizations")
        weight = layer.weight.detach()
        assert distinct_nonzero(weight) <= 4 and torch.equal(zero_bits(weight), ~before[name][1]), name


def test_share_weights_folds_batchnorm_fine_tunes_with_the_teacher_and_reports_each_layer():
    data = tiny_data()
    original = pruned_student()
    kept = copy.deepcopy(original.state_dict())
    teacher = Teacher(student(width=8, seed=1), temperature=2.0, alpha=0.5, embed_weight=0.5)
    result = sharing.share_weights(original, config(bits=3, overrides={"backbone.features.0.*": 6, "sky_head": 5}), data, FIT, teacher)
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in kept.items())  # the input is not changed
    assert not any(isinstance(m, nn.BatchNorm2d) for m in result.model.modules())
    assert len(result.history) == 1
    rows = {row["layer"]: row for row in result.layers}
    assert rows["backbone.features.0.0"]["bits"] == 6 and rows["sky_head"]["bits"] == 5 and rows["fusion.0"]["bits"] == 3
    for name, layer in sharing.shareable_layers(result.model).items():
        weight = layer.weight.detach()
        row = rows[name]
        assert row["distinct"] == distinct_nonzero(weight) <= 2 ** row["bits"]
        assert row["zeros"] == int(zero_bits(weight).sum()) and row["sparsity"] == pytest.approx(row["zeros"] / weight.numel())
    assert sum(row["zeros"] for row in rows.values()) > 1000
    scores = quick_scores(result.model, Batches(data, data.split("val")), data.split("val"))
    assert np.isfinite(scores["val_loss"])


def test_an_override_that_matches_no_layer_is_refused_and_bits_stay_within_the_coding():
    with pytest.raises(ValueError, match=r"\['backbone\.nothing\*'\] match no Conv2d/Linear layer"):
        sharing.layer_bits(student(), config(overrides={"backbone.nothing*": 4}))
    with pytest.raises(ValueError, match="no Conv2d/Linear layer named"):
        sharing.cluster(student(), {"nope": 4})
    for bad in (1, 9):
        with pytest.raises(ValueError, match="bits"):
            config(bits=bad)


def test_the_params_block_has_no_defaults_and_no_unknown_keys():
    block = {"method": "shared", "bits": 4, "overrides": {"sky_head": 6}, "epochs": 2, "lr": 3e-4, "batch_size": 64}
    assert WeightSharing.model_validate(block).overrides == {"sky_head": 6}
    with pytest.raises(ValueError, match="epochs"):
        WeightSharing.model_validate({k: v for k, v in block.items() if k != "epochs"})
    with pytest.raises(ValueError, match="extra"):
        WeightSharing.model_validate({**block, "init": "linear"})


def export(model: nn.Module, path: Path) -> bytes:
    models.export_onnx(model, path, SIZE, WINDOW, N_FEATURES)
    return path.read_bytes()


def test_the_exported_onnx_of_a_shared_model_is_coded_shared_and_rebuilt_bit_for_bit(tmp_path):
    dense = pruned_student()
    dense_onnx = export(dense, tmp_path / "dense.onnx")
    result = sharing.share_weights(dense, config(bits=4, epochs=0), tiny_data(), FIT)
    model_onnx = export(result.model, tmp_path / "shared.onnx")

    # The ONNX initializers are the shared weights as they are: no folding changed them on export.
    initializers = {i.name: numpy_helper.to_array(i) for i in onnx.load_from_string(model_onnx).graph.initializer}
    weights = [w for w in initializers.values() if w.ndim in (2, 4) and w.size >= 64]
    assert len(weights) == 11
    assert all(len(np.unique(w[w != 0])) <= 16 for w in weights)

    blob = container.encode(model_onnx)
    assert container.decode(blob, hashlib.sha256(model_onnx).hexdigest()) == model_onnx
    coded = container.inspect(blob)
    assert len(coded) >= 6 and all(row["coding"].startswith("shared") and row["bits"] <= 4 for row in coded)
    gzipped = len(gzip.compress(dense_onnx, compresslevel=9))
    assert len(blob) < gzipped / 3, (len(blob), gzipped)

"""The training mix: photo oversampling, dihedral views, and view-averaged teacher targets."""

import dataclasses

import numpy as np
import pytest
import torch

from skyedge.train.training import N_VIEWS, dihedral, epoch_order, view_averaged_targets


def test_an_epoch_keeps_every_row_and_repeats_photos_up_to_their_share():
    rows = np.arange(1000)
    has_photo = np.zeros(1000, dtype=bool)
    has_photo[:10] = True  # 10 photos among 990 station hours, as on real sources
    order = epoch_order(rows, has_photo, 0.25, np.random.default_rng(0))
    assert set(order) == set(rows)
    photo_share = has_photo[order].mean()
    assert 0.25 <= photo_share < 0.26
    assert (~has_photo[order]).sum() == 990  # station hours are not repeated


@pytest.mark.parametrize("share", [0.0, 0.25])
def test_an_epoch_is_a_plain_permutation_when_photos_are_already_common_enough(share):
    rows = np.arange(200)
    has_photo = np.arange(200) % 2 == 0  # half the rows have a photo
    order = epoch_order(rows, has_photo, share, np.random.default_rng(0))
    assert sorted(order) == list(rows)


def test_the_eight_dihedral_views_are_distinct_rearrangements_of_the_same_pixels():
    image = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    views = [dihedral(image, view) for view in range(N_VIEWS)]
    assert torch.equal(views[0], image)
    assert len({tuple(v.flatten().tolist()) for v in views}) == N_VIEWS
    for view in views:
        assert torch.equal(view.flatten(2).sort(dim=2).values, image.flatten(2).sort(dim=2).values)
    assert torch.equal(dihedral(views[1], 3), image)  # a quarter turn, then three more


def test_targets_averaged_over_all_eight_views_do_not_depend_on_how_a_photo_is_turned(pipeline):
    from skyedge.data.dataset import load_ingested
    from skyedge.train import checkpoints

    data = load_ingested(pipeline.ingest)
    teacher = checkpoints.load_module(pipeline.embed / "teacher.pt")
    logits, embeddings = view_averaged_targets(teacher, data, N_VIEWS)
    turned = dataclasses.replace(data, images=np.ascontiguousarray(np.rot90(data.images, 1, axes=(1, 2))))
    turned_logits, turned_embeddings = view_averaged_targets(teacher, turned, N_VIEWS)
    assert logits.shape == (len(data.images), 5)
    assert torch.allclose(logits, turned_logits, atol=1e-4)
    assert torch.allclose(embeddings, turned_embeddings, atol=1e-4)


def tiny_student(pipeline, momentum: float):
    from skyedge.core.features import N_FEATURES
    from skyedge.train import models

    p = pipeline.params
    model = models.build_student("tinycnn", p.distill.width, p.data.window_hours, N_FEATURES, 0.0, 1.0)
    for norm in model.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.momentum = momentum  # as torchvision's MobileNetV3 sets it
            norm.running_mean.fill_(5.0)  # statistics of weights long gone
            norm.running_var.fill_(9.0)
    return model


def test_batchnorm_statistics_become_the_plain_average_over_training_batches(pipeline):
    from skyedge.data.dataset import load_ingested
    from skyedge.train.training import Batches, FitConfig, recalibrate_batchnorm

    data = load_ingested(pipeline.ingest)
    model = tiny_student(pipeline, momentum=0.01)
    first = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    batch_means = []
    first.register_forward_hook(lambda module, inputs, output: batch_means.append(inputs[0].mean(dim=(0, 2, 3))))
    recalibrate_batchnorm(model, Batches(data, data.split("train")), FitConfig(1, 32, 1e-3, 0), np.random.default_rng(0), max_batches=3)
    assert len(batch_means) == 3
    torch.testing.assert_close(first.running_mean, torch.stack(batch_means).mean(0))
    assert first.momentum == 0.01 and not model.training


def test_a_frozen_backbone_keeps_its_statistics(pipeline):
    from skyedge.data.dataset import load_ingested
    from skyedge.train.training import Batches, FitConfig, recalibrate_batchnorm

    data = load_ingested(pipeline.ingest)
    model = tiny_student(pipeline, momentum=0.1)
    cache = torch.zeros(len(data.images), model.backbone.channels)
    recalibrate_batchnorm(model, Batches(data, data.split("train")), FitConfig(1, 32, 1e-3, 0), np.random.default_rng(0), cache)
    for norm in model.backbone.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            assert (norm.running_mean == 5.0).all() and (norm.running_var == 9.0).all()


def test_common_device_auto_is_cuda_only_when_this_torch_sees_a_gpu():
    from skyedge.train.training import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: cuda is a valid choice here")
def test_asking_for_cuda_without_a_gpu_says_what_to_set():
    from skyedge.train.training import resolve_device

    with pytest.raises(RuntimeError, match="common.device is cuda, but this torch sees no CUDA device: set common.device to auto or cpu"):
        resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_training_on_cuda_matches_the_cpu_within_tolerance(pipeline):
    """Same data, seed and epochs on both devices. Tolerance: kernels differ in float rounding,
    so scores agree to 0.05 sky accuracy, 0.01 rain Brier and 0.1 degC temperature RMSE."""
    from skyedge.data.dataset import load_ingested
    from skyedge.train.training import FitConfig, fit

    data = load_ingested(pipeline.ingest)
    scores = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = tiny_student(pipeline, momentum=0.1)
        scores[device] = fit(model, data, FitConfig(1, 64, 3e-3, 0, device=device), f"student on {device}")[-1]
        assert next(model.parameters()).device.type == "cpu"  # handed back for export
    assert abs(scores["cpu"]["val_sky_accuracy"] - scores["cuda"]["val_sky_accuracy"]) <= 0.05
    assert abs(scores["cpu"]["val_rain_brier"] - scores["cuda"]["val_rain_brier"]) <= 0.01
    assert abs(scores["cpu"]["val_temp_rmse"] - scores["cuda"]["val_temp_rmse"]) <= 0.1

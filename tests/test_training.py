"""The training mix: photo oversampling, augmentation, online distillation that needs no labels,
early stopping on the grouped estimate, and the persistence parameterisation of the heads."""

import dataclasses

import numpy as np
import pytest
import torch

from skyedge.train import checkpoints
from skyedge.train.training import N_VIEWS, Augmentation, class_balanced_weights, dihedral, epoch_order


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


def test_balanced_weights_give_each_class_an_equal_share_and_leave_unlabelled_photos_alone():
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2, -1, -1])
    weights = class_balanced_weights(labels)
    shares = [weights[labels == c].sum() for c in (0, 1, 2)]
    assert shares == pytest.approx([3.0, 3.0, 3.0])  # 9 labelled photos, 3 classes
    assert weights[labels == -1].tolist() == [1.0, 1.0]


def test_balanced_draws_give_a_rare_class_as_many_views_as_a_common_one():
    rows = np.arange(2000)
    has_photo = np.zeros(2000, dtype=bool)
    has_photo[:40] = True  # 40 photos among 1960 station hours
    labels = np.full(2000, -1)
    labels[:36], labels[36:40] = 0, 1  # class 1: 4 photos of 40
    order = epoch_order(rows, has_photo, 0.5, np.random.default_rng(0), class_balanced_weights(labels))
    drawn = labels[order][has_photo[order]]
    assert 0.45 < (drawn == 1).mean() < 0.55
    assert (~has_photo[order]).sum() == 1960 and has_photo[order].mean() == pytest.approx(0.5, abs=0.01)
    plain = epoch_order(rows, has_photo, 0.5, np.random.default_rng(0))
    assert (labels[plain][has_photo[plain]] == 1).mean() < 0.15  # without weights: its 10 %


def test_the_eight_dihedral_views_are_distinct_rearrangements_of_the_same_pixels():
    image = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    views = [dihedral(image, view) for view in range(N_VIEWS)]
    assert torch.equal(views[0], image)
    assert len({tuple(v.flatten().tolist()) for v in views}) == N_VIEWS
    for view in views:
        assert torch.equal(view.flatten(2).sort(dim=2).values, image.flatten(2).sort(dim=2).values)
    assert torch.equal(dihedral(views[1], 3), image)  # a quarter turn, then three more


def tiny_student(pipeline, momentum: float):
    from skyedge.train import models

    p = pipeline.params
    model = models.build_student("tinycnn", p.distill.width, p.data.window_hours, 1.0)
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


STRONG = Augmentation(dihedral=True, crop_scale=0.6, exposure=0.3, white_balance=0.1, blur=0.5, noise=0.02, mixup=0.4)


def test_augmented_photos_stay_photos_and_mixup_mixes_the_targets_the_same_way(pipeline):
    from skyedge.data.dataset import load_ingested
    from skyedge.train.training import Batches

    data = load_ingested(pipeline.ingest)
    batches = Batches(data, data.split("train"))
    rows = data.split("train")[np.flatnonzero(data.samples["labelled"].to_numpy()[data.split("train")] == 1)[:32]]
    clean = batches.batch(rows)
    augmented = batches.batch(rows, augmentation=STRONG, rng=np.random.default_rng(0))
    assert augmented["image"].shape == clean["image"].shape and not torch.equal(augmented["image"], clean["image"])
    spec = data.preprocessing["image"]
    low = (0 - np.array(spec["mean"])) / np.array(spec["std"])
    high = (1 - np.array(spec["mean"])) / np.array(spec["std"])
    for channel in range(3):  # still pixels in 0..1 before normalisation
        assert augmented["image"][:, channel].min() >= low[channel] - 1e-5 and augmented["image"][:, channel].max() <= high[channel] + 1e-5
    # Mixup: every target is a distribution over the classes, and some rows mix two classes.
    assert torch.allclose(augmented["sky_target"].sum(1), torch.ones(len(rows)))
    assert ((augmented["sky_target"] > 0).sum(1) == 2).any()
    assert torch.equal(clean["sky_target"].argmax(1), clean["sky"])  # no augmentation: one-hot labels


def test_the_geometric_teacher_view_is_the_students_crop_flip_and_mix_in_the_cameras_colours(pipeline):
    from skyedge.data.dataset import load_ingested
    from skyedge.train.training import Batches

    data = load_ingested(pipeline.ingest)
    batches = Batches(data, data.split("train"))
    rows = data.split("train")[np.flatnonzero(data.samples["image_idx"].to_numpy()[data.split("train")] >= 0)[:32]]
    clean = batches.batch(rows)["image"]
    colours_only = Augmentation(dihedral=False, crop_scale=1.0, exposure=0.3, white_balance=0.1, blur=0.5, noise=0.02, mixup=0.0)
    batch = batches.batch(rows, augmentation=colours_only, rng=np.random.default_rng(0), teacher_view="geometric")
    assert not torch.allclose(batch["image"], clean, atol=1e-3)  # the student's colours move
    assert torch.equal(batch["teacher_image"], clean)  # the teacher's do not
    geometry_only = Augmentation(dihedral=True, crop_scale=0.6, exposure=0.0, white_balance=0.0, blur=0.0, noise=0.0, mixup=0.4)
    batch = batches.batch(rows, augmentation=geometry_only, rng=np.random.default_rng(0), teacher_view="geometric")
    assert not torch.allclose(batch["image"], clean, atol=1e-3)
    assert torch.allclose(batch["teacher_image"], batch["image"], atol=1e-6)  # the same crop, flip and mix
    assert "teacher_image" not in batches.batch(rows, augmentation=STRONG, rng=np.random.default_rng(0))  # augmented: the student's own view


def test_with_the_geometric_view_the_teacher_is_never_shown_the_photometric_perturbations(pipeline):
    """distill.teacher_view reaches the teacher through fit: with colour-only augmentation, every
    photo the teacher scores while the student trains is a clean photo."""
    from skyedge.data.dataset import load_ingested
    from skyedge.train.training import Batches, FitConfig, Teacher, fit

    data = load_ingested(pipeline.ingest)
    photo_rows = np.flatnonzero(data.samples["image_idx"].to_numpy() >= 0)
    clean = Batches(data, photo_rows).batch(photo_rows)["image"].flatten(1)
    colours_only = Augmentation(dihedral=False, crop_scale=1.0, exposure=0.3, white_balance=0.1, blur=0.5, noise=0.02, mixup=0.0)
    seen = {}
    for view in ("augmented", "geometric"):
        teacher = Teacher(checkpoints.load_module(pipeline.embed / "teacher.pt"), 4.0, 0.7, 0.5, view)
        shown = []
        teacher.model.backbone.register_forward_hook(lambda module, args, out: shown.append(args[0].flatten(1)))
        torch.manual_seed(0)
        fit(tiny_student(pipeline, momentum=0.1), data, FitConfig(1, 64, 3e-3, 0, photo_share=0.25, augmentation=colours_only), "student", teacher=teacher)
        shown = torch.cat(shown)
        seen[view] = (torch.cdist(shown, clean, compute_mode="donot_use_mm_for_euclid_dist").min(1).values < 1e-3).float().mean().item()  # share of views that are some clean photo
    assert seen["geometric"] == 1.0
    assert seen["augmented"] < 0.5


def test_distillation_on_unlabelled_photos_uses_no_label(pipeline):
    """Shuffling the classes of photos marked unlabelled must give the very same student."""
    from skyedge.data.dataset import load_ingested
    from skyedge.train import checkpoints
    from skyedge.train.training import FitConfig, Teacher, fit

    data = load_ingested(pipeline.ingest)
    unlabelled = data.samples["labelled"].to_numpy() == 0
    unlabelled &= data.samples["image_idx"].to_numpy() >= 0
    assert unlabelled.sum() > 10  # the tiny profile's generator leaves half the frames unlabelled
    teacher = Teacher(checkpoints.load_module(pipeline.embed / "teacher.pt"), 4.0, 0.7, 0.5)
    shuffled_samples = data.samples.copy()
    shuffled_samples.loc[unlabelled, "sky_label"] = np.random.default_rng(1).integers(0, 5, unlabelled.sum())
    shuffled = dataclasses.replace(data, samples=shuffled_samples)
    config = FitConfig(1, 64, 3e-3, 0, photo_share=0.25, augmentation=STRONG)
    students = []
    for dataset in (data, shuffled):
        torch.manual_seed(0)
        student = tiny_student(pipeline, momentum=0.1)
        fit(student, dataset, config, "student", teacher=teacher)
        students.append(student.state_dict())
    for name, value in students[0].items():
        assert torch.equal(value, students[1][name]), name


def frozen_student_with_telling_cache(pipeline, data, views: int):
    """A tiny student with its backbone frozen, and a cache [views, M, E] in which view v names each
    labelled photo's class, loudly, in features 5v..5v+4; returns (model, cache, photos with a label)."""
    torch.manual_seed(0)
    model = tiny_student(pipeline, momentum=0.1)
    labels = np.full(len(data.images), -1)
    photo_rows = data.samples[(data.samples["image_idx"] >= 0) & (data.samples["labelled"] == 1)]
    labels[photo_rows["image_idx"].to_numpy()] = photo_rows["sky_label"].to_numpy()
    known = np.flatnonzero(labels >= 0)
    cache = torch.zeros(views, len(data.images), model.backbone.channels)
    for view in range(views):
        cache[view, known, 5 * view + labels[known]] = 20.0
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(False)
    return model, cache, known


def test_heads_on_cached_features_learn_each_photos_own_label_even_with_mixup_configured(pipeline):
    """The teacher's heads train on features cached from the clean photos. Features that name the
    class outright must give a head that is sure of it: mixing the targets of two photos whose
    features were not mixed would teach it about 0.6 for the right class."""
    from skyedge.data.dataset import load_ingested
    from skyedge.train.training import Batches, FitConfig, fit, forward

    data = load_ingested(pipeline.ingest)
    model, cache, known = frozen_student_with_telling_cache(pipeline, data, views=1)  # features 0..4 say the class
    fit(model, data, FitConfig(5, 64, 3e-2, 0, photo_share=0.5, augmentation=STRONG), "heads", embed_cache=cache)
    rows = data.split("train")[np.isin(data.samples["image_idx"].to_numpy()[data.split("train")], known)]
    batch = Batches(data, rows).batch(rows)
    with torch.no_grad():
        probabilities = torch.softmax(forward(model, batch, cache)["sky_logits"], 1)
    assert STRONG.mixup > 0
    assert probabilities[torch.arange(len(rows)), batch["sky"]].mean() > 0.9


def test_heads_on_cached_features_learn_every_cached_view_and_validate_on_the_clean_one(pipeline):
    """Two cached views that name the class in different features: trained on random draws of
    both, the heads know each; scored without a view, they read view 0."""
    from skyedge.data.dataset import load_ingested
    from skyedge.train.training import Batches, FitConfig, fit, forward, quick_scores

    data = load_ingested(pipeline.ingest)
    model, cache, known = frozen_student_with_telling_cache(pipeline, data, views=2)  # view 0: features 0..4 say the class; view 1: 5..9
    fit(model, data, FitConfig(5, 64, 3e-2, 0, photo_share=0.5), "heads", embed_cache=cache)
    rows = data.split("train")[np.isin(data.samples["image_idx"].to_numpy()[data.split("train")], known)]
    batch = Batches(data, rows).batch(rows)
    with torch.no_grad():
        for view in (0, 1):
            probabilities = torch.softmax(forward(model, {**batch, "cache_view": torch.full_like(batch["image_idx"], view)}, cache)["sky_logits"], 1)
            assert probabilities[torch.arange(len(rows)), batch["sky"]].mean() > 0.9, view
    clean_only = cache.clone()
    clean_only[1] = 0.0
    assert quick_scores(model, Batches(data, rows), rows, clean_only)["val_sky_accuracy"] == quick_scores(model, Batches(data, rows), rows, cache)["val_sky_accuracy"]


def test_the_teachers_cached_features_hold_the_clean_photo_and_augmented_views_of_it(pipeline):
    """Distillation asks the teacher about augmented views, so its heads train on cached features
    of such views too; view 0 is the clean photo that validation and the device see."""
    from skyedge.core import inputs
    from skyedge.data.dataset import load_ingested
    from skyedge.train.training import backbone_features

    data = load_ingested(pipeline.ingest)
    model = checkpoints.load_module(pipeline.embed / "teacher.pt")
    cache = backbone_features(model, data, STRONG, views=3, seed=0)
    assert cache.shape == (3, len(data.images), model.backbone.channels)
    first = torch.from_numpy(inputs.normalise_image(data.images[:4].astype(np.float32) / 255.0, data.preprocessing["image"]))
    with torch.no_grad():
        assert torch.allclose(cache[0, :4], model.backbone(first), atol=1e-5)
    assert not torch.allclose(cache[1], cache[0]) and not torch.allclose(cache[2], cache[1])
    assert torch.equal(cache, backbone_features(model, data, STRONG, views=3, seed=0))  # deterministic


def test_the_kept_epoch_is_the_one_with_the_lowest_grouped_validation_loss(pipeline):
    from skyedge.data.dataset import load_ingested
    from skyedge.train.training import FitConfig, fit

    data = load_ingested(pipeline.ingest)
    torch.manual_seed(0)
    history = fit(tiny_student(pipeline, momentum=0.1), data, FitConfig(3, 64, 3e-3, 0), "student")
    kept = [row for row in history if row["best"]]
    assert len(kept) == 1 and kept[0]["val_loss"] == min(row["val_loss"] for row in history)


def test_with_a_zero_correction_the_heads_are_exactly_persistence(pipeline):
    from skyedge.core.features import RAIN_REFERENCE, TEMPERATURE_REFERENCE
    from skyedge.data.dataset import load_ingested, model_inputs

    model = tiny_student(pipeline, momentum=0.1).eval()
    with torch.no_grad():
        model.temp_head.weight.zero_()
        model.temp_head.bias.zero_()
    data = load_ingested(pipeline.ingest)
    inputs = {k: torch.from_numpy(v) for k, v in model_inputs(data, data.split("test")[:64]).items()}
    with torch.no_grad():
        _, rain, temp = model(inputs["image"], inputs["image_present"], inputs["sensors"])
        assert torch.equal(temp, inputs["sensors"][:, -1, TEMPERATURE_REFERENCE : TEMPERATURE_REFERENCE + 1].expand(-1, 4))
        model.fallback_rain.fill_(1.0)  # what the quantize stage sets for a head without skill
        _, rain, _ = model(inputs["image"], inputs["image_present"], inputs["sensors"])
    assert torch.equal(rain, inputs["sensors"][:, -1, RAIN_REFERENCE : RAIN_REFERENCE + 1].expand(-1, 4))

"""Model zoo behaviour: weights files, every student trains/exports/prunes, camera-down forecasts."""

import numpy as np
import pytest
import torch

from skyedge.core import inference
from skyedge.core.features import N_FEATURES
from skyedge.data.dataset import load_ingested, model_inputs
from skyedge.evaluation import scores
from skyedge.train import models


def test_a_mismatched_weights_file_names_the_file_and_the_first_mismatched_keys(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    wrong = tmp_path / "wrong.pth"
    torch.save({"0.weight": torch.zeros(4, 3, 3, 3), "extra.weight": torch.zeros(1)}, wrong)
    with pytest.raises(models.WeightsError) as error:
        models.load_weights(net, wrong)
    message = str(error.value)
    assert str(wrong) in message
    assert "0.bias" in message and "extra.weight" in message and "0.weight (4, 3, 3, 3) != (8, 3, 3, 3)" in message
    with pytest.raises(models.WeightsError, match="missing.pth not found"):
        models.load_weights(net, tmp_path / "missing.pth")


def test_a_correct_state_dict_file_loads_into_a_torchvision_teacher(tmp_path):
    source = models.teacher_backbone("resnet18", "none")
    path = tmp_path / "resnet18.pth"
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), path)
    loaded = models.teacher_backbone("resnet18", str(path))
    first = next(iter(loaded.features.parameters()))
    torch.testing.assert_close(first, reference.conv1.weight)
    assert loaded.channels == source.channels == 512


@pytest.mark.parametrize("student", ["tinycnn", pytest.param("squeezenet1_1", marks=pytest.mark.slow), pytest.param("mobilenet_v3_small", marks=pytest.mark.slow)])
def test_every_student_trains_exports_and_prunes(pipeline, student, tmp_path):
    from skyedge.compress.pruning import count_macs_params, structured_prune
    from skyedge.train.training import FitConfig, fit

    p = pipeline.params
    data = load_ingested(pipeline.ingest)
    sensors = data.preprocessing["sensors"]
    model = models.build_student(student, p.distill.width, p.data.window_hours, sensors["std"][0])
    history = fit(model, data, FitConfig(1, 64, 3e-3, 0), student)
    assert np.isfinite(history[-1]["train_loss"])
    inputs = models.example_inputs(p.data.image_size, p.data.window_hours, N_FEATURES)
    macs_before, params_before = count_macs_params(model, inputs)
    structured_prune(model, inputs, 0.3)
    macs_after, params_after = count_macs_params(model, inputs)
    assert macs_after < macs_before and params_after < params_before
    path = models.export_onnx(model, tmp_path / f"{student}.onnx", p.data.image_size, p.data.window_hours, N_FEATURES)
    feed = model_inputs(data, data.split("test")[:8])
    got = inference.predict(inference.session(path), feed)
    with torch.no_grad():
        expected = model(*(torch.from_numpy(feed[k]) for k in ("image", "image_present", "sensors")))
    np.testing.assert_allclose(got["sky_logits"], expected[0].numpy(), atol=1e-4)


def camera_down_scores(onnx_path, ingest_dir) -> dict:
    """Scores on the test split's station samples with image_present = 0 for every one."""
    data = load_ingested(ingest_dir)
    test = data.split("test")
    stations = test[data.samples["has_sensors"].to_numpy()[test] == 1]
    inputs = model_inputs(data, stations, drop_images=True)
    assert not inputs["image_present"].any()
    outputs = inference.predict(inference.session(onnx_path), inputs)
    assert all(np.isfinite(v).all() for v in outputs.values())
    return scores.score(outputs, data.samples.iloc[stations].reset_index(drop=True), data.preprocessing["climatology"], n_boot=50)


@pytest.mark.parametrize("variant", ["student", "shipped"])
def test_camera_down_outputs_are_finite_and_scored_at_every_horizon(pipeline, variant):
    path = pipeline.distill / "student.onnx" if variant == "student" else pipeline.quantize / "shipped.onnx"
    assert len(camera_down_scores(path, pipeline.ingest)["horizons"]) == 4


@pytest.mark.slow
def test_camera_down_still_beats_persistence_on_the_default_synthetic_profile(tmp_path):
    """The tiny profile's one-epoch student is too weak to score; the default profile's student,
    with image_present = 0 everywhere: rain Brier skill and temperature skill against
    persistence above 0 at every horizon on the synthetic test split."""
    from skyedge.core.config import load_params
    from stages import distill, embed, ingest
    from tests.conftest import REPO

    p = load_params(REPO / "params.yaml", profile="default")
    ingest.run(p.ingest, p.data, tmp_path / "ingest")
    embed.run(p.embed, p.data, p.augment, p.common, tmp_path / "ingest", tmp_path / "embed")
    distill.run(p.distill, p.data, p.augment, p.common, tmp_path / "ingest", tmp_path / "embed", tmp_path / "distill")
    scores = camera_down_scores(tmp_path / "distill" / "student.onnx", tmp_path / "ingest")
    assert len(scores["horizons"]) == 4
    for entry in scores["horizons"]:
        assert entry["rain_bss_persistence"] > 0, entry
        assert entry["temp_skill_persistence"] > 0, entry

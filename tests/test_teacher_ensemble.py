"""A teacher of several fine-tunes (`embed.ensemble`): one module whose predictions are the mean of
its members', which distillation, the ONNX export and the evaluate stage read as one teacher."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from skyedge.core import inference
from skyedge.core.contract import OUTPUT_RAIN_PROB, OUTPUT_SKY_LOGITS, OUTPUT_TEMP_C
from skyedge.core.features import N_FEATURES
from skyedge.data.dataset import load_ingested, model_inputs
from skyedge.train import checkpoints, models


def two_members() -> list[models.NowcastNet]:
    members = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        members.append(models.build_student("tinycnn", 8, 6, 2.0).eval())
    return members


def random_inputs(batch: int = 5) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 3, 32, 32, generator=generator)
    present = torch.tensor([[1.0], [1.0], [0.0], [1.0], [0.0]])[:batch]
    return image, present, torch.randn(batch, 6, N_FEATURES, generator=generator)


@torch.no_grad()
def test_the_ensemble_predicts_the_mean_of_its_members():
    members = two_members()
    ensemble = models.TeacherEnsemble(members).eval()
    inputs = random_inputs()
    sky, rain, temp = ensemble(*inputs)
    each = [member(*inputs) for member in members]
    assert torch.allclose(F.softmax(sky, 1), (F.softmax(each[0][0], 1) + F.softmax(each[1][0], 1)) / 2, atol=1e-6)
    assert torch.allclose(rain, (each[0][1] + each[1][1]) / 2) and torch.allclose(temp, (each[0][2] + each[1][2]) / 2)
    assert not torch.allclose(F.softmax(sky, 1), F.softmax(each[0][0], 1), atol=1e-3)  # both members count


@torch.no_grad()
def test_distillation_reads_the_same_sky_distribution_as_the_exported_teacher():
    """distillation_loss calls teacher.backbone then teacher.sky_head: the members' embeddings side
    by side, each head on its own part."""
    members = two_members()
    ensemble = models.TeacherEnsemble(members).eval()
    image = random_inputs()[0]
    embedding = ensemble.backbone(image)
    assert embedding.shape == (len(image), sum(member.backbone.channels for member in members)) == (len(image), ensemble.backbone.channels)
    everything_present = torch.ones(len(image), 1)
    assert torch.allclose(ensemble.sky_head(embedding), ensemble(image, everything_present, random_inputs()[2])[0], atol=1e-5)


@torch.no_grad()
def test_the_ensemble_exports_to_one_onnx_model_that_matches_pytorch(tmp_path):
    ensemble = models.TeacherEnsemble(two_members()).eval()
    path = models.export_onnx(ensemble, tmp_path / "teacher.onnx", 32, 6, N_FEATURES)
    inputs = random_inputs()
    got = inference.predict(inference.session(path), {"image": inputs[0].numpy(), "image_present": inputs[1].numpy(), "sensors": inputs[2].numpy()})
    for name, expected in zip((OUTPUT_SKY_LOGITS, OUTPUT_RAIN_PROB, OUTPUT_TEMP_C), ensemble(*inputs)):
        assert np.allclose(got[name], expected.numpy(), atol=1e-4), name


def test_the_embed_stage_trains_each_member_from_the_same_start_and_the_first_is_the_single_teacher(pipeline, tmp_path):
    """With `ensemble` the first member is exactly the teacher a run without it trains (same seed,
    same pretrained weights); each further member is trained for its own fine-tune epochs."""
    from stages import embed

    params = pipeline.params
    quick = params.embed.model_copy(update={"finetune_epochs": 0, "epochs": 1})
    embed.run(quick, params.data, params.augment, params.common, pipeline.ingest, tmp_path / "one")
    metrics = embed.run(quick.model_copy(update={"ensemble": [1]}), params.data, params.augment, params.common, pipeline.ingest, tmp_path / "two")
    single = checkpoints.load_module(tmp_path / "one" / "teacher.pt")
    ensemble = checkpoints.load_module(tmp_path / "two" / "teacher.pt")
    assert isinstance(ensemble, models.TeacherEnsemble) and len(ensemble.members) == 2
    assert [member["finetune_epochs"] for member in metrics["members"]] == [0, 1]
    history = pd.read_csv(tmp_path / "two" / "history.csv")  # one curve after the other
    assert list(history["member"]) == [0] * quick.epochs + [1] * (1 + quick.epochs)
    assert list(history["epoch"]) == list(range(1, len(history) + 1))
    first, second = (member.state_dict() for member in ensemble.members)
    for name, value in single.state_dict().items():
        assert torch.equal(first[name], value), name
    assert not torch.equal(first["backbone.features.net._conv_stem.weight"], second["backbone.features.net._conv_stem.weight"])  # fine-tuned
    data = load_ingested(pipeline.ingest)
    inputs = model_inputs(data, data.split("test")[:8])
    with torch.no_grad():
        expected = ensemble(*(torch.from_numpy(inputs[k]) for k in ("image", "image_present", "sensors")))
    got = inference.predict(inference.session(tmp_path / "two" / "teacher.onnx"), inputs)
    assert np.allclose(got[OUTPUT_SKY_LOGITS], expected[0].numpy(), atol=1e-3)
    # The metrics score the ensemble itself on the grouped validation photos, not its last member.
    val = data.grouped("val")
    labelled = data.samples["sky_label"].to_numpy()[val] >= 0
    feed = model_inputs(data, val[labelled])
    with torch.no_grad():
        sky_logits = ensemble(*(torch.from_numpy(feed[k]) for k in ("image", "image_present", "sensors")))[0]
    truth = data.samples["sky_label"].to_numpy()[val[labelled]]
    assert metrics["val_sky_accuracy"] == pytest.approx(float((sky_logits.argmax(1).numpy() == truth).mean()))


def test_a_student_distils_from_an_ensemble_teacher(pipeline):
    from skyedge.train.training import FitConfig, Teacher, fit

    params = pipeline.params
    data = load_ingested(pipeline.ingest)
    ensemble = models.TeacherEnsemble(two_members())
    student = models.build_student("tinycnn", 8, params.data.window_hours, 2.0)
    before = {name: value.clone() for name, value in student.state_dict().items()}
    history = fit(student, data, FitConfig(1, 64, 0.003, 0, photo_share=0.25), "student", teacher=Teacher(ensemble, 4.0, 1.0, 0.5))
    assert np.isfinite(history[-1]["train_loss"])
    assert any(not torch.equal(before[name], value) for name, value in student.state_dict().items())

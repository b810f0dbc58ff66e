"""The student behind selective attention, wired end to end (attend.student_input = crop).

The session's `attended_pipeline` re-runs distill .. package in crop mode on the tiny pipeline's
ingest, attend and embed outputs; `pipeline` is the default (whole-frame) run, whose package has
no attention section, like every release before attention.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from skyedge.core import contract, inference, inputs, paths
from skyedge.data.dataset import load_ingested, model_inputs, student_view, teacher_view
from skyedge.device import agent, predict
from skyedge.evaluation import scores
from skyedge.release import manifest as mf
from skyedge.train import checkpoints
from skyedge.train.training import Augmentation, Batches
from stages import package as package_stage

PHOTOS = 16  # test photos each comparison runs through both paths


def crop_view(run):
    return student_view(load_ingested(run.ingest), "crop", paths.Attend(run.attend).boxes)


def photo_rows(data, count: int = PHOTOS) -> np.ndarray:
    test = data.split("test")
    return test[data.samples["image_idx"].to_numpy()[test] >= 0][:count]


def installed(package: Path, tmp_path: Path) -> Path:
    """A device state dir whose active slot is a copy of `package` (safe to tamper with)."""
    slot = tmp_path / "slot"
    shutil.copytree(package, slot)
    state = tmp_path / "state"
    state.mkdir()
    (state / "active").symlink_to(slot)
    return state


def station_records(ingest: Path, tmp_path: Path) -> Path:
    station = pd.read_csv(min((ingest / "raw").rglob("syn-00.csv"))).tail(24)
    records = tmp_path / "records" / "station.csv"
    records.parent.mkdir()
    station.to_csv(records, index=False)
    return records


def photo_file(frame: np.ndarray, path: Path) -> Path:
    Image.fromarray(frame).save(path)  # PNG: lossless, so the device reads exactly the ingest's pixels
    return path


def test_in_crop_mode_the_student_sees_crops_and_the_teacher_the_same_view_of_the_whole_frame(pipeline, attended_pipeline):
    """What distill, prune and QAT train on: Batches of the student view. The student's image
    is the crop, the teacher's the whole frame, both under the same augmentation draws."""
    data = crop_view(attended_pipeline)
    whole = load_ingested(pipeline.ingest)
    rows = photo_rows(data)
    idx = data.samples["image_idx"].to_numpy()[rows]
    assert not np.array_equal(data.images[idx], whole.images[idx])  # the boxes do cut something
    batches = Batches(data, rows)
    clean = batches.batch(rows)
    spec = data.preprocessing["image"]
    np.testing.assert_allclose(clean["image"].numpy(), model_inputs(data, rows)[contract.INPUT_IMAGE], atol=1e-6)
    np.testing.assert_allclose(clean["teacher_image"].numpy(), inputs.model_inputs(whole.images, idx, whole.windows[rows], spec)[contract.INPUT_IMAGE], atol=1e-6)
    assert "teacher_image" not in Batches(whole, rows).batch(rows)  # whole frames: one view for both

    # Exposure alone: each photo's gain must be the same for its crop and its whole frame.
    exposure = Augmentation(dihedral=False, crop_scale=1.0, exposure=0.3, white_balance=0.0, blur=0.0, noise=0.0, mixup=0.0)
    augmented = batches.batch(rows, augmentation=exposure, rng=np.random.default_rng(0))
    mean, std = np.asarray(spec["mean"])[:, None, None], np.asarray(spec["std"])[:, None, None]

    def gains(image: torch.Tensor, raw: torch.Tensor) -> np.ndarray:
        unit, before = image.numpy() * std + mean, raw.numpy() * std + mean
        usable = (before > 0.05) & (unit < 0.99)  # dark pixels are noisy ratios; clamped ones lost the gain
        return np.array([np.median(u[m] / b[m]) for u, b, m in zip(unit, before, usable)])

    student_gain, teacher_gain = gains(augmented["image"], clean["image"]), gains(augmented["teacher_image"], clean["teacher_image"])
    assert np.ptp(student_gain) > 0.05  # the draws differ between photos ...
    np.testing.assert_allclose(student_gain, teacher_gain, atol=2e-3)  # ... and agree between the two views


def test_crop_mode_stages_record_it_and_evaluate_scores_the_teacher_on_whole_frames(attended_pipeline):
    distill = json.loads(paths.Distill(attended_pipeline.distill).metrics.read_text())
    assert distill["student_input"] == "crop" and "kd_gain_val_sky_accuracy" in distill
    evaluated = json.loads(paths.Evaluate(attended_pipeline.evaluate).metrics.read_text())
    assert evaluated["student_input"] == "crop"
    assert evaluated["attention"]["size_bytes"] == paths.Attend(attended_pipeline.attend).onnx.stat().st_size
    assert evaluated["attention"]["latency_ms_p50"] > 0
    assert evaluated["variants"]["shipped"]["latency_ms_p50"] > evaluated["attention"]["latency_ms_p50"]  # shipped waits for attention too
    data = crop_view(attended_pipeline)
    test = data.split("test")
    teacher = inference.predict(inference.session(paths.Embed(attended_pipeline.embed).teacher_onnx), model_inputs(teacher_view(data), test))
    samples = data.samples.iloc[test].reset_index(drop=True)
    params = attended_pipeline.params
    whole = scores.summary_row("teacher", scores.grouped_score(teacher, samples, data.preprocessing["climatology"], params.evaluate.bootstrap, params.common.seed))
    assert evaluated["variants"]["teacher"]["sky_accuracy"] == pytest.approx(whole["sky_accuracy"])


def test_the_bench_scores_students_on_their_crops_and_the_teacher_on_whole_frames_as_evaluate_does(attended_pipeline, tmp_path):
    from skyedge.evaluation import bench

    evaluated = json.loads(paths.Evaluate(attended_pipeline.evaluate).metrics.read_text())
    measured = bench.measure(attended_pipeline.root, runs=5, warmup=1)
    rows = {row["variant"]: row for row in measured.rows}
    for name, evaluate_name in (("teacher_fp32", "teacher"), ("student_fp32", "student"), ("student_alone_fp32", "student_alone"), ("pruned_fp32", "pruned"), ("shipped", "shipped")):
        assert rows[name]["sky_accuracy"] == pytest.approx(evaluated["variants"][evaluate_name]["sky_accuracy"]), name
    # What a station waits for: attention, then the model. The attention net costs several times the
    # student (README), so a shipped row without it would sit far below attention's own latency.
    assert rows["shipped"]["latency_ms_p50"] > 0.5 * evaluated["attention"]["latency_ms_p50"]


def test_the_package_ships_attention_and_the_device_feeds_the_model_what_evaluate_fed_it(attended_pipeline, tmp_path):
    """A station's frames, hour by hour through the device (which keeps the box it found for the
    manifest's refresh_hours), are cut exactly as evaluate cut them, and give its outputs."""
    package = attended_pipeline.package
    document = json.loads((package / mf.MANIFEST_FILE).read_text())
    attention = document["attention"]
    assert attention["file"] == mf.ATTENTION_FILE and mf.ATTENTION_FILE in {entry["path"] for entry in document["files"]}
    assert attention["refresh_hours"] == attended_pipeline.params.attend.refresh_hours > 1
    assert (package / mf.ATTENTION_FILE).read_bytes() == paths.Attend(attended_pipeline.attend).onnx.read_bytes()
    data = crop_view(attended_pipeline)
    whole = teacher_view(data)
    samples = data.samples
    station = samples[(samples["station_id"] == "syn-00") & (samples["image_idx"] >= 0)].sort_values("hour")
    rows, idx, hours = station.index.to_numpy(), station["image_idx"].to_numpy(), station["hour"].to_numpy()
    size = int(document["preprocessing"]["image"]["size"])
    kept_box = tmp_path / "state" / "box.json"
    kept_box.parent.mkdir()
    device = [predict.attended_photo(package, attention, photo_file(whole.images[i], tmp_path / f"{i}.png"), size, kept_box, int(hour)) for i, hour in zip(idx, hours)]
    device_crops = np.concatenate([crops for crops, _ in device])
    ran = np.array([ran for _, ran in device])
    assert ran[0] and 0 < ran.sum() <= len(ran) / 4  # once a day and after whole-frame fallbacks, not every hour
    assert np.abs(device_crops.astype(int) - data.images[idx].astype(int)).max() <= 1  # the crops evaluate scored
    model = inference.session(package / mf.MODEL_FILE)
    on_device = inference.predict(model, inputs.model_inputs(device_crops, np.arange(len(rows)), data.windows[rows], document["preprocessing"]["image"]))
    in_evaluate = inference.predict(model, model_inputs(data, rows))
    for name in (contract.OUTPUT_SKY_LOGITS, contract.OUTPUT_RAIN_PROB, contract.OUTPUT_TEMP_C):
        np.testing.assert_allclose(on_device[name], in_evaluate[name], atol=1e-4)


def test_the_onnx_attention_and_student_path_matches_pytorch(attended_pipeline):
    """Crops cut by attention.onnx (the station's path) through student.onnx and student.pt."""
    data = crop_view(attended_pipeline)
    rows = photo_rows(data)
    frames = teacher_view(data).images[data.samples["image_idx"].to_numpy()[rows]]
    spec = data.preprocessing["image"]
    rules = package_stage.attention_section(attended_pipeline.params.attend, frames.shape[1])
    image = inputs.attended_image_input(inference.session(paths.Attend(attended_pipeline.attend).onnx), frames, np.ones(len(rows)), rules, spec)
    feed = {contract.INPUT_IMAGE: image, contract.INPUT_IMAGE_PRESENT: np.ones((len(rows), 1), np.float32), contract.INPUT_SENSORS: data.windows[rows]}
    student = paths.Distill(attended_pipeline.distill)
    onnx_out = inference.predict(inference.session(student.onnx("student")), feed)
    with torch.no_grad():
        sky_logits, rain, temp = checkpoints.load_module(student.module("student")).eval()(*(torch.from_numpy(feed[k]) for k in (contract.INPUT_IMAGE, contract.INPUT_IMAGE_PRESENT, contract.INPUT_SENSORS)))
    np.testing.assert_allclose(onnx_out[contract.OUTPUT_SKY_LOGITS], sky_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(onnx_out[contract.OUTPUT_RAIN_PROB], rain.numpy(), atol=1e-5)
    np.testing.assert_allclose(onnx_out[contract.OUTPUT_TEMP_C], temp.numpy(), atol=1e-3)


def test_a_forecast_with_a_photo_runs_attention_and_one_without_skips_it(attended_pipeline, pipeline, tmp_path):
    state = installed(attended_pipeline.package, tmp_path)
    records = station_records(pipeline.ingest, tmp_path)
    data = load_ingested(pipeline.ingest)
    photo = photo_file(data.images[data.samples["image_idx"].to_numpy()[photo_rows(data, 1)][0]], tmp_path / "sky.png")
    first = predict.forecast(state, records, photo)
    assert first["attention_used"] is True and first["attention_ran"] is True
    (state / "active" / mf.ATTENTION_FILE).unlink()  # from here on, any attention run fails
    again = predict.forecast(state, records, photo)  # the same hour: the box found is reused
    assert again["attention_used"] is True and again["attention_ran"] is False and again["sky"] == first["sky"]
    shutil.rmtree(state / predict.ATTENTION_BOXES_DIR)  # no box kept: attention must run, and cannot
    with pytest.raises(inference.ModelFileError, match=mf.ATTENTION_FILE):
        predict.forecast(state, records, photo)
    camera_down = predict.forecast(state, records)
    assert camera_down["attention_used"] is False and camera_down["image_used"] is False


def test_a_manifest_without_attention_still_predicts_on_the_whole_frame(pipeline, tmp_path):
    document = json.loads((pipeline.package / mf.MANIFEST_FILE).read_text())
    assert "attention" not in document and mf.ATTENTION_FILE not in {entry["path"] for entry in document["files"]}
    agent.run_canary(pipeline.package, document)
    state = installed(pipeline.package, tmp_path)
    data = load_ingested(pipeline.ingest)
    photo = photo_file(data.images[data.samples["image_idx"].to_numpy()[photo_rows(data, 1)][0]], tmp_path / "sky.png")
    result = predict.forecast(state, station_records(pipeline.ingest, tmp_path), photo)
    assert result["image_used"] is True and result["attention_used"] is False


def test_the_canary_runs_the_attention_path(attended_pipeline):
    package = attended_pipeline.package
    document = json.loads((package / mf.MANIFEST_FILE).read_text())
    with np.load(package / mf.CANARY_FILE) as canary:
        assert canary[mf.CANARY_FRAMES].dtype == np.uint8 and canary[contract.INPUT_IMAGE_PRESENT][-1, 0] == 0  # the camera-down row too
    agent.run_canary(package, document)
    wider = {**document, "attention": {**document["attention"], "padding": 0.3}}  # another box: another crop
    with pytest.raises(agent.Refused, match="canary output"):
        agent.run_canary(package, wider)


def test_the_gate_scores_a_package_behind_attention_through_its_attention(attended_pipeline, pipeline):
    """The promotion gate re-scores packages on the candidate's ingest: a crop-trained package
    must see its crops there too, and a whole-frame package its whole frames."""
    from skyedge.evaluation import gate

    data = load_ingested(attended_pipeline.ingest)
    rows = data.split("test")
    for run, view in ((attended_pipeline, crop_view(attended_pipeline)), (pipeline, data)):
        got, _ = gate.package_outputs(run.package, data, rows, 1)
        want = inference.predict(inference.session(run.package / mf.MODEL_FILE), model_inputs(view, rows))
        np.testing.assert_allclose(got[contract.OUTPUT_SKY_LOGITS], want[contract.OUTPUT_SKY_LOGITS], atol=1e-4)


def test_skyedge_evaluate_runs_a_package_behind_attention_through_its_attention(attended_pipeline):
    """`skyedge evaluate PACKAGE` builds its feed batch by batch; behind attention, given the
    stations' frames in full, it must cut the same crops evaluate scored (boxes reused as a
    station reuses them)."""
    from skyedge.evaluation import packaged

    data = load_ingested(attended_pipeline.ingest)
    rows = data.split("test")
    dataset = packaged.Dataset(samples=data.samples, windows=data.windows, images=data.images, received=len(data.samples), quarantine=[], unlabelled=0)
    got = packaged.predict(packaged.load_model(attended_pipeline.package), dataset)
    want = inference.predict(inference.session(attended_pipeline.package / mf.MODEL_FILE), model_inputs(crop_view(attended_pipeline), rows))
    np.testing.assert_allclose(got[contract.OUTPUT_SKY_LOGITS][rows], want[contract.OUTPUT_SKY_LOGITS], atol=1e-4)

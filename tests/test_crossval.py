"""Leave-one-capture-day-out: every day with a class seen elsewhere takes its turn, training never sees it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from skyedge.data.dataset import load_ingested
from skyedge.evaluation import crossval


def test_a_day_is_held_out_only_when_one_of_its_classes_has_another_day_and_scores_only_those(pipeline):
    days = np.array(["a", "a", "b", "c", "c"])
    labels = np.array([0, 1, 0, 2, 2])  # class 2 only on day c: no day training saw could teach it
    assert crossval.held_out_days(days, labels) == ["a", "b"]
    # On a copy of the pipeline's photos relabelled so: day a's class-1 photo is not scored.
    data = load_ingested(pipeline.ingest)
    rows = crossval.labelled_photos(data)[:5]
    samples = data.samples.copy()
    samples.loc[rows, "day"], samples.loc[rows, "sky_label"] = days, labels
    fold = crossval.fold_data(dataclasses.replace(data, samples=samples), rows, "a", repeats=1)
    assert list(fold.samples["sky_label"].iloc[fold.split("test")]) == [0]
    assert sorted(fold.samples["sky_label"].iloc[fold.split("train")]) == [0, 2, 2]


def test_a_fold_trains_on_every_other_day_repeated_and_tests_its_day_once(pipeline):
    data = load_ingested(pipeline.ingest)
    rows = crossval.labelled_photos(data)
    days = data.samples["day"].to_numpy()[rows]
    day = crossval.held_out_days(days, data.samples["sky_label"].to_numpy()[rows])[0]
    labels = data.samples["sky_label"].to_numpy()[rows]
    fold = crossval.fold_data(data, rows, day, repeats=3)
    train, test = fold.split("train"), fold.split("test")
    scorable = (days == day) & np.isin(labels, labels[days != day])  # a class training has
    assert set(fold.samples["day"].iloc[test]) == {day} and len(test) == scorable.sum() > 0
    assert day not in set(fold.samples["day"].iloc[train]) and len(train) == 3 * (days != day).sum()
    assert (fold.samples["sky_label"] >= 0).all() and (fold.samples["image_idx"] >= 0).all()  # labelled photos only
    assert len(fold.windows) == len(fold.samples)
    assert len(fold.grouped("test")) == len(test)


def test_a_balanced_fold_gives_every_class_the_same_views_and_as_many_in_all(pipeline):
    data = load_ingested(pipeline.ingest)
    rows = crossval.labelled_photos(data)
    days, labels = data.samples["day"].to_numpy()[rows], data.samples["sky_label"].to_numpy()[rows]
    day = crossval.held_out_days(days, labels)[0]
    plain = crossval.fold_data(data, rows, day, repeats=20)
    balanced = crossval.fold_data(data, rows, day, repeats=20, balance_classes=True)
    views = np.bincount(balanced.samples["sky_label"].iloc[balanced.split("train")])
    classes = views[views > 0]
    assert classes.max() - classes.min() <= 0.1 * classes.mean()  # equal up to rounding
    assert abs(classes.sum() - len(plain.split("train"))) <= 0.05 * len(plain.split("train"))
    held_out = [fold.samples.iloc[fold.split("test")].reset_index(drop=True) for fold in (balanced, plain)]
    assert held_out[0].equals(held_out[1])  # the same photos are scored


def test_the_teacher_and_the_students_each_draw_the_fold_as_their_section_says(pipeline):
    data = load_ingested(pipeline.ingest)
    rows = crossval.labelled_photos(data)
    days, labels = data.samples["day"].to_numpy()[rows], data.samples["sky_label"].to_numpy()[rows]
    day = crossval.held_out_days(days, labels)[0]
    params = pipeline.params
    for teacher_balanced, students_balanced in ((True, False), (False, True)):
        recipe = params.model_copy(update={
            "embed": params.embed.model_copy(update={"balance_classes": teacher_balanced}),
            "distill": params.distill.model_copy(update={"balance_classes": students_balanced}),
        })
        teacher_fold, student_fold = crossval.fold_pair(recipe, data, rows, day, repeats=20)
        for fold, balanced in ((teacher_fold, teacher_balanced), (student_fold, students_balanced)):
            expected = crossval.fold_data(data, rows, day, repeats=20, balance_classes=balanced)
            assert fold.samples.equals(expected.samples)


def test_the_estimate_pools_the_held_out_days_and_the_kd_gain_is_the_paired_difference(pipeline, tmp_path, capsys):
    out = tmp_path / "crossval.json"
    result = crossval.run(pipeline.root, pipeline.params, out, repeats=1, batch_size=16, max_folds=2)
    assert len(result.folds) == 2 and len({row["day"] for row in result.folds}) == 2
    printed = capsys.readouterr().out
    for number, row in enumerate(result.folds, 1):  # each fold's row as it is known, before the table
        assert f"crossval: fold {number}/2, day {row['day']}: teacher {row['teacher']:.3f}, student_alone {row['student_alone']:.3f}" in printed
    pooled = result.pooled
    assert pooled["photos"] == sum(row["photos"] for row in result.folds) > 0
    for name in crossval.COLUMNS:
        assert 0 <= pooled[name] <= 1
        assert pooled[name] == pytest.approx(sum(row[name] * row["photos"] for row in result.folds) / pooled["photos"])
    gain = pooled["kd_gain_points"]
    assert gain["value"] == pytest.approx(100 * (pooled["student"] - pooled["student_alone"]))
    assert gain["interval"][0] <= gain["value"] <= gain["interval"][1]
    document = json.loads(out.read_text())
    assert document["pooled"] == json.loads(json.dumps(pooled))
    # What it estimated: these photos, this recipe; a short schedule on 2 folds is a quick look.
    assert document["samples_sha256"] == crossval.samples_digest(pipeline.ingest)
    assert document["machine"]["cpu"] and document["machine"]["cores"] >= 1  # estimates repeat on one machine
    assert document["recipe"] == json.loads(json.dumps(crossval.recipe(pipeline.params)))
    assert document["pipeline_schedule"] is False
    assert document["every_day"] is (pooled["days_possible"] == 2)
    assert "pooled" in crossval.table(result) and "KD gain (student - student_alone)" in crossval.table(result)


def test_by_default_a_fold_gets_the_pipelines_photo_views_per_epoch_and_photos_per_batch(pipeline):
    import pandas as pd

    from skyedge.data.dataset import Ingested

    params = pipeline.params.model_copy(update={"data": pipeline.params.data.model_copy(update={"photo_share": 0.1})})
    stations, photos = 900, 100  # an epoch of the pipeline: 900 station hours + 100 photo views (10 %)
    samples = pd.DataFrame({
        "split": "train",
        "image_idx": [-1] * stations + list(range(photos)),
        "sky_label": [-1] * stations + [k % 5 for k in range(photos)],
        "labelled": [0] * stations + [1] * photos,
    })
    data = Ingested(samples=samples, windows=np.zeros((len(samples), 1, 1)), images=np.zeros((photos, 1, 1, 3)), preprocessing={})
    views, batch = crossval.pipeline_schedule(data, params)
    assert views == pytest.approx(100) and batch == max(8, round(0.1 * params.distill.batch_size))  # at least 8 a batch
    assert crossval.repeats_for(views, 20) == 5  # a fold that trains on 20 photos shows each 5x
    assert crossval.repeats_for(views, 400) == 1
    # The synthetic default has a photo every hour: photos are not repeated, batches are the distill stage's.
    assert crossval.pipeline_schedule(load_ingested(pipeline.ingest), pipeline.params) == (None, pipeline.params.distill.batch_size)
    assert crossval.repeats_for(None, 20) == 1


def test_the_bench_counts_the_estimate_only_for_its_runs_photos_and_recipe_at_the_pipelines_schedule(pipeline):
    from skyedge.evaluation import bench

    digest, recipe = crossval.samples_digest(pipeline.ingest), crossval.recipe(pipeline.params)
    pooled = {"photos": 368, "days": 6, "kd_gain_points": {"value": 3.5, "interval": [0.4, 7.1]}, "teacher_headroom_points": {"value": 2.2, "interval": [-1.0, 5.0]}}
    estimate = {"samples_sha256": digest, "recipe": recipe, "pipeline_schedule": True, "every_day": True, "pooled": pooled}
    row = bench.leave_one_day_out_target(estimate, digest, recipe)
    assert (row["met"], row["value"], row["interval"]) == (True, 3.5, [0.4, 7.1])
    assert "368 photos of 6 held-out days" in row["detail"]
    small_gain = {**estimate, "pooled": {**pooled, "kd_gain_points": {"value": 1.9, "interval": [-3.0, 6.0]}}}
    assert bench.leave_one_day_out_target(small_gain, digest, recipe)["met"] is False
    # Measured on another CPU: it still counts, and the row says where it came from.
    here, there = {"cpu": "Intel(R) Xeon(R) Processor"}, {"cpu": "AMD EPYC 9B14"}
    elsewhere = bench.leave_one_day_out_target({**estimate, "machine": there}, digest, recipe, here)
    assert elsewhere["met"] is True and "measured on AMD EPYC 9B14, not this CPU" in elsewhere["detail"]
    assert "not this CPU" not in bench.leave_one_day_out_target({**estimate, "machine": here}, digest, recipe, here)["detail"]
    assert "a machine it does not record" in bench.leave_one_day_out_target(estimate, digest, recipe, here)["detail"]

    other_alpha = pipeline.params.model_copy(update={"distill": pipeline.params.distill.model_copy(update={"kd_alpha": 0.123})})
    for unusable, sha, current, why in (
        (None, digest, recipe, "run make bench-crossval"),
        (estimate, "0" * 64, recipe, "other photos"),
        (estimate, digest, crossval.recipe(other_alpha), "the recipe"),
        ({**estimate, "pipeline_schedule": False}, digest, recipe, "quick look"),
        ({**estimate, "every_day": False}, digest, recipe, "quick look"),
    ):
        row = bench.leave_one_day_out_target(unusable, sha, current)
        assert row["met"] is None and row["value"] is None and why in row["detail"]


def test_without_a_pipeline_run_it_says_what_to_run(tiny, tmp_path):
    with pytest.raises(SystemExit, match=r"samples.csv not found: run the pipeline first \(make run"):
        crossval.run(tmp_path, tiny, tmp_path / "crossval.json")
    assert not (tmp_path / "crossval.json").exists()


def test_a_quick_look_holds_out_only_the_days_asked_for_and_names_the_possible_ones(pipeline, tmp_path):
    data = load_ingested(pipeline.ingest)
    rows = crossval.labelled_photos(data)
    possible = crossval.held_out_days(data.samples["day"].to_numpy()[rows], data.samples["sky_label"].to_numpy()[rows])
    with pytest.raises(ValueError, match="the days that can be held out are"):
        crossval.run(pipeline.root, pipeline.params, tmp_path / "crossval.json", repeats=1, batch_size=16, only_days=["1999-01-01"])
    result = crossval.run(pipeline.root, pipeline.params, tmp_path / "crossval.json", repeats=1, batch_size=16, only_days=[possible[-1]])
    assert [row["day"] for row in result.folds] == [possible[-1]]
    assert json.loads((tmp_path / "crossval.json").read_text())["every_day"] is (len(possible) == 1)


def test_the_teacher_taught_column_is_the_teachers_accuracy_on_the_views_distillation_shows_it(pipeline):
    """Without augmentation those views are the clean photos, so it is the teacher's own accuracy;
    so it is when the augmentation only changes colours and the teacher's view is `geometric`."""
    from skyedge.train import checkpoints
    from skyedge.train.training import NO_AUGMENTATION, Augmentation, sky_hits

    data = load_ingested(pipeline.ingest)
    teacher = checkpoints.load_module(pipeline.embed / "teacher.pt")
    rows = crossval.labelled_photos(data)[:40]
    clean = crossval.taught_hits(teacher, data, rows, NO_AUGMENTATION, "augmented", seed=0)
    assert np.array_equal(clean, sky_hits(teacher, data, rows))
    colours_only = Augmentation(dihedral=False, crop_scale=1.0, exposure=0.3, white_balance=0.1, blur=0.5, noise=0.05, mixup=0.4)
    assert np.array_equal(crossval.taught_hits(teacher, data, rows, colours_only, "geometric", seed=0), clean)
    darkened = crossval.taught_hits(teacher, data, rows, colours_only, "augmented", seed=0)
    assert darkened.shape == clean.shape and not np.array_equal(darkened, clean)  # noisy, darkened views: not all named alike

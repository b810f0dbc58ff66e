"""`make bench-crossval`: leave-one-capture-day-out estimate of the sky recipe, with and without KD.

A fixed split holds out little when a class has few capture days. SWIMCAT has 1 to 3 per class:
its test split keeps 57 unseen photos of 2 days, its val split one class of one day. Here every
capture day of the labelled photos is held out in turn, when its class also has photos of
another day (a class seen on one day only cannot be estimated on a day training never saw).

Each fold runs the pipeline's own recipe on the photos of the other days only: the teacher as the
embed stage trains it (skyedge.train.training.train_teacher: fine-tune, heads on cached views;
an ensemble of such teachers with `embed.ensemble`),
then the student with it and without it as the distill stage does (same augmentation, KD loss,
epochs and seed). Each is scored on the held-out day's photos. Station rows are left out: they
carry no sky label, and the sky head is what distillation changes; so are photos nobody labelled
(the distill stage also distils on those: SWIMCAT has none). By default a fold sees as many
photo views per epoch, in batches of as many photos, as the pipeline's epochs do
(`pipeline_schedule`: photos repeat until they are `data.photo_share` of an epoch there). A short
schedule (`--repeats`, `--batch-size`) is a quick look only: from-scratch students with few steps
fall back on the majority class, and the estimate says more about the schedule than the recipe. So
is holding out some days only (`--days`, `--max-folds`): the estimate needs every day.

Beside the three models' accuracies, `teacher_taught`: the fold's teacher on the held-out photos
as distillation shows them to it (`distill.teacher_view`: the student's augmented view, or its
geometry alone; mixup aside, which has no single class), averaged over TAUGHT_VIEWS draws. A
teacher right on clean photos can be wrong on the views it teaches on.

Prints a table per fold and pooled; the KD gain (student - student_alone) and the teacher's
headroom over the student alone come with 95% intervals that resample whole days. Writes
reports/crossval.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from skyedge.core import inference, paths
from skyedge.core.config import Params, TeacherView, load_params
from skyedge.core.tables import Column, text_table
from skyedge.data.dataset import Ingested, load_ingested
from skyedge.evaluation import metrics
from skyedge.train import models
from skyedge.train.training import Augmentation, Batches, FitConfig, Teacher, class_balanced_weights, fit, resolve_device, sky_hits, train_teacher

MODELS = ("teacher", "student_alone", "student")
COLUMNS = (*MODELS, "teacher_taught")  # the last is no model: the teacher on the views it teaches on
BOOTSTRAP = 500
TAUGHT_VIEWS = 5


def labelled_photos(data: Ingested) -> np.ndarray:
    """Rows of photos with a sky label (any split: every day takes its turn)."""
    samples = data.samples
    labelled = samples["labelled"].to_numpy(bool) if "labelled" in samples else samples["sky_label"].to_numpy() >= 0
    return np.flatnonzero((samples["image_idx"].to_numpy() >= 0) & labelled & (samples["sky_label"].to_numpy() >= 0))


def held_out_days(days: np.ndarray, labels: np.ndarray) -> list[str]:
    """Days that can be held out: those with a photo of a class that also has another day."""
    classes_per_day = {day: set(labels[days == day]) for day in np.unique(days)}
    other_days = {label: set(days[labels == label]) for label in np.unique(labels)}
    return sorted(day for day, classes in classes_per_day.items() if any(other_days[label] - {day} for label in classes))


def pipeline_schedule(data: Ingested, params: Params) -> tuple[float | None, int]:
    """(photo views per epoch, photos per batch) of the pipeline's training epochs: with
    photo_share s, an epoch holds s / (1 - s) photo views per row without a photo, and a batch
    about s x batch_size photos. None: photos are not repeated there (each once per epoch)."""
    train = data.split("train")
    has_photo = data.samples["image_idx"].to_numpy()[train] >= 0
    share = params.data.photo_share
    if not 0 < share < 1 or has_photo.all():
        return None, params.distill.batch_size
    return share * (~has_photo).sum() / (1 - share), max(8, round(share * params.distill.batch_size))


def repeats_for(views_per_epoch: float | None, training_photos: int) -> int:
    """How often each of a fold's training photos repeats per epoch to give it those views."""
    return 1 if views_per_epoch is None else max(1, round(views_per_epoch / max(1, training_photos)))


def fold_data(data: Ingested, rows: np.ndarray, day: str, repeats: int, balance_classes: bool = False) -> Ingested:
    """The photos of `rows` as an Ingested of their own: every other day's photos train, each
    repeated `repeats` times (with balance_classes, `repeats` x its class_balanced_weights: the
    same views in all, every class an equal share, as the student's draws in the pipeline); the
    test split is `day`'s photos (once each) of the classes that training has (a class seen on
    that day only cannot be learnt from the others)."""
    days, labels = data.samples["day"].to_numpy()[rows], data.samples["sky_label"].to_numpy()[rows]
    training = days != day
    per_photo = repeats * class_balanced_weights(labels[training]) if balance_classes else np.full(training.sum(), repeats)
    order = np.concatenate([np.repeat(rows[training], np.maximum(1, np.round(per_photo)).astype(int)), rows[~training & np.isin(labels, labels[training])]])
    samples = data.samples.iloc[order].reset_index(drop=True)
    held = samples["day"].to_numpy() == day
    samples["split"] = np.where(held, "test", "train")
    samples["day_in_train"] = (~held).astype(int)
    return Ingested(samples=samples, windows=data.windows[order], images=data.images, preprocessing=data.preprocessing)


def fold_pair(params: Params, data: Ingested, rows: np.ndarray, day: str, repeats: int) -> tuple[Ingested, Ingested]:
    """The fold as the teacher and as the students draw it: the same photos, each repeated as
    embed.balance_classes and distill.balance_classes say."""
    return fold_data(data, rows, day, repeats, params.embed.balance_classes), fold_data(data, rows, day, repeats, params.distill.balance_classes)


def run_fold(params: Params, teacher_fold: Ingested, student_fold: Ingested, batch_size: int) -> dict[str, np.ndarray]:
    """Teacher (on `teacher_fold`: the fold's photos drawn as embed.balance_classes says),
    student_alone and student (on `student_fold`: the same photos, drawn as
    distill.balance_classes says) trained on the training photos, scored on the test photos.
    No photo is dropped (image_dropout 0): every row here is a photo, and the fold has no
    validation rows, so each model keeps its last epoch."""
    embed, distill, common = params.embed, params.distill, params.common
    augmentation, device = Augmentation(**params.augment.model_dump()), resolve_device(common.device)
    window, temp_std = params.data.window_hours, teacher_fold.preprocessing["sensors"]["std"][0]
    teacher, _ = train_teacher(embed, teacher_fold, FitConfig(embed.finetune_epochs, batch_size, embed.lr, common.seed, 0.0, 0.0, augmentation, device), window)
    hits = {"teacher": sky_hits(teacher, teacher_fold, teacher_fold.split("test"))}
    hits["teacher_taught"] = taught_hits(teacher, teacher_fold, teacher_fold.split("test"), augmentation, distill.teacher_view, common.seed)
    student_config = FitConfig(distill.epochs, batch_size, distill.lr, common.seed, 0.0, 0.0, augmentation, device)
    for name, kd in (("student_alone", None), ("student", Teacher(teacher, distill.kd_temperature, distill.kd_alpha, distill.embed_weight, distill.teacher_view))):
        torch.manual_seed(common.seed)  # both start from the same weights
        student = models.build_student(distill.student, distill.width, window, temp_std)
        fit(student, student_fold, student_config, f"{name} (fold)", teacher=kd)
        hits[name] = sky_hits(student, student_fold, student_fold.split("test"))
    return hits


@torch.no_grad()
def taught_hits(teacher: torch.nn.Module, data: Ingested, rows: np.ndarray, augmentation: Augmentation, view: TeacherView, seed: int) -> np.ndarray:
    """Per labelled photo of `rows`: the share of TAUGHT_VIEWS views of it, augmented as the teacher
    sees them in distillation (`view`, mixup aside), that the teacher names right."""
    teacher.eval()
    batches, rng = Batches(data, rows), np.random.default_rng(seed)
    unmixed = replace(augmentation, mixup=0.0)
    labelled = data.samples["sky_label"].to_numpy()[rows] >= 0
    right = np.zeros(int(labelled.sum()))
    for _ in range(TAUGHT_VIEWS):
        batch = batches.batch(rows, augmentation=unmixed, rng=rng, teacher_view=view)
        image = batch.get("teacher_image", batch["image"])
        predicted = teacher(image, batch["image_present"], batch["sensors"])[0].argmax(1)
        right += (predicted == batch["sky"]).numpy()[labelled]
    return right / TAUGHT_VIEWS


@dataclass
class Estimate:
    folds: list[dict]  # one row per held-out day: photos and each model's accuracy
    pooled: dict  # each model's accuracy over every held-out photo, and the differences with intervals


def estimate(
    params: Params, data: Ingested, views_per_epoch: float | None, batch_size: int, max_folds: int | None = None, repeats: int | None = None, only_days: list[str] | None = None
) -> Estimate:
    """Every fold's scores and the pooled estimate; each fold's photos repeat `repeats` times per
    epoch, else as often as gives `views_per_epoch`."""
    rows = labelled_photos(data)
    days, labels = data.samples["day"].to_numpy()[rows], data.samples["sky_label"].to_numpy()[rows]
    possible_days = held_out_days(days, labels)
    unknown = sorted(set(only_days or []) - set(possible_days))
    if unknown:
        raise ValueError(f"crossval: cannot hold out {unknown}: the days that can be held out are {possible_days}")
    chosen_days = [day for day in possible_days if only_days is None or day in only_days][:max_folds]
    fold_rows, hits, photo_days = [], {name: [] for name in COLUMNS}, []
    for number, day in enumerate(chosen_days, 1):
        print(f"crossval: fold {number}/{len(chosen_days)}, day {day} held out", flush=True)
        fold_repeats = repeats or repeats_for(views_per_epoch, int((days != day).sum()))
        fold_hits = run_fold(params, *fold_pair(params, data, rows, day, fold_repeats), batch_size)
        photo_days += [day] * len(fold_hits["teacher"])
        for name in COLUMNS:
            hits[name].append(fold_hits[name])
        fold_rows.append({"day": day, "photos": len(fold_hits["teacher"]), **{name: float(fold_hits[name].mean()) for name in COLUMNS}})
        # An estimate takes an hour or more: each fold's row as soon as it is known, not only at the end.
        print(f"crossval: fold {number}/{len(chosen_days)}, day {day}: " + ", ".join(f"{name} {fold_rows[-1][name]:.3f}" for name in COLUMNS), flush=True)
    pooled_hits = {name: np.concatenate(hits[name]) if hits[name] else np.zeros(0) for name in COLUMNS}
    groups = np.asarray(photo_days)

    def points(better: str, worse: str) -> dict:
        diff = pooled_hits[better] - pooled_hits[worse]
        if not len(diff):
            return {"value": None, "interval": None}
        interval = metrics.bootstrap_ci(lambda idx: 100 * float(diff[idx].mean()), groups, BOOTSTRAP, seed=0)
        return {"value": 100 * float(diff.mean()), "interval": [round(v, 2) for v in interval]}

    pooled = {
        "days": len(chosen_days),
        "days_possible": len(possible_days),
        "photos": len(groups),
        **{name: float(pooled_hits[name].mean()) if len(groups) else None for name in COLUMNS},
        "kd_gain_points": points("student", "student_alone"),
        "teacher_headroom_points": points("teacher", "student_alone"),
    }
    return Estimate(fold_rows, pooled)


def table(result: Estimate) -> str:
    pooled = {"day": "pooled", **{k: result.pooled.get(k) for k in ("photos", *COLUMNS)}}
    columns = [Column("day", align="left"), Column("photos", format="d"), *(Column(name, format=".3f") for name in COLUMNS)]
    lines = [text_table([*result.folds, pooled], columns)]
    for key, label in (("kd_gain_points", "KD gain (student - student_alone)"), ("teacher_headroom_points", "teacher headroom (teacher - student_alone)")):
        entry = result.pooled[key]
        if entry["value"] is not None:
            low, high = entry["interval"]
            lines.append(f"{label}: {entry['value']:+.1f} points, 95% interval [{low:+.1f}, {high:+.1f}] (days resampled)")
    return "\n".join(lines)


def recipe(params: Params) -> dict:
    """What the estimate depends on besides the photos: the embed, distill and augmentation
    sections, the photo share of an epoch and the seed (bench reads an estimate only for these)."""
    return {
        "embed": params.embed.model_dump(),
        "distill": params.distill.model_dump(),
        "augment": params.augment.model_dump(),
        "photo_share": params.data.photo_share,
        "seed": params.common.seed,
    }


def samples_digest(ingest_dir: Path) -> str:
    """sha256 of the ingest's samples.csv: which photos, days, labels and splits the estimate saw."""
    return hashlib.sha256(paths.Ingest(ingest_dir).samples.read_bytes()).hexdigest()


def run(
    data_dir: Path, params: Params, out: Path, repeats: int | None = None, batch_size: int | None = None, max_folds: int | None = None, only_days: list[str] | None = None
) -> Estimate:
    """The estimate on the ingest of `data_dir`; repeats and batch_size default to the pipeline's schedule."""
    ingested = paths.Ingest(data_dir / "ingest")
    if not ingested.samples.exists():
        raise SystemExit(f"crossval: {ingested.samples} not found: run the pipeline first (make run, or make run-real for ../shared), or pass --data")
    torch.set_num_threads(params.common.threads)
    data = load_ingested(ingested.dir)
    views_per_epoch, default_batch = pipeline_schedule(data, params)
    as_pipeline = repeats is None and batch_size in (None, default_batch)  # else a quick look, not the estimate
    batch_size = batch_size or default_batch
    schedule = f"each training photo {repeats}x per epoch" if repeats else f"{views_per_epoch or 'each photo once'} photo views per epoch"
    print(f"crossval: {schedule}, {batch_size} photos per batch", flush=True)
    result = estimate(params, data, views_per_epoch, batch_size, max_folds, repeats, only_days)
    out.parent.mkdir(parents=True, exist_ok=True)
    measured_on = inference.machine()
    document = {"data": str(data_dir.resolve()), "samples_sha256": samples_digest(ingested.dir), "machine": measured_on, "recipe": recipe(params), "pipeline_schedule": as_pipeline, "every_day": result.pooled["days"] == result.pooled["days_possible"], "repeats": repeats, "views_per_epoch": views_per_epoch, "batch_size": batch_size, "folds": result.folds, "pooled": result.pooled}
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(inference.machine_line(measured_on))
    print(table(result))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Leave-one-capture-day-out sky accuracy of teacher, student alone and student with KD")
    parser.add_argument("--data", type=Path, default=paths.Workspace().data, help="the data/ directory of the last pipeline run (its ingest)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="the recipe (embed, distill, augment), with its active profile")
    parser.add_argument("--out", type=Path, default=Path("reports/crossval.json"))
    parser.add_argument("--repeats", type=int, default=None, help="views of each training photo per epoch (default: as in the pipeline)")
    parser.add_argument("--batch-size", type=int, default=None, help="photos per batch (default: as in the pipeline)")
    parser.add_argument("--max-folds", type=int, default=None, help="hold out only the first N days (quick look)")
    parser.add_argument("--days", nargs="+", default=None, help="hold out only these capture days, YYYY-MM-DD (quick look)")
    args = parser.parse_args(argv)
    run(args.data, load_params(args.params), args.out, args.repeats, args.batch_size, args.max_folds, args.days)


if __name__ == "__main__":
    main()

"""Composite frames: a real sky photo as the sky of a rendered station frame, the real-photo check
of selective attention (`make bench-attention --photos DIR`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skyedge.core import contract, solar
from skyedge.data import camera
from skyedge.data.dataset import load_ingested
from skyedge.evaluation import attention_bench, composites
from tests.conftest import REPO

# One flat colour per class, so a composite's sky says which photo it shows.
CLASS_COLOURS = {name: (40 * i + 20, 200 - 30 * i, 90) for i, name in enumerate(contract.SKY_CLASSES)}


def photo_folder(root: Path, per_class: int = 2) -> Path:
    """A labelled photo folder in the data contract (index.csv path,label), plus one photo nobody
    labelled and one of a class the contract does not have."""
    (root / "images").mkdir(parents=True)
    rows = ["path,label"]
    for name, colour in CLASS_COLOURS.items():
        for i in range(per_class):
            Image.new("RGB", (125, 125), colour).save(root / "images" / f"{name}_{i}.png")
            rows.append(f"images/{name}_{i}.png,{name}")
    Image.new("RGB", (125, 125), (1, 2, 3)).save(root / "images" / "nobody.png")
    rows += ["images/nobody.png,", "images/nobody.png,fog"]
    (root / "index.csv").write_text("\n".join(rows) + "\n")
    return root


def test_a_composite_shows_the_photo_where_the_mask_is_sky_and_the_station_everywhere_else():
    frame = np.full((8, 8, 3), 7, np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 1:7] = 1
    mask[3, 3] = 0  # a mast in front of the sky
    photo = np.full((20, 20, 3), 200, np.uint8)
    out = camera.composite(frame, mask, photo)
    assert (out[mask == 1] == 200).all() and (out[mask == 0] == 7).all()
    assert (frame == 7).all()  # the rendered frame is not changed in place
    with pytest.raises(ValueError, match="does not match frame"):
        camera.composite(frame, mask[:4], photo)
    with pytest.raises(ValueError, match="no sky pixel"):
        camera.composite(frame, np.zeros((8, 8)), photo)


def test_photos_keep_their_class_in_daytime_test_frames_of_that_class(pipeline, tmp_path):
    data = load_ingested(pipeline.ingest)
    built = composites.build(data, photo_folder(tmp_path / "photos"), "test", seed=0)
    samples = built.data.samples
    hosts, _ = composites.daytime_hosts(data, "test")
    classes_with_hosts = [name for k, name in enumerate(contract.SKY_CLASSES) if len(hosts[k])]
    assert len(samples) == 2 * len(classes_with_hosts) > 0
    # Every photo is accounted for: composited, or skipped with its reason.
    assert len(samples) + sum(built.skipped.values()) == 2 * len(contract.SKY_CLASSES) + 2
    assert built.skipped["no sky class (unlabelled or unknown)"] == 2
    for i, photo in enumerate(built.photos):
        name = Path(photo).stem.rsplit("_", 1)[0]
        assert contract.SKY_CLASSES[samples["sky_label"].iloc[i]] == name
        assert (built.data.images[i][built.masks[i]] == CLASS_COLOURS[name]).all()  # the sky is the photo's
    assert (samples["split"] == "test").all()
    for _, row in samples.iterrows():
        elevation = solar.sun_position(np.array([row["hour"]]), row["latitude"], row["longitude"]).elevation_deg[0]
        assert elevation > composites.DAYTIME_ELEVATION_DEG


def test_an_empty_photo_folder_is_a_clear_error(pipeline, tmp_path):
    with pytest.raises(FileNotFoundError, match="index.csv"):
        composites.build(load_ingested(pipeline.ingest), tmp_path)


def test_the_bench_scores_full_frame_and_attention_students_on_composites(pipeline, tmp_path):
    """`--costs --photos`: every shipped student row carries its sky accuracy on composite frames,
    and the attention net's mask is scored against the composites' true sky."""
    out = tmp_path / "bench_attention.json"
    params_file = tmp_path / "params.yaml"
    params_file.write_text(json.dumps(pipeline.params.model_dump(mode="json")))  # tiny, overlay applied again
    (tmp_path / "profiles").symlink_to(REPO / "profiles")
    attention_bench.main([
        "--ingest", str(pipeline.ingest), "--attend", str(pipeline.attend), "--embed", str(pipeline.embed),
        "--params", str(params_file), "--seeds", "2", "--costs", "--crop-sizes", "24",
        "--photos", str(photo_folder(tmp_path / "photos")), "--out", str(out),
    ])
    result = json.loads(out.read_text())["costs"]
    assert {row["view"] for row in result["rows"]} == set(attention_bench.VIEWS)
    # Each shipped row is the mean of its seeds' rows.
    assert result["seeds"] == [0, 1] and len(result["per_seed"]) == 2 * len(result["rows"])
    full = [r for r in result["per_seed"] if r["view"] == "full_frame" and r["teacher"]]
    mean_full = next(r for r in result["rows"] if r["view"] == "full_frame" and r["teacher"])
    assert mean_full["sky_accuracy"] == pytest.approx(np.mean([r["sky_accuracy"] for r in full])) and mean_full["seeds"] == 2
    assert all(0 <= row["composite_sky_accuracy"] <= 1 and 0 <= row["composite_sky_accuracy_no_image"] <= 1 for row in result["rows"])
    report = result["composites"]
    assert report["frames"] > 0 and 0 <= report["teacher_sky_accuracy"] <= 1
    assert 0 < report["mask_iou"]["mean"] <= 1

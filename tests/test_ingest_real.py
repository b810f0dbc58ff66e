"""ingest on the real datasets in ../shared/datasets (skipped cleanly without them)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import shared_dataset

from skyedge.core.contract import SKY_CLASSES
from skyedge.data.samples import content_hash
from stages import ingest
from tests.conftest import data_params, folder_source, ingest_params

DATA = data_params(image_size=32, window_hours=6)


def run(folders: list[Path], out: Path, **overrides) -> dict:
    params = ingest_params([folder_source(f) for f in folders], **overrides)
    return ingest.run(params, DATA, out)


def beijing_subset(tmp_path: Path, stations: int = 2, hours: int = 2000) -> Path:
    """The first `hours` rows of a few real station files (a fast subset; the data is not modified)."""
    folder = tmp_path / "beijing"
    folder.mkdir()
    for path in sorted(shared_dataset("beijing").glob("*.csv"))[:stations]:
        with path.open() as source:
            lines = [next(source) for _ in range(hours + 1)]
        (folder / path.name).write_text("".join(lines))
    return folder


def test_real_swimcat_and_a_beijing_subset(tmp_path):
    swimcat = shared_dataset("swimcat")
    report = run([beijing_subset(tmp_path), swimcat], tmp_path / "out", great_expectations=False)
    total = report["total"]
    assert total["received"] == total["accepted"] + total["quarantined"]
    assert report["sources"][str(swimcat)]["received"] == 642
    assert len(report["sources"][str(swimcat)]["ignored_files"]) == 5  # the *_info.csv camera logs
    samples = pd.read_csv(tmp_path / "out" / "samples.csv")
    photos = samples[samples["station_id"].isna()]
    assert len(photos) == 642 - report["split_checks"]["photo_duplicates_dropped"]
    assert not photos["day"].str.startswith("unknown").any()  # capture days from metadata.csv
    # Split per class by whole capture days (skyedge/data/splits.py class_photo_split): no day is
    # on two sides; every class trains; a class with more than one day has a day held out for test.
    assert photos.groupby("day")["split"].nunique().max() == 1
    assert photos.loc[photos["split"] == "train", "sky_label"].nunique() == 5
    several_days = photos.groupby("sky_label")["day"].nunique().pipe(lambda n: set(n.index[n > 1]))
    assert set(photos.loc[photos["split"] == "test", "sky_label"]) == several_days
    assert (photos.loc[photos["split"].isin(["val", "test"]), "day_in_train"] == 0).all()
    single = {SKY_CLASSES.index(label) for label in report["classes_without_estimate"]}
    assert single == set(photos["sky_label"]) - several_days and len(single) == 2  # patterned, thick_dark
    images = np.load(tmp_path / "out" / "images.npy")
    digests = [content_hash(images[i]) for i in photos["image_idx"]]
    assert photos.assign(md5=digests).groupby("md5")["split"].nunique().max() == 1
    assert report["split_checks"]["stations_with_overlap"] == 0
    stations = samples[samples["station_id"].notna()]
    assert set(stations["station_id"]) == {"beijing-aotizhongxin", "beijing-changping"}
    assert stations["temp_h1"].isna().sum() >= 2  # the end of each record: masked, never invented


@pytest.mark.slow
def test_all_of_shared_datasets_in_under_60_s(tmp_path):
    beijing, swimcat = shared_dataset("beijing"), shared_dataset("swimcat")
    started = time.perf_counter()
    report = run([beijing, swimcat], tmp_path / "out")
    seconds = time.perf_counter() - started
    assert seconds < 60, f"ingest took {seconds:.1f} s"
    assert report["total"]["received"] == 236736 + 9 + 642  # records, stations.csv rows, photos
    assert report["total"]["received"] == report["total"]["accepted"] + report["total"]["quarantined"]
    assert all(not suite["drift"] for suite in report["validation"]["suites"].values())
    assert (tmp_path / "out" / report["validation"]["data_docs"]).is_file()

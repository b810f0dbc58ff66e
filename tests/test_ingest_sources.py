"""ingest sources and suites: S3 over moto's real server, the GE suites vs the quarantine, garbage rows."""

from __future__ import annotations

import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from test_ingest import NOW, quarantine, station_rows, write_csv

from skyedge.core import s3
from skyedge.core.contract import STATION_COLUMNS
from skyedge.data import sources, validation
from stages import ingest
from tests.conftest import data_params, folder_source, ingest_params, s3_source

DATA = data_params(image_size=32, window_hours=3)


def upload_folder(client, bucket: str, prefix: str, folder: Path) -> None:
    client.create_bucket(Bucket=bucket)
    for path in folder.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


def mixed_folder(root: Path) -> Path:
    """Station CSV with photos + a labelled index, both layouts in one prefix."""
    (root / "img").mkdir(parents=True)
    rows = station_rows(6)
    for i, row in enumerate(rows[:3]):
        Image.new("RGB", (40, 40), (i * 40, 10, 10)).save(root / "img" / f"{i}.png")
        row["image"] = f"img/{i}.png"
    write_csv(root / "st.csv", rows)
    Image.new("RGB", (40, 40), (0, 0, 255)).save(root / "img" / "sky.png")
    pd.DataFrame([{"path": "img/sky.png", "label": "clear_sky"}]).to_csv(root / "index.csv", index=False)
    return root


def test_an_s3_prefix_is_ingested_like_the_same_folder(aws_env, tmp_path):
    client = s3.make_client(endpoint_url=aws_env["AWS_ENDPOINT_URL"])
    upload_folder(client, "sky", "stations/v1", mixed_folder(tmp_path / "src"))
    params = ingest_params([s3_source("s3://sky/stations/v1")], great_expectations=False, max_quarantine_fraction=1.0)
    report = ingest.run(params, DATA, tmp_path / "out", now=NOW)
    entry = report["sources"]["s3://sky/stations/v1"]
    assert entry == {"received": 10, "accepted": 10, "quarantined": 0, "by_rule": {}}
    assert np.load(tmp_path / "out" / "images.npy").shape[0] == 4


def test_a_missing_bucket_is_a_clear_error_and_a_nonzero_exit(aws_env, tmp_path):
    params = ingest_params([s3_source("s3://no-such-bucket/x", endpoint_url=aws_env["AWS_ENDPOINT_URL"])], great_expectations=False)
    with pytest.raises(sources.S3SourceError, match=r"s3://no-such-bucket/x: bucket 'no-such-bucket' does not exist.*check the bucket name"):
        ingest.run(params, DATA, tmp_path / "out", now=NOW)
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "ingest", "s3://no-such-bucket/x", "--out", str(tmp_path / "cli")],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode != 0
    assert "s3://no-such-bucket/x: bucket 'no-such-bucket' does not exist" in result.stderr


class FlakyClient:
    """The real client, except download_file raises for chosen keys the first `failures[key]` times."""

    def __init__(self, client, failures: dict[str, int]):
        self.client, self.failures, self.calls = client, dict(failures), {}

    def download_file(self, bucket, key, filename, **kwargs):
        self.calls[key] = self.calls.get(key, 0) + 1
        if self.calls[key] <= self.failures.get(key, 0):
            # Write part of the object first: a download cut mid-stream.
            Path(filename).write_bytes(b"partial")
            raise ConnectionResetError("connection reset mid-download")
        return self.client.download_file(bucket, key, filename, **kwargs)

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_an_object_failing_mid_download_is_retried_then_quarantined(aws_env, tmp_path, monkeypatch):
    real = s3.make_client(endpoint_url=aws_env["AWS_ENDPOINT_URL"])
    upload_folder(real, "flaky", "p", mixed_folder(tmp_path / "src"))
    flaky = FlakyClient(real, {"p/img/0.png": 1, "p/img/1.png": 99, "p/img/sky.png": 99})
    monkeypatch.setattr(sources, "client_for", lambda source: flaky)
    params = ingest_params([s3_source("s3://flaky/p")], s3_attempts=3, s3_backoff_seconds=0.01, great_expectations=False, max_quarantine_fraction=1.0)
    report = ingest.run(params, DATA, tmp_path / "out", now=NOW)
    assert flaky.calls["p/img/0.png"] == 2  # failed once, retried, arrived
    assert flaky.calls["p/img/1.png"] == 3  # every attempt failed
    bad = quarantine(tmp_path / "out")
    assert sorted(bad["file"]) == ["s3://flaky/p/img/1.png", "s3://flaky/p/img/sky.png"]
    assert set(bad["rule"]) == {"object_downloaded"} and bad["value"].str.contains("3 attempts: ConnectionResetError").all()
    total = report["total"]
    assert total["received"] == 10 and total["quarantined"] == 2 and total["accepted"] == 8
    samples = pd.read_csv(tmp_path / "out" / "samples.csv")
    assert (samples["station_id"] == "st-1").sum() == 6  # the row whose photo failed kept its sensors
    assert not list((tmp_path / "out" / "s3-cache").rglob("*.part"))


# --- the GE suites and the quarantine agree -------------------------------------------------------


def test_the_ge_suites_count_what_the_quarantine_masks_count_and_data_docs_are_linked(tmp_path):
    rows = station_rows(30)
    bad = {3: ("temperature_c", "-95"), 5: ("pressure_hpa", "101300"), 7: ("timestamp", "2030-01-01T00:00:00Z"),
           9: ("station_id", ""), 11: ("humidity_pct", "x"), 13: ("timestamp", "2024-06-01 00:00")}
    for index, (column, value) in bad.items():
        rows[index][column] = value
    rows.append(dict(rows[0]))
    write_csv(tmp_path / "src" / "st.csv", rows)
    Image.new("RGB", (8, 8)).save(tmp_path / "src" / "tiny.png")
    pd.DataFrame([{"path": "tiny.png", "label": "clear_sky"}]).to_csv(tmp_path / "src" / "index.csv", index=False)
    params = ingest_params([folder_source(tmp_path / "src")], max_quarantine_fraction=1.0)
    report = ingest.run(params, DATA, tmp_path / "out", now=NOW)
    checked = report["validation"]
    assert all(not suite["drift"] for suite in checked["suites"].values()), checked
    ge = {**checked["suites"]["station_records"]["unexpected"], **checked["suites"]["image_metadata"]["unexpected"]}
    quarantined = report["total"]["by_rule"]
    # Where rules do not overlap on a row, GE's count is the quarantine's count.
    for rule in ("temperature_c_in_range", "pressure_hpa_unit_pa", "timestamp_not_future", "station_id_present",
                 "humidity_pct_numeric", "timestamp_has_offset"):
        assert ge[rule] == quarantined[rule] == 1, rule
    assert ge["image_size_usable"] == 2 and quarantined["image_size_usable"] == 1  # width and height expectations
    assert ge["unique_station_timestamp"] == 2 and quarantined["unique_station_timestamp"] == 1  # GE counts both copies
    assert (tmp_path / "out" / checked["data_docs"]).is_file()
    assert "station_records" in (tmp_path / "out" / checked["summary_html"]).read_text()


# --- garbage never crashes ingest -------------------------------------------------------------------

garbage_field = st.one_of(
    st.text(alphabet=string.printable.replace("\n", "").replace("\r", ""), max_size=12),
    st.sampled_from(["", "nan", "inf", "-1e309", "1e5", "2024-06-01T00:00:00Z", "9999-99-99T99:99:99Z", "\x00", "é", "NULL"]),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)
garbage_row = st.lists(garbage_field, min_size=0, max_size=len(STATION_COLUMNS) + 2)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.lists(garbage_row, max_size=8), raw_bytes=st.binary(max_size=40))
def test_random_garbage_rows_never_crash_and_every_item_is_accounted_for(tmp_path_factory, garbage, raw_bytes):
    root = tmp_path_factory.mktemp("garbage")
    good = station_rows(8)
    lines = [",".join(STATION_COLUMNS).encode()] + [",".join(r[c] for c in STATION_COLUMNS).encode() for r in good]
    lines += [",".join(fields).encode("utf-8", errors="surrogatepass") for fields in garbage] + [raw_bytes.replace(b"\n", b" ")]
    (root / "src").mkdir()
    (root / "src" / "st.csv").write_bytes(b"\n".join(lines) + b"\n")
    params = ingest_params([folder_source(root / "src")], great_expectations=False, max_quarantine_fraction=1.0)
    report = ingest.run(params, DATA, root / "out", now=NOW)
    total = report["total"]
    assert total["received"] == total["accepted"] + total["quarantined"]
    assert total["accepted"] >= 8 - sum(1 for fields in garbage if len(fields) == len(STATION_COLUMNS))  # good rows kept
    assert len(quarantine(root / "out")) == total["quarantined"]


def test_ge_runs_on_chunks_and_sums_them_into_one_result_per_suite(tmp_path, monkeypatch):
    rows = station_rows(40)
    rows[3]["temperature_c"] = "-95"
    rows[30]["humidity_pct"] = "x"
    write_csv(tmp_path / "src" / "st.csv", rows)
    monkeypatch.setattr(validation, "GE_CHUNK_ROWS", 16)
    report = ingest.run(ingest_params([folder_source(tmp_path / "src")], max_quarantine_fraction=1.0), DATA, tmp_path / "out", now=NOW)
    suite = report["validation"]["suites"]["station_records"]
    assert suite["chunks"] == 3 and suite["rows"] == 40 and not suite["drift"] and not suite["success"]
    assert suite["unexpected"] == {"temperature_c_in_range": 1, "humidity_pct_numeric": 1} == report["total"]["by_rule"]
    docs = tmp_path / "out" / report["validation"]["data_docs"]
    pages = [p.read_text() for p in docs.parent.rglob("*.html") if "station_records" in str(p) and "validations" in str(p)]
    assert len(pages) == 1  # one summed result per suite, not a page per chunk

"""ingest streams: its peak memory does not grow with the records (skyedge.data.ingest's module doc)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
HOURS = 3000  # per station: more stations is how the fleet grows
STATUS = Path("/proc/self/status")
# Both ingests in one fresh interpreter, after the imports (Great Expectations alone peaks at
# about 230 MB while importing, which would hide any growth): the peak RSS (VmHWM) is reset
# before each run (/proc/self/clear_refs, Linux) and each run's growth above its start reported.
CHILD = """
import json, sys
from pathlib import Path
import pandas as pd
from skyedge.data import validation
from stages import ingest
from tests.conftest import data_params, folder_source, ingest_params

def rss(field):
    return next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field))

now = pd.Timestamp("2025-01-01T00:00:00Z")
validation.station_rules(now)  # imports Great Expectations
results = []
for folder in sys.argv[1:]:
    params = ingest_params([folder_source(folder)], great_expectations=False, max_quarantine_fraction=1.0)
    Path("/proc/self/clear_refs").write_text("5")
    start = rss("VmRSS:")
    report = ingest.run(params, data_params(image_size=32, window_hours=6), Path(folder + "-out"), now=now)
    results.append({"received": report["total"]["received"], "growth_bytes": rss("VmHWM:") - start})
print(json.dumps(results))
"""


def write_stations(folder: Path, stations: int, hours: int = HOURS) -> int:
    """`stations` CSVs of `hours` hourly rows each (varied readings, a few gaps); returns the rows."""
    folder.mkdir(parents=True)
    stamps = pd.date_range("2020-01-01T00:00:00Z", periods=hours, freq="h").strftime("%Y-%m-%dT%H:%M:%SZ")
    rng = np.random.default_rng(0)
    for s in range(stations):
        temperature = 10 + 8 * np.sin(np.arange(hours) / 24 * 2 * np.pi) + rng.normal(0, 1, hours)
        lines = ["station_id,timestamp,temperature_c,pressure_hpa,humidity_pct,wind_speed_ms,wind_dir_deg,precip_mm"]
        lines += [
            f"st-{s:03d},{stamp},{t:.1f},{1010 + (i % 17):.1f},{50 + (i % 40)},{(i % 9) * 0.5:.1f},{(i * 7) % 360},{0.4 if i % 31 == 0 else 0.0}"
            if i % 97 else f"st-{s:03d},{stamp},,,,,,"
            for i, (stamp, t) in enumerate(zip(stamps, temperature))
        ]
        (folder / f"st-{s:03d}.csv").write_text("\n".join(lines) + "\n")
    return stations * hours


def growth(*folders: Path) -> list[dict]:
    result = subprocess.run([sys.executable, "-c", CHILD, *map(str, folders)], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not STATUS.exists(), reason="reads the peak RSS from /proc (Linux)")
def test_peak_memory_does_not_grow_with_the_records(tmp_path):
    write_stations(tmp_path / "warm-up", 1, hours=500)  # first-use costs (lazy imports, caches) are paid here
    small = write_stations(tmp_path / "n", 2)
    large = write_stations(tmp_path / "4n", 8)
    _, first, second = growth(tmp_path / "warm-up", tmp_path / "n", tmp_path / "4n")
    assert (first["received"], second["received"]) == (small, large)
    grown = second["growth_bytes"] - first["growth_bytes"]
    # Holding the records (the ingest before streaming) costs about 3.5 kB each, 60 MB more for
    # these 18k more records; streaming keeps it to allocator noise.
    print(first, second)
    assert grown < 500 * (large - small), f"peak RSS grew {grown / 1e6:.1f} MB more for {large - small} more records ({first}, {second})"
    samples = pd.read_csv(tmp_path / "4n-out" / "samples.csv", usecols=["station_id", "split"])
    assert len(samples) == large and samples.groupby("station_id")["split"].nunique().min() == 4  # train, val, test, buffer

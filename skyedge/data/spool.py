"""What ingest keeps between its passes, on disk: accepted records per station, accepted photos.

Readers (skyedge.data.read, skyedge.data.fleet) hand the `Intake` each validated chunk. The
intake drops a (station, hour) it has already accepted (`unique_station_timestamp`: within a
chunk the rule table keeps the first row, across chunks, files and sources a bitmap of accepted
hours per station does, 8 kB per station and 7.5 years), decodes the photos the chunk's rows name
(each path once, validated by the image suite in one frame per chunk), and appends the records,
as fixed-size binary rows (RECORD, 70 bytes), to one spool file per station. Photos' pixels go to
one spool file; in memory stays one small entry per photo (its path, spool slot, source and index
row: label and capture time), which photo samples and their split need.

Later passes read one station at a time (`station_records`), so memory follows the largest
station, not the data. `NpyWriter` writes a .npy of known shape row block by row block.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from skyedge.core.contract import SENSOR_COLUMNS, SKY_CLASSES, STATION_ID, TIMESTAMP
from skyedge.data import validation
from skyedge.data.read import EMPTY_META, IMAGE_META_COLUMNS, IndexRow, Loader, Outcome, image_detail

RECORD = np.dtype([("hour", "<i8"), ("us", "<i8"), *[(column, "<f8") for column in SENSOR_COLUMNS], ("source", "<i2"), ("image", "<i4")])
_BLOCK_BITS = 16  # hours per dedup bitmap: 2**16 (about 7.5 years), 8 kB


@dataclass
class PhotoEntry:
    """An accepted photo: where its pixels are in the spool, where it came from and what its index
    row said (None: no index row names it)."""

    slot: int
    source: str
    index: IndexRow | None
    with_record: bool = False


class Intake:
    """Accepted records and photos of every source, spooled under `work` (see module doc)."""

    def __init__(self, work: Path, image_size: int, runner: validation.SuiteRunner | None = None):
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.image_size = image_size
        self.runner = runner
        self.stations: dict[str, int] = {}  # station_id -> number of its spool file
        self.sources: list[str] = []
        self.photos: dict[str, PhotoEntry] = {}  # accepted photos by path
        self.rejected_photos: set[str] = set()  # paths already counted and quarantined
        self.records = 0
        self.newest_us: dict[str, int] = {}  # per source: the latest accepted record's time
        self._seen: dict[tuple[int, int], np.ndarray] = {}
        self._pixels = (self.work / "pixels.bin").open("w+b")
        self._slots = 0
        self._image_rules = validation.image_rules()

    @property
    def pixel_bytes(self) -> int:
        return self.image_size * self.image_size * 3

    def close(self) -> None:
        self._pixels.close()

    # --- records ---------------------------------------------------------------------------

    def add_records(self, accepted: pd.DataFrame, outcome: Outcome, loader: Loader, index: dict[str, IndexRow] | None = None) -> None:
        """Spool a validated chunk (skyedge.data.read.validate_stations): repeats of an accepted
        (station, hour) are quarantined, the photos its rows name are read, the rest appended."""
        if accepted.empty:
            return
        numbers = np.array([self._station_number(s) for s in accepted[STATION_ID]], dtype=np.int64)
        hours = accepted["hour"].to_numpy(np.int64)
        repeated = ~self._first_time(numbers, hours)
        for i in np.flatnonzero(repeated):
            outcome.reject(accepted["_file"].iat[i], int(accepted["_row"].iat[i]), "unique_station_timestamp", accepted["_text"].iat[i])
        keep = ~repeated
        paths = accepted["image_path"].to_numpy(object)
        wanted = [p for p in dict.fromkeys(paths[keep]) if p and p not in self.photos and p not in self.rejected_photos]
        self.add_photos(wanted, outcome, loader, index or {})
        slots = np.full(len(accepted), -1, dtype=np.int32)
        for i in np.flatnonzero(keep):
            entry = self.photos.get(paths[i]) if paths[i] else None
            if entry is not None:
                slots[i] = entry.slot
                entry.with_record = True
        micros = epoch_us(accepted[TIMESTAMP])
        rows = np.empty(int(keep.sum()), dtype=RECORD)
        rows["hour"] = hours[keep]
        rows["us"] = micros[keep]
        for column in SENSOR_COLUMNS:
            rows[column] = accepted[column].to_numpy(float)[keep]
        rows["source"] = self.add_source(outcome.source)
        rows["image"] = slots[keep]
        kept_numbers = numbers[keep]
        for number in np.unique(kept_numbers):
            with (self.work / f"station-{number}.bin").open("ab") as handle:
                rows[kept_numbers == number].tofile(handle)
        self.records += len(rows)
        if len(rows):
            self.newest_us[outcome.source] = max(self.newest_us.get(outcome.source, -(2**63)), int(rows["us"].max()))

    def _station_number(self, station: str) -> int:
        if station not in self.stations:
            self.stations[station] = len(self.stations)
        return self.stations[station]

    def add_source(self, source: str) -> int:
        """Number a source (read_sources numbers them in params order, which photo samples keep)."""
        if source not in self.sources:
            self.sources.append(source)
        return self.sources.index(source)

    def _first_time(self, numbers: np.ndarray, hours: np.ndarray) -> np.ndarray:
        """Which rows' (station, hour) no earlier row had (the first of a repeated pair counts); marks them."""
        first = np.zeros(len(hours), dtype=bool)
        blocks = hours >> _BLOCK_BITS
        offsets = hours & ((1 << _BLOCK_BITS) - 1)
        keys = np.stack([numbers, blocks], axis=1)
        for key in np.unique(keys, axis=0):
            rows = np.flatnonzero((numbers == key[0]) & (blocks == key[1]))
            bits = self._seen.setdefault((int(key[0]), int(key[1])), np.zeros(1 << (_BLOCK_BITS - 3), dtype=np.uint8))
            offset = offsets[rows]
            _, once = np.unique(offset, return_index=True)
            candidate = np.zeros(len(rows), dtype=bool)
            candidate[once] = True
            seen = ((bits[offset >> 3] >> (offset & 7)) & 1).astype(bool)
            fresh = candidate & ~seen
            np.bitwise_or.at(bits, offset[fresh] >> 3, (1 << (offset[fresh] & 7)).astype(np.uint8))
            first[rows] = fresh
        return first

    def station_records(self, station: str) -> np.ndarray:
        """One station's spooled records (RECORD), in time order."""
        rows = np.fromfile(self.work / f"station-{self.stations[station]}.bin", dtype=RECORD)
        return rows[np.argsort(rows["hour"], kind="stable")]

    # --- photos ----------------------------------------------------------------------------

    def add_photos(self, paths: list[str], outcome: Outcome, loader: Loader, index: dict[str, IndexRow]) -> None:
        """Read photos not seen before, one received item each: a bad label is quarantined under
        its index row, a photo the loader refuses under its rule, the rest by the image suite."""
        if not paths:
            return
        outcome.received += len(paths)
        metas, arrays = [], {}
        for path in paths:
            row = index.get(path)
            label = row.label if row is not None and row.label else None
            if label is not None and label not in SKY_CLASSES:
                meta = dict(EMPTY_META)  # the index row's fault: no need to decode
            else:
                array, meta, refused = loader(path)
                if refused is not None:
                    rule, value, file = refused
                    outcome.reject(file, None, rule, value)
                    self.rejected_photos.add(path)
                    continue
                arrays[path] = array
            metas.append({"path": path, "label": label, **meta})
        if not metas:
            return
        frame = pd.DataFrame(metas, columns=IMAGE_META_COLUMNS)
        if self.runner is not None:
            self.runner.check("image_metadata", self._image_rules, frame)
        failed, _ = validation.first_failures(self._image_rules, frame)
        for meta, rule in zip(metas, failed):
            path = meta["path"]
            if rule == "label_in_classes":
                row = index[path]
                outcome.reject(row.file, row.row, rule, meta["label"])
                self.rejected_photos.add(path)
            elif rule:
                outcome.reject(path, None, rule, image_detail(rule, meta) if rule != "image_exists" else path)
                self.rejected_photos.add(path)
            else:
                self.add_source(outcome.source)
                self._pixels.seek(self._slots * self.pixel_bytes)
                self._pixels.write(np.ascontiguousarray(arrays[path], dtype=np.uint8).tobytes())
                self.photos[path] = PhotoEntry(self._slots, outcome.source, index.get(path))
                self._slots += 1

    def add_index_photos(self, index: dict[str, IndexRow], outcome: Outcome, loader: Loader, batch: int = 512) -> None:
        """The photos index.csv names that no station row brought in, batch by batch."""
        paths = [path for path in index if path not in self.photos and path not in self.rejected_photos]
        for start in range(0, len(paths), batch):
            self.add_photos(paths[start : start + batch], outcome, loader, index)

    def pixels(self, slots: np.ndarray) -> np.ndarray:
        """Spooled photos [len(slots), S, S, 3] uint8."""
        size = self.pixel_bytes
        out = np.empty((len(slots), self.image_size, self.image_size, 3), dtype=np.uint8)
        for i, slot in enumerate(slots):
            self._pixels.seek(int(slot) * size)
            out[i] = np.frombuffer(self._pixels.read(size), dtype=np.uint8).reshape(out.shape[1:])
        return out


def epoch_us(stamps: pd.Series) -> np.ndarray:
    """Microseconds since 1970 of UTC timestamps (int64: any year a record can carry)."""
    return stamps.dt.tz_convert("UTC").dt.as_unit("us").dt.tz_localize(None).to_numpy().astype(np.int64)


def us_stamps(micros: np.ndarray, fmt: str) -> pd.Index:
    """Epoch microseconds back to text in the given strftime format (UTC)."""
    return pd.DatetimeIndex(np.asarray(micros, np.int64).astype("datetime64[us]")).strftime(fmt)


class NpyWriter:
    """A .npy file of known shape, written in row blocks (`write`), checked complete on close."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype):
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.rows = 0
        self._handle = self.path.open("wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(self._handle, header)

    def write(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.shape[1:]:
            raise ValueError(f"{self.path.name}: block of shape {block.shape}, rows of shape {self.shape[1:]} expected")
        self._handle.write(block.tobytes())
        self.rows += len(block)

    def close(self) -> None:
        self._handle.close()
        if self.rows != self.shape[0]:
            raise RuntimeError(f"{self.path.name}: wrote {self.rows} rows of {self.shape[0]}")

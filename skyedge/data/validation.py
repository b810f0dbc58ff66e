"""The ingest rules as Great Expectations suites, and the row masks that quarantine by them.

One rule table per record kind (`STATION_RULES`, `IMAGE_RULES`). Each `Rule` is one quarantine
rule name bound to one or more GE expectations, and its row mask is computed from the SAME
expectation object (type + kwargs) by `expectation_mask`, so the quarantine and the GE suite cannot
drift: `SuiteRunner` runs the suites on the prepared dataframes (result_format SUMMARY: counts
only, fast on 236k rows; one station file at a time, see `SuiteRunner`) and reports any rule whose
GE unexpected count differs from its mask.

Quarantine rule  ->  expectation (column)
  station_id_present            expect_column_values_to_not_be_null (station_id)
  timestamp_present             expect_column_values_to_not_be_null (timestamp)
  timestamp_has_offset          expect_column_values_to_match_regex (timestamp)
  timestamp_parseable           expect_column_values_to_not_be_null (timestamp_epoch_s)
  timestamp_not_future          expect_column_values_to_be_between (timestamp_epoch_s, max=now)
  <sensor>_numeric              expect_column_values_to_match_regex (<sensor>_text)
  <sensor>_unit_<unit>          expect_column_values_to_not_be_in_set (<sensor>_unit, {<unit>})
  <sensor>_in_range             expect_column_values_to_be_between (<sensor>, contract range)
  unique_station_timestamp      expect_column_values_to_be_unique (station_hour)
  metadata_station_id_present   expect_column_values_to_not_be_null (station_id)        [stations.csv]
  <field>_present               expect_column_values_to_not_be_null (<field>_text)      latitude,
  <field>_numeric               expect_column_values_to_match_regex (<field>_text)      longitude,
  <field>_in_range              expect_column_values_to_be_between (<field>, range)     elevation_m
  unique_station                expect_column_values_to_be_unique (station_id)
  label_in_classes              expect_column_values_to_be_in_set (label, SKY_CLASSES; empty = unlabelled)
  image_exists                  expect_column_values_to_be_in_set (exists, {True})
  image_not_empty               expect_column_values_to_be_between (bytes, min=1)
  image_readable                expect_column_values_to_not_be_in_set (decode, {not_an_image})
  image_not_truncated           expect_column_values_to_not_be_in_set (decode, {truncated})
  image_mode_usable             expect_column_values_to_be_in_set (mode, USABLE_MODES)
  image_size_usable             expect_column_values_to_be_between (width and height, min=16)

Checked before any dataframe exists (so outside GE): `file_parseable` (empty file or no header),
`row_utf8` (a line that is not UTF-8), `row_column_count` (ragged row) and
`missing_column:<name>` (a required column absent: every row of the file, one rule).

Rules apply in table order and the first failure names the row. Two documented differences
between the GE count and the quarantine: GE's uniqueness counts every member of a duplicated
group while the quarantine keeps the first one (the mask used for the drift check follows GE);
and GE evaluates every rule on every row while a row is quarantined once.

Suspected wrong units (`<sensor>_unit_<unit>`): a value outside the contract range but inside the
band that unit would give (temperature in K 200..350, in °F 60..140; pressure in Pa
85000..108500, in inHg 25..32.1) flags its row. When at least UNIT_FILE_FRACTION (5 %) and at
least UNIT_FILE_MIN_ROWS (10) of a file's values of that column fall in one such band, the whole file is taken to be in that unit and every row with
a value in that column is flagged: its in-range-looking values (50 °F) are wrong too. That is a
property of the whole file, so a file read in chunks is tallied first (`UnitTally`, from a cheap
scan of the file) and each chunk is prepared with the file's tally.

Great Expectations runs on chunks too (`SuiteRunner`): prepared rows are buffered up to
`GE_CHUNK_ROWS` per suite (many small files or fleet batches make one GE run; a big file makes
several), each run's counts are added to the suite's totals, and one result per suite, summed
over its chunks, is rendered into the Data Docs at the end. Memory follows the chunk, not the data.
"""

from __future__ import annotations

import html
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from skyedge.core.contract import SENSOR_RANGES, SKY_CLASSES, STATION_ID, STATION_METADATA_RANGES, TIMESTAMP, UNIT_BANDS

OFFSET_REGEX = r"(?:Z|[+-]\d{2}:?\d{2})$"
NUMBER_REGEX = r"^\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*$"
EPOCH = pd.Timestamp("1970-01-01", tz="UTC")
MIN_IMAGE_SIDE = 16
# Pillow modes converted to RGB as they are; 16-bit / float / exotic modes need camera-specific
# scaling to 8 bits, so they are quarantined rather than guessed.
USABLE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
UNIT_FILE_FRACTION = 0.05
UNIT_FILE_MIN_ROWS = 10  # ...and at least this many: one outlier in a short file is not a unit
# Rows per Great Expectations run: each run costs seconds of fixed overhead (graph building), so
# chunks are large; the buffered columns cost about 0.9 kB a row.
GE_CHUNK_ROWS = 50_000


@dataclass(frozen=True)
class Rule:
    """One quarantine rule name and the GE expectations that hold it."""

    name: str
    expectations: tuple  # GE Expectation instances
    keep_first: bool = False  # duplicates: the quarantine keeps the first row of a group


def _gx():
    import great_expectations as gx  # heavy import (seconds): only when validating

    return gx


def station_rules(now: pd.Timestamp) -> list[Rule]:
    """The station-record rule table, in the order rules are applied."""
    E = _gx().expectations
    rules = [
        Rule("station_id_present", (E.ExpectColumnValuesToNotBeNull(column=STATION_ID),)),
        Rule("timestamp_present", (E.ExpectColumnValuesToNotBeNull(column=TIMESTAMP),)),
        Rule("timestamp_has_offset", (E.ExpectColumnValuesToMatchRegex(column=TIMESTAMP, regex=OFFSET_REGEX),)),
        Rule("timestamp_parseable", (E.ExpectColumnValuesToNotBeNull(column="timestamp_epoch_s"),)),
        Rule("timestamp_not_future", (E.ExpectColumnValuesToBeBetween(column="timestamp_epoch_s", max_value=float((now - EPOCH).total_seconds())),)),
    ]
    for column, (low, high) in SENSOR_RANGES.items():
        rules.append(Rule(f"{column}_numeric", (E.ExpectColumnValuesToMatchRegex(column=f"{column}_text", regex=NUMBER_REGEX),)))
        for unit in UNIT_BANDS.get(column, {}):
            rules.append(Rule(f"{column}_unit_{unit}", (E.ExpectColumnValuesToNotBeInSet(column=f"{column}_unit", value_set=[unit]),)))
        rules.append(Rule(f"{column}_in_range", (E.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high),)))
    rules.append(Rule("unique_station_timestamp", (E.ExpectColumnValuesToBeUnique(column="station_hour"),), keep_first=True))
    return rules


def station_metadata_rules() -> list[Rule]:
    """The station-metadata rule table (stations.csv: coordinates and elevation), in order."""
    E = _gx().expectations
    rules = [Rule("metadata_station_id_present", (E.ExpectColumnValuesToNotBeNull(column=STATION_ID),))]
    for column, (low, high) in STATION_METADATA_RANGES.items():
        rules.append(Rule(f"{column}_present", (E.ExpectColumnValuesToNotBeNull(column=f"{column}_text"),)))
        rules.append(Rule(f"{column}_numeric", (E.ExpectColumnValuesToMatchRegex(column=f"{column}_text", regex=NUMBER_REGEX),)))
        rules.append(Rule(f"{column}_in_range", (E.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high),)))
    rules.append(Rule("unique_station", (E.ExpectColumnValuesToBeUnique(column=STATION_ID),), keep_first=True))
    return rules


def prepare_station_metadata(raw: pd.DataFrame) -> pd.DataFrame:
    """Typed columns the station-metadata suite checks, from a frame of strings."""
    frame = pd.DataFrame({"_file": raw["_file"].to_numpy(), "_row": raw["_row"].to_numpy()})
    station = raw[STATION_ID].str.strip()
    frame[STATION_ID] = station.where(station != "", None)
    for column in STATION_METADATA_RANGES:
        text = raw[column].str.strip() if column in raw else pd.Series("", index=raw.index)
        text = text.where(text != "", None)
        frame[f"{column}_text"] = text
        frame[column] = pd.to_numeric(text.where(text.str.contains(NUMBER_REGEX, regex=True, na=False), None), errors="coerce").astype(float)
    return frame


def image_rules() -> list[Rule]:
    """The image-metadata rule table (width, height, mode, bytes, label), in order."""
    E = _gx().expectations
    return [
        Rule("label_in_classes", (E.ExpectColumnValuesToBeInSet(column="label", value_set=list(SKY_CLASSES)),)),
        Rule("image_exists", (E.ExpectColumnValuesToBeInSet(column="exists", value_set=[True]),)),
        Rule("image_not_empty", (E.ExpectColumnValuesToBeBetween(column="bytes", min_value=1),)),
        Rule("image_readable", (E.ExpectColumnValuesToNotBeInSet(column="decode", value_set=["not_an_image"]),)),
        Rule("image_not_truncated", (E.ExpectColumnValuesToNotBeInSet(column="decode", value_set=["truncated"]),)),
        Rule("image_mode_usable", (E.ExpectColumnValuesToBeInSet(column="mode", value_set=list(USABLE_MODES)),)),
        Rule(
            "image_size_usable",
            (
                E.ExpectColumnValuesToBeBetween(column="width", min_value=MIN_IMAGE_SIDE),
                E.ExpectColumnValuesToBeBetween(column="height", min_value=MIN_IMAGE_SIDE),
            ),
        ),
    ]


def expectation_mask(expectation, frame: pd.DataFrame, keep_first: bool = False) -> np.ndarray:
    """Rows that fail one expectation, computed from its own kwargs with GE's pandas semantics.

    Column-map expectations ignore nulls (NaN/None), except not_be_null which is about them.
    """
    kind = type(expectation).__name__
    column = frame[expectation.column]
    present = column.notna().to_numpy()
    if kind == "ExpectColumnValuesToNotBeNull":
        return ~present
    if kind == "ExpectColumnValuesToMatchRegex":
        ok = column.astype(str).str.contains(expectation.regex, regex=True).to_numpy()
        return present & ~ok
    if kind == "ExpectColumnValuesToBeBetween":
        values = pd.to_numeric(column, errors="coerce").to_numpy(float)
        bad = np.zeros(len(frame), bool)
        with np.errstate(invalid="ignore"):
            if expectation.min_value is not None:
                bad |= values < expectation.min_value
            if expectation.max_value is not None:
                bad |= values > expectation.max_value
        return present & bad
    if kind in ("ExpectColumnValuesToBeInSet", "ExpectColumnValuesToNotBeInSet"):
        inside = column.isin(list(expectation.value_set)).to_numpy()
        return present & (~inside if kind == "ExpectColumnValuesToBeInSet" else inside)
    if kind == "ExpectColumnValuesToBeUnique":
        return present & column.duplicated(keep="first" if keep_first else False).to_numpy()
    raise NotImplementedError(f"no mask for {kind}")


def rule_mask(rule: Rule, frame: pd.DataFrame, for_quarantine: bool = True) -> np.ndarray:
    mask = np.zeros(len(frame), bool)
    for expectation in rule.expectations:
        mask |= expectation_mask(expectation, frame, keep_first=rule.keep_first and for_quarantine)
    return mask


def first_failures(rules: list[Rule], frame: pd.DataFrame, shown: dict[str, str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rule name or "", offending value) per row: the first rule in table order that rejects it.

    Uniqueness is judged among rows that passed every earlier rule, so a broken row never makes
    the good row it collides with a duplicate.
    """
    failed = np.full(len(frame), "", dtype=object)
    values = np.full(len(frame), "", dtype=object)
    for rule in rules:
        if rule.keep_first:
            alive = failed == ""
            mask = np.zeros(len(frame), bool)
            mask[alive] = rule_mask(rule, frame[alive])
        else:
            mask = rule_mask(rule, frame)
        new = mask & (failed == "")
        if not new.any():
            continue
        failed[new] = rule.name
        column = (shown or {}).get(rule.name) or rule.expectations[0].column
        values[new] = frame[column].to_numpy()[new]
    return failed, values


def numeric_text(text: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(stripped text with empty as null, its numeric value where the text is a number, else NaN)."""
    text = text.str.strip()
    text = text.where(text != "", None)
    numeric = pd.to_numeric(text.where(text.str.contains(NUMBER_REGEX, regex=True, na=False), None), errors="coerce")
    return text, numeric.astype(float)


def prepare_stations(raw: pd.DataFrame, now: pd.Timestamp, units: UnitTally | None = None) -> pd.DataFrame:
    """Typed and derived columns the station suite checks, from a frame of strings.

    raw holds the contract columns as text plus `_file` and `_row`; empty text becomes null.
    `units`: the whole-file unit tally of the files the rows come from (a chunk of a bigger file);
    None tallies the rows themselves (each file whole in raw).
    """
    frame = pd.DataFrame({"_file": raw["_file"].to_numpy(), "_row": raw["_row"].to_numpy()})
    station = raw[STATION_ID].str.strip()
    frame[STATION_ID] = station.where(station != "", None)
    stamps = raw[TIMESTAMP].str.strip()
    frame[TIMESTAMP] = stamps.where(stamps != "", None)
    has_offset = stamps.str.contains(OFFSET_REGEX, regex=True)
    parsed = pd.to_datetime(stamps.where(has_offset, None), utc=True, errors="coerce", format="ISO8601")
    frame["timestamp_utc"] = parsed
    frame["timestamp_epoch_s"] = (parsed - EPOCH).dt.total_seconds()
    for column in SENSOR_RANGES:
        frame[f"{column}_text"], frame[column] = numeric_text(raw[column])
    if units is None:
        units = UnitTally()
        for column in UNIT_BANDS:
            units.add(column, frame[column], frame["_file"])
    for column in UNIT_BANDS:
        frame.insert(frame.columns.get_loc(column) + 1, f"{column}_unit", suspected_units(column, frame[column], frame["_file"], units))
    hours = np.floor(frame["timestamp_epoch_s"] / 3600)
    frame["hour"] = hours.astype("Int64")
    key = frame[STATION_ID].astype(str) + "|" + frame["hour"].astype(str)
    frame["station_hour"] = key.where(frame[STATION_ID].notna() & frame["hour"].notna(), None)
    return frame


def _outside(column: str, values: pd.Series) -> pd.Series:
    low, high = SENSOR_RANGES[column]
    return (values < low) | (values > high) if high is not None else values < low


class UnitTally:
    """Per file and unit-checked column: values present, and values outside the contract range
    inside each unit's band. Summed over a file's chunks, it decides which files are in another unit."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], np.ndarray] = {}  # (file, column) -> [present, band count per unit]

    def add(self, column: str, values: pd.Series, files: pd.Series) -> None:
        values = pd.Series(np.asarray(values, dtype=float), index=files.index)
        outside = _outside(column, values)
        columns = {"present": values.notna()}
        for name, (band_low, band_high) in UNIT_BANDS[column].items():
            columns[name] = outside & (values >= band_low) & (values <= band_high)
        sums = pd.DataFrame(columns).groupby(files.to_numpy()).sum()
        for file, row in zip(sums.index, sums.to_numpy(np.int64)):
            key = (str(file), column)
            self.counts[key] = self.counts[key] + row if key in self.counts else row

    def whole_files(self, column: str, unit: str) -> set[str]:
        """Files whose values of column are taken to be in unit (module doc)."""
        position = 1 + list(UNIT_BANDS[column]).index(unit)
        return {
            file
            for (file, name), row in self.counts.items()
            if name == column and row[position] >= UNIT_FILE_MIN_ROWS and row[position] / max(row[0], 1) >= UNIT_FILE_FRACTION
        }


def suspected_units(column: str, values: pd.Series, files: pd.Series, units: UnitTally | None = None) -> pd.Series:
    """Per row: "" or the unit its value looks like (see module doc: per row, escalated per file).
    `units` holds the whole files' tally; None tallies these rows."""
    if units is None:
        units = UnitTally()
        units.add(column, values, files)
    outside = _outside(column, values)
    unit = pd.Series(None, index=values.index, dtype=object)
    present = values.notna()
    for name, (band_low, band_high) in UNIT_BANDS[column].items():
        band = outside & (values >= band_low) & (values <= band_high)
        unit[band & unit.isna()] = name
        whole_files = units.whole_files(column, name)
        if whole_files:
            unit[files.isin(whole_files) & present & unit.isna()] = name
    return unit.fillna("ok")


# --- running the suites ---------------------------------------------------------------------


class SuiteRunner:
    """Runs the GE suites on chunks of rows and builds one set of Data Docs at the end.

    `check(name, rules, frame)` buffers a chunk's columns; every GE_CHUNK_ROWS rows of a suite
    (a bigger frame is cut) are validated in one run (an ephemeral context, one validation definition per suite) and its
    counts added to the suite's totals. The run's stored result is folded into one result per
    suite and dropped, so neither results nor rows pile up. `finish()` validates what is left,
    renders the summed results into the Data Docs and returns the seconds spent in GE and per
    suite: rows, chunks, success,
    GE's unexpected count per rule, and `drift` (rules whose GE count differs from the quarantine
    mask: expected empty; GE's uniqueness is per chunk, duplicates across chunks are caught by
    ingest's own pass).
    """

    def __init__(self, docs_dir: Path, chunk_rows: int | None = None):
        gx = _gx()
        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        self._gx = gx
        self._started = time.perf_counter()
        self.docs_dir = docs_dir
        self.chunk_rows = chunk_rows or GE_CHUNK_ROWS
        self.context = gx.get_context(mode="ephemeral")
        try:  # GE's per-metric progress bars: noise next to ingest's own
            from great_expectations.data_context.types.base import ProgressBarsConfig

            self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        except Exception:  # an older/newer GE without this knob: bars stay
            pass
        docs_dir.mkdir(parents=True, exist_ok=True)
        site = {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
        self.context.add_data_docs_site(site_name="ingest", site_config=site)
        self.datasource = self.context.data_sources.add_pandas("ingest")
        self.summary: dict[str, dict] = {}
        self._rules: dict[str, list[Rule]] = {}
        self._definitions: dict[str, object] = {}
        self._pending: dict[str, list[pd.DataFrame]] = {}
        self._results: dict[str, tuple[object, object]] = {}  # suite -> (result key, summed result)
        self._seconds = time.perf_counter() - self._started  # time spent in GE: the context, runs, docs

    def _register(self, name: str, rules: list[Rule]) -> None:
        gx = self._gx
        suite = self.context.suites.add(gx.ExpectationSuite(name=name))
        for rule in rules:
            for expectation in rule.expectations:
                expectation.meta = {"quarantine_rule": rule.name}
                suite.add_expectation(expectation)
        batch = self.datasource.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        self._definitions[name] = self.context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        self._rules[name] = rules
        self._pending[name] = []
        self.summary[name] = {"rows": 0, "chunks": 0, "success": True, "unexpected": {}, "drift": {}}

    def check(self, name: str, rules: list[Rule], frame: pd.DataFrame) -> None:
        if name not in self._definitions:
            self._register(name, rules)
        if frame.empty:
            return
        columns = sorted({e.column for rule in rules for e in rule.expectations})
        pending = self._pending[name]
        pending.append(frame[columns].reset_index(drop=True))
        if sum(len(chunk) for chunk in pending) >= self.chunk_rows:
            rows = pd.concat(pending, ignore_index=True) if len(pending) > 1 else pending[0]
            pending.clear()
            full = len(rows) - len(rows) % self.chunk_rows
            for start in range(0, full, self.chunk_rows):
                self._validate(name, rows.iloc[start : start + self.chunk_rows].reset_index(drop=True))
            if full < len(rows):
                pending.append(rows.iloc[full:].reset_index(drop=True))

    def _flush(self, name: str) -> None:
        pending = self._pending[name]
        if pending:
            rows = pd.concat(pending, ignore_index=True) if len(pending) > 1 else pending[0]
            pending.clear()
            self._validate(name, rows)

    def _validate(self, name: str, frame: pd.DataFrame) -> None:
        started = time.perf_counter()
        rules = self._rules[name]
        validation = self._definitions[name].run(batch_parameters={"dataframe": frame}, result_format={"result_format": "SUMMARY"})
        entry = self.summary[name]
        unexpected = entry["unexpected"]
        for item in validation.results:
            rule_name = item.expectation_config.meta["quarantine_rule"]
            unexpected[rule_name] = unexpected.get(rule_name, 0) + int(item.result.get("unexpected_count") or 0)
        for rule in rules:
            mask_count = sum(int(expectation_mask(e, frame).sum()) for e in rule.expectations)
            ge_count = sum(int(item.result.get("unexpected_count") or 0) for item in validation.results if item.expectation_config.meta["quarantine_rule"] == rule.name)
            if mask_count != ge_count:
                drift = entry["drift"].setdefault(rule.name, {"ge": 0, "mask": 0})
                drift["ge"] += ge_count
                drift["mask"] += mask_count
        entry["rows"] += len(frame)
        entry["chunks"] += 1
        entry["success"] = entry["success"] and bool(validation.success)
        store = self.context.validation_results_store
        keys = store.list_keys()
        if name in self._results:
            _fold(self._results[name][1], validation)
        else:
            key = next((k for k in keys if k.expectation_suite_identifier.name == name), None)
            self._results[name] = (key, validation)
        for key in keys:  # the summed result is stored once, in finish()
            store.remove_key(key)
        self._seconds += time.perf_counter() - started

    def finish(self) -> dict:
        for name in self._definitions:
            self._flush(name)
        started = time.perf_counter()
        store = self.context.validation_results_store
        for key, result in self._results.values():
            if key is not None:
                store.set(key, result)
        self.context.build_data_docs(site_names=["ingest"])
        for entry in self.summary.values():
            entry["unexpected"] = {k: v for k, v in entry["unexpected"].items() if v}
        index = self.docs_dir / "index.html"
        summary_page = self.docs_dir / "summary.html"
        summary_page.write_text(_summary_html(self.summary, index.name))
        self._seconds += time.perf_counter() - started
        return {"suites": self.summary, "data_docs": str(index), "summary_html": str(summary_page), "seconds": round(self._seconds, 2)}


_COUNTS = ("element_count", "unexpected_count", "missing_count")
_PARTIAL = 20  # GE's SUMMARY keeps this many example values


def _fold(total, chunk) -> None:
    """Add one chunk's GE suite result into the running sum (counts summed, percentages
    recomputed, example values capped); chunk-local row indices are dropped."""
    for into, item in zip(total.results, chunk.results):
        result, more = into.result, item.result
        for key in _COUNTS:
            if key in result or key in more:
                result[key] = int(result.get(key) or 0) + int(more.get(key) or 0)
        if "partial_unexpected_list" in result:
            result["partial_unexpected_list"] = (list(result["partial_unexpected_list"]) + list(more.get("partial_unexpected_list") or []))[:_PARTIAL]
        if "partial_unexpected_counts" in result:
            counts: dict = {}
            for entry in list(result["partial_unexpected_counts"]) + list(more.get("partial_unexpected_counts") or []):
                counts[repr(entry["value"])] = (entry["value"], counts.get(repr(entry["value"]), (None, 0))[1] + int(entry["count"]))
            result["partial_unexpected_counts"] = [{"value": v, "count": c} for v, c in sorted(counts.values(), key=lambda vc: -vc[1])[:_PARTIAL]]
        result.pop("partial_unexpected_index_list", None)
        elements = result.get("element_count") or 0
        missing = result.get("missing_count") or 0
        unexpected = result.get("unexpected_count") or 0
        if "unexpected_percent" in result:
            result["unexpected_percent"] = 100.0 * unexpected / max(elements - missing, 1)
        if "missing_percent" in result:
            result["missing_percent"] = 100.0 * missing / max(elements, 1)
        if "unexpected_percent_total" in result:
            result["unexpected_percent_total"] = 100.0 * unexpected / max(elements, 1)
        if "unexpected_percent_nonmissing" in result:
            result["unexpected_percent_nonmissing"] = 100.0 * unexpected / max(elements - missing, 1)
        into.success = bool(into.success and item.success)
    total.success = all(item.success for item in total.results)
    successful = sum(bool(item.success) for item in total.results)
    total.statistics.update(
        successful_expectations=successful,
        unsuccessful_expectations=len(total.results) - successful,
        success_percent=100.0 * successful / max(len(total.results), 1),
    )


def _summary_html(summary: dict, docs_index: str) -> str:
    rows = []
    for suite, entry in summary.items():
        for rule, count in sorted(entry["unexpected"].items()) or [("(none)", 0)]:
            rows.append(f"<tr><td>{html.escape(suite)}</td><td>{html.escape(rule)}</td><td>{count}</td></tr>")
    return (
        "<!doctype html><meta charset='utf-8'><title>SkyEdge ingest validation</title>"
        f"<h1>Ingest validation</h1><p>Full Great Expectations Data Docs: <a href='{docs_index}'>{docs_index}</a></p>"
        "<table border=1><tr><th>suite</th><th>quarantine rule</th><th>rows failing (GE)</th></tr>" + "".join(rows) + "</table>"
    )

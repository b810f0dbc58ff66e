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
a value in that column is flagged: its in-range-looking values (50 °F) are wrong too.
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


def prepare_stations(raw: pd.DataFrame, now: pd.Timestamp) -> pd.DataFrame:
    """Typed and derived columns the station suite checks, from a frame of strings.

    raw holds the contract columns as text plus `_file` and `_row`; empty text becomes null.
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
        text = raw[column].str.strip()
        text = text.where(text != "", None)
        frame[f"{column}_text"] = text
        numeric = pd.to_numeric(text.where(text.str.contains(NUMBER_REGEX, regex=True, na=False), None), errors="coerce")
        frame[column] = numeric.astype(float)
        if column in UNIT_BANDS:
            frame[f"{column}_unit"] = suspected_units(column, frame[column], frame["_file"])
    hours = np.floor(frame["timestamp_epoch_s"] / 3600)
    frame["hour"] = hours.astype("Int64")
    key = frame[STATION_ID].astype(str) + "|" + frame["hour"].astype(str)
    frame["station_hour"] = key.where(frame[STATION_ID].notna() & frame["hour"].notna(), None)
    return frame


def suspected_units(column: str, values: pd.Series, files: pd.Series) -> pd.Series:
    """Per row: "" or the unit its value looks like (see module doc: per row, escalated per file)."""
    low, high = SENSOR_RANGES[column]
    outside = (values < low) | (values > high) if high is not None else values < low
    unit = pd.Series(None, index=values.index, dtype=object)
    present = values.notna()
    counts = present.groupby(files).sum()
    for name, (band_low, band_high) in UNIT_BANDS[column].items():
        band = outside & (values >= band_low) & (values <= band_high)
        unit[band & unit.isna()] = name
        fraction = band.groupby(files).sum() / counts.clip(lower=1)
        count = band.groupby(files).sum()
        whole_files = set(fraction.index[(fraction >= UNIT_FILE_FRACTION) & (count >= UNIT_FILE_MIN_ROWS)])
        if whole_files:
            unit[files.isin(whole_files) & present & unit.isna()] = name
    return unit.fillna("ok")


# --- running the suites ---------------------------------------------------------------------


class SuiteRunner:
    """Runs the GE suites chunk by chunk (one station file at a time), so ingest never holds all
    of a source's text at once, and builds one set of Data Docs at the end.

    `check(name, rules, frame)` validates one chunk with an ephemeral GE context and adds its
    counts to the suite's totals; `finish()` returns per suite: rows, success, GE's unexpected
    count per rule, and `drift` (rules whose GE count differs from the quarantine mask: expected
    empty; GE's uniqueness is per chunk, cross-file duplicates are caught by ingest's own pass).
    """

    def __init__(self, docs_dir: Path):
        gx = _gx()
        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        self._gx = gx
        self._started = time.perf_counter()
        self.docs_dir = docs_dir
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
        self.suites: dict[str, object] = {}
        self.summary: dict[str, dict] = {}
        self._chunks = 0

    def _suite(self, name: str, rules: list[Rule]):
        if name not in self.suites:
            suite = self.context.suites.add(self._gx.ExpectationSuite(name=name))
            for rule in rules:
                for expectation in rule.expectations:
                    expectation.meta = {"quarantine_rule": rule.name}
                    suite.add_expectation(expectation)
            self.suites[name] = suite
            self.summary[name] = {"rows": 0, "chunks": 0, "success": True, "unexpected": {}, "drift": {}}
        return self.suites[name]

    def check(self, name: str, rules: list[Rule], frame: pd.DataFrame) -> None:
        suite = self._suite(name, rules)
        if frame.empty:
            return
        gx = self._gx
        self._chunks += 1
        chunk = f"{name}-{self._chunks}"
        columns = sorted({e.column for rule in rules for e in rule.expectations})
        batch = self.datasource.add_dataframe_asset(chunk).add_batch_definition_whole_dataframe("all")
        definition = self.context.validation_definitions.add(gx.ValidationDefinition(name=chunk, data=batch, suite=suite))
        checkpoint = self.context.checkpoints.add(
            gx.Checkpoint(
                name=f"{chunk}-checkpoint",
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["ingest"])],
                result_format={"result_format": "SUMMARY"},
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": frame[columns]})
        validation = next(iter(result.run_results.values()))
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

    def finish(self) -> dict:
        for entry in self.summary.values():
            entry["unexpected"] = {k: v for k, v in entry["unexpected"].items() if v}
        index = self.docs_dir / "index.html"
        summary_page = self.docs_dir / "summary.html"
        summary_page.write_text(_summary_html(self.summary, index.name))
        return {"suites": self.summary, "data_docs": str(index), "summary_html": str(summary_page), "seconds": round(time.perf_counter() - self._started, 2)}


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

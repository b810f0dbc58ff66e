"""The ingest rules for one station reading, for a station that has no pandas or Great Expectations.

Ingest (skyedge.data.validation) quarantines a row by the first rule it breaks; on a station the
same reading must not reach the model unnoticed either. `check` applies the row-level rules with
the same names (`<sensor>_numeric`, `<sensor>_unit_<unit>`, `<sensor>_in_range`), from the same
contract ranges and unit bands, and says what was done: the value is treated as missing (a gap
the model sees through its missing-value flag), never silently fed in. `window_gaps` names the
window rule (`gap_in_window`: more than half the window's hours without a record, the threshold
`skyedge evaluate` skips at).
"""

from __future__ import annotations

import math
import re

from skyedge.core.contract import SENSOR_RANGES, UNIT_BANDS

NUMBER = re.compile(r"^\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*$")
GAP_RULE = "gap_in_window"


def check(column: str, text: str | None) -> tuple[float, str]:
    """(value, rule): the reading as a float and "" when it passes; NaN and the first rule it
    breaks otherwise. An empty reading is a gap, not a rule broken (NaN, "")."""
    text = (text or "").strip()
    if not text:
        return math.nan, ""
    if not NUMBER.match(text):
        return math.nan, f"{column}_numeric"
    value = float(text)
    low, high = SENSOR_RANGES[column]
    inside = (low is None or value >= low) and (high is None or value <= high)
    if not inside:
        for unit, (band_low, band_high) in UNIT_BANDS.get(column, {}).items():
            if band_low <= value <= band_high:
                return math.nan, f"{column}_unit_{unit}"
        return math.nan, f"{column}_in_range"
    return value, ""


def window_gaps(hours_with_records: int, window_hours: int) -> tuple[int, str]:
    """(missing hours, rule): `gap_in_window` when more than half the window has no record."""
    missing = max(window_hours - hours_with_records, 0)
    return missing, GAP_RULE if missing > window_hours // 2 else ""

"""The pieces every layer shares: tables, model inputs, and reading rules on a station."""

import math

import numpy as np
import pytest

from skyedge.core import inputs, readings
from skyedge.core.tables import Column, formatted_rows, markdown_table, text_table


def test_tables_show_integers_as_they_are_floats_with_their_decimals_and_missing_as_na():
    rows = [{"name": "a", "n": 3, "score": 0.123456, "size": 2048, "gone": None}, {"name": "bb", "n": 10, "score": float("nan"), "size": 10, "gone": 1.0}]
    columns = [Column("name", align="left"), "n", "score", Column("size", "size_kB", ".1f", scale=1e-3), "gone"]
    text = text_table(rows, columns).splitlines()
    assert text[0].split() == ["name", "n", "score", "size_kB", "gone"]
    assert text[1].split() == ["a", "3", "0.123", "2.0", "n/a"] and text[2].split() == ["bb", "10", "n/a", "0.0", "1.000"]
    assert len({len(line) for line in text}) == 1  # aligned
    assert markdown_table(rows, columns).splitlines()[1] == "| --- | ---: | ---: | ---: | ---: |"
    assert formatted_rows(rows, columns)[0] == {"name": "a", "n": "3", "score": "0.123", "size_kB": "2.0", "gone": "n/a"}


def test_model_inputs_normalise_and_zero_the_missing_photos_and_resize_other_sizes():
    spec = inputs.image_spec(8)
    photos = np.full((2, 8, 8, 3), 255, np.uint8)
    feed = inputs.model_inputs(photos, np.array([1, -1]), np.zeros((2, 6, 19), np.float32), spec)
    assert feed["image"].shape == (2, 3, 8, 8) and feed["image_present"].tolist() == [[1.0], [0.0]]
    assert np.allclose(feed["image"][0, 0], (1 - spec["mean"][0]) / spec["std"][0]) and not feed["image"][1].any()
    bigger = inputs.model_inputs(np.full((1, 16, 16, 3), 255, np.uint8), np.array([0]), np.zeros((1, 6, 19), np.float32), spec)
    assert bigger["image"].shape == (1, 3, 8, 8) and np.allclose(bigger["image"], feed["image"][:1])


@pytest.mark.parametrize(
    "column, text, rule",
    [
        ("temperature_c", "21.5", ""),
        ("temperature_c", "", ""),
        ("temperature_c", "295.1", "temperature_c_unit_kelvin"),
        ("temperature_c", "95", "temperature_c_unit_fahrenheit"),
        ("temperature_c", "-95", "temperature_c_in_range"),
        ("pressure_hpa", "101300", "pressure_hpa_unit_pa"),
        ("humidity_pct", "140", "humidity_pct_in_range"),
        ("wind_speed_ms", "abc", "wind_speed_ms_numeric"),
    ],
)
def test_a_station_reading_breaks_the_same_named_rule_as_at_ingest(column, text, rule):
    value, broken = readings.check(column, text)
    assert broken == rule
    assert math.isnan(value) == (rule != "" or text == "")


def test_a_window_with_more_than_half_its_hours_missing_is_named():
    assert readings.window_gaps(6, 6) == (0, "") and readings.window_gaps(3, 6) == (3, "")
    assert readings.window_gaps(2, 6) == (4, "gap_in_window")

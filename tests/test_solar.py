"""The sun where the ephemeris says it is: local solar time and elevation, checked by hand."""

import numpy as np
import pytest

from skyedge.core.solar import sun_position


def epoch_hour(stamp: str) -> int:
    return int(np.datetime64(stamp, "h").astype(int))


def test_beijing_at_the_june_solstice_noon_is_90_minus_latitude_plus_declination():
    # Dongsi, Beijing (39.929 N, 116.417 E), 2016-06-21. Solar noon is at 12:00 local solar time,
    # UTC 12:00 - 116.417/15 h - equation of time (-1.6 min) = 04:14 UTC; elevation there is
    # 90 - 39.929 + 23.44 = 73.51 degrees. At 04:00 UTC (solar 11:46) it is a fraction lower.
    sun = sun_position(np.array([epoch_hour("2016-06-21T04")]), 39.929, 116.417, minutes=14)
    assert sun.elevation_deg[0] == pytest.approx(73.51, abs=0.3)
    assert sun.solar_hour[0] == pytest.approx(12.0, abs=0.05)
    assert sun.azimuth_deg[0] == pytest.approx(180.0, abs=3.0)  # due south at noon


def test_local_midnight_is_dark_and_solar_time_follows_longitude_not_utc():
    # 16:00 UTC is midnight in Beijing: the sun 90 - 39.9 - 23.4 = 26.6 degrees below the horizon.
    sun = sun_position(np.array([epoch_hour("2016-06-21T16")]), 39.929, 116.417)
    assert sun.elevation_deg[0] == pytest.approx(-26.6, abs=0.5)
    west = sun_position(np.array([epoch_hour("2016-06-21T16")]), 40.0, -75.0)  # five hours west of Greenwich
    assert west.solar_hour[0] == pytest.approx(11.0, abs=0.1)
    assert west.elevation_deg[0] > 60

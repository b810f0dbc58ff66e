"""Where the sun is for a station: local solar time, elevation and azimuth (numpy only).

The model's notion of time of day is the station's, not UTC's: a model trained in Beijing (UTC+8)
would otherwise see the day-night cycle of a station five hours west of Greenwich thirteen hours
out of phase. NOAA's solar-position approximation (the "General Solar Position Calculations"
sheet: a Fourier fit of the equation of time and the declination), good to about 0.1 degree here,
which is far finer than an hourly forecast needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPOCH_DAYS_OFFSET = 719163  # days from 0001-01-01 (proleptic) to 1970-01-01: numpy's datetime64 origin


@dataclass(frozen=True)
class SunPosition:
    solar_hour: np.ndarray  # local apparent solar time, hours in [0, 24)
    elevation_deg: np.ndarray  # angle above the horizon (negative at night)
    azimuth_deg: np.ndarray  # clockwise from north


def _fractional_year(epoch_hours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gamma in radians, UTC hour of day) for hours since 1970-01-01T00:00Z."""
    stamps = np.asarray(epoch_hours, dtype="int64").astype("datetime64[h]")
    year_start = stamps.astype("datetime64[Y]").astype("datetime64[h]")
    day_of_year = (stamps - year_start).astype(int) // 24  # 0-based
    hour = (stamps - stamps.astype("datetime64[D]").astype("datetime64[h]")).astype(float)
    leap = np.isin(stamps.astype("datetime64[Y]").astype(int) + 1970, [y for y in range(1900, 2200) if y % 4 == 0 and (y % 100 or y % 400 == 0)])
    days_in_year = np.where(leap, 366.0, 365.0)
    return 2 * np.pi / days_in_year * (day_of_year + (hour - 12) / 24), hour


def sun_position(epoch_hours: np.ndarray, latitude: float, longitude: float, minutes: float = 0.0) -> SunPosition:
    """The sun at the given UTC hours (plus `minutes` into each hour) seen from latitude/longitude (degrees)."""
    gamma, hour = _fractional_year(epoch_hours)
    eqtime = 229.18 * (0.000075 + 0.001868 * np.cos(gamma) - 0.032077 * np.sin(gamma) - 0.014615 * np.cos(2 * gamma) - 0.040849 * np.sin(2 * gamma))
    decl = (
        0.006918 - 0.399912 * np.cos(gamma) + 0.070257 * np.sin(gamma) - 0.006758 * np.cos(2 * gamma)
        + 0.000907 * np.sin(2 * gamma) - 0.002697 * np.cos(3 * gamma) + 0.00148 * np.sin(3 * gamma)
    )
    true_solar_minutes = hour * 60 + minutes + eqtime + 4 * longitude
    hour_angle = np.deg2rad(true_solar_minutes / 4 - 180)
    lat = np.deg2rad(latitude)
    cos_zenith = np.clip(np.sin(lat) * np.sin(decl) + np.cos(lat) * np.cos(decl) * np.cos(hour_angle), -1.0, 1.0)
    zenith = np.arccos(cos_zenith)
    # Azimuth clockwise from north, from the east and north components of the sun's direction.
    east = -np.cos(decl) * np.sin(hour_angle)
    north = np.cos(lat) * np.sin(decl) - np.sin(lat) * np.cos(decl) * np.cos(hour_angle)
    azimuth = np.rad2deg(np.arctan2(east, north)) % 360
    return SunPosition(np.mod(true_solar_minutes / 60, 24), 90 - np.rad2deg(zenith), azimuth)

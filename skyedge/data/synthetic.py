"""Deterministic synthetic weather stations, each with a sky photo per hourly record.

The causal story, which is what makes this a useful test bed:
a hidden per-station "storm potential" s_t (a mean-reverting process with fair-weather spells
and storm-building episodes) sets the sky regime through thresholds with hysteresis, so the sky
class persists for hours. Rain falls only under thick_dark_clouds, more likely the higher s_t.
The sensors see s_t only through noise and confounders (pressure also follows a slow synoptic
walk, humidity a diurnal cycle), while the sky photo views the regime. Pressure therefore falls
and humidity rises before rain, yet the image still adds information about rain a few hours
ahead that the sensors alone do not carry.

Two cameras (`camera_model`). "clean" (the default profile's) renders the sky alone, filling the
frame and dimmed at night. "fisheye" is what a whole-sky camera records (skyedge.data.camera,
the attention profile's): a fisheye circle with a horizon ring and black corners, the station's own buildings, trees and mast in every frame, the
sun where the ephemeris puts it for the station and the hour (glare, saturation), dark noisy
nights, exposure errors, drops on the dome after rain, dust and debris. The view is imperfect on
purpose, so the sky class is not free to read off and compression has something to lose.

Layout under out_dir:

    stations/syn-NN.csv        hourly records; `image` points at ../images/...
    stations/stations.csv      coordinates and elevation
    images/syn-NN/<stamp>.png  the photos (RGB, image_size x image_size)
    index.csv                  path (images/...), label (empty when unlabelled), timestamp
    masks/syn-NN/<stamp>.png   fisheye only: the true sky mask of each photo, for evaluation only: 1-bit PNG,
                               1 = sky visible, 0 = outside the circle, horizon ring, obstruction
                               or debris on the dome (camera.mask_path maps a photo to its mask)

Ingest finds photos only through the `image` column and index.csv, neither of which names a
mask, and masks/ holds no CSV, so masks are never read as training photos.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from skyedge.core import contract, solar
from skyedge.data import camera

# Sky regimes from calm to stormy; the index of a regime is its rank in storminess.
REGIMES: tuple[str, ...] = (
    "clear_sky",
    "veil_clouds",
    "patterned_clouds",
    "thick_white_clouds",
    "thick_dark_clouds",
)
_DARK = REGIMES.index("thick_dark_clouds")
# Storm potential at which the sky moves up one regime; hysteresis stops hourly flicker.
_REGIME_THRESHOLDS = np.array([0.25, 0.42, 0.58, 0.75])
_HYSTERESIS = 0.06
# Levels s_t drifts towards: fair-weather spells range from clear to patterned skies.
_FAIR_TARGETS = (0.05, 0.6)
_STORM_TARGETS = (0.9, 1.2)
# Diurnal temperature amplitude multiplier per regime: clouds damp the daily swing.
_CLOUD_DAMPING = np.array([1.0, 0.85, 0.7, 0.45, 0.3])
_IMAGE_SIZES = range(64, 257)
CAMERAS = ("clean", "fisheye")  # the sky alone, filling the frame | a whole-sky camera on a mast
_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def _storm_potential(rng: np.random.Generator, hours: int) -> np.ndarray:
    """Mean-reverting latent s_t whose target switches between fair spells and storm episodes."""
    target = rng.uniform(*_FAIR_TARGETS)
    level = target
    storm_hours_left = 0
    potential = np.empty(hours)
    for t in range(hours):
        if storm_hours_left > 0:
            storm_hours_left -= 1
            if storm_hours_left == 0:
                target = rng.uniform(*_FAIR_TARGETS)
        elif rng.random() < 1 / 60:  # a storm builds about every two and a half days
            storm_hours_left = int(rng.integers(10, 30))
            target = rng.uniform(*_STORM_TARGETS)
        elif rng.random() < 1 / 36:
            target = rng.uniform(*_FAIR_TARGETS)
        # Pulling only 12 % of the way to the target each hour makes skies change over hours.
        level += 0.12 * (target - level) + 0.03 * rng.standard_normal()
        potential[t] = level
    return potential


def _regimes(s: np.ndarray) -> np.ndarray:
    """Regime index per hour: move up past threshold + hysteresis, down past threshold - hysteresis."""
    regime = int(np.searchsorted(_REGIME_THRESHOLDS, s[0]))
    out = np.empty(len(s), dtype=int)
    for t, level in enumerate(s):
        while regime < _DARK and level > _REGIME_THRESHOLDS[regime] + _HYSTERESIS:
            regime += 1
        while regime > 0 and level < _REGIME_THRESHOLDS[regime - 1] - _HYSTERESIS:
            regime -= 1
        out[t] = regime
    return out


def _precipitation(rng: np.random.Generator, s: np.ndarray, regime: np.ndarray) -> np.ndarray:
    """Rain only under dark clouds, likelier with higher s; elsewhere rarely a 0.05 mm trace."""
    rain_prob = 0.5 + 0.3 * np.clip((s - _REGIME_THRESHOLDS[-1]) / 0.3, 0.0, 1.0)
    raining = (regime == _DARK) & (rng.random(len(s)) < rain_prob)
    amount = contract.RAIN_THRESHOLD_MM + 0.01 + rng.gamma(1.5, 1.2, len(s))
    trace = np.where(rng.random(len(s)) < 0.02, 0.05, 0.0)
    return np.where(raining, amount, trace)


@dataclass(frozen=True)
class Site:
    """Where a synthetic station stands, and its climate: the same weather machinery runs at
    every site, but the day follows the station's own sun and the levels follow its latitude and
    elevation, so a model that learned the UTC clock or Beijing's levels does not transfer."""

    latitude: float
    longitude: float
    elevation_m: float

    @property
    def mean_temperature_c(self) -> float:
        return 27.0 - 0.35 * abs(self.latitude) - 0.0065 * self.elevation_m  # warm tropics, lapse rate

    @property
    def surface_pressure_hpa(self) -> float:
        return 1013.0 * float(np.exp(-self.elevation_m / 8400.0))  # station-level pressure


def _site(rng: np.random.Generator) -> Site:
    return Site(round(float(rng.uniform(-45.0, 55.0)), 3), round(float(rng.uniform(-179.0, 179.0)), 3), round(float(rng.uniform(0.0, 700.0))))


def _daylight(sun: solar.SunPosition) -> np.ndarray:
    """0 at night, 1 with the sun overhead: the sine of its elevation above the horizon."""
    return np.clip(np.sin(np.deg2rad(sun.elevation_deg)), 0.0, 1.0)


def _sensors(
    rng: np.random.Generator, site: Site, sun: solar.SunPosition, s: np.ndarray, regime: np.ndarray, precip: np.ndarray
) -> dict[str, np.ndarray]:
    """Sensor readings caused by s_t, the regime and the rain, plus noise and slow confounders,
    at the site's levels and on its local solar day."""
    hours = len(s)

    def slow_walk(step_sd: float) -> np.ndarray:
        # AR(1) close to a random walk, so it wanders for days but stays bounded.
        steps = rng.normal(0.0, step_sd, hours)
        walk = np.empty(hours)
        walk[0] = steps[0] / np.sqrt(1 - 0.995**2)
        for t in range(1, hours):
            walk[t] = 0.995 * walk[t - 1] + steps[t]
        return walk

    diurnal = np.cos(2 * np.pi * (sun.solar_hour - 14.5) / 24.0)  # warmest mid-afternoon, local time
    raining = (precip > contract.RAIN_THRESHOLD_MM).astype(float)
    # Evaporative cooling builds up while it rains and fades after.
    cooling = np.zeros(hours)
    for t in range(1, hours):
        cooling[t] = 0.6 * cooling[t - 1] + 0.4 * 2.0 * raining[t]
    temperature = (
        site.mean_temperature_c + rng.uniform(-3.0, 3.0)
        + rng.uniform(5.0, 7.0) * _CLOUD_DAMPING[regime] * diurnal
        - cooling
        + slow_walk(0.1)
        + rng.normal(0.0, 0.3, hours)
    )
    pressure = site.surface_pressure_hpa + rng.uniform(-8.0, 8.0) - 10.0 * s + slow_walk(0.3) + rng.normal(0.0, 0.5, hours)
    humidity = rng.uniform(50.0, 65.0) + 25.0 * s - 8.0 * diurnal + rng.normal(0.0, 10.0, hours)
    wind_speed = 1.5 + 3.0 * np.clip(s, 0.0, None) + np.abs(rng.normal(0.0, 2.0, hours))
    wind_dir = rng.uniform(0.0, 360.0) + np.cumsum(rng.normal(0.0, 8.0, hours))
    return {
        "temperature_c": np.round(temperature, 1),
        "pressure_hpa": np.round(pressure, 1),
        "humidity_pct": np.round(np.clip(humidity, 5.0, 100.0), 1),
        "wind_speed_ms": np.round(np.clip(wind_speed, 0.0, 40.0), 1),
        "wind_dir_deg": np.round(wind_dir % 360.0, 1) % 360.0,  # rounding 359.96 must not give 360
        "precip_mm": np.round(precip, 2),
    }


def _severity(s: np.ndarray, regime: np.ndarray) -> np.ndarray:
    """Where s_t stands inside its regime's band, 0..1: the renderer lets a sky about to change
    regime look a little like the next one (real class boundaries are fuzzy, labels are not)."""
    edges = np.concatenate([[_REGIME_THRESHOLDS[0] - 0.3], _REGIME_THRESHOLDS, [_REGIME_THRESHOLDS[-1] + 0.35]])
    low, high = edges[regime], edges[regime + 1]
    return np.clip((s - low) / (high - low), 0.0, 1.0)


def _value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a random grid of about cells^2, upsampled with smoothstep interpolation."""
    grid = rng.random((cells + 2, cells + 2))
    # A random sub-cell offset so cloud edges do not line up with the pixel grid in every image.
    coords = np.linspace(0.0, cells, size, endpoint=False) + rng.random()
    left = np.floor(coords).astype(int)
    frac = coords - np.floor(coords)
    frac = frac * frac * (3 - 2 * frac)
    rows = grid[left] * (1 - frac)[:, None] + grid[left + 1] * frac[:, None]
    return rows[:, left] * (1 - frac) + rows[:, left + 1] * frac


def _cloud_field(rng: np.random.Generator, size: int, cells: tuple[int, ...]) -> np.ndarray:
    """Sum of value noise at a few scales (coarser ones weigh more), rescaled to [0, 1]."""
    field = sum(_value_noise(rng, size, c) / c for c in cells)
    return (field - field.min()) / (np.ptp(field) + 1e-9)


def _render_sky(rng: np.random.Generator, regime: str, daylight: float, size: int) -> np.ndarray:
    """RGB uint8 photo of a sky in the given regime; brightness follows daylight."""
    height = np.linspace(0.0, 1.0, size)[:, None, None]  # 0 at the top of the frame
    zenith = np.array([0.22, 0.42, 0.85]) + rng.normal(0.0, 0.03, 3)
    horizon = np.array([0.62, 0.76, 0.95]) + rng.normal(0.0, 0.03, 3)
    sky = np.broadcast_to(zenith + (horizon - zenith) * height, (size, size, 3)).copy()

    if regime in ("clear_sky", "veil_clouds", "patterned_clouds") and daylight > 0:
        sun_y, sun_x = rng.uniform(0.1, 0.9, 2) * size
        yy, xx = np.mgrid[0:size, 0:size]
        glow = np.exp(-((yy - sun_y) ** 2 + (xx - sun_x) ** 2) / (2 * (0.08 * size) ** 2))
        sky += 0.5 * daylight * glow[..., None]

    if regime == "veil_clouds":  # translucent low-contrast haze over the blue
        alpha = rng.uniform(0.35, 0.55) * (0.6 + 0.4 * _cloud_field(rng, size, (2, 4)))
        colour = np.full(3, rng.uniform(0.85, 0.95))
    elif regime == "patterned_clouds":  # many small sharp white blobs
        field = _cloud_field(rng, size, (12, 24))
        cut = np.quantile(field, 1 - rng.uniform(0.3, 0.5))
        alpha = 0.95 * np.clip((field - cut) / 0.05, 0.0, 1.0)
        colour = np.full(3, rng.uniform(0.92, 1.0))
    elif regime == "thick_white_clouds":  # large bright masses with a few blue gaps
        field = _cloud_field(rng, size, (2, 4, 8))
        cut = np.quantile(field, 1 - rng.uniform(0.75, 0.88))
        alpha = np.clip((field - cut) / 0.1, 0.0, 1.0)
        colour = rng.uniform(0.8, 0.92) * (0.85 + 0.15 * field[..., None])
    elif regime == "thick_dark_clouds":  # near-full dark grey deck
        field = _cloud_field(rng, size, (2, 4))
        alpha = np.full((size, size), 0.98)
        colour = rng.uniform(0.25, 0.38) * (0.85 + 0.3 * field[..., None])
    else:
        alpha = np.zeros((size, size))
        colour = np.zeros(3)

    image = sky * (1 - alpha[..., None]) + colour * alpha[..., None]
    # Night darkens the frame but keeps a floor so the classes stay distinguishable.
    exposure = (0.35 + 0.65 * daylight) * rng.uniform(0.85, 1.15)
    image = image * exposure + rng.normal(0.0, 0.015, image.shape)
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)


def _format_reading(column: str, value: float) -> str:
    return f"{value:.2f}" if column == "precip_mm" else f"{value:.1f}"


def _write_csv(path: Path, header: tuple[str, ...], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def generate(
    out_dir: Path,
    stations: int,
    days: int,
    seed: int,
    image_size: int,
    unlabelled_share: float,
    camera_model: str = "clean",
    start: str = "2024-03-01T00:00:00Z",
    progress: bool = False,
) -> dict:
    """Write station CSVs, stations.csv (coordinates), sky PNGs, index.csv and, for the fisheye
    camera, the photos' sky masks under out_dir (layout in the module docstring); return a summary.

    `camera_model` is one of CAMERAS: "clean" renders the sky alone, filling the frame; "fisheye"
    what a whole-sky camera records (skyedge.data.camera). Photos are rendered at image_size
    (64..256 px; ingest resizes them to data.image_size).
    index.csv lists every photo; `unlabelled_share` of them have an empty label, as at a real
    station where nobody labels every frame (distillation learns from them). Same arguments give
    byte-identical files: every random draw comes from `seed`, one child stream per station for
    its site, one for the weather, one for its images and one for its camera and dome.
    """
    if image_size not in _IMAGE_SIZES:
        raise ValueError(f"image_size must be in 64..256, got {image_size}")
    if camera_model not in CAMERAS:
        raise ValueError(f"camera_model must be one of {CAMERAS}, got {camera_model!r}")
    if stations < 1 or days < 1:
        raise ValueError(f"stations and days must be >= 1, got stations={stations}, days={days}")
    out_dir = Path(out_dir)
    hours = days * 24
    times = np.datetime64(start.rstrip("Z"), "h") + np.arange(hours).astype("timedelta64[h]")
    epoch_hours = times.astype(int)
    stamps = [t.item().strftime(_TIMESTAMP_FORMAT) for t in times]
    file_stems = [t.item().strftime("%Y%m%dT%H%M") for t in times]

    (out_dir / "stations").mkdir(parents=True, exist_ok=True)
    index_rows: list[list[str]] = []
    class_counts = dict.fromkeys(contract.SKY_CLASSES, 0)
    rainy_hours = 0
    bar = tqdm(total=stations * hours, desc="synthetic images", disable=not progress)
    site_rows = []
    for station, station_seed in enumerate(np.random.SeedSequence(seed).spawn(stations)):
        # Four streams: adding the camera's (the fourth child) left the first three, so the weather, unchanged.
        site_rng, weather_rng, image_rng, camera_rng = (np.random.default_rng(s) for s in station_seed.spawn(4))
        station_id = f"syn-{station:02d}"
        site = _site(site_rng)
        site_rows.append([station_id, f"{site.latitude:.3f}", f"{site.longitude:.3f}", f"{site.elevation_m:.0f}"])
        sun = solar.sun_position(epoch_hours, site.latitude, site.longitude)
        s = _storm_potential(weather_rng, hours)
        regime = _regimes(s)
        precip = _precipitation(weather_rng, s, regime)
        sensors = _sensors(weather_rng, site, sun, s, regime, precip)
        unlabelled = image_rng.random(hours) < unlabelled_share
        raining = sensors["precip_mm"] > contract.RAIN_THRESHOLD_MM
        rainy_hours += int(raining.sum())
        fisheye = camera_model == "fisheye"
        if fisheye:
            lens = camera.make_camera(camera_rng, image_size)
            domes = camera.dome_timeline(camera_rng, raining, image_size)
            severity = _severity(s, regime)
            moon = camera.moon_position(epoch_hours, site.latitude, site.longitude)
        else:
            daylight = _daylight(sun)

        for tree in ("images", "masks") if fisheye else ("images",):
            (out_dir / tree / station_id).mkdir(parents=True, exist_ok=True)
        rows = []
        for t in range(hours):
            label = REGIMES[regime[t]]
            image_path = f"images/{station_id}/{file_stems[t]}.png"
            if fisheye:
                pixels, mask = camera.render(
                    lens, image_rng, int(regime[t]), float(severity[t]), float(sun.elevation_deg[t]), float(sun.azimuth_deg[t]), domes[t],
                    moon=(float(moon[0][t]), float(moon[1][t]), float(moon[2][t])),
                )
                Image.fromarray(mask.astype(bool)).save(out_dir / camera.mask_path(image_path), format="PNG")
            else:
                pixels = _render_sky(image_rng, label, float(daylight[t]), image_size)
            Image.fromarray(pixels, "RGB").save(out_dir / image_path, format="PNG", compress_level=6)
            readings = [_format_reading(column, sensors[column][t]) for column in contract.SENSOR_COLUMNS]
            rows.append([station_id, stamps[t], *readings, f"../{image_path}"])
            index_rows.append([image_path, "" if unlabelled[t] else label, stamps[t]])
            class_counts[label] += 1
            bar.update()
        _write_csv(out_dir / "stations" / f"{station_id}.csv", contract.STATION_COLUMNS, rows)
    bar.close()
    _write_csv(out_dir / "stations" / contract.STATION_METADATA_FILE, contract.STATION_METADATA_COLUMNS, site_rows)
    _write_csv(out_dir / "index.csv", ("path", "label", "timestamp"), index_rows)

    records = stations * hours
    return {
        "stations": stations,
        "records": records,
        "images": records,
        "masks": records if camera_model == "fisheye" else 0,  # masks/<station>/<stamp>.png beside images/: evaluation only
        "rain_fraction": rainy_hours / records,
        "class_counts": class_counts,
        "unlabelled": sum(1 for row in index_rows if not row[1]),
    }

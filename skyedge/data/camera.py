"""A whole-sky camera for the synthetic stations: what a fisheye on a mast actually records.

Geometry. An equidistant fisheye looks straight up: the distance from the image centre is
proportional to the zenith angle, and the image circle reaches a few degrees below the horizon,
so a thin ring of ground (the horizon ring) lies inside the circle and everything outside it is
black. North is up and east to the left (a camera looking up sees the sky mirrored), turned by a
per-station mounting angle.

Per station, fixed for all its frames (drawn from the station's camera stream): the lens (circle
radius, centre offset, vignetting, white balance, mounting angle), the obstructions (buildings,
trees with gaps in their crowns, a mast with cross-arms, a wire), how much city light reaches
the sky at night, and the pattern of dust on the dome.

Per frame: the sky of the weather regime (clouds on a layer seen in perspective, so they crowd
towards the horizon), the sun where the ephemeris puts it for the station and the hour, with its
glare, flare ghosts and a blooming streak where the sensor saturates, twilight colours, night
(dark, noisy, low contrast, lit by the city if there is one), auto-exposure with its errors,
drops on the dome during and after rain, dust that builds up between cleanings and the odd leaf
or bird dropping lying on the dome.

The true sky mask of a frame (`render` returns it) is 1 where the pixel sees the sky: inside the
circle, above the horizon, not behind an obstruction or opaque debris on the dome. Drops and dust
blur and veil the sky but do not hide it, so they stay 1.

Everything is numpy on whole frames; the only Python loops are over a handful of objects
(buildings, trees, drops), never over pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skyedge.core import solar

# Zenith angle (degrees) at the edge of the image circle: a few degrees below the horizon.
_FIELD_EDGE_DEG = (93.0, 98.0)
# The 22-degree halo of ice-crystal veils, in radians.
_HALO_RAD = np.deg2rad(22.0)
# Exposure: the auto-exposure aims the frame's mean linear luminance at this level ...
_EXPOSURE_TARGET = 0.16
# ... but cannot amplify beyond this gain: at night the frame stays dark (and noisy).
_MAX_GAIN = 16.0
_TYPICAL_DAY = 0.4  # mean linear luminance of a typical daytime scene
_DAY_GAIN = _EXPOSURE_TARGET / _TYPICAL_DAY  # sensor noise grows with the gain above it
# Regime order as in synthetic.REGIMES.
_CLEAR, _VEIL, _PATTERNED, _WHITE, _DARK = range(5)


def _rgb(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


_LUMA = _rgb(0.2126, 0.7152, 0.0722)
_SUNLIGHT = _rgb(1.0, 0.97, 0.9)
_CITY = _rgb(1.0, 0.72, 0.45)  # sodium-orange glow
_NEW_MOON_EPOCH_HOUR = 473604  # 2024-01-11T12:00Z, a new moon, in hours since 1970
_SYNODIC_HOURS = 29.530589 * 24


@dataclass(frozen=True)
class Camera:
    """One station's camera and its fixed surroundings, at the render size."""

    size: int
    zenith: np.ndarray  # radians per pixel (past pi/2 in the horizon ring)
    azimuth: np.ndarray  # radians clockwise from north, per pixel
    radius_px: float  # image circle radius
    centre: tuple[float, float]  # (row, column) of the circle centre
    rotation: float  # radians: the sky azimuth at the top of the frame
    edge: float  # radians: the zenith angle at the circle's edge (zenith is proportional to radius)
    inside: np.ndarray  # bool: inside the image circle
    above_horizon: np.ndarray  # bool: inside and zenith <= 90 degrees
    plane: tuple[np.ndarray, np.ndarray]  # (east, north) on a cloud layer at unit height, clipped
    haze: np.ndarray  # 0 at zenith .. 1 at the horizon: clouds blur into a band there
    obstruction: np.ndarray  # opacity of fixed objects in [0, 1]
    obstruction_colour: np.ndarray  # linear RGB albedo of those objects, (H, W, 3)
    windows: np.ndarray  # lit-window candidates (0..1) on buildings, glow at night
    ground: np.ndarray  # linear RGB albedo of the horizon ring
    vignetting: np.ndarray  # gain per pixel (1 at the centre)
    white_balance: np.ndarray  # per-channel gain
    city_light: float  # 0 rural .. 1 downtown: sky glow and lit cloud bases at night
    dust_pattern: np.ndarray  # where dust settles on the dome, 0..1
    # Derived per pixel once, used by every frame.
    rows: np.ndarray
    cols: np.ndarray
    cos_zenith: np.ndarray
    sin_zenith: np.ndarray
    horizon: np.ndarray  # zenith / 90 degrees, clipped to 1
    horizon_weight: np.ndarray  # where between zenith blue and horizon pale
    horizon_cubed: np.ndarray
    ring: np.ndarray  # bool: the ground ring between horizon and circle edge
    night_glow: np.ndarray  # linear RGB of the moonless night sky: airglow + the city's glow

    @property
    def mask(self) -> np.ndarray:
        """Sky visible through the fixed geometry: inside, above the horizon, not obstructed."""
        return self.above_horizon & (self.obstruction < 0.5)


@dataclass(frozen=True)
class Dome:
    """What lies on the dome at one hour."""

    drops: int  # rain drops
    dust: float  # 0 clean .. 0.3 filthy (scales the station's dust pattern)
    debris: tuple | None  # (kind, row, column, radius, angle, seed) of a leaf or bird dropping, or None


# ---------------------------------------------------------------------------------------------
# noise


def _smooth(t: np.ndarray) -> np.ndarray:
    return t * t * (3 - 2 * t)


def value_noise(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, cells: int = 64) -> np.ndarray:
    """Smooth noise in [0, 1] at arbitrary (x, y): a random periodic grid, smoothstep-interpolated."""
    grid = rng.random((cells, cells), dtype=np.float32)
    x = x + rng.uniform(0, cells)
    y = y + rng.uniform(0, cells)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = _smooth((x - x0).astype(np.float32)), _smooth((y - y0).astype(np.float32))
    ix, iy = x0.astype(np.int64) % cells, y0.astype(np.int64) % cells
    ix1, iy1 = (ix + 1) % cells, (iy + 1) % cells
    top = grid[iy, ix] * (1 - fx) + grid[iy, ix1] * fx
    bottom = grid[iy1, ix] * (1 - fx) + grid[iy1, ix1] * fx
    return top * (1 - fy) + bottom * fy


def fractal(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, frequency: float, octaves: int, gain: float = 0.5) -> np.ndarray:
    """Sum of value-noise octaves (each twice the frequency, `gain` times the weight), in [0, 1]."""
    total = np.zeros(np.shape(x), dtype=np.float32)
    weight, norm = 1.0, 0.0
    for octave in range(octaves):
        total += weight * value_noise(rng, x * frequency * 2**octave, y * frequency * 2**octave)
        norm += weight
        weight *= gain
    return total / norm


def _stretch(x: np.ndarray, y: np.ndarray, angle: float, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates rotated by angle and squeezed along one axis: fibrous, wind-drawn textures."""
    c, s = np.cos(angle), np.sin(angle)
    return (c * x + s * y) / factor, -s * x + c * y


# ---------------------------------------------------------------------------------------------
# the station's camera


def make_camera(rng: np.random.Generator, size: int) -> Camera:
    """A station's camera and surroundings; every draw comes from rng, so a seed gives one station."""
    radius = size * rng.uniform(0.44, 0.49)
    centre = (size / 2 - 0.5 + rng.uniform(-0.02, 0.02) * size, size / 2 - 0.5 + rng.uniform(-0.02, 0.02) * size)
    rotation = rng.uniform(0, 2 * np.pi)
    edge = np.deg2rad(rng.uniform(*_FIELD_EDGE_DEG))
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = rows - centre[0], cols - centre[1]
    r = np.hypot(dx, dy) / radius
    zenith = (r * edge).astype(np.float32)
    azimuth = np.mod(np.arctan2(-dx, -dy) + rotation, 2 * np.pi).astype(np.float32)
    inside = r <= 1.0
    above = inside & (zenith <= np.pi / 2)
    rho = np.tan(np.minimum(zenith, np.deg2rad(84.0)))  # cloud layer distance, clipped near the horizon
    plane = ((rho * np.sin(azimuth)).astype(np.float32), (rho * np.cos(azimuth)).astype(np.float32))
    haze = np.clip(zenith / (np.pi / 2), 0, 1) ** 4

    elevation = np.pi / 2 - zenith
    opacity = np.zeros((size, size), dtype=np.float32)
    colour = np.zeros((size, size, 3), dtype=np.float32)
    windows = np.zeros((size, size), dtype=np.float32)

    def paint(alpha: np.ndarray, albedo: np.ndarray) -> None:
        # Nearer objects are painted later and cover earlier ones where opaque.
        alpha = np.clip(alpha, 0, 1) * inside
        colour[:] = colour * (1 - alpha[..., None]) + albedo * alpha[..., None]
        opacity[:] = np.maximum(opacity, alpha)

    def azimuth_offset(centre_az: float) -> np.ndarray:
        return np.angle(np.exp(1j * (azimuth - centre_az))).astype(np.float32)  # wrapped to [-pi, pi]

    pixel_deg = np.rad2deg(edge) / radius  # degrees of zenith angle per pixel
    soft = np.deg2rad(pixel_deg)  # anti-aliasing width of edges in elevation

    for _ in range(rng.integers(1, 5)):  # buildings: a wall with a roof line, maybe a step
        centre_az, half_width = rng.uniform(0, 2 * np.pi), np.deg2rad(rng.uniform(10, 40))
        top = np.deg2rad(rng.uniform(8, 35))
        offset = azimuth_offset(centre_az)
        step = np.where(offset > rng.uniform(-0.5, 0.5) * half_width, np.deg2rad(rng.uniform(-5, 5)), 0.0)
        roof = top + step
        in_span = np.clip((half_width - np.abs(offset)) * np.maximum(np.sin(zenith), 0.05) / np.deg2rad(pixel_deg) + 0.5, 0, 1)
        alpha = in_span * np.clip((roof - elevation) / soft + 0.5, 0, 1)
        shade = rng.uniform(0.06, 0.3) * np.array([1.0, rng.uniform(0.85, 1.0), rng.uniform(0.7, 1.0)])
        paint(alpha, (shade * (0.9 + 0.2 * value_noise(rng, dx / 3.0, dy / 3.0))[..., None]).astype(np.float32))
        # Windows in rows and columns on the facade; some are lit at night.
        grid_az = np.sin(offset * rng.uniform(40, 70)) > 0.5
        grid_el = np.sin(elevation * rng.uniform(60, 110)) > 0.5
        windows += alpha * (grid_az & grid_el) * (elevation < roof - np.deg2rad(2.0))

    for _ in range(rng.integers(1, 6)):  # trees: a ragged crown on a trunk, with sky through the leaves
        centre_az, half_width = rng.uniform(0, 2 * np.pi), np.deg2rad(rng.uniform(8, 32))
        top = np.deg2rad(rng.uniform(15, 50))
        base = top * rng.uniform(0.2, 0.5)
        offset = azimuth_offset(centre_az) / half_width
        crown_top = base + (top - base) * np.sqrt(np.clip(1 - offset**2, 0, 1))
        ragged = crown_top * (0.85 + 0.3 * value_noise(rng, offset * 6, elevation * 20))
        leaves = fractal(rng, dx / (size / 24), dy / (size / 24), 1.0, 3)
        density = rng.uniform(0.25, 0.45)  # share of the crown where sky shows through
        alpha = np.clip((ragged - elevation) / soft + 0.5, 0, 1) * (np.abs(offset) < 1) * np.clip((leaves - density) * 10, 0, 1)
        trunk = np.clip((np.deg2rad(1.2) - np.abs(azimuth_offset(centre_az)) * np.sin(zenith)) / soft, 0, 1) * (elevation < base + soft)
        green = rng.uniform(0.03, 0.09) * np.array([rng.uniform(0.6, 0.9), 1.0, rng.uniform(0.4, 0.7)])
        paint(np.maximum(alpha, trunk), (green * (0.7 + 0.6 * leaves[..., None])).astype(np.float32))

    if rng.random() < 0.7:  # a mast (the instrument mast itself): a thin radial line with cross-arms
        centre_az, top = rng.uniform(0, 2 * np.pi), np.deg2rad(rng.uniform(35, 70))
        across_px = np.abs(np.sin(azimuth_offset(centre_az))) * r * radius  # distance from the line in pixels
        along = np.cos(azimuth_offset(centre_az)) > 0
        width = max(0.6, size / 160)
        alpha = np.clip(width - across_px + 0.5, 0, 1) * along * np.clip((top - elevation) / soft + 0.5, 0, 1)
        for arm in rng.uniform(0.3, 0.95, rng.integers(1, 3)) * top:
            arm_alpha = np.clip(width - np.abs(elevation - arm) / np.deg2rad(pixel_deg) + 0.5, 0, 1)
            alpha = np.maximum(alpha, arm_alpha * (np.abs(azimuth_offset(centre_az)) < np.deg2rad(rng.uniform(4, 9))))
        paint(alpha, np.full(3, rng.uniform(0.08, 0.2), dtype=np.float32))

    if rng.random() < 0.5:  # a wire across the sky: a great circle, sagging towards one side
        normal = rng.normal(size=3)
        normal[2] = abs(normal[2]) + 1.0
        normal /= np.linalg.norm(normal)
        direction = np.stack([np.sin(zenith) * np.sin(azimuth), np.sin(zenith) * np.cos(azimuth), np.cos(zenith)], axis=-1)
        distance = np.abs(direction @ normal) / np.deg2rad(pixel_deg)  # in pixels, roughly
        paint(np.clip(0.7 - distance + 0.5, 0, 1) * 0.9, np.full(3, 0.05, dtype=np.float32))

    ground_tone = rng.uniform(0.04, 0.12) * np.array([1.0, 0.9, 0.75])
    ground = (ground_tone * (0.7 + 0.6 * value_noise(rng, dx / 4.0, dy / 4.0))[..., None]).astype(np.float32)
    vignetting = (1 - rng.uniform(0.2, 0.45) * np.clip(r, 0, 1) ** 2.5).astype(np.float32)
    white_balance = rng.uniform(0.95, 1.05, 3).astype(np.float32)
    dust = fractal(rng, dx / (size / 10), dy / (size / 10), 1.0, 4)
    dust = np.clip((dust - 0.35) * 2, 0, 1) ** 1.5
    city_light = float(0.15 + 0.85 * rng.uniform(0.0, 1.0) ** 1.5)
    horizon = np.clip(zenith / (np.pi / 2), 0, 1).astype(np.float32)
    return Camera(
        size=size, zenith=zenith, azimuth=azimuth, radius_px=float(radius), centre=centre, rotation=float(rotation), edge=float(edge),
        inside=inside, above_horizon=above, plane=plane, haze=haze.astype(np.float32),
        obstruction=opacity * above + (inside & ~above), obstruction_colour=colour,
        windows=np.clip(windows, 0, 1) * above, ground=ground, vignetting=vignetting, white_balance=white_balance,
        city_light=city_light, dust_pattern=dust.astype(np.float32),
        rows=rows, cols=cols, cos_zenith=np.cos(zenith), sin_zenith=np.sin(zenith), horizon=horizon,
        horizon_weight=horizon**1.8, horizon_cubed=horizon**3, ring=inside & ~above,
        night_glow=((0.0004 + 0.004 * city_light * horizon**2)[..., None] * _CITY).astype(np.float32),
    )


def sun_pixel(camera: Camera, elevation_deg: float, azimuth_deg: float) -> tuple[float, float]:
    """(row, column) of the sun (or where it would be, below the horizon) in the camera's frame."""
    r = np.deg2rad(90.0 - elevation_deg) / camera.edge * camera.radius_px
    angle = np.deg2rad(azimuth_deg) - camera.rotation
    return camera.centre[0] - r * np.cos(angle), camera.centre[1] - r * np.sin(angle)


# ---------------------------------------------------------------------------------------------
# the dome over time


def dome_timeline(rng: np.random.Generator, raining: np.ndarray, size: int) -> list[Dome]:
    """Drops, dust and debris on the dome for each hour, from the rain record (one draw per hour)."""
    hours = len(raining)
    domes = []
    drops, dust = 0.0, rng.uniform(0, 0.2)
    next_cleaning = rng.uniform(4, 14) * 24
    debris, debris_left = None, 0
    for t in range(hours):
        if raining[t]:
            drops = rng.uniform(25, 70)
            dust *= 0.8  # rain washes some dust off
        else:
            drops *= rng.uniform(0.2, 0.6)  # drying: most drops are gone within a few hours
        dust = min(dust + rng.uniform(0.0003, 0.0015), 0.3)
        next_cleaning -= 1
        if next_cleaning <= 0:
            dust, next_cleaning = 0.0, rng.uniform(4, 14) * 24
        if debris_left > 0:
            debris_left -= 1
            if raining[t] and rng.random() < 0.3:
                debris_left = 0  # washed away
        else:
            debris = None
            if rng.random() < 1 / 120:
                kind = "leaf" if rng.random() < 0.6 else "dropping"
                angle_r = rng.uniform(0, 2 * np.pi)
                where = rng.uniform(0, 0.42) * size
                debris = (kind, size / 2 + where * np.sin(angle_r), size / 2 + where * np.cos(angle_r),
                          size * rng.uniform(0.03, 0.07), rng.uniform(0, np.pi), int(rng.integers(2**31)))
                debris_left = int(rng.integers(3, 36))
        domes.append(Dome(drops=int(drops) if drops >= 1 else 0, dust=float(dust), debris=debris if debris_left > 0 else None))
    return domes


def _debris_alpha(camera: Camera, debris: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Opacity and linear RGB of a leaf or bird dropping lying on the dome."""
    kind, row, col, radius, angle, seed = debris
    shape = np.random.default_rng(seed)
    dy, dx = camera.rows - np.float32(row), camera.cols - np.float32(col)
    theta = np.arctan2(dy, dx) - angle
    # An irregular outline: a few random harmonics of the radius (a leaf is also elongated).
    harmonics = sum(shape.uniform(0, 0.18) * np.cos(k * theta + shape.uniform(0, 2 * np.pi)) for k in range(2, 6))
    elongation = 1.8 if kind == "leaf" else 1.1
    dist = np.hypot(dx * np.cos(angle) + dy * np.sin(angle), elongation * (-dx * np.sin(angle) + dy * np.cos(angle)))
    alpha = np.clip((radius * (1 + harmonics) - dist) + 0.5, 0, 1) * camera.inside
    if kind == "leaf":
        tone = shape.uniform(0.04, 0.12) * np.array([1.0, 0.75, 0.35])
    else:
        tone = shape.uniform(0.5, 0.8) * np.array([1.0, 0.97, 0.9])
    return alpha.astype(np.float32), tone.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# one frame


def _sky_scale(elevation_deg: float) -> float:
    """Daylight on the sky, about 1 with the sun high, fading through twilight to ~0 at night."""
    if elevation_deg > 0:
        return 0.06 + 0.94 * np.sin(np.deg2rad(elevation_deg)) ** 0.6
    return 0.06 * np.exp(elevation_deg / 2.2)


def _clouds(rng: np.random.Generator, camera: Camera, regime: int, severity: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(opacity, relative brightness, darkness of the deck) of the regime's clouds over the frame.

    severity in [0, 1] is where the storm potential stands inside the regime's band: a sky about to
    change regime already looks a little like the next one, as real skies do.
    """
    x, y = camera.plane
    shape = x.shape
    if regime == _CLEAR:
        # Now and then a few distant fair-weather puffs low on the horizon.
        if rng.random() < 0.25:
            field = fractal(rng, x, y, 1.2, 3)
            cover = rng.uniform(0.0, 0.03) + 0.03 * severity
            alpha = np.clip((field - np.quantile(field, 1 - cover)) / 0.05, 0, 1) * camera.haze**0.5
        else:
            alpha = np.zeros(shape, np.float32)
        return alpha * 0.9, np.full(shape, 1.5, np.float32), 0.0
    if regime == _VEIL:  # a milky, fibrous sheet of ice cloud: the blue shows through, paled
        sx, sy = _stretch(x, y, rng.uniform(0, np.pi), rng.uniform(3, 6))
        fibres = fractal(rng, sx, sy, 0.8, 4)
        thickness = rng.uniform(0.25, 0.45) + 0.1 * severity
        alpha = thickness * (0.4 + 0.9 * fibres) * (0.8 + 0.2 * camera.haze)
        return np.clip(alpha, 0, 0.9), np.full(shape, 1.35, np.float32), 0.0
    if regime == _PATTERNED:  # many small separate cloudlets
        field = fractal(rng, x, y, rng.uniform(2.0, 3.5), 3, gain=0.45)
        cover = rng.uniform(0.3, 0.5) + 0.15 * severity
        cut = np.quantile(field, 1 - cover)
        alpha = np.clip((field - cut) / 0.04, 0, 1) * 0.95
        alpha = alpha * (1 - camera.haze) + camera.haze * cover * 1.2  # crowding into a band at the horizon
        brightness = 1.45 + 0.2 * field
        return np.clip(alpha, 0, 1), brightness.astype(np.float32), 0.0
    if regime == _WHITE:  # big bright heaps with grey bases and blue gaps between them
        field = fractal(rng, x, y, rng.uniform(0.4, 0.8), 4)
        cover = rng.uniform(0.5, 0.75) + 0.12 * severity
        cut = np.quantile(field, 1 - cover)
        thickness = np.clip((field - cut) / 0.12, 0, 1)
        alpha = np.clip(thickness * 1.6, 0, 1) * (1 - camera.haze) + camera.haze * 0.95
        brightness = (1.9 - (0.5 + 0.2 * severity) * thickness).astype(np.float32)
        return alpha.astype(np.float32), brightness, 0.1 * severity
    # A dark deck: overcast, heavy, mottled.
    field = fractal(rng, x, y, rng.uniform(0.3, 0.8), 4)
    alpha = np.clip(0.94 + 0.1 * field, 0, 1)
    darkness = rng.uniform(0.6, 0.8) + 0.1 * severity
    brightness = ((1 - darkness) * (0.6 + 0.8 * field) * 1.4).astype(np.float32)
    return alpha.astype(np.float32), brightness, darkness


def render(
    camera: Camera,
    rng: np.random.Generator,
    regime: int,
    severity: float,
    sun_elevation_deg: float,
    sun_azimuth_deg: float,
    dome: Dome,
    moon: tuple[float, float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 frame, sky mask uint8 of 0/1) for one hour at this station; `moon` is its
    (elevation, azimuth, lit fraction) from `moon_position`, None for a moonless sky."""
    size = camera.size
    gamma = _angle_to(camera, sun_elevation_deg, sun_azimuth_deg)
    day = float(_sky_scale(sun_elevation_deg))
    # Moonlight counts at night only (by day it is lost in the sunlight).
    moonlight = 0.0
    if moon is not None and moon[0] > 0 and sun_elevation_deg < -4:
        moonlight = moon[2] * float(np.sin(np.deg2rad(moon[0]))) ** 0.5
        moon_gamma = _angle_to(camera, moon[0], moon[1])
    warm = float(np.clip(1 - abs(sun_elevation_deg) / 12, 0, 1))  # sunrise / sunset colours

    # Clear sky: deep blue at the zenith, pale at the horizon, bright around the sun and, low sun,
    # orange on its side of the horizon. Night: airglow, stars and the city's glow near the horizon.
    zenith_blue = _rgb(0.09, 0.2, 0.55) * np.float32(rng.uniform(0.85, 1.15))
    sky = zenith_blue + (_rgb(0.5, 0.6, 0.75) - zenith_blue) * camera.horizon_weight[..., None]
    near_sun = np.exp(-gamma / np.float32(0.15)) * np.float32(1.6) + np.exp(-gamma / np.float32(0.6)) * np.float32(0.5)
    sky = sky + near_sun[..., None] * _rgb(1.0, 0.95, 0.85)
    if warm > 0:
        sky = sky + (np.float32(warm) * np.exp(-gamma / np.float32(0.7)))[..., None] * camera.horizon_cubed[..., None] * _rgb(1.1, 0.45, 0.12)
    sky = sky * np.float32(day) + camera.night_glow
    if moonlight > 0:
        moon_sky = np.float32(0.002 * moonlight) * (1 + 3 * np.exp(-moon_gamma / np.float32(0.3)))
        sky = sky + moon_sky[..., None] * _rgb(0.6, 0.7, 1.0)
    if sun_elevation_deg < -8:
        stars = (rng.random((size, size), dtype=np.float32) < 0.003) * rng.uniform(0.004, 0.03, (size, size)).astype(np.float32)
        sky = sky + stars[..., None] * np.float32(1 - moonlight * 0.7)

    alpha, brightness, darkness = _clouds(rng, camera, regime, severity)
    alpha_c = alpha[..., None]
    # Clouds are lit by the day (brighter than blue sky unless thick and dark), with silver
    # linings near the sun, by the sunset from their side, and at night from below by the city.
    lit = (1 - darkness) * day
    cloud = (brightness * np.float32(day))[..., None] * _rgb(0.95, 0.95, 1.0 + 0.05 * darkness)
    lining = np.exp(-gamma / np.float32(0.25)) * np.float32(1.2 * lit) * np.sqrt(1 - alpha)
    if warm > 0:
        lining = lining + np.exp(-gamma / np.float32(1.0)) * np.float32(warm * lit * 0.5)
    cloud = cloud + lining[..., None] * _rgb(1.0, 0.8, 0.6)
    cloud = cloud + _CITY * np.float32(0.0002 + 0.012 * camera.city_light * (1 - 0.5 * darkness))
    if moonlight > 0:  # moonlit clouds: pale grey against the dark sky, bright near the moon
        moonlit = brightness * np.float32(0.006 * moonlight * (1 - 0.6 * darkness)) * (1 + np.exp(-moon_gamma / np.float32(0.4)))
        cloud = cloud + moonlit[..., None] * _rgb(0.85, 0.9, 1.0)
    scene = sky + (cloud - sky) * alpha_c
    if moonlight > 0:  # the moon's disc, dimmed by the cloud in front of it
        disc = np.exp(-((moon_gamma / np.float32(np.deg2rad(1.5))) ** 2)) * np.float32(0.3 * moonlight) * (1 - 0.95 * alpha)
        scene = scene + disc[..., None]

    # The sun, through whatever cloud lies in front of it, with its aureole and the 22-degree halo.
    transmission = 0.0
    if sun_elevation_deg > -1.0:
        sun_row, sun_col = sun_pixel(camera, sun_elevation_deg, sun_azimuth_deg)
        at = (int(np.clip(round(sun_row), 0, size - 1)), int(np.clip(round(sun_col), 0, size - 1)))
        cover = float(alpha[at])
        # Behind a cloud, a building or a tree, or still below the horizon: no direct sunlight.
        transmission = (1 - 0.97 * cover) ** 2 * (1 - float(camera.obstruction[at])) * float(np.clip(sun_elevation_deg + 1.0, 0, 1))
        light = np.exp(-gamma / np.float32(0.05)) * np.float32(12.0)
        light = light + np.exp(-((gamma / np.float32(np.deg2rad(1.6))) ** 2)) * np.float32(300.0)
        light = light * np.float32(transmission * day)
        light = light + np.exp(-gamma / np.float32(0.3)) * np.float32((1 - transmission) * lit * cover * 1.5)
        if regime == _VEIL and sun_elevation_deg > 5:
            light = light + np.exp(-(((gamma - np.float32(_HALO_RAD)) / np.float32(0.03)) ** 2)) * alpha * np.float32(0.6 * day)
        scene = scene + light[..., None] * _SUNLIGHT

    # Fixed objects and the ground ring, lit by the sky (and some windows lit at night).
    ambient = np.float32(0.25 * day + 0.002 * camera.city_light + 0.0002)
    objects = camera.obstruction_colour * ambient
    if sun_elevation_deg < -3:
        windows = camera.windows * (rng.random((size, size), dtype=np.float32) < 0.25) * np.float32(0.02)
        objects = objects + windows[..., None] * _rgb(1.0, 0.8, 0.45)
    scene = scene + (objects - scene) * camera.obstruction[..., None]
    scene = np.where(camera.ring[..., None], camera.ground * ambient, scene)

    # The dome: dust scatters light into a veil (glowing when the sun shines on it), drops refract
    # a small upside-down patch of the sky behind them, debris hides the sky.
    if dome.dust > 0:
        veil = camera.dust_pattern * np.float32(dome.dust)
        scatter = np.float32(scene[camera.inside].mean()) + np.exp(-gamma / np.float32(0.5)) * np.float32(transmission * day * 2.0)
        scene = scene * (1 - 0.5 * veil)[..., None] + (0.8 * scatter * veil)[..., None]
    if dome.drops:
        scene = _drops(rng, camera, scene, dome.drops)
    mask = camera.mask.copy()
    if dome.debris is not None:
        debris, tone = _debris_alpha(camera, dome.debris)
        scene = scene + (tone * (ambient + np.float32(0.3 * transmission * day)) - scene) * debris[..., None]
        mask &= debris < 0.5

    # Auto-exposure on the mean luminance (sun-saturated pixels count at most 4x the median) with
    # its errors; the gain has a ceiling, so night stays dark.
    luminance = (scene @ _LUMA)[camera.inside]
    metered = float(np.minimum(luminance, 4 * np.median(luminance) + 1e-6).mean())
    # It corrects half the difference from a typical daytime scene (in log), so a dark deck stays
    # darker than white clouds, and errs now and then by a stop.
    error = rng.normal(0, 0.12) + (rng.choice([-1, 1]) * rng.uniform(0.5, 1.0) if rng.random() < 0.04 else 0.0)
    gain = min(_EXPOSURE_TARGET / (_TYPICAL_DAY**0.5 * max(metered, 1e-9) ** 0.5), _MAX_GAIN) * float(np.exp(error))
    colour = camera.white_balance * rng.uniform(0.97, 1.03, 3).astype(np.float32) * np.float32(gain)
    signal = scene * colour * camera.vignetting[..., None]
    if transmission > 0.2:
        signal = _glare(camera, signal, sun_elevation_deg, sun_azimuth_deg, min(transmission * day * gain * 300, 40.0))
    # Sensor noise: shot noise plus read noise, both amplified by the gain above daytime.
    amplification = float(np.sqrt(np.clip(gain / _DAY_GAIN, 1, None)))
    shot = np.sqrt(np.clip(signal, 0, 1) * np.float32(0.0003 * amplification) + np.float32((0.001 * amplification) ** 2))
    signal = signal + shot * rng.standard_normal(signal.shape, dtype=np.float32)
    encoded = np.clip(signal, 0, 1) ** np.float32(1 / 2.2) * camera.inside[..., None]
    return (encoded * 255 + 0.5).astype(np.uint8), mask.astype(np.uint8)


def _angle_to(camera: Camera, elevation_deg: float, azimuth_deg: float) -> np.ndarray:
    """Angle (radians) from each pixel's direction to a body at that elevation and azimuth."""
    zenith, azimuth = np.deg2rad(90.0 - elevation_deg), np.deg2rad(azimuth_deg)
    cosine = camera.cos_zenith * np.float32(np.cos(zenith)) + camera.sin_zenith * np.float32(np.sin(zenith)) * np.cos(camera.azimuth - np.float32(azimuth))
    return np.arccos(np.clip(cosine, -1, 1))


def moon_position(epoch_hours: np.ndarray, latitude: float, longitude: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(elevation, azimuth, lit fraction) of a plausible moon: it runs a day behind the sun by its
    phase (new moon with the sun, full moon opposite it) on the sun's path. Its declination is the
    sun's, not its own: close enough for the light it casts on a synthetic sky."""
    phase = np.mod((np.asarray(epoch_hours, dtype=float) - _NEW_MOON_EPOCH_HOUR) / _SYNODIC_HOURS, 1.0)
    lag = phase * 24.84  # hours behind the sun: a lunar day is 24 h 50 min
    whole = np.ceil(lag)
    sun_then = solar.sun_position(np.asarray(epoch_hours, dtype=np.int64) - whole.astype(np.int64), latitude, longitude, minutes=(whole - lag) * 60)
    return sun_then.elevation_deg, sun_then.azimuth_deg, (1 - np.cos(2 * np.pi * phase)) / 2


def _glare(camera: Camera, signal: np.ndarray, elevation_deg: float, azimuth_deg: float, overload: float) -> np.ndarray:
    """Where the sun saturates the sensor: a short blooming streak along its column and faint
    flare ghosts on the line from the sun through the centre of the lens."""
    if overload < 1.0:
        return signal
    size = camera.size
    sun_row, sun_col = sun_pixel(camera, elevation_deg, azimuth_deg)
    strength = np.float32(min(np.log(overload) / np.log(40.0), 1.0))
    across = np.exp(-np.abs(camera.cols[0] - np.float32(sun_col)) / np.float32(0.5))
    along = np.exp(-np.abs(camera.rows[:, 0] - np.float32(sun_row)) / np.float32(size * 0.12))
    signal = signal + (np.outer(along, across) * strength * np.float32(0.8))[..., None]
    for position, tint in ((-0.45, _rgb(0.3, 0.6, 0.3)), (-0.9, _rgb(0.5, 0.3, 0.6))):
        row = camera.centre[0] + position * (sun_row - camera.centre[0])
        col = camera.centre[1] + position * (sun_col - camera.centre[1])
        disc = np.clip(np.float32(size * 0.035) - np.hypot(camera.rows - np.float32(row), camera.cols - np.float32(col)), 0, 1)
        signal = signal + (disc * strength * np.float32(0.1))[..., None] * tint
    return signal


def _drops(rng: np.random.Generator, camera: Camera, scene: np.ndarray, count: int) -> np.ndarray:
    """Water drops on the dome: each shows a shrunken, upside-down view of the sky around it."""
    size = camera.size
    out = scene.copy()
    for _ in range(count):
        radius = size * rng.uniform(0.008, 0.03)
        angle = rng.uniform(0, 2 * np.pi)
        where = np.sqrt(rng.random()) * camera.radius_px * 0.95
        row, col = camera.centre[0] + where * np.sin(angle), camera.centre[1] + where * np.cos(angle)
        r0, r1 = int(max(row - radius - 1, 0)), int(min(row + radius + 2, size))
        c0, c1 = int(max(col - radius - 1, 0)), int(min(col + radius + 2, size))
        if r0 >= r1 or c0 >= c1:
            continue
        rows, cols = np.mgrid[r0:r1, c0:c1]
        dist = np.hypot(rows - row, cols - col)
        inside = dist < radius
        # Inverted lens: a pixel at offset d shows the scene at -2.5 d from the centre.
        src_r = np.clip(np.round(row - 2.5 * (rows - row)), 0, size - 1).astype(int)
        src_c = np.clip(np.round(col - 2.5 * (cols - col)), 0, size - 1).astype(int)
        refracted = scene[src_r, src_c] * 0.8 + 0.2 * scene[r0:r1, c0:c1].mean(axis=(0, 1))
        rim = np.clip(1 - np.abs(dist - radius * 0.85) / (radius * 0.2 + 0.5), 0, 1)[..., None]
        patch = np.where(inside[..., None], refracted * (1 - 0.4 * rim), out[r0:r1, c0:c1])
        out[r0:r1, c0:c1] = patch
    return out


# ---------------------------------------------------------------------------------------------
# a picture for people


def contact_sheet(folder: Path, out: Path, frames: int = 16, seed: int = 0) -> Path:
    """Tile `frames` generated photos (spread over stations, hours and classes), each with its mask
    beside it and its label under it, into one PNG: docs/synthetic-frames.png."""
    import csv

    from PIL import Image, ImageDraw

    from skyedge.core import contract, solar

    folder = Path(folder)
    with (folder / "index.csv").open() as f:
        rows = list(csv.DictReader(f))
    with (folder / "stations" / contract.STATION_METADATA_FILE).open() as f:
        sites = {row["station_id"]: (float(row["latitude"]), float(row["longitude"])) for row in csv.DictReader(f)}
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[dict]] = {}
    for row in rows:
        if row["label"]:
            by_class.setdefault(row["label"], []).append(row)
    # The same number of each class (labelled frames only), at random hours: day, dusk and night.
    picked = []
    for k in range(frames):
        pool = by_class[sorted(by_class)[k % len(by_class)]]
        picked.append(pool[int(rng.integers(len(pool)))])
    tile = 128
    columns = 4
    sheet = Image.new("RGB", (columns * 2 * tile + columns * 6, ((len(picked) + columns - 1) // columns) * (tile + 16)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, row in enumerate(picked):
        image = Image.open(folder / row["path"]).convert("RGB").resize((tile, tile), Image.Resampling.NEAREST)
        mask = Image.open(folder / mask_path(row["path"])).convert("RGB").resize((tile, tile), Image.Resampling.NEAREST)
        x, y = (k % columns) * (2 * tile + 6), (k // columns) * (tile + 16)
        sheet.paste(image, (x, y))
        sheet.paste(mask, (x + tile, y))
        station = Path(row["path"]).parent.name
        hour = np.datetime64(row["timestamp"].rstrip("Z"), "h").astype(int)
        elevation = float(solar.sun_position(np.array([hour]), *sites[station]).elevation_deg[0])
        draw.text((x + 2, y + tile + 2), f"{station} sun {elevation:+.0f} deg  {row['label']}", fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def composite(frame: np.ndarray, mask: np.ndarray, photo: np.ndarray) -> np.ndarray:
    """A rendered station frame [S, S, 3] uint8 whose sky shows a real sky photo: the photo is
    stretched over the bounding box of the frame's sky pixels (`mask` [S, S], 1 where sky) and
    drawn only where the mask is sky, so the horizon ring, the station's obstructions, debris on
    the dome and the black outside the image circle stay as rendered. The sky keeps its place
    in the frame: what selective attention must find is where it always was."""
    from PIL import Image

    sky = np.asarray(mask) > 0
    if sky.shape != frame.shape[:2]:
        raise ValueError(f"composite: mask {sky.shape} does not match frame {frame.shape[:2]}")
    if not sky.any():
        raise ValueError("composite: the frame has no sky pixel to show the photo in")
    rows, cols = np.nonzero(sky)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    patch = np.asarray(Image.fromarray(np.ascontiguousarray(photo)).convert("RGB").resize((int(right - left), int(bottom - top)), Image.Resampling.BILINEAR))
    out = frame.copy()
    inside = sky[top:bottom, left:right]
    out[top:bottom, left:right][inside] = patch[inside]
    return out


def mask_path(image_path: str) -> str:
    """Where the generator writes the true sky mask of a photo: images/<station>/<stem>.png ->
    masks/<station>/<stem>.png (a tree beside images/, never named in a station CSV or index.csv)."""
    parts = Path(image_path).parts
    return str(Path("masks", *parts[1:])) if parts and parts[0] == "images" else str(Path("masks", *parts))


def true_mask_file(image_file: str | Path) -> Path | None:
    """The generator's true sky mask of an ingested photo (samples.csv's image_file, a resolved
    path .../images/<station>/<stem>.png), or None when the photo has none (not synthetic, or
    its folder has moved). For evaluation only: nothing trains on these masks."""
    parts = Path(image_file).parts
    if "images" not in parts:
        return None
    at = len(parts) - 1 - parts[::-1].index("images")  # the innermost images/: the generator's tree
    candidate = Path(*parts[:at]) / mask_path(str(Path(*parts[at:])))
    return candidate if candidate.is_file() else None


def read_true_masks(image_files: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """The true sky masks of ingested photos at size x size ([N, size, size] bool: sky where at
    least half the pixels it covers see sky), and which photos have one ([N] bool)."""
    from PIL import Image

    masks = np.zeros((len(image_files), size, size), dtype=bool)
    found = np.zeros(len(image_files), dtype=bool)
    for i, image_file in enumerate(image_files):
        path = true_mask_file(image_file) if isinstance(image_file, str) and image_file else None
        if path is None:
            continue
        with Image.open(path) as mask:
            # BOX averages the 0/255 pixels a small pixel covers: the ingest's bilinear resize of
            # the photo blends the same ones.
            masks[i] = np.asarray(mask.convert("L").resize((size, size), Image.Resampling.BOX)) >= 128
        found[i] = True
    return masks, found

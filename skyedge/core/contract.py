"""The data contract (ARCHITECTURE §2) and the prediction contract (§3), in one place.

Every other module reads column names, ranges, classes and horizons from here, so the contract
has exactly one home. No third-party imports: devices use this module too.
"""

from __future__ import annotations

# Station records: one CSV row per station and hour.
STATION_ID = "station_id"
TIMESTAMP = "timestamp"
IMAGE = "image"

# Sensor columns with their unit-checked valid ranges (inclusive). None = unbounded.
SENSOR_RANGES: dict[str, tuple[float | None, float | None]] = {
    "temperature_c": (-80.0, 60.0),
    "pressure_hpa": (850.0, 1085.0),
    "humidity_pct": (0.0, 100.0),
    "wind_speed_ms": (0.0, 75.0),
    "wind_dir_deg": (0.0, 360.0),
    "precip_mm": (0.0, None),
}
SENSOR_COLUMNS: tuple[str, ...] = tuple(SENSOR_RANGES)
# Suspected wrong units: (sensor column, unit) -> the band of values that unit would give for valid
# weather. A value outside the contract range but inside such a band is flagged as that unit.
UNIT_BANDS: dict[str, dict[str, tuple[float, float]]] = {
    "temperature_c": {"kelvin": (200.0, 350.0), "fahrenheit": (60.0, 140.0)},
    "pressure_hpa": {"pa": (85000.0, 108500.0), "inhg": (25.0, 32.1)},
}
REQUIRED_COLUMNS: tuple[str, ...] = (STATION_ID, TIMESTAMP, *SENSOR_COLUMNS)
STATION_COLUMNS: tuple[str, ...] = (*REQUIRED_COLUMNS, IMAGE)

# Station metadata: one row per station, in stations.csv beside the records. The model's time of
# day is the station's local solar time and the sun's elevation, computed from these.
STATION_METADATA_FILE = "stations.csv"
STATION_METADATA_RANGES: dict[str, tuple[float, float]] = {
    "latitude": (-90.0, 90.0),
    "longitude": (-180.0, 180.0),
    "elevation_m": (-500.0, 9000.0),
}
STATION_METADATA_COLUMNS: tuple[str, ...] = (STATION_ID, *STATION_METADATA_RANGES)

# Labelled sky images: index.csv with path,label (optional timestamp). An empty label is a photo
# whose class nobody wrote down: kept (distillation learns from it), never quarantined.
SKY_CLASSES: tuple[str, ...] = (
    "clear_sky",
    "patterned_clouds",
    "thick_dark_clouds",
    "thick_white_clouds",
    "veil_clouds",
)

# What the shipped model predicts (§3).
HORIZONS: tuple[int, ...] = (1, 2, 3, 4)
RAIN_THRESHOLD_MM = 0.1  # rain_h: more than this in the hour ending t+h

# Names of the ONNX model's inputs and outputs; the manifest records shapes and dtypes.
INPUT_IMAGE = "image"  # float32 [B, 3, S, S], normalised as the manifest says
INPUT_IMAGE_PRESENT = "image_present"  # float32 [B, 1]: 0 when the camera gave nothing
INPUT_SENSORS = "sensors"  # float32 [B, W, F]: see skyedge.core.features
OUTPUT_SKY_LOGITS = "sky_logits"  # float32 [B, 5]
OUTPUT_RAIN_PROB = "rain_prob"  # float32 [B, 4]: P(rain in hour ending t+h)
OUTPUT_TEMP_C = "temp_c"  # float32 [B, 4]: temperature at t+h in °C

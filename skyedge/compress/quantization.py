"""ONNX candidates for the quantize stage: static int8 (ORT PTQ, calibrated on training samples),
dynamic int8 and fp16 (quantization-aware training lives in skyedge.compress.qat: it needs torch).

Only Conv, MatMul and Gemm are quantized: they hold the compute, while the residual temperature
path (latest reading + predicted change) stays in float so quantization cannot add a fixed error
to every forecast.

Candidate names (params `quantize.candidates`): `fp32`, `dynamic`, `fp16`, `qat`, `static` (the
weight_type / activation_type / format / calibration_method keys of params), and the presets
`static_<u8s8|s8s8>_<qdq|qoperator>[_<minmax|entropy|percentile>]` (activations, weights; ONNX
format; calibration, default `quantize.calibration_method`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from skyedge.core.config import QUANTIZE_CANDIDATES, STATIC_PRESETS

QUANT_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
FORMATS = {"QDQ": QuantFormat.QDQ, "QOperator": QuantFormat.QOperator}
METHODS = {"MinMax": CalibrationMethod.MinMax, "Entropy": CalibrationMethod.Entropy, "Percentile": CalibrationMethod.Percentile}
OP_TYPES = ["Conv", "MatMul", "Gemm"]
_PRESET_TYPES = {"u8s8": ("uint8", "int8"), "s8s8": ("int8", "int8")}
_PRESET_FORMATS = {"qdq": "QDQ", "qoperator": "QOperator"}
_PRESET_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
INT8_CANDIDATES = frozenset(c for c in QUANTIZE_CANDIDATES if c.startswith("static") or c in ("dynamic", "qat"))


def static_settings(name: str, weight_type: str, activation_type: str, quant_format: str, method: str) -> dict[str, str]:
    """activation_type, weight_type, quant_format and method of a static candidate name."""
    if name == "static":
        return {"activation_type": activation_type, "weight_type": weight_type, "quant_format": quant_format, "method": method}
    parts = name.split("_")
    if len(parts) not in (3, 4) or parts[0] != "static" or parts[1] not in _PRESET_TYPES or parts[2] not in _PRESET_FORMATS:
        raise ValueError(f"not a static candidate: {name!r}; allowed: static, {', '.join(STATIC_PRESETS)}")
    activations, weights = _PRESET_TYPES[parts[1]]
    chosen = _PRESET_METHODS[parts[3]] if len(parts) == 4 else method
    return {"activation_type": activations, "weight_type": weights, "quant_format": _PRESET_FORMATS[parts[2]], "method": chosen}


class _Reader(CalibrationDataReader):
    def __init__(self, samples: list[dict[str, np.ndarray]]):
        self._samples = iter(samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._samples, None)


def stratified_rows(labels: np.ndarray, rows: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Up to `count` rows drawn evenly across label values (sky classes; -1 = no photo)."""
    rng = np.random.default_rng(seed)
    groups = [rng.permutation(rows[labels[rows] == value]) for value in np.unique(labels[rows])]
    picked: list[int] = []
    depth = 0
    while len(picked) < count and any(depth < len(g) for g in groups):
        picked += [int(g[depth]) for g in groups if depth < len(g)]
        depth += 1
    return np.array(sorted(picked[:count]), dtype=np.int64)


def static_int8(
    fp32_path: Path,
    out_path: Path,
    calibration: list[dict[str, np.ndarray]],
    weight_type: str,
    activation_type: str,
    quant_format: str,
    method: str,
    per_channel: bool,
    reduce_range: bool = False,
) -> Path:
    """Quantize fp32_path into out_path with calibration batches (dicts of model inputs)."""
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out_path),
            _Reader(calibration),
            quant_format=FORMATS[quant_format],
            op_types_to_quantize=OP_TYPES,
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QUANT_TYPES[weight_type],
            activation_type=QUANT_TYPES[activation_type],
            calibrate_method=METHODS[method],
            extra_options={"CalibTensorRangeSymmetric": activation_type == "int8"},
        )
    return out_path


def dynamic_int8(fp32_path: Path, out_path: Path, per_channel: bool, reduce_range: bool = False) -> Path:
    """Weights int8 ahead of time, activation ranges computed per batch at run time (no calibration)."""
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(
            str(prepared), str(out_path), op_types_to_quantize=OP_TYPES, per_channel=per_channel,
            reduce_range=reduce_range, weight_type=QuantType.QInt8,
        )
    return out_path


def float16(fp32_path: Path, out_path: Path) -> Path:
    """fp16 weights and compute, float32 inputs and outputs (keep_io_types: same contract)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    onnx.save(model, str(out_path))
    return out_path

"""Post-training static int8 quantization with ONNX Runtime, calibrated on training samples.

Only Conv, MatMul and Gemm are quantized: they hold the compute, while the residual temperature
path (latest reading + predicted change) stays in float so quantization cannot add a fixed error
to every forecast.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

QUANT_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
FORMATS = {"QDQ": QuantFormat.QDQ, "QOperator": QuantFormat.QOperator}
METHODS = {"MinMax": CalibrationMethod.MinMax, "Entropy": CalibrationMethod.Entropy, "Percentile": CalibrationMethod.Percentile}


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
            op_types_to_quantize=["Conv", "MatMul", "Gemm"],
            per_channel=per_channel,
            weight_type=QUANT_TYPES[weight_type],
            activation_type=QUANT_TYPES[activation_type],
            calibrate_method=METHODS[method],
            extra_options={"CalibTensorRangeSymmetric": activation_type == "int8"},
        )
    return out_path

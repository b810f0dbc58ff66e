"""Quantization: `quantize(model, candidate, calibration, out_path)` builds one candidate.

What a candidate is comes from its typed config (skyedge.core.config: Fp32, StaticInt8,
DynamicInt8, Float16, QuantizationAware, WeightSharing), named in params `quantize.candidates`;
how it is built is here. ONNX Runtime does the post-training methods on the fp32 ONNX graph;
quantization-aware training fine-tunes the torch module with fake quantization
(skyedge.compress.qat) and exports QDQ; weight sharing clusters the torch module's weights and
fine-tunes the shared values with the teacher (skyedge.compress.sharing). Which candidate ships is skyedge.compress.selection's decision, not this module's.

Only Conv, MatMul and Gemm are quantized: they hold the compute, while the residual temperature
path (latest reading + predicted change) stays in float so quantization cannot add a fixed error
to every forecast.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from skyedge.core.config import DynamicInt8, Float16, Fp32, QuantizationAware, QuantizeCandidate, StaticInt8, WeightSharing
from skyedge.data.dataset import Ingested
from skyedge.train.training import Augmentation, Teacher

QUANT_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
FORMATS = {"QDQ": QuantFormat.QDQ, "QOperator": QuantFormat.QOperator}
METHODS = {"MinMax": CalibrationMethod.MinMax, "Entropy": CalibrationMethod.Entropy, "Percentile": CalibrationMethod.Percentile}
OP_TYPES = ["Conv", "MatMul", "Gemm"]


@dataclass(frozen=True)
class FloatModel:
    """The model to quantize, as ONNX (what ORT quantizes) and as a torch module (what QAT trains)."""

    onnx: Path
    module: Path


@dataclass(frozen=True)
class Calibration:
    """What the quantizers may look at: calibration feeds (one sample each, training split,
    stratified by sky class) and, for QAT and weight sharing, the training data, how to sample it
    and the teacher."""

    feeds: list[dict[str, np.ndarray]]
    data: Ingested
    seed: int
    photo_share: float
    augmentation: Augmentation
    threads: int
    device: str
    teacher: Teacher | None = None
    balance_classes: bool = False  # the student's photo draws (distill.balance_classes)


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


def quantize(model: FloatModel, candidate: QuantizeCandidate, calibration: Calibration, out_path: Path, per_channel: bool, reduce_range: bool) -> dict:
    """Write `candidate` of model to out_path; returns its report (bytes before/after, build time, settings)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    details: dict = candidate.model_dump()
    if isinstance(candidate, Fp32):
        shutil.copyfile(model.onnx, out_path)
    elif isinstance(candidate, StaticInt8):
        static_int8(model.onnx, out_path, calibration.feeds, candidate, per_channel, reduce_range)
        details.update(per_channel=per_channel, reduce_range=reduce_range, calibration_samples=len(calibration.feeds))
    elif isinstance(candidate, DynamicInt8):
        dynamic_int8(model.onnx, out_path, per_channel, reduce_range)
        details.update(per_channel=per_channel, reduce_range=reduce_range)
    elif isinstance(candidate, Float16):
        float16(model.onnx, out_path)
        details.update(keep_io_types=True)
    elif isinstance(candidate, QuantizationAware):
        from skyedge.compress import qat

        details.update(qat.train_and_export(model.module, candidate, calibration, out_path))
    elif isinstance(candidate, WeightSharing):
        from skyedge.compress import sharing

        details.update(sharing.train_and_export(model.module, candidate, calibration, out_path))
    report: dict = {"method": candidate.method, "details": details}
    report["size_bytes_before"] = model.onnx.stat().st_size
    report["size_bytes"] = out_path.stat().st_size
    report["build_s"] = time.perf_counter() - started
    return report


def static_int8(fp32_path: Path, out_path: Path, calibration: list[dict[str, np.ndarray]], candidate: StaticInt8, per_channel: bool, reduce_range: bool) -> Path:
    """ORT static quantization of fp32_path, activation ranges from the calibration feeds."""
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out_path),
            _Reader(calibration),
            quant_format=FORMATS[candidate.format],
            op_types_to_quantize=OP_TYPES,
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QUANT_TYPES[candidate.weights],
            activation_type=QUANT_TYPES[candidate.activations],
            calibrate_method=METHODS[candidate.calibration],
            extra_options={"CalibTensorRangeSymmetric": candidate.activations == "int8"},
        )
    return out_path


def dynamic_int8(fp32_path: Path, out_path: Path, per_channel: bool, reduce_range: bool) -> Path:
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

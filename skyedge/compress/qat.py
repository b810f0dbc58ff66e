"""Quantization-aware training: fake-quant fine-tuning of a float model, exported as ONNX QDQ.

BatchNorm is folded into the preceding conv first (what ONNX Runtime would do at load), so the
fake-quantized weights are the weights that really ship. Every Conv2d and Linear then sees its
input through a per-tensor uint8 FakeQuantize (moving-average min/max) and its weight through a
per-channel symmetric int8 fake quantization (7-bit magnitude, see WeightFakeQuant): the U8S8 scheme ONNX Runtime runs fastest on x86.
The TorchScript exporter turns each FakeQuantize into a QuantizeLinear/DequantizeLinear pair, so
the exported file is a QDQ model ORT fuses into integer kernels (QLinearConv, QGemm...).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver

from skyedge.compress.quantization import Calibration
from skyedge.core.config import QuantizationAware
from skyedge.core.features import N_FEATURES
from skyedge.train import checkpoints
from skyedge.train.models import NowcastNet, export_onnx
from skyedge.train.training import FitConfig, fit


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every Conv2d -> BatchNorm2d pair inside a Sequential (in place, eval statistics)."""
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module._modules[first] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv.eval(), bn.eval())
                module._modules[second] = nn.Identity()
    return model


def _activation_fq() -> FakeQuantize:
    return FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8, qscheme=torch.per_tensor_affine)


class WeightFakeQuant(nn.Module):
    """Per-output-channel symmetric int8 fake quantization of a weight, scale = max|w| / 63.

    Seven bits of magnitude, like ORT's `reduce_range`: on x86 without VNNI (AVX2), ORT's U8S8
    kernels multiply with VPMADDUBSW, whose 16-bit pair sums saturate with full 8-bit weights
    and can flip a class. The values are still stored as int8 in [-128, 127], the only signed
    range the ONNX exporter accepts.
    """

    def __init__(self):
        super().__init__()
        self.frozen_scale: torch.Tensor | None = None  # set by freeze(): a constant in the export

    @staticmethod
    def scale_of(weight: torch.Tensor) -> torch.Tensor:
        return (weight.detach().abs().flatten(1).amax(1).clamp(min=1e-8) / 63.0).float()

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scale = self.frozen_scale if self.frozen_scale is not None else self.scale_of(weight)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, -128, 127)


def _weight_fq() -> nn.Module:
    return WeightFakeQuant()


class FakeQuantConv2d(nn.Module):
    """A Conv2d whose input (uint8, per tensor) and weight (int8, per channel) are fake-quantized."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        self.input_fq = _activation_fq()
        self.weight_fq = _weight_fq()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return F.conv2d(self.input_fq(x), self.weight_fq(c.weight), c.bias, c.stride, c.padding, c.dilation, c.groups)


class FakeQuantLinear(nn.Module):
    """A Linear whose input (uint8, per tensor) and weight (int8, per channel) are fake-quantized."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear
        self.input_fq = _activation_fq()
        self.weight_fq = _weight_fq()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_fq(x), self.weight_fq(self.linear.weight), self.linear.bias)


def _wrap(module: nn.Module) -> int:
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d):
            setattr(module, name, FakeQuantConv2d(child))
            count += 1
        elif isinstance(child, nn.Linear):
            setattr(module, name, FakeQuantLinear(child))
            count += 1
        else:
            count += _wrap(child)
    return count


def prepare_qat(model: NowcastNet) -> tuple[NowcastNet, int]:
    """A fake-quant copy of model (BN folded) and the number of quantized layers."""
    prepared = fold_batchnorm(copy.deepcopy(model).eval())
    return prepared, _wrap(prepared)


def freeze(model: nn.Module) -> nn.Module:
    """Stop observing (fixed scales) but keep fake-quantizing: the state that is exported."""
    model.apply(torch.ao.quantization.disable_observer)
    for module in model.modules():
        if isinstance(module, (FakeQuantConv2d, FakeQuantLinear)):
            weight = module.conv.weight if isinstance(module, FakeQuantConv2d) else module.linear.weight
            module.weight_fq.frozen_scale = WeightFakeQuant.scale_of(weight)
    return model.eval()


def qdq_pairs(model: nn.Module) -> int:
    """QuantizeLinear/DequantizeLinear pairs the export must contain: an input and a weight per layer."""
    return 2 * sum(isinstance(m, (FakeQuantConv2d, FakeQuantLinear)) for m in model.modules())


def export_qdq(model: NowcastNet, path: Path, image_size: int, window_hours: int, n_features: int, raw_path: Path | None = None) -> Path:
    """Export a frozen fake-quant model as ONNX QDQ.

    The exporter writes each fake quantization as a QuantizeLinear/DequantizeLinear pair on float
    weights (raw_path keeps that graph when given). ONNX Runtime's basic (standard-ONNX)
    optimizations then fold each weight's QuantizeLinear into an int8 initializer, so the file
    stores int8 weights and is smaller than the fp32 model; activations keep their Q/DQ pairs.
    """
    import tempfile

    import onnxruntime as ort

    freeze(model)
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(raw_path) if raw_path else Path(scratch) / "raw.onnx"
        export_onnx(model, raw, image_size, window_hours, n_features)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(path)
        options.log_severity_level = 3
        ort.InferenceSession(str(raw), options, providers=["CPUExecutionProvider"])
    return path


def train_and_export(module_path: Path, candidate: QuantizationAware, calibration: Calibration, out_path: Path) -> dict:
    """Fake-quant fine-tuning of the float module, exported as QDQ to out_path (the fine-tuned
    fake-quant module is saved beside it as .pt); returns the training record."""
    torch.set_num_threads(calibration.threads)
    model, layers = prepare_qat(checkpoints.load_module(module_path))
    history = []
    if candidate.epochs:
        config = FitConfig(candidate.epochs, candidate.batch_size, candidate.lr, calibration.seed, photo_share=calibration.photo_share, augmentation=calibration.augmentation, device=calibration.device, balance_classes=calibration.balance_classes)
        history = fit(model, calibration.data, config, "qat")
    size, window = calibration.data.preprocessing["image"]["size"], calibration.data.windows.shape[1]
    export_qdq(model, out_path, size, window, N_FEATURES)
    checkpoints.save_module(model, out_path.with_suffix(".pt"))
    record = {"quantized_layers": layers, "qdq_pairs": qdq_pairs(model), "epochs": candidate.epochs}
    if history:
        record["val_sky_accuracy_after_qat_training"] = history[-1]["val_sky_accuracy"]
    return record

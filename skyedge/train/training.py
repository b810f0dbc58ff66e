"""Training loops shared by embed, distill, prune and QAT: masked multi-task losses, augmentation,
online distillation and early stopping on the grouped validation estimate.

Each sample carries only some inputs and some labels (a photo without sensors has no rain label,
a station hour without a photo has no sky label, a photo nobody labelled has no class). Every loss
term is therefore averaged over the samples that have its label: sky cross-entropy over labelled
photos, rain binary cross-entropy and temperature Huber loss over the horizons whose future
record exists.

Distillation follows "Knowledge distillation: a good teacher is patient and consistent" (Beyer et
al., CVPR 2022): the teacher scores the very view the student sees, online, under strong
augmentation (random resized crops, exposure, white balance, blur, noise, mixup; and the 8
dihedral views for cameras looking straight up), for a long schedule, on every photo including
those nobody labelled (their loss is the distillation term alone). The student matches the
teacher's temperature-scaled sky distribution (weight alpha, Hinton et al.) and, through a
projection, its image embedding (FitNets-style).

Real sources are lopsided: SWIMCAT has ~400 training photos, Beijing ~140k station hours. Each
epoch therefore repeats photo rows (drawn at random) until they make up `photo_share` of it:
with online augmentation every repeat is a new view, which is what a patient teacher needs.

After every epoch the BatchNorm running statistics are re-estimated as a plain average over clean
training batches with the epoch's final weights (`recalibrate_batchnorm`): torchvision's
MobileNetV3 updates them with momentum 0.01, so after a few hundred steps they still describe the
early weights. The epoch kept is the one with the lowest loss on the grouped validation rows
(days, stations and seasons training never saw), so early stopping reads the field estimate.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from skyedge.core import inputs
from skyedge.core.config import Distill, Embed, TeacherView
from skyedge.core.contract import SKY_CLASSES
from skyedge.data.dataset import Ingested
from skyedge.train import checkpoints, models
from skyedge.train.models import NowcastNet

N_VIEWS = 8  # the dihedral group of a square image: 4 turns, each also mirrored
WARMUP_SHARE = 0.2  # of the one-cycle learning-rate schedule's steps
RECALIBRATION_BATCHES = 20  # training batches averaged into the BatchNorm statistics
EVAL_BATCH = 512


@dataclass(frozen=True)
class Augmentation:
    """How each training photo is perturbed (params `augment`); every value 0 turns that one off."""

    dihedral: bool  # a random flip / quarter turn: only for cameras looking straight up
    crop_scale: float  # random resized crops keep at least this share of the area (1: no crop)
    exposure: float  # brightness gain drawn from [1 - exposure, 1 + exposure]
    white_balance: float  # per-channel gain drawn from [1 - wb, 1 + wb]
    blur: float  # probability of a 3x3 Gaussian blur
    noise: float  # std of additive Gaussian noise on the 0..1 scale
    mixup: float  # Beta(alpha, alpha) mixing of two photos of the batch (0: none)


NO_AUGMENTATION = Augmentation(False, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class FitConfig:
    epochs: int
    batch_size: int
    lr: float
    seed: int
    image_dropout: float = 0.2
    photo_share: float = 0.0
    augmentation: Augmentation = NO_AUGMENTATION
    device: str = "cpu"  # where the model trains (resolve_device); results match the CPU within float error
    balance_classes: bool = False  # photo draws give every sky class the same share (class_balanced_weights)


@dataclass(frozen=True)
class Teacher:
    """The teacher, scored online on every augmented batch (eval mode, no gradient)."""

    model: nn.Module  # a NowcastNet or a TeacherEnsemble: read through .backbone and .sky_head
    temperature: float
    alpha: float  # weight of the soft-target term; the hard cross-entropy gets 1 - alpha
    embed_weight: float
    view: TeacherView = "augmented"  # distill.teacher_view: what the teacher scores of each training photo

    @classmethod
    def load(cls, module_path: Path, distill: Distill) -> Teacher:
        """The embed stage's teacher with the distill section's weights."""
        return cls(checkpoints.load_module(module_path), distill.kd_temperature, distill.kd_alpha, distill.embed_weight, distill.teacher_view)


def resolve_device(choice: str) -> str:
    """params common.device -> a torch device: auto is CUDA when this torch sees a GPU, else the CPU."""
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("common.device is cuda, but this torch sees no CUDA device: set common.device to auto or cpu")
    return choice


def to_device(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


def dihedral(images: torch.Tensor, view: int) -> torch.Tensor:
    """View 0..7 of a batch of square images [B, C, H, W]: `view % 4` quarter turns, mirrored if view >= 4."""
    turned = torch.rot90(images, view % 4, dims=(2, 3))
    return torch.flip(turned, dims=(3,)) if view >= 4 else turned


def epoch_order(rows: np.ndarray, has_photo: np.ndarray, photo_share: float, rng: np.random.Generator, photo_weights: np.ndarray | None = None) -> np.ndarray:
    """Every row once, plus photo rows drawn with replacement until photos are `photo_share` of the
    epoch; with photo_weights (one per row, as class_balanced_weights) a photo is drawn in proportion to its weight."""
    photos = rows[has_photo[rows]]
    others = len(rows) - len(photos)
    if len(photos) and 0 < photo_share < 1:
        wanted = int(np.ceil(photo_share * others / (1 - photo_share)))
        if wanted > len(photos):
            chances = None if photo_weights is None else photo_weights[photos] / photo_weights[photos].sum()
            rows = np.concatenate([rows, rng.choice(photos, wanted - len(photos), p=chances)])
    return rng.permutation(rows)


def class_balanced_weights(sky_labels: np.ndarray) -> np.ndarray:
    """Each photo's weight when draws balance the sky classes (`distill.balance_classes`): a
    labelled photo of class c weighs n_labelled / (classes x n_c), so every class gets the same
    share of the labelled photos' draws and together they keep theirs; a photo nobody labelled (-1) weighs 1."""
    weights = np.ones(len(sky_labels))
    labelled = sky_labels >= 0
    if labelled.any():
        classes, counts = np.unique(sky_labels[labelled], return_counts=True)
        per_class = labelled.sum() / (len(classes) * counts)
        weights[labelled] = per_class[np.searchsorted(classes, sky_labels[labelled])]
    return weights


def binomial_blur(pixels: torch.Tensor) -> torch.Tensor:
    """A 3x3 binomial (1-2-1) blur of [B, 3, S, S] pixels, edges replicated: a slightly soft lens."""
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 16).expand(3, 1, 3, 3)
    return F.conv2d(F.pad(pixels, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)


def augment_photos(pixels: torch.Tensor, augmentation: Augmentation, generator: torch.Generator, photometric: bool = True) -> torch.Tensor:
    """Photometric and geometric augmentation of [B, 3, S, S] pixels in 0..1 (mixup is the batch's,
    elsewhere). Without `photometric` only the crop and the dihedral view apply, but every draw is
    still taken: the same generator seed gives the same geometry either way."""
    batch = pixels.shape[0]
    if batch == 0:
        return pixels
    if augmentation.crop_scale < 1:
        # A random resized crop as one affine resampling per photo: area share in [crop_scale, 1],
        # aspect ratio in [3/4, 4/3], anywhere inside the frame.
        area = torch.empty(batch).uniform_(augmentation.crop_scale, 1.0, generator=generator)
        aspect = torch.exp(torch.empty(batch).uniform_(np.log(3 / 4), np.log(4 / 3), generator=generator))
        width = torch.sqrt(area * aspect).clamp(max=1.0)
        height = torch.sqrt(area / aspect).clamp(max=1.0)
        shift_x = (1 - width) * torch.empty(batch).uniform_(-1, 1, generator=generator)
        shift_y = (1 - height) * torch.empty(batch).uniform_(-1, 1, generator=generator)
        theta = torch.zeros(batch, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = width, shift_x, height, shift_y
        grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
        pixels = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if augmentation.exposure:
        gain = torch.empty(batch, 1, 1, 1).uniform_(1 - augmentation.exposure, 1 + augmentation.exposure, generator=generator)
        pixels = pixels * gain if photometric else pixels
    if augmentation.white_balance:
        gains = torch.empty(batch, 3, 1, 1).uniform_(1 - augmentation.white_balance, 1 + augmentation.white_balance, generator=generator)
        pixels = pixels * gains if photometric else pixels
    if augmentation.blur:
        chosen = torch.rand(batch, 1, 1, 1, generator=generator) < augmentation.blur
        pixels = torch.where(chosen, binomial_blur(pixels), pixels) if photometric else pixels
    if augmentation.noise:
        noise = augmentation.noise * torch.randn(pixels.shape, generator=generator)
        pixels = pixels + noise if photometric else pixels
    if augmentation.dihedral:
        view = int(torch.randint(N_VIEWS, (1,), generator=generator))
        pixels = dihedral(pixels, view)
    return pixels.clamp(0.0, 1.0)


def unit_pixels(images: np.ndarray, image_idx: torch.Tensor) -> torch.Tensor:
    """The photos samples point at (-1: none, any photo stands in) as [B, 3, S, S] floats in 0..1."""
    return torch.from_numpy(images[image_idx.clamp(min=0).numpy()]).permute(0, 3, 1, 2).float() / 255.0


class Batches:
    """Minibatches of one split as tensors; photos are augmented and normalised on the fly from uint8."""

    def __init__(self, data: Ingested, rows: np.ndarray):
        self.data = data
        self.rows = rows
        self.spec = data.preprocessing["image"]
        self.windows = torch.as_tensor(data.windows)
        self.image_idx = torch.tensor(data.samples["image_idx"].to_numpy(np.int64))
        labelled = data.samples["labelled"].to_numpy(bool) if "labelled" in data.samples else data.samples["sky_label"].to_numpy() >= 0
        self.sky = torch.tensor(np.where(labelled, data.samples["sky_label"].to_numpy(np.int64), -1))
        self.rain = torch.tensor(data.rain)
        self.temp = torch.tensor(data.temp)

    def batch(
        self, rows: np.ndarray, drop: torch.Tensor | None = None, augmentation: Augmentation = NO_AUGMENTATION, rng: np.random.Generator | None = None, teacher_view: TeacherView = "augmented"
    ) -> dict[str, torch.Tensor]:
        """Inputs and targets of `rows`. `sky_target` is a class distribution (one-hot, or two
        classes mixed), `sky_weight` 1 where the cross-entropy applies (a labelled photo, or two).
        `teacher_image` (distill.teacher_view `geometric`, or behind attention) is what the teacher
        scores: the student's crop, flip and mixup, and its photometric perturbations only when
        the view is `augmented`."""
        index = torch.from_numpy(rows)
        image_idx = self.image_idx[index]
        present = image_idx >= 0
        if drop is not None:
            present = present & ~drop
        pixels = unit_pixels(self.data.images, image_idx)
        # A student behind attention sees crops; its teacher scores the whole frame (Ingested.teacher_images).
        teacher_pixels = None if self.data.teacher_images is None else unit_pixels(self.data.teacher_images, image_idx)
        teacher_photometric = teacher_view == "augmented"
        if teacher_pixels is None and not teacher_photometric and augmentation != NO_AUGMENTATION:
            teacher_pixels = pixels.clone()
        sky = torch.where(present, self.sky[index], torch.full_like(image_idx, -1))
        target = F.one_hot(sky.clamp(min=0), len(SKY_CLASSES)).float()
        weight = (sky >= 0).float()
        photos = torch.nonzero(present).squeeze(1)
        if len(photos) and augmentation != NO_AUGMENTATION:
            seed = int(rng.integers(2**31))
            generator = torch.Generator().manual_seed(seed)
            pixels[photos] = augment_photos(pixels[photos], augmentation, generator)
            if teacher_pixels is not None:
                # The same draws from the same seed: the teacher's frame gets the student's crop
                # (relative to its own frame) and, in the `augmented` view, its exposure, white
                # balance, blur and noise.
                teacher_pixels[photos] = augment_photos(teacher_pixels[photos], augmentation, torch.Generator().manual_seed(seed), teacher_photometric)
            if augmentation.mixup and len(photos) > 1:
                lam = float(rng.beta(augmentation.mixup, augmentation.mixup))
                partner = photos[torch.randperm(len(photos), generator=generator)]
                pixels[photos] = lam * pixels[photos] + (1 - lam) * pixels[partner]
                if teacher_pixels is not None:
                    teacher_pixels[photos] = lam * teacher_pixels[photos] + (1 - lam) * teacher_pixels[partner]
                target[photos] = lam * target[photos] + (1 - lam) * target[partner]
                weight[photos] = weight[photos] * weight[partner]  # both labelled, or distillation only
        image = self.normalised(pixels, present)
        views = {} if teacher_pixels is None else {"teacher_image": self.normalised(teacher_pixels, present)}
        return {
            **views,
            "image": image,
            "image_present": present.float().unsqueeze(1),
            "sensors": self.windows[index],
            "image_idx": image_idx,
            "sky": sky,
            "sky_target": target,
            "sky_weight": weight,
            "rain": self.rain[index],
            "temp": self.temp[index],
        }

    def normalised(self, pixels: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] pixels in 0..1 normalised as the manifest records, zeros where no photo is."""
        return torch.from_numpy(inputs.normalise_image(pixels.permute(0, 2, 3, 1).numpy(), self.spec)) * present.view(-1, 1, 1, 1)

    def epoch_rows(self, config: FitConfig, rng: np.random.Generator) -> np.ndarray:
        weights = None
        if config.balance_classes:  # the classes as this split has them
            weights = np.zeros(len(self.sky))
            weights[self.rows] = class_balanced_weights(self.sky.numpy()[self.rows])
        return epoch_order(self.rows, self.image_idx.numpy() >= 0, config.photo_share, rng, weights)

    def epoch(self, order: np.ndarray, config: FitConfig, rng: np.random.Generator, augment: bool = True, teacher_view: TeacherView = "augmented"):
        for start in range(0, len(order), config.batch_size):
            rows = order[start : start + config.batch_size]
            drop = torch.from_numpy(rng.random(len(rows)) < config.image_dropout)
            yield self.batch(rows, drop, config.augmentation if augment else NO_AUGMENTATION, rng, teacher_view)


def supervised_loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], temp_std: float, hard_weight: float = 1.0) -> torch.Tensor:
    """Masked multi-task loss (see module docstring); the sky term is scaled by hard_weight."""
    loss = out["rain_logits"].sum() * 0.0
    weight = batch["sky_weight"]
    if weight.sum() > 0:
        per_row = F.cross_entropy(out["sky_logits"], batch["sky_target"], reduction="none")
        loss = loss + hard_weight * (per_row * weight).sum() / weight.sum()
    rain_known = ~torch.isnan(batch["rain"])
    if rain_known.any():
        loss = loss + F.binary_cross_entropy_with_logits(out["rain_logits"][rain_known], batch["rain"][rain_known])
    temp_known = ~torch.isnan(batch["temp"])
    if temp_known.any():
        error = (out["temp_c"][temp_known] - batch["temp"][temp_known]) / temp_std
        loss = loss + F.huber_loss(error, torch.zeros_like(error), delta=1.0)
    return loss


def distillation_loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], teacher: Teacher, projector: nn.Module) -> torch.Tensor:
    """The teacher's view of the same augmented photos: soft sky targets and embeddings. Behind
    attention the teacher scores the whole frame (`teacher_image`) of the student's crop."""
    present = batch["image_present"].squeeze(1) > 0
    if not present.any():
        return out["sky_logits"].sum() * 0.0
    with torch.no_grad():
        teacher_embedding = teacher.model.backbone(batch.get("teacher_image", batch["image"])[present])
        teacher_logits = teacher.model.sky_head(teacher_embedding)
    t = teacher.temperature
    student = F.log_softmax(out["sky_logits"][present] / t, dim=1)
    soft = F.kl_div(student, F.softmax(teacher_logits / t, dim=1), reduction="batchmean") * t * t
    cosine = 1 - F.cosine_similarity(projector(out["embedding"][present]), teacher_embedding, dim=1).mean()
    return teacher.alpha * soft + teacher.embed_weight * cosine


@torch.no_grad()
def recalibrate_batchnorm(
    model: NowcastNet, batches: Batches, config: FitConfig, rng: np.random.Generator, embed_cache: torch.Tensor | None = None, max_batches: int = RECALIBRATION_BATCHES
) -> None:
    """Every trained BatchNorm's running mean and variance := the plain average of its batch
    statistics over up to max_batches clean training batches (no augmentation: what the model
    sees when it is used), current weights. With embed_cache the frozen backbone is not run, so
    its statistics are kept."""
    frozen = set(model.backbone.modules()) if embed_cache is not None else set()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m not in frozen]
    if not norms:
        return
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average, not exponential
    model.train()
    if embed_cache is not None:
        model.backbone.eval()
    device = next(model.parameters()).device
    for batch in itertools.islice(batches.epoch(batches.epoch_rows(config, rng), config, rng, augment=False), max_batches):
        forward(model, to_device(batch, device), embed_cache)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()


@torch.no_grad()
def sky_hits(model: nn.Module, data: Ingested, rows: np.ndarray) -> np.ndarray:
    """1/0 per labelled photo among `rows`: did the model name its class (clean photo, eval mode,
    the whole forward pass, so any teacher or student, ensembles included)."""
    model.eval()
    batches, hits = Batches(data, rows), []
    for start in range(0, len(rows), EVAL_BATCH):
        batch = batches.batch(rows[start : start + EVAL_BATCH])
        labelled = batch["sky"] >= 0
        predicted = model(batch["image"], batch["image_present"], batch["sensors"])[0].argmax(1)
        hits.append((predicted[labelled] == batch["sky"][labelled]).numpy().astype(float))
    return np.concatenate(hits) if hits else np.zeros(0)


@torch.no_grad()
def quick_scores(model: NowcastNet, batches: Batches, rows: np.ndarray, embed_cache: torch.Tensor | None = None) -> dict[str, float]:
    """Validation scores during training: the supervised loss (what early stopping reads), sky
    accuracy on labelled photos, mean rain Brier, mean temperature RMSE."""
    model.eval()
    device = next(model.parameters()).device
    temp_std = float(model.temp_std)
    loss, batches_seen, sky_hits, sky_n, brier, brier_n, sq, sq_n = 0.0, 0, 0, 0, 0.0, 0, 0.0, 0
    for start in range(0, len(rows), EVAL_BATCH):
        batch = to_device(batches.batch(rows[start : start + EVAL_BATCH]), device)
        out = forward(model, batch, embed_cache)
        loss += float(supervised_loss(out, batch, temp_std)) * len(batch["sky"])
        batches_seen += len(batch["sky"])
        has_sky = batch["sky"] >= 0
        sky_hits += int((out["sky_logits"].argmax(1)[has_sky] == batch["sky"][has_sky]).sum())
        sky_n += int(has_sky.sum())
        known = ~torch.isnan(batch["rain"])
        brier += float(((torch.sigmoid(out["rain_logits"]) - batch["rain"])[known] ** 2).sum())
        brier_n += int(known.sum())
        known = ~torch.isnan(batch["temp"])
        sq += float(((out["temp_c"] - batch["temp"])[known] ** 2).sum())
        sq_n += int(known.sum())
    return {
        "val_loss": loss / batches_seen if batches_seen else float("nan"),
        "val_sky_accuracy": sky_hits / sky_n if sky_n else float("nan"),
        "val_rain_brier": brier / brier_n if brier_n else float("nan"),
        "val_temp_rmse": (sq / sq_n) ** 0.5 if sq_n else float("nan"),
    }


def forward(model: NowcastNet, batch: dict[str, torch.Tensor], embed_cache: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Model outputs; with embed_cache [views, M, E] the backbone is skipped (its features were
    precomputed): each row reads the view batch["cache_view"] names, else the clean view 0."""
    present = batch["image_present"]
    if embed_cache is not None:
        view = batch.get("cache_view", torch.zeros_like(batch["image_idx"]))
        features = embed_cache[view, batch["image_idx"].clamp(min=0)]
    else:
        # Same result as model.embed, but the backbone only runs on rows that have a photo:
        # most station hours have none, and zeros through a CNN are wasted compute.
        rows = torch.nonzero(present.squeeze(1) > 0).squeeze(1)
        features = torch.zeros(len(present), model.backbone.channels, device=present.device)
        if len(rows):
            features = features.index_copy(0, rows, model.backbone(batch["image"][rows]))
    embedding = present * features + (1 - present) * model.no_image
    return model.heads(embedding, batch["sensors"])


def fit(
    model: NowcastNet,
    data: Ingested,
    config: FitConfig,
    desc: str,
    teacher: Teacher | None = None,
    embed_cache: torch.Tensor | None = None,
) -> list[dict[str, float]]:
    """Train on the train split, score the grouped val rows after each epoch, keep the best epoch
    (lowest val loss); returns the training curve (`best` marks the epoch kept)."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = torch.device(config.device)
    train_batches = Batches(data, data.split("train"))
    val_rows = data.grouped("val")
    temp_std = float(model.temp_std)
    projector = nn.Linear(model.backbone.channels, teacher.model.backbone.channels) if teacher is not None else nn.Identity()
    model.to(device)
    projector.to(device)
    if teacher is not None:
        teacher.model.to(device).eval()
    if embed_cache is not None:
        embed_cache = embed_cache.to(device)
    parameters = [p for p in [*model.parameters(), *projector.parameters()] if p.requires_grad]
    optimiser = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=1e-4)
    # An epoch's length does not depend on which photos are drawn, so any generator will do here.
    batches_per_epoch = max(1, -(-len(train_batches.epoch_rows(config, np.random.default_rng(0))) // config.batch_size))
    steps = config.epochs * batches_per_epoch
    # OneCycleLR divides by zero when its warm-up is exactly one step (0.2 x 5 steps): it then
    # schedules one step more than is taken (the last rate ends a hair above its floor).
    total_steps = steps + 1 if steps * WARMUP_SHARE == 1 else steps
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr, total_steps=total_steps, pct_start=WARMUP_SHARE)
    hard_weight = 1.0 if teacher is None else 1 - teacher.alpha
    history, best_state, best_loss = [], None, float("inf")
    for epoch in range(1, config.epochs + 1):
        model.train()
        if embed_cache is not None:
            model.backbone.eval()
        total, count = 0.0, 0
        order = train_batches.epoch_rows(config, rng)
        # On cached features the photo is a cached view (drawn below) whatever the batch's pixels
        # say, and mixup would mix the targets of photos whose features it did not mix: half the
        # labels would belong to another photo. Cached features train on one-hot batches.
        teacher_view: TeacherView = "augmented" if teacher is None else teacher.view
        for batch in tqdm(train_batches.epoch(order, config, rng, augment=embed_cache is None, teacher_view=teacher_view), desc=f"{desc} epoch {epoch}/{config.epochs}", total=-(-len(order) // config.batch_size), leave=False):
            if embed_cache is not None:  # a cached view of each photo, drawn anew every time
                batch["cache_view"] = torch.from_numpy(rng.integers(len(embed_cache), size=len(batch["image_idx"])))
            batch = to_device(batch, device)
            out = forward(model, batch, embed_cache)
            loss = supervised_loss(out, batch, temp_std, hard_weight)
            if teacher is not None:
                loss = loss + distillation_loss(out, batch, teacher, projector)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(batch["sky"])
            count += len(batch["sky"])
        recalibrate_batchnorm(model, train_batches, config, np.random.default_rng([config.seed, epoch]), embed_cache)
        scores = quick_scores(model, train_batches, val_rows, embed_cache)
        history.append({"epoch": epoch, "train_loss": total / max(count, 1), **scores, "best": 0})
        print(f"{desc} epoch {epoch}: loss {history[-1]['train_loss']:.4f} " + " ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        if not scores["val_loss"] > best_loss:  # NaN (no val rows) keeps the latest epoch
            best_loss, best_state = scores["val_loss"], copy.deepcopy(model.state_dict())
            for row in history:
                row["best"] = int(row is history[-1])
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to("cpu").eval()  # checkpoints and ONNX export are CPU-side
    if teacher is not None:
        teacher.model.to("cpu")
    return history


def fit_teacher(teacher: NowcastNet, data: Ingested, config: FitConfig, head_epochs: int, cache_views: int) -> list[dict[str, float]]:
    """The embed stage's recipe: `config.epochs` of end-to-end fine-tuning on augmented photos,
    then `head_epochs` of the heads (3x the learning rate) on cached backbone features of each
    photo's clean view and `cache_views - 1` augmented ones; returns the training curve."""
    history = fit(teacher, data, config, "teacher fine-tune") if config.epochs else []
    for parameter in teacher.backbone.parameters():
        parameter.requires_grad_(False)
    cache = backbone_features(teacher, data, config.augmentation, cache_views, config.seed)
    heads = replace(config, epochs=head_epochs, lr=config.lr * 3)
    history += [{**row, "epoch": row["epoch"] + config.epochs} for row in fit(teacher, data, heads, "teacher heads", embed_cache=cache)]
    for parameter in teacher.backbone.parameters():
        parameter.requires_grad_(True)
    return history


def train_teacher(embed: Embed, data: Ingested, config: FitConfig, window_hours: int) -> tuple[nn.Module, list[dict[str, float]]]:
    """The embed section's teacher on `data`: one fit_teacher per member (`finetune_epochs`, then
    each of `ensemble`: these replace config.epochs), every member from the same pretrained weights
    and seed, so the first is exactly the teacher a run without `ensemble` trains; several make a
    TeacherEnsemble. Returns it and the members' training curves one after the other (`member`
    numbers them; `epoch` counts on across members, so a plot of the curve does not overlay them)."""
    temp_std = data.preprocessing["sensors"]["std"][0]
    members, history = [], []
    for number, finetune_epochs in enumerate([embed.finetune_epochs, *embed.ensemble]):
        torch.manual_seed(config.seed)  # a new head starts from random weights: the same ones each run
        member = models.build_teacher(embed.teacher, embed.weights, window_hours, temp_std)
        curve = fit_teacher(member, data, replace(config, epochs=finetune_epochs), embed.epochs, embed.cache_views)
        history += [{**row, "epoch": row["epoch"] + len(history), "member": number} for row in curve]
        members.append(member)
    return (members[0] if len(members) == 1 else models.TeacherEnsemble(members)), history


@torch.no_grad()
def backbone_features(model: NowcastNet, data: Ingested, augmentation: Augmentation = NO_AUGMENTATION, views: int = 1, seed: int = 0, batch_size: int = 256) -> torch.Tensor:
    """The image backbone's pooled features of every photo [views, M, E] (no_grad, eval mode).

    View 0 is the clean photo (what validation and the device see); views 1.. are augmented as in
    training, without mixup (a mix of two photos has no cached feature). The teacher's heads train
    on all of them because distillation asks the teacher about augmented views: heads fitted to
    clean features alone were right on 99 % of clean training photos but 80 % of augmented ones."""
    model.eval()
    device = next(model.parameters()).device
    spec = data.preprocessing["image"]
    generator = torch.Generator().manual_seed(seed)
    no_mixup = replace(augmentation, mixup=0.0)
    cache = torch.zeros(views, len(data.images), model.backbone.channels)
    for view in range(views):
        for start in tqdm(range(0, len(data.images), batch_size), desc=f"embedding photos (view {view + 1}/{views})", leave=False):
            pixels = torch.from_numpy(data.images[start : start + batch_size]).permute(0, 3, 1, 2).float() / 255.0
            if view:
                pixels = augment_photos(pixels, no_mixup, generator)
            normalised = torch.from_numpy(inputs.normalise_image(pixels.permute(0, 2, 3, 1).numpy(), spec))
            cache[view, start : start + len(pixels)] = model.backbone(normalised.to(device)).cpu()
    return cache

"""Training loops shared by embed, distill and prune: masked multi-task losses and distillation.

Each sample carries only some inputs and some labels (a photo without sensors has no rain label,
a station hour without a photo has no sky label). Every loss term is therefore averaged over the
samples that have its label: sky cross-entropy over samples with a photo and a sky label, rain
binary cross-entropy and temperature Huber loss over the horizons whose future record exists.
Distillation adds, on samples with a photo, the temperature-scaled KL divergence to the teacher's
sky logits (weight alpha, Hinton et al.) and a cosine loss between a projection of the student's
image embedding and the teacher's (FitNets-style embedding matching).

Real sources are lopsided: SWIMCAT has ~400 training photos, Beijing ~140k station hours. Each
epoch therefore repeats photo rows (drawn at random) until they make up `photo_share` of it,
and with `augment` every batch of photos is shown in one of its 8 dihedral views (flips and
90-degree turns: an upward sky photo has no "up"). The teacher's targets are averaged over the
same views (embed stage), so the student matches a view-consistent teacher.

After every epoch the BatchNorm running statistics are re-estimated as a plain average over
training batches with the epoch's final weights (`recalibrate_batchnorm`). Running statistics are
an exponential average taken while the weights moved; torchvision's MobileNetV3 updates them with
momentum 0.01, so after a few hundred steps they still describe the early weights, and the model
scores chance in eval mode while its training loss is low.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from skyedge.core import inputs
from skyedge.data.dataset import Ingested
from skyedge.train.models import NowcastNet


@dataclass(frozen=True)
class FitConfig:
    epochs: int
    batch_size: int
    lr: float
    seed: int
    image_dropout: float = 0.2
    photo_share: float = 0.0
    augment: bool = False
    device: str = "cpu"  # where the model trains (resolve_device); results match the CPU within float error


def resolve_device(choice: str) -> str:
    """params common.device -> a torch device: auto is CUDA when this torch sees a GPU, else the CPU."""
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("common.device is cuda, but this torch sees no CUDA device: set common.device to auto or cpu")
    return choice


def to_device(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


N_VIEWS = 8  # the dihedral group of a square image: 4 turns, each also mirrored
RECALIBRATION_BATCHES = 20  # training batches averaged into the BatchNorm statistics


def dihedral(images: torch.Tensor, view: int) -> torch.Tensor:
    """View 0..7 of a batch of square images [B, C, H, W]: `view % 4` quarter turns, mirrored if view >= 4."""
    turned = torch.rot90(images, view % 4, dims=(2, 3))
    return torch.flip(turned, dims=(3,)) if view >= 4 else turned


def epoch_order(rows: np.ndarray, has_photo: np.ndarray, photo_share: float, rng: np.random.Generator) -> np.ndarray:
    """Every row once, plus photo rows drawn with replacement until photos are `photo_share` of the epoch."""
    photos = rows[has_photo[rows]]
    others = len(rows) - len(photos)
    if len(photos) and 0 < photo_share < 1:
        wanted = int(np.ceil(photo_share * others / (1 - photo_share)))
        if wanted > len(photos):
            rows = np.concatenate([rows, rng.choice(photos, wanted - len(photos))])
    return rng.permutation(rows)


@dataclass(frozen=True)
class TeacherTargets:
    """The teacher's outputs per photo (indexed by image_idx), written by the embed stage."""

    sky_logits: torch.Tensor  # [M, 5]
    embeddings: torch.Tensor  # [M, E]
    temperature: float
    alpha: float
    embed_weight: float


class Batches:
    """Minibatches of one split as tensors; photos are normalised on the fly from uint8."""

    def __init__(self, data: Ingested, rows: np.ndarray):
        self.data = data
        self.rows = rows
        self.spec = data.preprocessing["image"]
        self.windows = torch.as_tensor(data.windows)
        self.image_idx = torch.tensor(data.samples["image_idx"].to_numpy(np.int64))
        self.sky = torch.tensor(data.samples["sky_label"].to_numpy(np.int64))
        self.rain = torch.tensor(data.rain)
        self.temp = torch.tensor(data.temp)

    def batch(self, rows: np.ndarray, drop: torch.Tensor | None = None, view: int = 0) -> dict[str, torch.Tensor]:
        index = torch.from_numpy(rows)
        image_idx = self.image_idx[index]
        present = image_idx >= 0
        if drop is not None:
            present = present & ~drop
        pixels = self.data.images[image_idx.clamp(min=0).numpy()].astype(np.float32) / 255.0
        image = dihedral(torch.from_numpy(inputs.normalise_image(pixels, self.spec)), view) * present.view(-1, 1, 1, 1)
        return {
            "image": image,
            "image_present": present.float().unsqueeze(1),
            "sensors": self.windows[index],
            "image_idx": image_idx,
            "sky": torch.where(present, self.sky[index], torch.full_like(image_idx, -1)),
            "rain": self.rain[index],
            "temp": self.temp[index],
        }

    def epoch_rows(self, config: FitConfig, rng: np.random.Generator) -> np.ndarray:
        return epoch_order(self.rows, self.image_idx.numpy() >= 0, config.photo_share, rng)

    def epoch(self, order: np.ndarray, config: FitConfig, rng: np.random.Generator):
        for start in range(0, len(order), config.batch_size):
            rows = order[start : start + config.batch_size]
            drop = torch.from_numpy(rng.random(len(rows)) < config.image_dropout)
            yield self.batch(rows, drop, view=int(rng.integers(N_VIEWS)) if config.augment else 0)


def supervised_loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], temp_std: float, kd: TeacherTargets | None) -> torch.Tensor:
    """Masked multi-task loss (see module docstring)."""
    has_sky = batch["sky"] >= 0
    loss = out["rain_logits"].sum() * 0.0
    if has_sky.any():
        hard = F.cross_entropy(out["sky_logits"][has_sky], batch["sky"][has_sky])
        loss = loss + (hard if kd is None else (1 - kd.alpha) * hard)
    rain_known = ~torch.isnan(batch["rain"])
    if rain_known.any():
        loss = loss + F.binary_cross_entropy_with_logits(out["rain_logits"][rain_known], batch["rain"][rain_known])
    temp_known = ~torch.isnan(batch["temp"])
    if temp_known.any():
        error = (out["temp_c"][temp_known] - batch["temp"][temp_known]) / temp_std
        loss = loss + F.huber_loss(error, torch.zeros_like(error), delta=1.0)
    return loss


def distillation_loss(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], kd: TeacherTargets, projector: nn.Module) -> torch.Tensor:
    present = batch["image_present"].squeeze(1) > 0
    if not present.any():
        return out["sky_logits"].sum() * 0.0
    idx = batch["image_idx"][present]
    t = kd.temperature
    student = F.log_softmax(out["sky_logits"][present] / t, dim=1)
    teacher = F.softmax(kd.sky_logits[idx] / t, dim=1)
    soft = F.kl_div(student, teacher, reduction="batchmean") * t * t
    cosine = 1 - F.cosine_similarity(projector(out["embedding"][present]), kd.embeddings[idx], dim=1).mean()
    return kd.alpha * soft + kd.embed_weight * cosine


@torch.no_grad()
def recalibrate_batchnorm(
    model: NowcastNet, batches: Batches, config: FitConfig, rng: np.random.Generator, embed_cache: torch.Tensor | None = None, max_batches: int = RECALIBRATION_BATCHES
) -> None:
    """Every trained BatchNorm's running mean and variance := the plain average of its batch
    statistics over up to max_batches training batches, drawn as in training, current weights.
    With embed_cache the frozen backbone is not run, so its statistics are kept."""
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
    for batch in itertools.islice(batches.epoch(batches.epoch_rows(config, rng), config, rng), max_batches):
        forward(model, to_device(batch, device), embed_cache)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()


@torch.no_grad()
def quick_scores(model: NowcastNet, batches: Batches, rows: np.ndarray, embed_cache: torch.Tensor | None = None) -> dict[str, float]:
    """Validation scores during training: sky accuracy, mean rain Brier, mean temperature RMSE."""
    model.eval()
    device = next(model.parameters()).device
    sky_hits, sky_n, brier, brier_n, sq, sq_n = 0, 0, 0.0, 0, 0.0, 0
    for start in range(0, len(rows), 512):
        batch = to_device(batches.batch(rows[start : start + 512]), device)
        out = forward(model, batch, embed_cache)
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
        "val_sky_accuracy": sky_hits / sky_n if sky_n else float("nan"),
        "val_rain_brier": brier / brier_n if brier_n else float("nan"),
        "val_temp_rmse": (sq / sq_n) ** 0.5 if sq_n else float("nan"),
    }


def forward(model: NowcastNet, batch: dict[str, torch.Tensor], embed_cache: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Model outputs; with embed_cache the backbone is skipped (its features were precomputed)."""
    present = batch["image_present"]
    if embed_cache is not None:
        features = embed_cache[batch["image_idx"].clamp(min=0)]
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
    kd: TeacherTargets | None = None,
    embed_cache: torch.Tensor | None = None,
) -> list[dict[str, float]]:
    """Train on the train split, score on val after each epoch; returns the training curve."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = torch.device(config.device)
    train_batches = Batches(data, data.split("train"))
    val_rows = data.split("val")
    temp_std = float(model.temp_std)
    projector = nn.Linear(model.backbone.channels, kd.embeddings.shape[1]) if kd is not None else nn.Identity()
    model.to(device)
    projector.to(device)
    if kd is not None:
        kd = replace(kd, sky_logits=kd.sky_logits.to(device), embeddings=kd.embeddings.to(device))
    if embed_cache is not None:
        embed_cache = embed_cache.to(device)
    parameters = [p for p in [*model.parameters(), *projector.parameters()] if p.requires_grad]
    optimiser = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=1e-4)
    # An epoch's length does not depend on which photos are drawn, so any generator will do here.
    batches_per_epoch = max(1, -(-len(train_batches.epoch_rows(config, np.random.default_rng(0))) // config.batch_size))
    steps = config.epochs * batches_per_epoch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr, total_steps=steps, pct_start=0.2)
    history = []
    for epoch in range(1, config.epochs + 1):
        model.train()
        if embed_cache is not None:
            model.backbone.eval()
        total, count = 0.0, 0
        order = train_batches.epoch_rows(config, rng)
        batches = train_batches.epoch(order, config, rng)
        for batch in tqdm(batches, desc=f"{desc} epoch {epoch}/{config.epochs}", total=-(-len(order) // config.batch_size), leave=False):
            batch = to_device(batch, device)
            out = forward(model, batch, embed_cache)
            loss = supervised_loss(out, batch, temp_std, kd)
            if kd is not None:
                loss = loss + distillation_loss(out, batch, kd, projector)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(batch["sky"])
            count += len(batch["sky"])
        recalibrate_batchnorm(model, train_batches, config, np.random.default_rng([config.seed, epoch]), embed_cache)
        scores = quick_scores(model, train_batches, val_rows, embed_cache)
        history.append({"epoch": epoch, "train_loss": total / max(count, 1), **scores})
        print(f"{desc} epoch {epoch}: loss {history[-1]['train_loss']:.4f} " + " ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    model.to("cpu").eval()  # checkpoints and ONNX export are CPU-side
    return history


@torch.no_grad()
def backbone_features(model: NowcastNet, data: Ingested, batch_size: int = 256, view: int = 0) -> torch.Tensor:
    """The image backbone's pooled features for every photo [M, E] (no_grad, eval mode), in one dihedral view."""
    model.eval()
    device = next(model.parameters()).device
    spec = data.preprocessing["image"]
    chunks = []
    for start in tqdm(range(0, len(data.images), batch_size), desc=f"embedding photos (view {view})", leave=False):
        pixels = data.images[start : start + batch_size].astype(np.float32) / 255.0
        chunks.append(model.backbone(dihedral(torch.from_numpy(inputs.normalise_image(pixels, spec)).to(device), view)).cpu())
    return torch.cat(chunks) if chunks else torch.zeros(0, model.backbone.channels)


@torch.no_grad()
def view_averaged_targets(model: NowcastNet, data: Ingested, views: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sky logits [M, 5] and embeddings [M, E] per photo, each the mean over its first `views` dihedral views."""
    features = [backbone_features(model, data, view=view) for view in range(views)]
    logits = torch.stack([model.sky_head(f) for f in features]).mean(0)
    return logits, torch.stack(features).mean(0)

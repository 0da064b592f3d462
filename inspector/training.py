"""Fine-tuning a classifier on a labelled folder and registering it in the model store.

A few flat functions in the manner of torchvision's classification reference:
``train_one_epoch``, ``validate``, and ``fit`` which runs the epochs, early-stops on the
validation metric, calibrates on the validation set, and stores the version with its history,
metrics and figures. A checkpoint after every epoch lets an interrupted run resume.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from inspector.calibration import calibrate, fused_probabilities
from inspector.crops import CropSampler
from inspector.datasets import (
    Augmentation,
    ImageSet,
    LabelledFolder,
    ScaleCollate,
    ShapeBatchSampler,
    fingerprint,
    load_images,
    scan_folder,
    stratified_folds,
    stratified_split,
)
from inspector.devices import amp_dtype, autocast, channels_last, select_device, to_device
from inspector.errors import ConfigurationError
from inspector.evaluation import evaluate_predictions
from inspector.figures import plot_history
from inspector.losses import FocalLoss
from inspector.masks import MaskSupervision, load_masks
from inspector.model import (
    PADDINGS,
    STRIDES,
    Network,
    VGGClassifier,
    VGGEnsemble,
    build_model,
    count_parameters,
)
from inspector.preprocessing import (
    DEFAULT_SCALES,
    NORMALISATIONS,
    Preprocessing,
    merge_views,
    with_views,
)
from inspector.pretrained import load_imagenet_features
from inspector.reports import evaluate_arrays, write_evaluation
from inspector.store import ModelMetadata, ModelRef, ModelStore, ModelVersion
from inspector.weight_average import WeightAverage

log = logging.getLogger(__name__)

GOOD_CLASS_NAMES = frozenset({"good", "ok", "free", "pass", "normal", "no_defect", "none", "clean"})


@dataclass
class TrainConfig:
    """Every choice of a training run; stored with the version it produces."""

    arch: str = "vgg16_bn"
    width: float = 1.0
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    init: str = "auto"
    freeze_blocks: int = 0
    balance: bool = True
    # The share of the good images each epoch trains on, drawn afresh every epoch; defect
    # images all train every epoch. Where good parts are most of the data (magnetic tile: 70%)
    # an epoch costs that much less; the loss weights follow the epoch's mix.
    good_per_epoch: float = 1.0
    patience: int = 8
    min_epochs: int | None = None
    # Before the patience window opens (min_epochs) validate only every this many epochs, and
    # every epoch after: the epoch kept and the stop are decided late in the run (magnetic
    # tile's best epochs: 51-79 of 80), and on a CPU validating a small model is a tenth of
    # each epoch. Training itself is the same either way.
    validate_every: int = 1
    seed: int = 0
    scales: tuple[int, ...] = DEFAULT_SCALES
    val_fraction: float = 0.2
    device: str = "auto"
    amp: bool = True
    workers: int | None = None
    target_recall: float = 0.99
    max_review_rate: float = 0.01
    good_classes: tuple[str, ...] | None = None
    label_smoothing: float = 0.0
    # Focal loss on the image labels (inspector.losses.FocalLoss): > 0 weights each image by
    # how far the network is from its label, so hard images carry the gradient. 0: cross-entropy.
    focal_gamma: float = 0.0
    dropout: float = 0.2
    pool: str = "avg"
    stride: int = 32  # output stride of the features (inspector.model.STRIDES)
    padding: str = "zeros"  # the convolutions' padding mode (inspector.model.PADDINGS)
    # Per-image standardisation: surfaces are lit and exposed differently from part to part and
    # line to line; a fixed mean/std lets the network learn brightness as a class cue.
    normalise: str = "image"
    flips: bool = False  # test-time flipped views (Preprocessing.flips): 4x inference work
    # Pixel masks of the defects (MASKS/<class>/<name>.png), see inspector.masks.
    masks: str | None = None
    mask_weight: float = 1.0
    # Train on square crops of this many pixels of the scaled images, labelled by the masks
    # (inspector.crops); served whole as before. None trains on whole images.
    crop: int | None = None
    crop_on_defect: float = 0.75
    # Epochs on crops before the rest of the run goes on whole images (None: every epoch):
    # cheap crops first, then the network meets the whole images it will be served.
    crop_epochs: int | None = None
    # Progressive resizing: the first ``early_epochs`` epochs jitter over ``early_scales``
    # (smaller than ``scales``: an epoch costs about as much less as it has fewer pixels), the
    # rest over ``scales``, which the model is validated and served at. None: every epoch at
    # ``scales``.
    early_scales: tuple[int, ...] | None = None
    early_epochs: int = 0
    # Validate, early-stop and store a moving average of the weights spanning about this many
    # epochs (inspector.weight_average); 0 keeps the last step's weights.
    average_epochs: float = 0.0
    # Networks trained one after another from seeds seed, seed + 1, ... on the same split and
    # served as one version, their probabilities averaged (inspector.model.VGGEnsemble): each
    # network's own mistakes weigh less. Training and inference cost grow with the count.
    members: int = 1
    # Cross-validated set: the training folder is cut into this many stratified folds and one
    # network trained per fold, holding that fold out. Every labelled image is then held out
    # once, so the threshold is calibrated on all of them instead of a fifth; the networks are
    # served as one set, like ``members``. 1: one hold-out (``val_fraction``).
    folds: int = 1
    max_image_pixels: int = 50_000_000
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.optimizer not in {"adamw", "sgd"}:
            raise ConfigurationError(f"optimizer must be adamw or sgd, got {self.optimizer!r}")
        if self.schedule not in {"cosine", "onecycle"}:
            raise ConfigurationError(f"schedule must be cosine or onecycle, got {self.schedule!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigurationError("epochs and batch size must be at least 1")
        if self.validate_every < 1:
            raise ConfigurationError(
                f"validate_every must be at least 1, got {self.validate_every}"
            )
        if self.normalise not in NORMALISATIONS:
            raise ConfigurationError(
                f"normalise must be one of {', '.join(NORMALISATIONS)}, got {self.normalise!r}"
            )
        if self.stride not in STRIDES:
            raise ConfigurationError(f"stride must be one of {STRIDES}, got {self.stride}")
        if self.padding not in PADDINGS:
            raise ConfigurationError(
                f"padding must be one of {', '.join(PADDINGS)}, got {self.padding!r}"
            )
        if self.mask_weight < 0:
            raise ConfigurationError(f"mask weight must be >= 0, got {self.mask_weight}")
        if self.focal_gamma < 0:
            raise ConfigurationError(f"focal gamma must be >= 0, got {self.focal_gamma}")
        if self.lr <= 0:
            raise ConfigurationError(f"learning rate must be positive, got {self.lr}")
        if not 0.0 < self.good_per_epoch <= 1.0:
            raise ConfigurationError(
                f"good_per_epoch must lie in (0, 1], got {self.good_per_epoch}"
            )
        if self.average_epochs < 0:
            raise ConfigurationError(f"average_epochs must be >= 0, got {self.average_epochs}")
        if not 1 <= self.members <= 16:
            raise ConfigurationError(f"members must be between 1 and 16, got {self.members}")
        if not 1 <= self.folds <= 16:
            raise ConfigurationError(f"folds must be between 1 and 16, got {self.folds}")
        if self.folds > 1 and self.members not in (1, self.folds):
            raise ConfigurationError(
                f"a set of {self.folds} folds has {self.folds} networks, one per fold; "
                f"members {self.members} does not fit it"
            )
        if self.early_scales is not None:
            Preprocessing(scales=self.early_scales)  # checks the sizes
            if max(self.early_scales) > max(self.scales):
                raise ConfigurationError(
                    f"early scales {self.early_scales} reach above the largest scale "
                    f"{max(self.scales)}: images are kept at most that large, and the early "
                    "epochs are meant to be the cheaper ones"
                )
            if self.early_epochs == 0:
                raise ConfigurationError(
                    "early_scales needs early_epochs: how many epochs to train at them"
                )
            if not 1 <= self.early_epochs < self.epochs:
                raise ConfigurationError(
                    f"early_epochs must be between 1 and epochs - 1 ({self.epochs - 1}) with "
                    f"early scales, got {self.early_epochs}"
                )
        elif self.early_epochs:
            raise ConfigurationError("early_epochs needs early_scales: the scales to start at")
        if self.crop is not None:
            if self.early_scales is not None and self.crop > min(self.early_scales):
                raise ConfigurationError(
                    f"crop {self.crop} is larger than the smallest early scale "
                    f"{min(self.early_scales)}: every scaled image must hold a whole crop"
                )
            if self.crop_epochs is not None and not 0 <= self.crop_epochs <= self.epochs:
                raise ConfigurationError(
                    f"crop_epochs must be between 0 and epochs ({self.epochs}), "
                    f"got {self.crop_epochs}"
                )
            CropSampler(self.crop, None, self.crop_on_defect)  # checks the size and the share
            if self.masks is None or self.mask_weight == 0:
                raise ConfigurationError(
                    "training on crops needs defect masks (--masks): a crop that misses a "
                    "small defect would otherwise be taught as that defect"
                )
            if self.crop > min(self.scales):
                raise ConfigurationError(
                    f"crop {self.crop} is larger than the smallest scale {min(self.scales)}: "
                    "every scaled image must hold a whole crop"
                )
        if self.padding == "reflect":
            # The last block sees the input at 1/16: mirroring needs two pixels there.
            smallest = min([*self.scales, *(self.early_scales or ()), self.crop or 32])
            if smallest < 32:
                raise ConfigurationError(
                    f"reflect padding needs inputs of at least 32 pixels (the last conv block "
                    f"sees them at 1/16), got {smallest}: use replicate padding"
                )

    @property
    def networks(self) -> int:
        """How many networks the run trains: one per fold, else ``members``."""
        return self.folds if self.folds > 1 else self.members

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["scales"] = list(self.scales)
        data["early_scales"] = list(self.early_scales) if self.early_scales else None
        data["good_classes"] = list(self.good_classes) if self.good_classes is not None else None
        return data


def defect_classes_of(
    classes: Sequence[str], good_classes: Sequence[str] | None
) -> tuple[str, ...]:
    """Classes that count as defects: all but the named good ones (or the usual good names)."""
    if good_classes is not None:
        unknown = set(good_classes) - set(classes)
        if unknown:
            raise ConfigurationError(
                f"good class(es) {sorted(unknown)} are not among the classes {list(classes)}"
            )
        good = set(good_classes)
    else:
        good = {c for c in classes if c.lower() in GOOD_CLASS_NAMES}
    defects = tuple(c for c in classes if c not in good)
    if not defects:
        raise ConfigurationError(
            f"every class is a good class ({', '.join(classes)}): a defect classifier needs at "
            "least one defect class; --good-classes names only the classes that are not defects"
        )
    return defects


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def class_weights(
    labels: Sequence[int], num_classes: int, shares: Mapping[int, float] | None = None
) -> torch.Tensor:
    """Inverse-frequency loss weights (mean 1), so rare defect classes count as much.

    ``shares``: classes of which an epoch takes only that share; weighed by what it takes."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
    for k, share in (shares or {}).items():
        counts[k] = max(1.0, round(share * counts[k])) if counts[k] else 0.0
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / num_classes, 0.0)
    weights = weights / weights[counts > 0].mean()
    return torch.tensor(weights, dtype=torch.float32)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total, pct_start=0.25
        )
    warmup = min(total - 1, int(config.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def initialise(
    model: VGGClassifier,
    config: TrainConfig,
    store: ModelStore,
    weights_dir: Path,
    classes: Sequence[str],
    member: int = 0,
) -> tuple[str, str | None]:
    """Apply ``config.init``; returns (what was used, parent version or None).

    A stored parent passes on its features, and its head too when it knows the same classes
    in the same order: a head for other classes (another line's, say) would start the new one
    with confident wrong answers, so the head then starts fresh. A parent that is a set of
    networks passes on its network ``member`` (counting round when this set is larger)."""
    init = config.init
    if init == "auto":
        init = "imagenet" if config.width == 1.0 else "scratch"
    if init == "scratch":
        return "scratch", None
    if init == "imagenet":
        path = load_imagenet_features(model, weights_dir)
        return f"imagenet:{path.name}", None
    loaded, mv = store.load(ModelRef.parse(init))
    if loaded.spec.arch != model.spec.arch or loaded.spec.width != model.spec.width:
        raise ConfigurationError(
            f"cannot continue from {mv.ref}: it is {loaded.spec.arch} at width "
            f"{loaded.spec.width}, this run is {model.spec.arch} at width {model.spec.width}"
        )
    networks = [loaded] if isinstance(loaded, VGGClassifier) else loaded.networks
    parent = networks[member % len(networks)]
    model.features.load_state_dict(parent.features.state_dict())
    if tuple(mv.metadata.classes) == tuple(classes):
        model.head.load_state_dict(parent.head.state_dict())
    else:
        log.info("%s knows other classes: its features only, a new head", mv.ref)
    return mv.ref, mv.ref


# Where ``init`` names no stored version.
FRESH_INITS = frozenset({"auto", "imagenet", "scratch"})


def continued_choices(store: ModelStore, init: str) -> dict[str, Any]:
    """The TrainConfig fields a run continuing from stored version ``init`` takes from it.

    The network's shape (a set's size, and its folds) and how its images are prepared (scales,
    normalisation, flipped views, which classes are good): the features it starts from must see
    their images as they learnt them, and the new version must judge defects as the old one did.
    A caller overrides any of them by passing the field itself. Empty for a fresh start
    (imagenet, scratch, auto).

    A parent without a good class (every class a defect) passes none on: its features may start
    a model for another line, whose good parts are then found by name as usual.
    """
    if init in FRESH_INITS:
        return {}
    meta = store.get(ModelRef.parse(init)).metadata
    choices: dict[str, Any] = {
        "arch": meta.spec.arch,
        "width": meta.spec.width,
        "pool": meta.spec.pool,
        "stride": meta.spec.stride,
        "padding": meta.spec.padding,
        "dropout": meta.spec.dropout,
        "scales": tuple(meta.preprocessing.scales),
        "normalise": meta.preprocessing.normalise,
        "flips": meta.preprocessing.flips,
        "members": meta.spec.members,
    }
    folds = int((meta.training.get("config") or {}).get("folds", 1))
    if folds > 1:
        choices["folds"] = folds  # a set cross-validated on its folds continues as one
    good = tuple(c for c in meta.classes if c not in meta.defect_classes)
    if good:
        choices["good_classes"] = good
    return choices


def train_one_epoch(
    model: VGGClassifier,
    loader: DataLoader[Any],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    *,
    amp: bool,
    scaler: torch.amp.GradScaler | None,
    progress: tqdm[Any] | None = None,
    masks: MaskSupervision | None = None,
    average: WeightAverage | None = None,
) -> dict[str, float]:
    model.train()
    total_loss, total_mask_loss, correct, seen = 0.0, 0.0, 0, 0
    for batch in loader:
        images = to_device(batch[0], device)
        labels = batch[1].to(device, non_blocking=True)
        with autocast(device, amp):
            if masks is not None and len(batch) == 4:
                logits, locations = model.forward_with_locations(images)
                mask_loss = masks.loss(locations, batch[2].to(device), batch[3].to(device), labels)
                total_mask_loss += float(mask_loss.detach()) * labels.shape[0]
                loss = criterion(logits.float(), labels) + mask_loss
            else:
                logits = model(images)
                loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        if average is not None:
            average.update(model)
        n = labels.shape[0]
        total_loss += float(loss.detach()) * n
        correct += int((logits.argmax(1) == labels).sum())
        seen += n
        if progress is not None:
            progress.update(n)
            progress.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
    row = {
        "train_loss": total_loss / max(1, seen),
        "train_accuracy": correct / max(1, seen),
        "train_images": seen,
    }
    if masks is not None:
        row["train_mask_loss"] = total_mask_loss / max(1, seen)
    return row


def validation_logits(
    model: Network,
    dataset: ImageSet,
    pre: Preprocessing,
    scales: Sequence[int],
    device: torch.device,
    batch_size: int,
    amp: bool,
    *,
    views: bool = True,
) -> np.ndarray:
    """Logits (S, N, K) on the validation images, in dataset order; with ``views``, averaged
    over the flipped views ``pre.flips`` asks for, as inference does."""
    keys = dataset.shape_keys(pre)
    batches = ShapeBatchSampler(keys, batch_size, shuffle=False)._batches()
    num_classes = int(model.spec.num_classes)
    out = np.zeros((len(scales), len(dataset), num_classes), np.float32)
    model.eval()
    with torch.inference_mode(), autocast(device, amp):
        for s, scale in enumerate(scales):
            collate = ScaleCollate(pre, scale=scale)
            for idx in batches:
                images = collate([dataset[i] for i in idx])[0]
                if views:
                    images = with_views(images, pre)
                logits = model(to_device(images, device)).float().cpu().numpy()
                out[s, idx] = merge_views(logits, pre) if views else logits
    return out


def validate(
    model: Network,
    dataset: ImageSet,
    pre: Preprocessing,
    classes: Sequence[str],
    defect_classes: Sequence[str],
    device: torch.device,
    config: TrainConfig,
) -> dict[str, float]:
    """Per-epoch validation at the middle scale without flipped views (cheap); the full
    multi-scale one, with the views, comes last."""
    middle = sorted(pre.scales)[len(pre.scales) // 2]
    logits = validation_logits(
        model, dataset, pre, [middle], device, config.batch_size, config.amp, views=False
    )
    labels = np.asarray(dataset.labels)
    probs = fused_probabilities(logits)
    loss = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())
    report = evaluate_predictions(probs, labels, classes, defect_classes)
    return {"val_loss": loss, "val_accuracy": report.accuracy, "val_macro_f1": report.macro_f1}


@dataclass
class TrainingData:
    train: LabelledFolder
    val: LabelledFolder
    defect_classes: tuple[str, ...]

    def fingerprints(self) -> dict[str, str]:
        """What the run trains and selects on: a resumed run must see the same images."""
        return {"fingerprint": fingerprint(self.train), "val_fingerprint": fingerprint(self.val)}


def prepare_data(
    train_dir: Path, val_dir: Path | None, config: TrainConfig, *, min_classes: int = 2
) -> TrainingData:
    """The run's images: training and hold-out parts, or with ``config.folds`` the whole folder
    on both sides (each image is held out by one network of the set)."""
    folder = scan_folder(train_dir, min_classes=min_classes)
    defects = defect_classes_of(folder.classes, config.good_classes)
    if config.folds > 1:
        if val_dir is not None:
            raise ConfigurationError(
                "folds hold out each part of the training folder in turn: train with either "
                f"folds ({config.folds}) or a separate validation folder, not both (folds 1: "
                "one hold-out)"
            )
        return TrainingData(folder, folder, defects)
    if val_dir is not None:
        val = scan_folder(val_dir, classes=folder.classes)
        train = folder
    else:
        train, val = stratified_split(folder, config.val_fraction, config.seed)
    return TrainingData(train, val, defects)


@dataclass
class Split:
    """One network's training and hold-out images: indices into the run's loaded images, which
    are ``data.train`` followed by ``data.val`` (with folds, ``data.train`` alone)."""

    data: TrainingData
    train: list[int]
    val: list[int]


def data_splits(data: TrainingData, config: TrainConfig) -> list[Split]:
    """The split of each network: one per fold, else the one hold-out shared by every network."""
    if config.folds == 1:
        n = len(data.train.samples)
        return [Split(data, list(range(n)), list(range(n, n + len(data.val.samples))))]
    everything = set(range(len(data.train.samples)))
    splits = []
    for held_out in stratified_folds(data.train, config.folds, config.seed):
        rest = sorted(everything - set(held_out))
        part = TrainingData(
            data.train.subset(rest), data.train.subset(held_out), data.defect_classes
        )
        splits.append(Split(part, rest, held_out))
    return splits


def _checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    config: TrainConfig,
    history: list[dict[str, float]],
    best: dict[str, Any],
    bad_epochs: int,
    average: WeightAverage | None,
    stopped: bool = False,
    data: dict[str, str] | None = None,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "config": config.to_dict(),
            "history": history,
            "best": best,
            "bad_epochs": bad_epochs,
            "average": average.state_dict() if average is not None else None,
            "stopped": stopped,
            "data": data or {},
        },
        tmp,
    )
    tmp.replace(path)


# Choices a run may change when it resumes: how long and how patiently it trains, where it runs,
# and what comes after training (calibration). Every other choice shapes the weights, so a
# checkpoint written under another one is refused rather than silently mixed in.
RESUMABLE_CHANGES = frozenset(
    {
        "epochs",
        "patience",
        "min_epochs",
        "validate_every",
        "device",
        "amp",
        "workers",
        "progress",
        "members",
        "target_recall",
        "max_review_rate",
        "max_image_pixels",
    }
)


def check_resumable(
    path: Path, saved: dict[str, Any], config: TrainConfig, data: dict[str, str]
) -> None:
    """Refuse a checkpoint written by a run with other choices or other images than this one."""
    now = config.to_dict()
    old = saved.get("config") or {}
    changed = [
        f"{key} {old[key]!r} (now {now[key]!r})"
        for key in sorted(now)
        if key in old and key not in RESUMABLE_CHANGES and old[key] != now[key]
    ]
    images = {"fingerprint": "the training images", "val_fingerprint": "the validation images"}
    for key, what in images.items():
        before = (saved.get("data") or {}).get(key)
        if before is not None and before != data.get(key):
            changed.append(f"{what} (another set of files or contents)")
    if changed:
        raise ConfigurationError(
            f"{path} was written by a different run: {'; '.join(changed)}. Resume with the "
            "options and images of that run, or train without resuming to start over"
        )


def member_checkpoint(path: Path | None, member: int, members: int) -> Path | None:
    """Where network ``member`` (from 0) of a set keeps its checkpoint: each its own file."""
    if path is None or members == 1:
        return path
    return path.with_name(f"{path.stem}-member{member + 1}{path.suffix}")


@dataclass
class TrainedNetwork:
    """One network after its epochs: the best weights loaded, and how it got there."""

    model: VGGClassifier
    history: list[dict[str, float]]
    best_epoch: int
    seed: int
    seconds: float


def train_network(
    model: VGGClassifier,
    train_set: ImageSet,
    val_set: ImageSet,
    data: TrainingData,
    pre: Preprocessing,
    device: torch.device,
    config: TrainConfig,
    *,
    seed: int,
    supervision: MaskSupervision | None,
    checkpoint_path: Path | None = None,
    resume: bool = False,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    fingerprints: dict[str, str],
    member: int | None = None,
) -> TrainedNetwork:
    """Run ``config.epochs`` (or fewer, on early stopping) and load the best epoch's weights.

    ``member`` numbers the network within a set (from 0): its epochs are labelled with it.
    ``fingerprints`` (``TrainingData.fingerprints``) go into the checkpoint, and a resumed run
    must match them.
    """
    started = time.perf_counter()
    classes = data.train.classes
    good = [k for k, c in enumerate(classes) if c not in data.defect_classes]
    thinned = dict.fromkeys(good, config.good_per_epoch) if config.good_per_epoch < 1 else {}
    sampler = ShapeBatchSampler(
        train_set.shape_keys(pre),
        config.batch_size,
        shuffle=True,
        seed=seed,
        pool_remainders=True,
        shares=[thinned.get(label, 1.0) for label in train_set.labels] if thinned else None,
    )
    crops = None
    if config.crop is not None and supervision is not None:
        crops = CropSampler(config.crop, supervision.good_index, config.crop_on_defect)
    collate = ScaleCollate(pre, scale=None, seed=seed, crops=crops)
    workers = config.workers if config.workers is not None else (4 if device.type == "cuda" else 0)
    loader: DataLoader[Any] = DataLoader(
        train_set,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    weights = class_weights(data.train.labels(), len(classes), thinned) if config.balance else None
    weight = weights.to(device) if weights is not None else None
    criterion: nn.Module = (
        FocalLoss(config.focal_gamma, weight, config.label_smoothing)
        if config.focal_gamma > 0
        else nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)
    )
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config, len(sampler))
    average = (
        WeightAverage.over_epochs(model, config.average_epochs, len(sampler))
        if config.average_epochs > 0
        else None
    )
    judged = average.module if average is not None else model  # what is validated and kept
    use_scaler = config.amp and amp_dtype(device) == torch.float16
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None
    label = f"network {member + 1}/{config.networks} " if member is not None else ""

    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"score": None, "epoch": 0, "state": None}
    bad_epochs = 0
    start_epoch = 1
    if resume and checkpoint_path is not None and not checkpoint_path.is_file():
        log.warning("%sno checkpoint at %s: training from epoch 1", label, checkpoint_path)
    if resume and checkpoint_path is not None and checkpoint_path.is_file():
        ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        check_resumable(checkpoint_path, ckpt, config, fingerprints)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        history, best, bad_epochs = ckpt["history"], ckpt["best"], ckpt["bad_epochs"]
        # A run that stopped early is not trained further; one that ran all its epochs goes on
        # when asked for more.
        start_epoch = config.epochs + 1 if ckpt.get("stopped") else int(ckpt["epoch"]) + 1
        if average is not None and ckpt.get("average") is not None:
            average.load_state_dict(ckpt["average"])
        log.info("%sresumed from %s at epoch %d", label, checkpoint_path, start_epoch)

    def save_checkpoint(epoch: int, *, stopped: bool) -> None:
        if checkpoint_path is not None:
            _checkpoint(
                checkpoint_path,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                epoch=epoch,
                config=config,
                history=history,
                best=best,
                bad_epochs=bad_epochs,
                average=average,
                stopped=stopped,
                data=fingerprints,
            )

    # The learning rate is still high early in the schedule and validation noisy: patience
    # counts only epochs after half the run (or min_epochs).
    min_epochs = config.min_epochs if config.min_epochs is not None else config.epochs // 2
    for epoch in range(start_epoch, config.epochs + 1):
        sampler.set_epoch(epoch)
        train_set.epoch = epoch
        collate.rng = random.Random(seed * 1_000_003 + epoch)
        last_on_crops = config.epochs if config.crop_epochs is None else config.crop_epochs
        on_crops = crops is not None and epoch <= last_on_crops
        collate.crops = crops if on_crops else None
        early = config.early_scales if epoch <= config.early_epochs else None
        collate.jitter_over(early or pre.scales)
        t0 = time.perf_counter()
        with tqdm(
            total=len(train_set),
            desc=f"{label}epoch {epoch}/{config.epochs}",
            unit="img",
            disable=not config.progress,
            leave=False,
        ) as bar:
            row: dict[str, float] = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
            if member is not None:
                row["member"] = member + 1
            if crops is not None:
                row["crop"] = crops.size if on_crops else 0
            if config.early_scales is not None:
                row["max_scale"] = max(collate.choices)
            row |= train_one_epoch(
                model,
                loader,
                criterion,
                optimizer,
                scheduler,
                device,
                amp=config.amp,
                scaler=scaler,
                progress=bar,
                masks=supervision,
                average=average,
            )
        checked = epoch > min_epochs or epoch == config.epochs or epoch % config.validate_every == 0
        if checked:
            row |= validate(judged, val_set, pre, classes, data.defect_classes, device, config)
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        line = f"{label}epoch {epoch}/{config.epochs}: loss {row['train_loss']:.4f}"
        if checked:
            score = [row["val_macro_f1"], -row["val_loss"]]
            if best["score"] is None or score > best["score"]:
                state = copy.deepcopy(judged.state_dict())
                best = {"score": score, "epoch": epoch, "state": state}
                bad_epochs = 0
            else:
                bad_epochs += 1
            line += (
                f" val_loss {row['val_loss']:.4f} val_acc {row['val_accuracy']:.4f} "
                f"val_f1 {row['val_macro_f1']:.4f}"
            )
        line += f" ({row['seconds']:.1f}s)"
        if config.progress:
            tqdm.write(line)
        log.info(line)
        if on_epoch is not None:
            on_epoch(row)
        if epoch <= min_epochs or on_crops:
            # On crops the run has not yet seen whole images: not a reason to stop.
            bad_epochs = 0
        stop = epoch > min_epochs and not on_crops and bad_epochs >= config.patience
        save_checkpoint(epoch, stopped=stop)
        if stop:
            log.info("%searly stop: no improvement for %d epochs", label, bad_epochs)
            break

    if best["state"] is not None:
        model.load_state_dict(best["state"])
    return TrainedNetwork(
        model, history, int(best["epoch"]), seed, round(time.perf_counter() - started, 1)
    )


def fit(
    train_dir: str | Path,
    *,
    name: str,
    store: ModelStore,
    config: TrainConfig,
    val_dir: str | Path | None = None,
    weights_dir: Path,
    checkpoint_path: Path | None = None,
    resume: bool = False,
    promote: bool | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> ModelVersion:
    """Train, calibrate, evaluate and register a new version of model ``name``.

    With ``config.members`` above 1 it trains that many networks one after another, each from
    its own seed (``seed``, ``seed + 1``, ...) but on the same split, and registers them as one
    version whose probabilities are their mean, calibrated together on the shared hold-out.
    With ``config.folds`` above 1, network k holds out fold k instead, and the threshold is
    calibrated on every image, each scored by the network that held it out.
    """
    ModelRef.parse(name)
    started = time.perf_counter()
    seed_everything(config.seed)
    device = select_device(config.device)
    data = prepare_data(Path(train_dir), Path(val_dir) if val_dir else None, config)
    prints = data.fingerprints()
    splits = data_splits(data, config)
    classes = data.train.classes
    pre = Preprocessing.for_scales(config.scales, normalise=config.normalise, flips=config.flips)
    log.info("classes: %s; defects: %s", ", ".join(classes), ", ".join(data.defect_classes))
    log.info("train: %s", data.train.describe())
    if config.folds > 1:
        log.info("held out: each of %d folds in turn", config.folds)
    else:
        log.info("val:   %s", data.val.describe())

    max_short = max(pre.scales)
    load = {"max_pixels": config.max_image_pixels, "max_short_side": max_short}
    # Every image is decoded once: the training folder, then a separate hold-out (not with folds).
    images = load_images(data.train, **load)
    labels = data.train.labels()
    good = [i for i, c in enumerate(classes) if c not in data.defect_classes]
    supervision = None
    masks: list[np.ndarray | None] | None = None
    if config.masks is not None and config.mask_weight > 0:
        masks = load_masks(data.train, Path(config.masks), images, good)
        supervision = MaskSupervision(good[0] if good else None, config.mask_weight)
    if config.folds == 1:
        val_images = load_images(data.val, **load)
        images += val_images
        labels += data.val.labels()
        if masks is not None:
            masks += [None] * len(val_images)

    def part(indices: Sequence[int], augmentation: Augmentation | None, seed: int) -> ImageSet:
        return ImageSet(
            [images[i] for i in indices],
            [labels[i] for i in indices],
            augmentation,
            seed=seed,
            masks=[masks[i] for i in indices] if masks is not None and augmentation else None,
        )

    trained: list[TrainedNetwork] = []
    init_used, parent = "scratch", None
    for member in range(config.networks):
        seed = config.seed + member
        if member:
            seed_everything(seed)  # the first network trains exactly as a single one would
        split = splits[member % len(splits)]
        network = build_model(
            arch=config.arch,
            num_classes=len(classes),
            width=config.width,
            dropout=config.dropout,
            pool=config.pool,
            stride=config.stride,
            padding=config.padding,
        )
        init_used, parent = initialise(network, config, store, weights_dir, classes, member)
        network.freeze_blocks(config.freeze_blocks)
        channels_last(network.to(device))
        log.info(
            "%s width %s: %d parameters, init %s, seed %d",
            config.arch,
            config.width,
            count_parameters(network),
            init_used,
            seed,
        )
        trained.append(
            train_network(
                network,
                part(split.train, Augmentation(), seed),
                part(split.val, None, 0),
                split.data,
                pre,
                device,
                config,
                seed=seed,
                supervision=supervision,
                checkpoint_path=member_checkpoint(checkpoint_path, member, config.networks),
                resume=resume,
                on_epoch=on_epoch,
                fingerprints=prints if split.data is data else split.data.fingerprints(),
                member=member if config.networks > 1 else None,
            )
        )
    model: Network = (
        trained[0].model if len(trained) == 1 else VGGEnsemble([t.model for t in trained])
    )
    history = [row for t in trained for row in t.history]
    train_seconds = time.perf_counter() - started

    # Calibrate on the held-out images at every scale, then evaluate with that calibration.
    # With folds, each image's logits come from the one network that did not train on it.
    offset = len(data.train.samples) if config.folds == 1 else 0
    logits = np.zeros((len(pre.scales), len(data.val.samples), len(classes)), np.float32)
    scored: list[tuple[Network, Split]] = (
        [(model, splits[0])]
        if config.folds == 1
        else [(t.model, split) for t, split in zip(trained, splits, strict=True)]
    )
    for scorer, split in scored:
        held_out = [i - offset for i in split.val]
        logits[:, held_out] = validation_logits(
            scorer,
            part(split.val, None, 0),
            pre,
            pre.scales,
            device,
            config.batch_size,
            config.amp,
        )
    val_labels = np.asarray(data.val.labels())
    calibration = calibrate(
        logits,
        val_labels,
        classes,
        data.defect_classes,
        target_recall=config.target_recall,
        max_review_rate=config.max_review_rate,
    )
    report, figures = evaluate_arrays(
        logits,
        val_labels,
        classes,
        data.defect_classes,
        calibration,
        pre.scales,
        names=data.val.names(),
    )

    metadata = ModelMetadata(
        name=name,
        version=0,
        spec=model.spec,
        classes=classes,
        defect_classes=data.defect_classes,
        preprocessing=pre,
        calibration=calibration,
        parent=parent,
        init=init_used,
        dataset={
            "train_root": str(Path(data.train.root).resolve()),
            "val_root": str(data.val.root) if val_dir else None,
            "train_counts": data.train.counts(),
            "val_counts": data.val.counts(),
            **prints,
        },
        training={
            "config": config.to_dict(),
            "device": str(device),
            "epochs_run": len(history),
            # A set's networks each have their own best epoch.
            "best_epoch": (
                trained[0].best_epoch if len(trained) == 1 else [t.best_epoch for t in trained]
            ),
            "members": [
                {
                    "seed": t.seed,
                    "epochs_run": len(t.history),
                    "best_epoch": t.best_epoch,
                    "seconds": t.seconds,
                    # With folds, the fold the network held out (counted from 1).
                    **({"fold": k + 1} if config.folds > 1 else {}),
                }
                for k, t in enumerate(trained)
            ],
            "seconds": round(train_seconds, 1),
            "parameters": count_parameters(model),
        },
        metrics=report,
    )
    mv = store.register(
        model.cpu().to(memory_format=torch.contiguous_format), metadata, promote=promote
    )
    store.write_artifact(mv, "history.json", history)
    plot_history(history, mv.path / "history.png")
    write_evaluation(mv.path, report, figures, prefix="val_")
    return mv

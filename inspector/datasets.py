"""Labelled image folders (one sub-folder per class): scanning, checks, splits and loaders.

A folder is checked completely before any training starts: a run that would fail on image
900 of 1,000 fails up front instead, with the list of what is wrong.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from inspector.crops import CropSampler
from inspector.errors import DatasetError, ImageDecodeError
from inspector.imaging import is_image_file, read_file, read_image
from inspector.preprocessing import Image, Preprocessing, resize, target_size, to_batch

log = logging.getLogger(__name__)

MAX_LISTED_PROBLEMS = 10


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass(frozen=True)
class LabelledFolder:
    """The images of a folder-per-class dataset and their class indices."""

    root: Path
    classes: tuple[str, ...]
    samples: tuple[Sample, ...]

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.classes, 0)
        for s in self.samples:
            counts[self.classes[s.label]] += 1
        return counts

    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def names(self) -> list[str]:
        """Each image's path below ``root`` (``class/file.png``), in sample order."""
        return [s.path.relative_to(self.root).as_posix() for s in self.samples]

    def subset(self, indices: Sequence[int]) -> LabelledFolder:
        return LabelledFolder(self.root, self.classes, tuple(self.samples[i] for i in indices))

    def describe(self) -> str:
        return ", ".join(f"{c}: {n}" for c, n in self.counts().items())


def _image_files(folder: Path) -> list[Path]:
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if is_image_file(f))
    return files


def scan_folder(
    root: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    min_classes: int = 2,
) -> LabelledFolder:
    """Index ``root/<class>/**/<image>``. With ``classes``, folders must be among them."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder (expected one sub-folder of images per class)")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    per_class = {name: _image_files(root / name) for name in found}
    empty = [name for name, files in per_class.items() if not files]
    with_images = [name for name in found if per_class[name]]
    if not with_images:
        loose = sum(1 for f in root.iterdir() if f.is_file() and is_image_file(f.name))
        raise DatasetError(
            f"{root}: no classes found: expected one sub-folder of images per class, found "
            f"{len(found)} sub-folder(s) with images in none of them and {loose} image(s) "
            "directly in the folder"
        )
    if empty and classes is None:
        raise DatasetError(f"{root}: class folder(s) without any image: {', '.join(empty)}")
    if classes is None:
        classes = with_images
        if len(classes) < min_classes:
            raise DatasetError(
                f"{root}: found {len(classes)} class ({', '.join(classes)}); a classifier needs "
                f"at least {min_classes} classes, one sub-folder each"
            )
    else:
        unknown = [name for name in with_images if name not in classes]
        if unknown:
            raise DatasetError(
                f"{root}: class folder(s) {', '.join(unknown)} are not among the classes "
                f"it is checked against: those of the model, or of the training folder "
                f"({', '.join(classes)})"
            )
    index = {name: i for i, name in enumerate(classes)}
    samples = tuple(Sample(path, index[name]) for name in with_images for path in per_class[name])
    return LabelledFolder(root, tuple(classes), samples)


def stratified_split(
    folder: LabelledFolder, val_fraction: float = 0.2, seed: int = 0
) -> tuple[LabelledFolder, LabelledFolder]:
    """A seeded per-class hold-out: every class keeps at least one image on each side."""
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"validation share must be between 0 and 1, got {val_fraction}")
    rng = random.Random(seed)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for label, name in enumerate(folder.classes):
        idx = [i for i, s in enumerate(folder.samples) if s.label == label]
        if len(idx) < 2:
            raise DatasetError(
                f"{folder.root}: class {name!r} has {len(idx)} image(s); holding out a "
                "validation share needs at least 2 per class (or pass --val)"
            )
        rng.shuffle(idx)
        n_val = min(len(idx) - 1, max(1, round(len(idx) * val_fraction)))
        val_idx.extend(idx[:n_val])
        train_idx.extend(idx[n_val:])
    return folder.subset(sorted(train_idx)), folder.subset(sorted(val_idx))


def stratified_folds(folder: LabelledFolder, folds: int, seed: int = 0) -> list[list[int]]:
    """Seeded per-class folds: every image in exactly one fold, every class in every fold.

    Returns each fold's sample indices. A class's images are dealt round the folds after a
    seeded shuffle, each class starting where the last one stopped, so fold sizes differ by at
    most one image."""
    if folds < 2:
        raise DatasetError(f"folds must be at least 2, got {folds}")
    rng = random.Random(seed)
    parts: list[list[int]] = [[] for _ in range(folds)]
    dealt = 0
    for label, name in enumerate(folder.classes):
        idx = [i for i, s in enumerate(folder.samples) if s.label == label]
        if len(idx) < folds:
            raise DatasetError(
                f"{folder.root}: class {name!r} has {len(idx)} image(s); {folds} folds need at "
                f"least {folds} per class"
            )
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            parts[(dealt + j) % folds].append(i)
        dealt += len(idx)
    return [sorted(part) for part in parts]


def fingerprint(folder: LabelledFolder) -> str:
    """sha256 over every (class, relative path, content hash): what a model was trained on.

    Files that cannot be read are refused together, as ``load_images`` refuses them.
    """
    outer = hashlib.sha256()
    problems: list[str] = []
    samples = sorted(folder.samples, key=lambda s: (s.label, str(s.path)))
    for s in samples:
        rel = s.path.relative_to(folder.root).as_posix()
        outer.update(f"{folder.classes[s.label]}\0{rel}\0".encode())
        try:
            outer.update(hashlib.sha256(read_file(s.path)).digest())
        except ImageDecodeError as exc:
            problems.append(str(exc))
    _refuse_unreadable(folder, problems, len(samples))
    return outer.hexdigest()


def _refuse_unreadable(folder: LabelledFolder, problems: Sequence[str], total: int) -> None:
    if not problems:
        return
    listed = "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    tail = f"\n  … and {more} more" if more > 0 else ""
    raise DatasetError(
        f"{folder.root}: {len(problems)} of {total} image(s) cannot be read:\n"
        f"  {listed}{tail}\nremove or replace them, then run again"
    )


def _shrink(image: Image, max_short: int) -> Image:
    h, w = image.shape[:2]
    short = min(h, w)
    if short <= max_short:
        return image
    f = max_short / short
    return resize(image, (max(1, round(h * f)), max(1, round(w * f))))


def load_images(
    folder: LabelledFolder,
    *,
    max_pixels: int,
    max_short_side: int,
    workers: int = 2,
) -> list[np.ndarray]:
    """Decode every image once (cached, as float16, no larger than training needs).

    Raises DatasetError listing the files that could not be read: the whole set is refused
    up front rather than failing part-way through an epoch.
    """

    def load(sample: Sample) -> np.ndarray | str:
        try:
            img = read_image(sample.path, max_pixels=max_pixels)
        except ImageDecodeError as exc:
            return str(exc)
        return _shrink(img, max_short_side).astype(np.float16)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        loaded = list(pool.map(load, folder.samples))
    _refuse_unreadable(folder, [r for r in loaded if isinstance(r, str)], len(loaded))
    return [r for r in loaded if not isinstance(r, str)]


@dataclass(frozen=True)
class Augmentation:
    """Augmentations that keep a surface's defect class: the dihedral group and lighting.

    Lighting is a contrast change about the image mean plus a brightness offset. The result is
    not clipped to [0, 1]: clipping saturated bright surfaces (at +0.15, a NEU pitted-surface
    image lost 29% of its pixels on average, and with them the texture that tells its class).
    Values slightly outside [0, 1] are harmless to the normalisation that follows. With the
    "image" and "local" normalisations the lighting change is undone altogether (each image, or
    square, is standardised by its own mean and std); it teaches only with "fixed". It is kept
    in training all the same: skipping it saved no measurable time on magnetic tile, and would
    change the published recipe runs by rounding (benchmarks/README.md, 12-01).
    """

    flips: bool = True
    rotations: bool = True
    brightness: float = 0.15
    contrast: float = 0.15

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply_with_mask(image, None, rng)[0]

    def apply_with_mask(
        self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The augmented image, and its defect mask moved by the same flips and turns."""
        img = image.astype(np.float32)

        def both(op: Callable[[np.ndarray], np.ndarray]) -> None:
            nonlocal img, mask
            img = op(img)
            mask = op(mask) if mask is not None else None

        if self.flips and rng.random() < 0.5:
            both(lambda a: a[:, ::-1])
        if self.flips and rng.random() < 0.5:
            both(lambda a: a[::-1, :])
        if self.rotations:
            # A quarter turn would change a non-square image's batch shape; half turns don't.
            square = img.shape[0] == img.shape[1]
            k = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
            both(lambda a: np.rot90(a, k))
        if self.contrast > 0 or self.brightness > 0:
            c = 1.0 + rng.uniform(-self.contrast, self.contrast)
            b = rng.uniform(-self.brightness, self.brightness)
            mean = float(img.mean())
            img = (img - mean) * c + mean + b
        out_mask = np.ascontiguousarray(mask, dtype=np.float32) if mask is not None else None
        return np.ascontiguousarray(img, dtype=np.float32), out_mask


Item = tuple[np.ndarray, int] | tuple[np.ndarray, int, np.ndarray | None]


class ImageSet(Dataset[Item]):
    """Cached decoded images with labels, augmented on access when training.

    With ``masks`` (see ``inspector.masks``) an item is (image, label, mask or None), the mask
    augmented with its image; without, (image, label).
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[int],
        augmentation: Augmentation | None = None,
        seed: int = 0,
        masks: Sequence[np.ndarray | None] | None = None,
    ) -> None:
        if len(images) != len(labels) or (masks is not None and len(masks) != len(images)):
            raise ValueError("images, labels and masks differ in length")
        self.images = list(images)
        self.labels = list(labels)
        self.masks = list(masks) if masks is not None else None
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Item:
        img = self.images[index]
        mask = self.masks[index] if self.masks is not None else None
        if self.augmentation is None:
            img = img.astype(np.float32)
        else:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            img, mask = self.augmentation.apply_with_mask(img, mask, rng)
        if self.masks is None:
            return img, self.labels[index]
        return img, self.labels[index], mask

    def shape_keys(self, pre: Preprocessing) -> list[tuple[int, int]]:
        scale = min(pre.scales)
        return [target_size(im.shape[0], im.shape[1], scale, pre) for im in self.images]


class ShapeBatchSampler(Sampler[list[int]]):
    """Seeded shuffled batches of images that share a target shape (aspect-ratio buckets).

    ``shares`` (one per image, in (0, 1]) lets an epoch take only part of some images: of the
    images that share a value below 1, that share of them (rounded), drawn afresh each epoch.
    """

    def __init__(
        self,
        keys: Sequence[tuple[int, int]],
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        pool_remainders: bool = False,
        shares: Sequence[float] | None = None,
    ) -> None:
        if shares is not None and (
            len(shares) != len(keys) or not all(0.0 < v <= 1.0 for v in shares)
        ):
            raise ValueError("shares must give each image a value in (0, 1]")
        self.shares = list(shares) if shares is not None else None
        self.keys = list(keys)
        self.batch_size = batch_size
        self.shuffle = shuffle
        # Training: small leftovers of many shape buckets would be tiny batches, which batch
        # norm handles badly; they are pooled into full batches (resized to one shape).
        self.pool_remainders = pool_remainders
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _epoch_images(self, rng: random.Random) -> list[int]:
        if self.shares is None:
            return list(range(len(self.keys)))
        groups: dict[float, list[int]] = {}
        for i, share in enumerate(self.shares):
            groups.setdefault(share, []).append(i)
        chosen: list[int] = []
        for share, idx in groups.items():
            chosen += idx if share >= 1.0 else rng.sample(idx, max(1, round(share * len(idx))))
        return sorted(chosen)

    def _batches(self) -> list[list[int]]:
        rng = random.Random(self.seed * 100_003 + self.epoch)
        order = self._epoch_images(rng)
        if self.shuffle:
            rng.shuffle(order)
        buckets: dict[tuple[int, int], list[int]] = {}
        for i in order:
            buckets.setdefault(self.keys[i], []).append(i)
        batches = [
            idx[j : j + self.batch_size]
            for idx in buckets.values()
            for j in range(0, len(idx), self.batch_size)
        ]
        if self.pool_remainders:
            full = [b for b in batches if len(b) == self.batch_size]
            rest = [i for b in batches if len(b) < self.batch_size for i in b]
            batches = full + [
                rest[j : j + self.batch_size] for j in range(0, len(rest), self.batch_size)
            ]
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


class ScaleCollate:
    """Resizes a batch to one scale: random within the model's range when training (jitter).

    Returns (images, labels), or with masked items (images, labels, masks (N, H, W), known (N,)):
    an item whose mask is None has an all-zero mask and ``known`` False. With ``crops``
    (masked items only), the scaled batch is then cut into squares (``inspector.crops``).
    """

    def __init__(
        self,
        pre: Preprocessing,
        *,
        scale: int | None,
        seed: int = 0,
        crops: CropSampler | None = None,
    ) -> None:
        self.pre = pre
        self.scale = scale
        self.crops = crops
        self.rng = random.Random(seed)
        self.choices: list[int] = []
        self.jitter_over(pre.scales)

    def jitter_over(self, scales: Sequence[int]) -> None:
        """Training batches take a random scale from these: every listed scale, and the steps
        of ``size_multiple`` between the smallest and the largest."""
        low, high, m = min(scales), max(scales), self.pre.size_multiple
        self.choices = sorted(set(range(low, high + 1, m)) | set(scales))

    def __call__(self, batch: Sequence[Item]) -> tuple[torch.Tensor, ...]:
        scale = self.scale if self.scale is not None else self.rng.choice(self.choices)
        first = batch[0][0]
        size = target_size(first.shape[0], first.shape[1], scale, self.pre)
        images = to_batch([item[0] for item in batch], size, self.pre)
        labels = torch.tensor([item[1] for item in batch], dtype=torch.long)
        if len(batch[0]) == 2:
            return images, labels
        masks = [item[2] if len(item) == 3 else None for item in batch]
        known = torch.tensor([m is not None for m in masks], dtype=torch.bool)
        resized = [resize(m, size) if m is not None else np.zeros(size, np.float32) for m in masks]
        stacked = torch.from_numpy(np.stack(resized))
        if self.crops is not None:
            return self.crops(images, labels, stacked, known, self.rng)
        return images, labels, stacked, known

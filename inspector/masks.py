"""Pixel masks of where the defects are, used to teach the network where to look.

A folder of masks mirrors the training folder: ``MASKS/<class>/<name>.png`` for
``DATA/<class>/<name>.<ext>``, white (non-zero) where the defect is. With them, training adds a
loss on the class activation map (the head applied at every location of the last feature
map): locations that cover part of a defect must show its class, the rest of the surface the
good class. Small defects on large parts (a 10-pixel blowhole on a 300-pixel tile) are found
far more reliably than from image labels alone, as in mixed-supervision surface-inspection
work. Masks are optional per image: a good part needs none (all of it is good), and a defect
image without one, or with an all-black one, is trained on its label only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from inspector.datasets import LabelledFolder
from inspector.errors import DatasetError, ImageDecodeError
from inspector.imaging import is_image_file, read_image
from inspector.preprocessing import resize

log = logging.getLogger(__name__)

IGNORE = -100  # torch's ignore_index for cross-entropy


def mask_paths(folder: LabelledFolder, mask_root: Path) -> list[Path | None]:
    """The mask file of each sample (any image extension, same stem), or None where absent."""
    if not mask_root.is_dir():
        raise DatasetError(f"{mask_root}: mask folder not found (expected MASKS/<class>/<name>)")
    found: list[Path | None] = []
    for sample in folder.samples:
        rel = sample.path.relative_to(folder.root).with_suffix("")
        parent = mask_root / rel.parent
        match = None
        if parent.is_dir():
            for candidate in sorted(parent.glob(f"{rel.name}.*")):
                if is_image_file(candidate.name):
                    match = candidate
                    break
        found.append(match)
    return found


def load_masks(
    folder: LabelledFolder,
    mask_root: Path,
    images: Sequence[np.ndarray],
    good_labels: Sequence[int],
) -> list[np.ndarray | None]:
    """Binary float32 masks at the size of each (already loaded) image.

    A good image without a mask file gets an empty mask; a defect image without one, or with
    an all-black one (a warning names them), gets None. Refuses a mask folder that matches no
    defect image, masks that cannot be read, and masks whose shape is not their image's.
    """
    paths = mask_paths(folder, mask_root)
    good = set(good_labels)
    masks: list[np.ndarray | None] = []
    problems: list[str] = []
    blank: list[Path] = []
    matched_defects = 0
    for sample, path, image in zip(folder.samples, paths, images, strict=True):
        h, w = image.shape[:2]
        if path is None:
            masks.append(np.zeros((h, w), np.float32) if sample.label in good else None)
            continue
        try:
            raw = read_image(path)
        except ImageDecodeError as exc:
            problems.append(str(exc))
            masks.append(None)
            continue
        grey = raw.max(axis=2) if raw.ndim == 3 else raw
        mh, mw = grey.shape[:2]
        if abs(mh * w - mw * h) > 0.02 * mh * w:
            # A mask of another shape belongs to another image: refused, not stretched.
            problems.append(
                f"{path}: mask is {mw}x{mh}, not the shape of its image {sample.path.name}"
            )
            masks.append(None)
            continue
        binary = (grey > 0.5).astype(np.float32)
        if sample.label not in good and not binary.any():
            # An all-black mask on a defect image would teach its every location as good,
            # against its own label: trained on the label only, as without a mask.
            blank.append(path)
            masks.append(None)
            continue
        masks.append((resize(binary, (h, w)) > 0.0).astype(np.float32))
        if sample.label not in good:
            matched_defects += 1
    if problems:
        listed = "\n  ".join(problems[:10])
        raise DatasetError(f"{mask_root}: {len(problems)} mask(s) cannot be used:\n  {listed}")
    defects = sum(1 for s in folder.samples if s.label not in good)
    if defects and matched_defects == 0:
        raise DatasetError(
            f"{mask_root}: no mask matches any of the {defects} defect image(s) under "
            f"{folder.root} (expected MASKS/<class>/<image name>.png)"
        )
    if blank:
        log.warning(
            "%d defect image(s) have an all-black mask, trained on their label only: %s",
            len(blank),
            ", ".join(str(p.relative_to(mask_root)) for p in blank[:10]),
        )
    log.info("masks: %d of %d defect images have one", matched_defects, defects)
    return masks


def location_targets(
    masks: torch.Tensor,
    known: torch.Tensor,
    labels: torch.Tensor,
    good_index: int | None,
    size: tuple[int, int],
) -> torch.Tensor:
    """The class each location of a (h, w) feature map should show, (N, h, w), long.

    A location is a defect of the image's class when any mask pixel under it is set (a small
    defect must not vanish when pooled), else the good class. Images without a known mask, and
    defect-free locations when there is no good class, are ignored.
    """
    # > 0: resizing a batch averages a 2-pixel defect down to a fraction, which still counts.
    pooled = F.adaptive_max_pool2d(masks.unsqueeze(1).float(), size).squeeze(1) > 0.0
    n = labels.shape[0]
    target = labels.view(n, 1, 1).expand(n, *size).clone()
    target[~pooled] = good_index if good_index is not None else IGNORE
    target[~known] = IGNORE
    return target


def location_loss(
    location_logits: torch.Tensor, target: torch.Tensor, good_index: int | None
) -> torch.Tensor:
    """Cross-entropy over locations, defect and good locations weighted equally.

    Defect locations are few (a blowhole covers one location of 50); an unweighted mean would
    let the network call every location good and still score well.
    """
    per_location = F.cross_entropy(
        location_logits.float(), target, ignore_index=IGNORE, reduction="none"
    )
    valid = target != IGNORE
    if good_index is None:
        return per_location[valid].mean() if valid.any() else per_location.sum() * 0.0
    parts = [
        per_location[valid & (target == good_index)],
        per_location[valid & (target != good_index)],
    ]
    present = [p.mean() for p in parts if p.numel()]
    return torch.stack(present).mean() if present else per_location.sum() * 0.0


class MaskSupervision:
    """The location loss of a training run: which class is good, and the loss's weight."""

    def __init__(self, good_index: int | None, weight: float = 1.0) -> None:
        self.good_index = good_index
        self.weight = weight

    def loss(
        self,
        location_logits: torch.Tensor,
        masks: torch.Tensor,
        known: torch.Tensor,
        labels: torch.Tensor,
    ) -> torch.Tensor:
        size = (int(location_logits.shape[-2]), int(location_logits.shape[-1]))
        target = location_targets(masks, known, labels, self.good_index, size)
        return self.weight * location_loss(location_logits, target, self.good_index)

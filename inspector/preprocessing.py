"""The transform from a decoded image to network inputs, stored with every model.

Training and serving both call these functions with the model's own ``Preprocessing``, so
they cannot disagree about sizes or normalisation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch
from numpy.typing import NDArray

from inspector.errors import ConfigurationError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SCALES = (224, 256, 288)
# How pixel values are normalised: "fixed" subtracts the stored mean and divides by the stored
# std (ImageNet's by default); "image" standardises each image by its own mean and std, so the
# network sees texture and shape, not how brightly the part was lit or exposed; "local" does
# that around every pixel (local contrast normalisation): a dark corner or a vignetted edge gets
# the contrast of the middle of the part, at the cost of brightness changes wider than the window.
NORMALISATIONS = ("fixed", "image", "local")
# "local": the window's side is this share of the scaled image's short side (odd, at least 3);
# the std is floored at a quarter of its mean over the image, and at LOCAL_MIN_STD (about 2.5
# grey levels of 255, above JPEG and sensor noise): a dark corner's texture is raised up to 4x.
LOCAL_WINDOW_SHARE = 0.25
LOCAL_STD_FLOOR = 0.25
LOCAL_MIN_STD = 0.01
# A flat image's std is close to zero; dividing by a floor keeps its sensor noise from being
# blown up to full scale (on the [0, 1] scale, about 5 grey levels of 255).
MIN_IMAGE_STD = 0.02

Image = NDArray[np.float32]  # (H, W, 3) RGB in [0, 1], as decode_image returns


@dataclass(frozen=True)
class Preprocessing:
    """How images become tensors for one model.

    ``scales`` are short-side lengths: each image runs at every scale and the class
    probabilities are fused. The long side keeps the aspect ratio (up to ``max_aspect``) and is
    rounded to ``size_multiple`` so that images of similar shape batch together. Images whose
    long side reaches ``tile_trigger`` are also cut into ``tile_size`` tiles (original pixels).
    ``normalise`` is one of NORMALISATIONS; versions stored without it used "fixed".
    ``flips`` runs every scale also on the image flipped left-right, top-bottom and both ways
    and averages the four logits (test-time augmentation: four times the network's work, for
    parts whose defects must not be missed); versions stored without it used no flips.
    """

    scales: tuple[int, ...] = DEFAULT_SCALES
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    max_aspect: float = 2.0
    size_multiple: int = 32
    tile_size: int = 576
    tile_overlap: float = 0.25
    tile_trigger: int = 1152
    normalise: str = "fixed"
    flips: bool = False

    def __post_init__(self) -> None:
        if self.normalise not in NORMALISATIONS:
            raise ConfigurationError(
                f"normalise must be one of {', '.join(NORMALISATIONS)}, got {self.normalise!r}"
            )
        if not self.scales or any(s < 32 for s in self.scales):
            raise ConfigurationError(f"scales must be one or more sizes >= 32, got {self.scales}")
        if self.max_aspect < 1.0:
            raise ConfigurationError(f"max_aspect must be >= 1, got {self.max_aspect}")
        if not 0.0 <= self.tile_overlap < 0.9:
            raise ConfigurationError(f"tile_overlap must be in [0, 0.9), got {self.tile_overlap}")
        if any(s <= 0 for s in self.std):
            raise ConfigurationError(f"std must be positive, got {self.std}")

    @classmethod
    def for_scales(
        cls, scales: Sequence[int], *, normalise: str = "fixed", flips: bool = False
    ) -> Preprocessing:
        """Defaults sized to the scales: tiles twice the largest, for frames 4x as large."""
        top = max(scales)
        return cls(
            scales=tuple(scales),
            tile_size=2 * top,
            tile_trigger=4 * top,
            normalise=normalise,
            flips=flips,
        )

    @property
    def views(self) -> int:
        """How many views of each image the network sees at each scale."""
        return len(FLIPS) if self.flips else 1

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["scales"] = list(self.scales)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Preprocessing:
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("scales", "mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])  # type: ignore[arg-type]
        return cls(**kwargs)  # type: ignore[arg-type]


def parse_scales(text: str) -> tuple[int, ...]:
    if not text.strip():
        raise ConfigurationError("at least one scale is needed")
    items = text.replace(" ", "").split(",")
    try:
        # An empty item ("224,,288") is a typo, not a scale left out: refused like a word.
        return tuple(int(s) for s in items)
    except ValueError:
        raise ConfigurationError(f"scales must be comma-separated integers, got {text!r}") from None


def target_size(height: int, width: int, scale: int, pre: Preprocessing) -> tuple[int, int]:
    """(H, W) at ``scale``: short side = scale, long side by aspect ratio, rounded and capped."""
    aspect = min(max(height, width) / max(1, min(height, width)), pre.max_aspect)
    m = pre.size_multiple
    long_side = max(scale, round(scale * aspect / m) * m)
    return (scale, long_side) if height <= width else (long_side, scale)


def _interpolation(source: tuple[int, ...], size: tuple[int, int]) -> int:
    shrinking = size[0] * size[1] < source[0] * source[1]
    return cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR


def resize(image: Image, size: tuple[int, int]) -> Image:
    h, w = size
    out = cv2.resize(image, (w, h), interpolation=_interpolation(image.shape, size))
    return np.ascontiguousarray(out, dtype=np.float32)


def _normalise_in_place(pixels: Image, pre: Preprocessing) -> None:
    """One (H, W, 3) image normalised in place, as ``pre.normalise`` says.

    Works on one image at a time, while it is still in the cache after resizing, and never
    broadcasts over the 3-long channel axis (numpy's slowest case): "fixed" subtracts and
    divides whole rows by the per-channel values tiled to the row's length; "image" takes the
    image's mean and std from OpenCV's per-channel statistics (one pass, in float64).
    """
    if pre.normalise == "local":
        _local_contrast_in_place(pixels)
    elif pre.normalise == "image":
        means, stds = (v.ravel() for v in cv2.meanStdDev(pixels))
        mean = float(means.mean())
        variance = float((stds**2 + means**2).mean()) - mean * mean
        pixels -= np.float32(mean)
        pixels *= np.float32(1.0 / max(np.sqrt(max(variance, 0.0)), MIN_IMAGE_STD))
    else:
        width = pixels.shape[1]
        rows = pixels.reshape(pixels.shape[0], width * 3)
        rows -= np.tile(np.asarray(pre.mean, np.float32), width)
        rows *= np.tile(1.0 / np.asarray(pre.std, np.float32), width).astype(np.float32)


def local_window(height: int, width: int) -> int:
    """The side of the square "local" normalisation averages over, for an image this size."""
    return max(3, int(min(height, width) * LOCAL_WINDOW_SHARE)) | 1


def _local_contrast_in_place(pixels: Image) -> None:
    """Subtract the mean of the square around each pixel and divide by its std.

    Mean and std are of the grey level (the channels' mean) over a square of ``local_window``
    pixels, mirrored at the borders (OpenCV's BORDER_REFLECT_101), so a defect at the edge of
    the image is compared with the surface beside it. The std is floored at its mean over the
    image times LOCAL_STD_FLOOR (and at LOCAL_MIN_STD): a dark corner's texture is raised to
    the contrast of the middle, up to a point, while a flat patch keeps its low contrast
    instead of having its sensor noise blown up to full scale. All channels get the same shift
    and scale, so colour differences are kept. The square is symmetric, so flipping commutes
    with it.
    """
    side = local_window(pixels.shape[0], pixels.shape[1])
    grey = cv2.transform(pixels, np.full((1, 3), 1.0 / 3.0, np.float32))
    mean = cv2.blur(grey, (side, side), borderType=cv2.BORDER_REFLECT_101)
    square = cv2.blur(grey * grey, (side, side), borderType=cv2.BORDER_REFLECT_101)
    std = np.sqrt(np.maximum(square - mean * mean, 0.0))
    floor = max(float(std.mean()) * LOCAL_STD_FLOOR, LOCAL_MIN_STD)
    np.maximum(std, floor, out=std)
    cv2.subtract(pixels, cv2.merge([mean, mean, mean]), dst=pixels)
    cv2.divide(pixels, cv2.merge([std, std, std]), dst=pixels)


def to_batch(images: Sequence[Image], size: tuple[int, int], pre: Preprocessing) -> torch.Tensor:
    """Images resized to ``size`` (H, W) and normalised -> (N, 3, H, W) float tensor.

    Each image is resized straight into its slot of one (N, H, W, 3) array and normalised
    there, so nothing is stacked or copied again; the tensor is a view of that array:
    channels-last in memory, the layout the model runs in (``inspector.devices``). About a
    sixth of the time of resizing, stacking and then normalising the whole batch (measured
    for "fixed" at 224/256/288 px on 200 px images).
    """
    h, w = size
    batch = np.empty((len(images), h, w, 3), np.float32)
    for out, given in zip(batch, images, strict=True):
        # OpenCV writes into ``dst`` only when the source's type matches it; otherwise it
        # would silently return a new array and leave the slot empty.
        image = np.ascontiguousarray(given, dtype=np.float32)
        if image.shape[:2] == (h, w):
            out[...] = image
        else:
            cv2.resize(image, (w, h), dst=out, interpolation=_interpolation(image.shape, size))
        _normalise_in_place(out, pre)
    return torch.from_numpy(batch).permute(0, 3, 1, 2)


def group_by_size(
    images: Sequence[Image], scale: int, pre: Preprocessing
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Batches of (indices, tensor) at ``scale``, one per distinct target size."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(target_size(img.shape[0], img.shape[1], scale, pre), []).append(i)
    for size, idx in groups.items():
        yield idx, to_batch([images[i] for i in idx], size, pre)


# The views with ``flips``: (N, C, H, W) dims to flip; () is the image as it is.
FLIPS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))


def with_views(batch: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """The batch followed by its flipped copies when ``pre.flips``: (views * N, C, H, W)."""
    if not pre.flips:
        return batch
    return torch.cat([batch if not dims else torch.flip(batch, dims) for dims in FLIPS])


def merge_views(logits: NDArray[np.float32], pre: Preprocessing) -> NDArray[np.float32]:
    """(views * N, K) logits -> (N, K): the mean over each image's views."""
    if pre.views == 1:
        return logits
    return logits.reshape(pre.views, -1, logits.shape[-1]).mean(axis=0)


def needs_tiles(image: Image, pre: Preprocessing) -> bool:
    return pre.tile_size > 0 and max(image.shape[:2]) >= pre.tile_trigger


def tile_boxes(
    height: int, width: int, tile: int, overlap: float
) -> list[tuple[int, int, int, int]]:
    """(y0, x0, y1, x1) boxes of at most ``tile`` pixels covering the image with overlap."""
    step = max(1, int(tile * (1.0 - overlap)))

    def starts(length: int) -> list[int]:
        if length <= tile:
            return [0]
        points = [*range(0, length - tile, step), length - tile]
        return sorted(set(points))

    return [
        (y, x, min(y + tile, height), min(x + tile, width))
        for y in starts(height)
        for x in starts(width)
    ]


def cut_tiles(
    image: Image, pre: Preprocessing
) -> tuple[list[Image], list[tuple[int, int, int, int]]]:
    boxes = tile_boxes(image.shape[0], image.shape[1], pre.tile_size, pre.tile_overlap)
    return [np.ascontiguousarray(image[y0:y1, x0:x1]) for y0, x0, y1, x1 in boxes], boxes

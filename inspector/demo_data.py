"""Synthetic textured-metal images (good parts and four defect kinds) for demos and tests,
written in the folder-per-class layout that torchvision's ImageFolder reads."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from inspector.errors import ConfigurationError

DEMO_CLASSES: tuple[str, ...] = ("good", "scratch", "spot", "crack", "patch")
GOOD_CLASSES: tuple[str, ...] = ("good",)

MIN_SIZE = 32
MAX_VAL_FRACTION = 0.9
IMAGE_FORMATS: tuple[str, ...] = ("png", "jpg")
JPEG_QUALITY = 95

# Lines are drawn on a mask this many times finer than the image, then area-averaged down,
# which anti-aliases them and lets their width be a fraction of a pixel.
_SUPERSAMPLE = 4
_SHIFT = 4  # fractional bits of the coordinates passed to cv2 drawing functions

FloatImage = np.ndarray


@dataclass(frozen=True)
class DemoDataset:
    """Where a generated demo dataset lies and what it holds.

    ``counts`` maps ``"<split>/<class>"`` (split ``train`` or ``val``) to the number of images
    written there; without a validation split every image counts as ``train``.
    """

    root: Path
    train_dir: Path
    val_dir: Path | None
    classes: tuple[str, ...]
    counts: dict[str, int]

    @property
    def total(self) -> int:
        """Number of images written, all splits and classes together."""
        return sum(self.counts.values())


# ---------------------------------------------------------------------------------------------
# Texture


def _unit(field: FloatImage) -> FloatImage:
    """``field`` shifted and scaled to mean 0 and standard deviation 1."""
    field = field - field.mean()
    std = float(field.std())
    return field / std if std > 1e-6 else field


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> FloatImage:
    """Low-frequency noise: a ``cells`` x ``cells`` random grid interpolated up to ``size``."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return _unit(cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC))


def _streaks(rng: np.random.Generator, size: int, angle_deg: float) -> FloatImage:
    """Brushing marks: noise that is long along one direction and fine across it, rotated."""
    big = math.ceil(size * 1.5)
    along = max(2, big // int(rng.integers(6, 16)))
    coarse = rng.standard_normal((big, along)).astype(np.float32)
    field = cv2.resize(coarse, (big, big), interpolation=cv2.INTER_LINEAR)
    centre = (big / 2.0, big / 2.0)
    matrix = np.asarray(cv2.getRotationMatrix2D(centre, angle_deg, 1.0), dtype=np.float64)
    matrix[:, 2] += (size - big) / 2.0
    rotated = cv2.warpAffine(
        field, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    return _unit(rotated)


def _base_texture(rng: np.random.Generator, size: int) -> FloatImage:
    """Metal surface in texture units (mean 0, std 1): blotchy, brushed and grainy in random mix."""
    low = _smooth_noise(rng, size, int(rng.integers(3, 7)))
    streak = _streaks(rng, size, float(rng.uniform(0.0, 180.0)))
    grain = rng.standard_normal((size, size)).astype(np.float32)
    grain = _unit(cv2.GaussianBlur(grain, (0, 0), sigmaX=max(0.5, size / 160.0)))
    weights = (rng.uniform(0.15, 0.45), rng.uniform(0.0, 1.0), rng.uniform(0.2, 0.7))
    return _unit(weights[0] * low + weights[1] * streak + weights[2] * grain)


# ---------------------------------------------------------------------------------------------
# Defects: each returns a float32 map in texture units that is added to the texture.


def _fine_canvas(size: int) -> np.ndarray:
    return np.zeros((size * _SUPERSAMPLE, size * _SUPERSAMPLE), dtype=np.uint8)


def _fine_points(points: np.ndarray) -> np.ndarray:
    """Image coordinates (float, N x 2) to fixed-point supersampled ones for cv2 drawing."""
    scaled = (points + 0.5) * _SUPERSAMPLE - 0.5
    return np.round(scaled * (1 << _SHIFT)).astype(np.int32)


def _coarse_mask(canvas: np.ndarray, size: int) -> FloatImage:
    """A supersampled uint8 mask area-averaged down to ``size``, in [0, 1]."""
    small = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) / 255.0


def _polyline_mask(paths: list[np.ndarray], size: int, width: float) -> FloatImage:
    """Anti-aliased mask of open polylines (image coordinates) of the given width in pixels."""
    canvas = _fine_canvas(size)
    thickness = max(1, round(width * _SUPERSAMPLE))
    for path in paths:
        pts = _fine_points(path).reshape(-1, 1, 2)
        cv2.polylines(canvas, [pts], False, 255, thickness, cv2.LINE_8, _SHIFT)
    return _coarse_mask(canvas, size)


def _random_centre(rng: np.random.Generator, size: int, margin: float) -> np.ndarray:
    return rng.uniform(margin * size, (1.0 - margin) * size, size=2)


def _scratch(rng: np.random.Generator, size: int) -> FloatImage:
    """One to three thin, smooth, long bright lines or gentle arcs, some with a dark shadow edge."""
    defect = np.zeros((size, size), dtype=np.float32)
    for _ in range(int(rng.choice([1, 1, 1, 2, 2, 3]))):
        centre = _random_centre(rng, size, 0.15)
        angle = rng.uniform(0.0, math.pi)
        direction = np.array([math.cos(angle), math.sin(angle)])
        normal = np.array([-direction[1], direction[0]])
        length = rng.uniform(0.6, 1.2) * size
        bend = rng.uniform(-0.12, 0.12) * length
        t = np.linspace(-0.5, 0.5, 24)[:, None]
        path = centre + t * length * direction + (1.0 - 4.0 * t**2) * bend * normal
        width = rng.uniform(0.025, 0.045) * size  # >= 1.6 px at 64 px
        groove = _polyline_mask([path], size, width)
        # The lit wall of the groove is bright; the other one may cast a thinner dark shadow.
        side = rng.choice([-1.0, 1.0]) * 0.8 * width * normal
        shadow = _polyline_mask([path + side], size, 0.6 * width)
        line = rng.uniform(3.0, 4.5) * groove - rng.uniform(0.0, 2.0) * shadow * (1.0 - groove)
        defect += cv2.GaussianBlur(line, (0, 0), sigmaX=size / 256.0)
    return defect


def _spot(rng: np.random.Generator, size: int) -> FloatImage:
    """One to four small round pits (or spatter) with soft edges; pits have a faint bright rim."""
    defect = np.zeros((size, size), dtype=np.float32)
    ys, xs = np.indices((size, size), dtype=np.float32)
    for _ in range(int(rng.integers(1, 5))):
        cx, cy = _random_centre(rng, size, 0.1)
        radius = rng.uniform(0.05, 0.08) * size
        dist = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2) / radius
        core = np.exp(-(dist**4))
        if rng.random() < 0.75:
            rim = np.exp(-(((dist - 1.15) / 0.3) ** 2))
            defect += -rng.uniform(3.2, 4.8) * core + rng.uniform(0.5, 1.2) * rim
        else:
            defect += rng.uniform(3.0, 4.5) * core
    return defect


def _walk(
    rng: np.random.Generator, start: np.ndarray, heading: float, steps: int, step: float
) -> np.ndarray:
    """A jagged random walk: the heading drifts and every step jitters around it."""
    drift = np.cumsum(rng.normal(0.0, 0.12, steps))
    angles = heading + drift + rng.normal(0.0, 0.6, steps)
    lengths = step * rng.uniform(0.6, 1.4, steps)
    moves = np.stack([np.cos(angles) * lengths, np.sin(angles) * lengths], axis=1)
    return np.vstack([start, start + np.cumsum(moves, axis=0)])


def _crack(rng: np.random.Generator, size: int) -> FloatImage:
    """A dark, thin, jagged polyline grown both ways from a random point, often branching."""
    step = rng.uniform(0.045, 0.07) * size
    length = rng.uniform(0.5, 0.9) * size
    steps = max(3, int(length / step / 2))
    start = _random_centre(rng, size, 0.2)
    heading = rng.uniform(0.0, 2 * math.pi)
    forward = _walk(rng, start, heading, steps, step)
    backward = _walk(rng, start, heading + math.pi, steps, step)
    paths = [np.vstack([backward[::-1], forward[1:]])]
    for _ in range(int(rng.choice([0, 1, 1, 2, 2]))):
        trunk = paths[0]
        fork = trunk[int(rng.integers(1, len(trunk) - 1))]
        side = heading + rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.2)
        paths.append(_walk(rng, fork, side, max(2, steps // 2), step * 0.8))
    width = rng.uniform(0.022, 0.032) * size
    mask = _polyline_mask(paths, size, width)
    return -rng.uniform(3.0, 4.5) * mask


def _patch(rng: np.random.Generator, size: int, texture: FloatImage) -> FloatImage:
    """A large irregular blotch where brightness and texture change (stain, corrosion, polish)."""
    ys, xs = np.indices((size, size), dtype=np.float32)
    cx, cy = _random_centre(rng, size, 0.15)
    radius = rng.uniform(0.2, 0.35) * size
    bump = 1.0 - np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2) / radius
    field = bump + 0.45 * _smooth_noise(rng, size, int(rng.integers(4, 8)))
    area = rng.uniform(0.12, 0.3)
    threshold = float(np.quantile(field, 1.0 - area))
    mask = (field > threshold).astype(np.float32)
    mask = cv2.GaussianBlur(mask, (0, 0), sigmaX=max(0.6, size / 96.0))
    sign = 1.0 if rng.random() < 0.5 else -1.0
    # Inside the patch the surface is either smoother (polished, stained) or rougher (corroded).
    inside: FloatImage
    if rng.random() < 0.5:
        inside = sign * rng.uniform(2.0, 3.0) + texture * rng.uniform(0.1, 0.35)
    else:
        rough = rng.standard_normal((size, size)).astype(np.float32)
        rough = _unit(cv2.GaussianBlur(rough, (0, 0), sigmaX=max(0.6, size / 128.0)))
        inside = sign * rng.uniform(1.5, 2.5) + rough * rng.uniform(1.5, 2.2)
    return (mask * (inside - texture)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Public API


def render_surface(kind: str, rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """One uint8 grey image of shape (size, size) showing a metal part of class ``kind``.

    Every image, good ones included, gets a random texture mix, brushing direction, brightness,
    contrast, illumination gradient and sensor noise, so no global statistic gives the class away.
    """
    if kind not in DEMO_CLASSES:
        raise ConfigurationError(f"unknown surface kind {kind!r}; expected one of {DEMO_CLASSES}")
    if size < MIN_SIZE:
        raise ConfigurationError(f"size must be at least {MIN_SIZE} pixels, got {size}")
    texture = _base_texture(rng, size)
    if kind == "scratch":
        surface = texture + _scratch(rng, size)
    elif kind == "spot":
        surface = texture + _spot(rng, size)
    elif kind == "crack":
        surface = texture + _crack(rng, size)
    elif kind == "patch":
        surface = texture + _patch(rng, size, texture)
    else:
        surface = texture

    contrast = rng.uniform(9.0, 24.0)  # grey levels per texture unit
    brightness = rng.uniform(70.0, 185.0)
    ys, xs = np.indices((size, size), dtype=np.float32) / size - 0.5
    tilt = rng.uniform(0.0, 2 * math.pi)
    gradient = (np.cos(tilt) * xs + np.sin(tilt) * ys) * rng.uniform(0.0, 40.0)
    noise = rng.standard_normal((size, size)).astype(np.float32) * rng.uniform(1.0, 5.0)
    image = brightness + contrast * surface + gradient + noise
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _encode(image: np.ndarray, image_format: str) -> bytes:
    if image_format == "jpg":
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    else:
        ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - cv2 only fails here on invalid input
        raise RuntimeError(f"cv2 could not encode a {image.shape} image as {image_format}")
    return buf.tobytes()


def generate_demo_dataset(
    out_dir: str | os.PathLike[str],
    *,
    per_class: int = 60,
    size: int = 128,
    seed: int = 0,
    val_fraction: float = 0.0,
    image_format: str = "png",
) -> DemoDataset:
    """Write ``per_class`` synthetic images of each class in ``DEMO_CLASSES`` under ``out_dir``.

    With ``val_fraction == 0`` the layout is ``out_dir/<class>/<class>_0000.png``; otherwise
    ``round(per_class * val_fraction)`` images per class (at least one) go to
    ``out_dir/val/<class>/`` and the rest to ``out_dir/train/<class>/``. File numbers run on
    across the split, so the names are unique. Image ``i`` of a class depends only on ``seed``,
    the class and ``i``: the same seed gives the same bytes (for given numpy and OpenCV
    versions).

    ``out_dir`` is created if needed. Files already there with the same names are overwritten;
    nothing else is removed, so write into an empty or dedicated folder.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ConfigurationError(f"per_class must be an integer of at least 1, got {per_class!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < MIN_SIZE:
        raise ConfigurationError(f"size must be an integer of at least {MIN_SIZE}, got {size!r}")
    if not 0.0 <= val_fraction <= MAX_VAL_FRACTION:
        raise ConfigurationError(
            f"val_fraction must be in [0, {MAX_VAL_FRACTION}], got {val_fraction!r}"
        )
    fmt = image_format.lower()
    if fmt not in IMAGE_FORMATS:
        raise ConfigurationError(
            f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}"
        )
    if seed < 0:
        raise ConfigurationError(f"seed must be non-negative, got {seed}")

    n_val = max(1, round(per_class * val_fraction)) if val_fraction > 0 else 0
    n_train = per_class - n_val
    if n_train < 1:
        raise ConfigurationError(
            f"per_class={per_class} leaves no training image with val_fraction={val_fraction}"
        )

    root = Path(out_dir)
    train_dir = root / "train" if n_val else root
    val_dir = root / "val" if n_val else None
    counts: dict[str, int] = {}
    for class_index, kind in enumerate(DEMO_CLASSES):
        splits = [("train", train_dir, range(n_train))]
        if val_dir is not None:
            splits.append(("val", val_dir, range(n_train, per_class)))
        for split, split_dir, indices in splits:
            class_dir = split_dir / kind
            class_dir.mkdir(parents=True, exist_ok=True)
            for i in indices:
                rng = np.random.default_rng([seed, class_index, i])
                image = render_surface(kind, rng, size)
                (class_dir / f"{kind}_{i:04d}.{fmt}").write_bytes(_encode(image, fmt))
            counts[f"{split}/{kind}"] = len(indices)
    return DemoDataset(
        root=root, train_dir=train_dir, val_dir=val_dir, classes=DEMO_CLASSES, counts=counts
    )

"""ImageNet initialisation from torchvision weight files already on this machine.

Nothing is downloaded: factory networks are closed. A missing file is an error that names
the file and the folders it is looked for in.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torchvision.models import get_model_weights

from inspector.errors import ConfigurationError, WeightsNotFoundError
from inspector.model import VGGClassifier

log = logging.getLogger(__name__)


def imagenet_weights_file(arch: str) -> tuple[str, str]:
    """(file name, url) of torchvision's ImageNet weights for ``arch``."""
    weights = get_model_weights(arch).IMAGENET1K_V1
    url = str(weights.url)
    return url.rsplit("/", 1)[-1], url


def search_dirs(weights_dir: Path) -> list[Path]:
    return [weights_dir, Path(torch.hub.get_dir()) / "checkpoints"]


def find_imagenet_weights(arch: str, weights_dir: Path) -> Path:
    filename, url = imagenet_weights_file(arch)
    dirs = search_dirs(weights_dir)
    for folder in dirs:
        candidate = folder / filename
        if candidate.is_file():
            return candidate
    where = " or ".join(str(d) for d in dirs)
    raise WeightsNotFoundError(
        f"ImageNet weights for {arch} are not on this machine: place {filename} "
        f"(torchvision's file, from {url}) in {where}, "
        "set INSPECTOR_WEIGHTS_DIR to the folder that holds it, "
        "or train with --init scratch (or --init NAME[:VERSION] from the model store)."
    )


def _check_hash_prefix(path: Path) -> None:
    # torchvision names its files <arch>-<first 8 hex digits of the sha256>.pth
    stem = path.stem
    if "-" not in stem:
        return
    expected = stem.rsplit("-", 1)[1]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(expected):
        raise WeightsNotFoundError(
            f"{path} fails its hash check (sha256 {digest[:8]}…, expected {expected}…): "
            "the file is damaged or not torchvision's; replace it."
        )


def load_imagenet_features(model: VGGClassifier, weights_dir: Path) -> Path:
    """Copy ImageNet conv weights into ``model.features``; the head stays fresh."""
    if model.spec.width != 1.0:
        raise ConfigurationError(
            f"ImageNet weights fit only full-width models; this one has width {model.spec.width}. "
            "Use --init scratch for compact models."
        )
    path = find_imagenet_weights(model.spec.arch, weights_dir)
    _check_hash_prefix(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    features = {
        k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")
    }
    model.features.load_state_dict(features, strict=True)
    log.info("initialised %s features from %s", model.spec.arch, path)
    return path

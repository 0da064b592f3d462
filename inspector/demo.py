"""The demo a new user gets on first run: synthetic data and a compact model trained on it."""

from __future__ import annotations

import logging
from pathlib import Path

from inspector.settings import Settings
from inspector.store import ModelStore, ModelVersion

log = logging.getLogger(__name__)

DEMO_MODEL = "demo"


def demo_data_dir(settings: Settings) -> Path:
    return settings.data_dir / "demo"


def ensure_demo_data(settings: Settings) -> Path:
    """``<data_dir>/demo/{train,val}``, generated once (a few seconds)."""
    from inspector.demo_data import generate_demo_dataset

    root = demo_data_dir(settings)
    if not (root / "train").is_dir():
        generate_demo_dataset(root, per_class=120, size=128, seed=0, val_fraction=0.25)
        log.info("generated demo data in %s", root)
    return root


def train_demo_model(
    settings: Settings, store: ModelStore, *, progress: bool = True
) -> ModelVersion:
    """A compact VGG-11 (a quarter width) trained on the demo data: a few minutes on a CPU."""
    from inspector.training import TrainConfig, fit

    root = ensure_demo_data(settings)
    config = TrainConfig(
        arch="vgg11_bn",
        width=0.25,
        epochs=20,
        batch_size=32,
        lr=3e-3,
        init="scratch",
        scales=(96, 128),
        pool="max",
        patience=20,
        device=settings.device,
        max_image_pixels=settings.max_image_pixels,
        progress=progress,
    )
    return fit(
        root / "train",
        name=DEMO_MODEL,
        store=store,
        config=config,
        val_dir=root / "val",
        weights_dir=settings.weights_dir,
    )


def ensure_model(settings: Settings, store: ModelStore, *, progress: bool = True) -> str | None:
    """Make sure the store can serve something: when it holds no model at all, train the demo
    model. Returns the name of the model trained, or None when the store already had one."""
    if store.names():
        return None
    train_demo_model(settings, store, progress=progress)
    return DEMO_MODEL

"""Shared fixtures: a small generated dataset and a compact model trained on it once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pytest

from inspector.demo_data import generate_demo_dataset
from inspector.store import ModelStore, ModelVersion
from inspector.training import TrainConfig, fit

if TYPE_CHECKING:
    from sqlalchemy import Engine

# A compact network and small inputs: the whole suite runs on two CPU cores.
TINY = {"arch": "vgg11_bn", "width": 0.125, "scales": (64, 96), "pool": "max"}


def tiny_config(**overrides: object) -> TrainConfig:
    values: dict[str, object] = {
        **TINY,
        "epochs": 20,
        "batch_size": 16,
        "lr": 3e-3,
        "init": "scratch",
        "patience": 20,
        "progress": False,
        "device": "cpu",
    }
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


def fit_demo(
    store_dir: Path, demo_dirs: tuple[Path, Path], name: str, **overrides: object
) -> ModelVersion:
    """A tiny fit on the demo data (``tiny_config`` with ``overrides``), stored in store_dir."""
    train_dir, val_dir = demo_dirs
    return fit(
        train_dir,
        val_dir=val_dir,
        name=name,
        store=ModelStore(store_dir),
        weights_dir=store_dir,
        config=tiny_config(**overrides),
    )


@pytest.fixture(scope="session")
def demo_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("demo")
    ds = generate_demo_dataset(root, per_class=80, size=64, seed=1, val_fraction=0.25)
    assert ds.val_dir is not None
    return ds.train_dir, ds.val_dir


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, demo_dirs: tuple[Path, Path]) -> ModelVersion:
    """One compact model, trained once for the whole session on the demo data."""
    train_dir, val_dir = demo_dirs
    store = ModelStore(tmp_path_factory.mktemp("store"))
    return fit(
        train_dir,
        val_dir=val_dir,
        name="demo",
        store=store,
        config=tiny_config(),
        weights_dir=tmp_path_factory.mktemp("weights"),
    )


@pytest.fixture
def store_of(trained: ModelVersion) -> ModelStore:
    return ModelStore(trained.path.parent.parent)


def write_image(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


def noise_image(
    rng: np.random.Generator, h: int = 48, w: int = 48, channels: int = 3
) -> np.ndarray:
    shape = (h, w) if channels == 1 else (h, w, channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty database: a new SQLite file, or a new schema on the PostgreSQL server."""
    # Imported here, not at the top: the model tests (tests/test_cuda.py on a GPU machine
    # without the service's packages) need no database.
    from inspector.db.engine import make_engine
    from inspector.db.testing import (
        DatabaseUnavailableError,
        postgres_test_url,
        scratch_postgres_engine,
    )

    with ExitStack() as stack:
        if request.param == "sqlite":
            engine = make_engine(f"sqlite:///{tmp_path / 'db' / 'inspector.db'}")
            stack.callback(engine.dispose)
        else:
            try:
                engine = stack.enter_context(scratch_postgres_engine(postgres_test_url()))
            except DatabaseUnavailableError as exc:
                pytest.skip(str(exc))
        yield engine


@pytest.fixture
def engine(empty_engine: Engine) -> Engine:
    """A migrated database on each backend."""
    from inspector.db.engine import upgrade

    upgrade(empty_engine)
    return empty_engine

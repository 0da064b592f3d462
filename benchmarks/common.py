"""What the benchmark scripts share: a fresh network in a store, model arguments, results.

The scripts run as ``python benchmarks/NAME.py``, so this folder is on ``sys.path``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inspector.calibration import Calibration
from inspector.model import build_model
from inspector.preprocessing import Preprocessing
from inspector.store import ModelMetadata, ModelStore

ROOT = Path(__file__).resolve().parent.parent
# The shared datasets beside the checkout; INSPECTOR_DATASETS points elsewhere (on the GPU
# machine, where ../shared does not travel: benchmarks/device_run.sh).
DATASETS = Path(os.environ.get("INSPECTOR_DATASETS") or ROOT.parent / "shared" / "datasets")
RESULTS = Path(os.environ.get("INSPECTOR_RESULTS") or ROOT / "benchmarks" / "results")


def register_fresh_model(
    store_dir: Path,
    *,
    arch: str,
    width: float,
    scales: Sequence[int],
    classes: Sequence[str] = ("a", "b", "c", "d", "e", "f"),
    name: str = "bench",
) -> ModelStore:
    """A store holding an untrained network of the benchmarked shape (speed does not depend on
    the weights); the first class is the good one."""
    store = ModelStore(store_dir)
    model = build_model(arch=arch, num_classes=len(classes), width=width)
    meta = ModelMetadata(
        name=name,
        version=0,
        spec=model.spec,
        classes=tuple(classes),
        defect_classes=tuple(classes[1:]),
        preprocessing=Preprocessing.for_scales(tuple(scales)),
        calibration=Calibration(),
    )
    store.register(model, meta)
    return store


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--arch, --width, --scales, --batch-size, --device: the network and how it is run."""
    parser.add_argument("--arch", default="vgg11_bn")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--scales", default="224,256,288")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")


def save_result(filename: str, result: dict[str, Any]) -> Path:
    """Print ``result`` as one JSON line and keep it in benchmarks/results/."""
    print(json.dumps(result), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / filename
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path

"""The CUDA path: training in bfloat16 and in float16 with a gradient scaler, pinned memory and
loader workers, inference on the GPU against the CPU, and a real out-of-memory error split
into smaller batches.

Skipped on machines without a CUDA device (CI has none); `benchmarks/device_run.sh` runs them
on a GPU machine. They need no database or service package.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from inspector.classify import ResultWriter, classify_paths
from inspector.imaging import read_image
from inspector.inference import Classifier, _forward
from inspector.model import build_model
from inspector.store import ModelStore, ModelVersion
from inspector.training import fit
from tests.conftest import tiny_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]


def train_on_cuda(train_dir: Path, val_dir: Path, root: Path) -> ModelVersion:
    # Two loader workers and pinned memory: what training on CUDA uses by default (4 workers).
    config = tiny_config(device="cuda", workers=2, average_epochs=1.0)
    return fit(
        train_dir,
        val_dir=val_dir,
        name="gpu",
        store=ModelStore(root / "store"),
        config=config,
        weights_dir=root / "weights",
    )


def val_accuracy(mv: ModelVersion) -> float:
    return float(mv.metadata.metrics["accuracy"])


def losses(mv: ModelVersion) -> list[float]:
    return [row["train_loss"] for row in json.loads((mv.path / "history.json").read_text())]


def test_training_on_cuda_learns_and_serves_the_same_verdicts_on_the_cpu(
    demo_dirs, tmp_path
) -> None:
    train_dir, val_dir = demo_dirs
    mv = train_on_cuda(train_dir, val_dir, tmp_path)
    assert mv.metadata.training["device"] == "cuda"
    assert all(math.isfinite(loss) for loss in losses(mv))
    assert val_accuracy(mv) >= 0.8  # four classes: chance is 0.25

    store = ModelStore(tmp_path / "store")
    on_gpu = Classifier.from_store(store, mv.ref, device="cuda")
    on_cpu = Classifier.from_store(store, mv.ref, device="cpu")
    assert next(on_gpu.model.parameters()).is_cuda
    paths = sorted(val_dir.rglob("*.png"))[:24]
    gpu_csv, cpu_csv = tmp_path / "gpu.csv", tmp_path / "cpu.csv"
    for classifier, out in ((on_gpu, gpu_csv), (on_cpu, cpu_csv)):
        meta = classifier.meta
        with ResultWriter(out, meta.classes, meta.preprocessing.scales) as writer:
            summary = classify_paths(classifier, paths, writer, max_pixels=10**7, workers=2)
        assert (summary.classified, summary.errors) == (len(paths), 0)
    gpu_probs = on_gpu.logits([read_image(p) for p in paths])
    cpu_probs = on_cpu.logits([read_image(p) for p in paths])
    # bfloat16 on the GPU against bfloat16 or float32 on the CPU: close, not equal.
    assert np.abs(_softmax(gpu_probs) - _softmax(cpu_probs)).max() < 0.05
    gpu_rows = gpu_csv.read_text().splitlines()
    cpu_rows = cpu_csv.read_text().splitlines()
    assert gpu_rows[0] == cpu_rows[0] and len(gpu_rows) == len(cpu_rows) == len(paths) + 1


def test_float16_training_steps_through_a_gradient_scaler(demo_dirs, tmp_path, monkeypatch):
    """GPUs without bfloat16 (before Ampere) train in float16, whose small gradients need the
    scaler; the H100/H200 has bfloat16, so the float16 path is forced here."""
    steps: list[float] = []
    real = torch.amp.GradScaler

    class CountingScaler(real):  # type: ignore[misc, valid-type]
        def step(self, optimizer, *args, **kwargs):  # type: ignore[no-untyped-def]
            steps.append(float(self.get_scale()))
            return super().step(optimizer, *args, **kwargs)

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.amp, "GradScaler", CountingScaler)
    train_dir, val_dir = demo_dirs
    mv = train_on_cuda(train_dir, val_dir, tmp_path)
    assert steps and all(s > 0 for s in steps)
    assert all(math.isfinite(loss) for loss in losses(mv))
    assert val_accuracy(mv) >= 0.8


def test_a_real_out_of_memory_error_is_split_into_batches_that_fit(caplog) -> None:
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = build_model(arch="vgg11_bn", num_classes=3, width=1.0).eval().to(device)
    batch = torch.rand(48, 3, 512, 512)
    with torch.inference_mode():
        expected = np.concatenate(
            [_forward(model, batch[i : i + 4], device) for i in range(0, 48, 4)]
        )
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(device).total_memory
        # 48 images at 512 px: the first layer's output alone is 3.2 GB in float32.
        torch.cuda.set_per_process_memory_fraction(min(1.0, 2.0 * 2**30 / total), device)
        try:
            with caplog.at_level(logging.WARNING, logger="inspector.inference"):
                got = _forward(model, batch, device)
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
            torch.cuda.empty_cache()
    assert "retrying in halves" in caplog.text
    # TF32 convolutions pick their algorithm by batch size: close, not equal.
    np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-2 * float(np.abs(expected).max()))


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)

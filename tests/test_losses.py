from pathlib import Path

import pytest
import torch
from torch import nn

from inspector import training
from inspector.errors import ConfigurationError
from inspector.losses import FocalLoss
from tests.conftest import fit_demo, tiny_config


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 5, generator=gen) * 3
    labels = torch.randint(0, 5, (16,), generator=gen)
    weight = torch.rand(5, generator=gen) + 0.5
    return logits, labels, weight


def test_gamma_zero_is_cross_entropy_with_weights_and_smoothing(batch) -> None:
    logits, labels, weight = batch
    for w in (None, weight):
        for smoothing in (0.0, 0.1):
            expected = nn.CrossEntropyLoss(weight=w, label_smoothing=smoothing)(logits, labels)
            got = FocalLoss(0.0, w, smoothing)(logits, labels)
            assert float(got) == pytest.approx(float(expected), rel=1e-6)


def test_each_image_is_scaled_by_its_distance_from_the_label() -> None:
    labels = torch.tensor([0, 0])
    logits = torch.tensor([[4.0, 0.0], [0.0, 0.0]])  # one confident and right, one at 50/50
    ce = nn.functional.cross_entropy(logits, labels, reduction="none")
    p = torch.softmax(logits, 1)[:, 0]
    focal = FocalLoss(2.0)(logits, labels)
    assert float(focal) == pytest.approx(float(((1 - p) ** 2 * ce).mean()), rel=1e-6)
    # The confident image keeps (1 - 0.982)^2 of its cross-entropy, the uncertain one a quarter.
    easy = FocalLoss(2.0)(logits[:1], labels[:1]) / ce[0]
    hard = FocalLoss(2.0)(logits[1:], labels[1:]) / ce[1]
    assert float(hard) == pytest.approx(0.25)
    assert float(easy) < 1e-3


def test_weighted_mean_divides_by_the_weights_of_the_labels(batch) -> None:
    logits, labels, weight = batch
    per_image = nn.functional.cross_entropy(logits, labels, weight=weight, reduction="none")
    p = torch.softmax(logits, 1).gather(1, labels[:, None]).squeeze(1)
    expected = ((1 - p) ** 1.5 * per_image).sum() / weight[labels].sum()
    assert float(FocalLoss(1.5, weight)(logits, labels)) == pytest.approx(float(expected))


def test_the_gradient_flows_and_a_negative_gamma_is_refused(batch) -> None:
    logits, labels, _ = batch
    logits = logits.clone().requires_grad_(True)
    FocalLoss(2.0)(logits, labels).backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())
    assert float(logits.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(-1.0)
    with pytest.raises(ConfigurationError, match="focal gamma"):
        tiny_config(focal_gamma=-0.5)


def test_training_uses_it_when_asked(tmp_path: Path, demo_dirs, monkeypatch) -> None:
    calls: list[float] = []

    class Counting(FocalLoss):
        def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            calls.append(self.gamma)
            return super().forward(logits, labels)

    monkeypatch.setattr(training, "FocalLoss", Counting)
    for gamma in (0.0, 2.0):
        mv = fit_demo(tmp_path, demo_dirs, "focal", epochs=1, focal_gamma=gamma)
        assert mv.metadata.training["config"]["focal_gamma"] == gamma
    # Cross-entropy for gamma 0; one focal loss per training batch (300 images, 16 a batch).
    assert calls == [2.0] * 19

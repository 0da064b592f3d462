"""Multi-scale prediction with a stored, calibrated model."""

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from inspector.imaging import read_image
from inspector.inference import Classifier, _forward
from inspector.model import build_model
from inspector.store import ModelStore, ModelVersion


@pytest.fixture
def classifier(trained: ModelVersion) -> Classifier:
    return Classifier.from_store(ModelStore(trained.path.parent.parent), trained.ref, device="cpu")


def test_predictions_carry_fused_and_per_scale_probabilities(classifier, demo_dirs) -> None:
    _, val_dir = demo_dirs
    images = [read_image(p) for p in sorted((val_dir / "scratch").iterdir())[:4]]
    preds = classifier.predict(images)
    assert len(preds) == 4
    for p in preds:
        assert set(p.probabilities) == set(classifier.meta.classes)
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert set(p.scale_probabilities) == {64, 96}
        fused = np.mean([list(s.values()) for s in p.scale_probabilities.values()], axis=0)
        assert np.allclose(fused, list(p.probabilities.values()), atol=1e-6)
        assert p.confidence == max(p.probabilities.values())
        assert p.defect_score == pytest.approx(1.0 - p.probabilities["good"], abs=1e-6)
        assert p.is_defect == (p.defect_score >= classifier.meta.calibration.defect_threshold)
        assert p.flagged >= p.is_defect
    assert sum(p.label == "scratch" for p in preds) >= 3


def test_batching_does_not_change_results(classifier, demo_dirs) -> None:
    _, val_dir = demo_dirs
    paths = sorted(val_dir.rglob("*.png"))[:10]
    images = [read_image(p) for p in paths]
    together = classifier.logits(images)
    classifier.batch_size = 3
    apart = classifier.logits(images)
    assert np.allclose(together, apart, atol=1e-4)


def test_large_images_are_classified_by_tiles_and_the_worst_tile_decides(
    classifier, monkeypatch
) -> None:
    pre = classifier.meta.preprocessing
    assert (pre.tile_size, pre.tile_trigger) == (192, 384)  # derived from the model's scales

    def fake_logits(images):
        # "Defect" evidence is the brightest pixel: only the tile holding the spot sees it.
        k = len(classifier.meta.classes)
        out = np.zeros((len(classifier.meta.preprocessing.scales), len(images), k), np.float32)
        good = classifier.meta.classes.index("good")
        spot = classifier.meta.classes.index("spot")
        for n, img in enumerate(images):
            out[:, n, good] = 5.0
            out[:, n, spot] = 10.0 * float(img.max())
        return out

    monkeypatch.setattr(classifier, "logits", fake_logits)
    frame = np.zeros((400, 600, 3), np.float32)
    frame[300:310, 500:510] = 1.0
    whole = classifier.predict([frame * 0.1], tiles=True)[0]  # dim spot: good everywhere
    assert not whole.is_defect and whole.tiles > 1
    pred = classifier.predict([frame], tiles=True)[0]
    assert pred.is_defect and pred.label == "spot"
    y0, x0, y1, x1 = pred.worst_tile
    assert y0 <= 300 and y1 >= 310 and x0 <= 500 and x1 >= 510
    small = classifier.predict([frame[:100, :100]], tiles=True)[0]
    assert small.tiles == 0 and small.worst_tile is None


def test_class_activation_maps_have_one_map_per_class(classifier, demo_dirs) -> None:
    _, val_dir = demo_dirs
    image = read_image(sorted((val_dir / "crack").iterdir())[0])
    cams = classifier.class_activation_maps(image)
    assert cams.shape[0] == len(classifier.meta.classes)
    assert cams.ndim == 3 and np.isfinite(cams).all()


def test_flipped_views_average_the_logits_of_the_flipped_images(classifier, demo_dirs) -> None:
    _, val_dir = demo_dirs
    images = [read_image(p) for p in sorted(val_dir.rglob("*.png"))[:5]]
    classifier.amp = False  # float32: the comparison below is exact up to rounding
    plain = classifier.meta
    flipped = [
        np.ascontiguousarray(f(im))
        for f in (lambda a: a, np.fliplr, np.flipud, lambda a: a[::-1, ::-1])
        for im in images
    ]
    by_hand = classifier.logits(flipped).reshape(len(plain.preprocessing.scales), 4, 5, -1)
    classifier.meta = replace(plain, preprocessing=replace(plain.preprocessing, flips=True))
    with_views = classifier.logits(images)
    assert with_views.shape == (len(plain.preprocessing.scales), 5, len(plain.classes))
    assert np.allclose(with_views, by_hand.mean(axis=1), atol=1e-4)
    assert not np.allclose(with_views, by_hand[:, 0], atol=1e-3), "the views changed nothing"


def test_a_batch_that_runs_out_of_gpu_memory_is_split_until_it_fits(caplog) -> None:
    """The out-of-memory retry itself, on any machine: a network that 'runs out of memory' on
    batches above 3 images gives the logits it gives a batch at a time, and a single image
    that still does not fit raises (tests/test_cuda.py makes a real GPU run out)."""
    torch.manual_seed(0)
    net = build_model(arch="vgg11_bn", num_classes=3, width=0.125).eval()
    sizes: list[int] = []

    class Limited(torch.nn.Module):
        def __init__(self, limit: int) -> None:
            super().__init__()
            self.limit = limit

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            sizes.append(int(x.shape[0]))
            if x.shape[0] > self.limit:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return net(x)

    batch = torch.rand(10, 3, 48, 64)
    cpu = torch.device("cpu")
    with torch.inference_mode():
        expected = np.concatenate([net(batch[i : i + 1]).numpy() for i in range(10)])
        with caplog.at_level(logging.WARNING, logger="inspector.inference"):
            got = _forward(Limited(3), batch, cpu)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert sizes[0] == 10 and max(s for s in sizes if s <= 3) <= 3
    assert sum(s for s in sizes if s <= 3) == 10  # every image ran exactly once in the end
    assert "retrying in halves" in caplog.text
    with pytest.raises(torch.cuda.OutOfMemoryError), torch.inference_mode():
        _forward(Limited(0), batch[:2], cpu)

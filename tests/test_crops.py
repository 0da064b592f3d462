import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from inspector.cli import main
from inspector.crops import CropSampler
from inspector.datasets import ScaleCollate
from inspector.errors import ConfigurationError
from inspector.preprocessing import Preprocessing
from inspector.store import ModelStore
from inspector.training import fit
from tests.conftest import tiny_config
from tests.test_masks import spot_dataset

GOOD, DEFECT = 0, 1


def coordinate_batch(n: int, h: int, w: int) -> torch.Tensor:
    """Images whose channels hold each pixel's row and column: a crop tells where it was cut."""
    rows = torch.arange(h, dtype=torch.float32).view(h, 1).expand(h, w)
    cols = torch.arange(w, dtype=torch.float32).view(1, w).expand(h, w)
    one = torch.stack([rows, cols, rows + cols])
    return one.unsqueeze(0).repeat(n, 1, 1, 1).contiguous(memory_format=torch.channels_last)


def test_crops_follow_their_masks_and_relabel_what_misses_the_defect():
    n, h, w, c = 4, 64, 96, 32
    masks = torch.zeros(n, h, w)
    masks[0, 60:62, 90:92] = 1.0  # a tiny defect in the far corner
    masks[1, 2:4, 2:4] = 1.0
    labels = torch.tensor([DEFECT, DEFECT, GOOD, DEFECT])
    known = torch.tensor([True, True, True, False])  # the last defect has no mask
    sampler = CropSampler(c, good_index=GOOD, on_defect=1.0)
    images, out_labels, out_masks, out_known = sampler(
        coordinate_batch(n, h, w), labels, masks, known, random.Random(0)
    )
    assert images.shape == (n, 3, c, c) and out_masks.shape == (n, c, c)
    for i in range(n):
        top, left = int(images[i, 0, 0, 0]), int(images[i, 1, 0, 0])
        assert 0 <= top <= h - c and 0 <= left <= w - c
        torch.testing.assert_close(out_masks[i], masks[i, top : top + c, left : left + c])
    # Aimed at the defect: each defect crop holds some of it, and keeps its label.
    assert out_masks[0].sum() > 0 and out_masks[1].sum() > 0
    assert out_labels.tolist() == [DEFECT, DEFECT, GOOD, DEFECT]  # no mask: label kept
    assert out_known.tolist() == known.tolist()


def test_a_crop_that_misses_the_defect_is_taught_as_good():
    n, h, w = 64, 64, 64
    masks = torch.zeros(n, h, w)
    masks[:, 0:2, 0:2] = 1.0  # a tiny defect in a corner: a random crop rarely holds it
    labels = torch.full((n,), DEFECT)
    known = torch.ones(n, dtype=torch.bool)
    never_aimed = CropSampler(32, good_index=GOOD, on_defect=0.0)
    _, out_labels, out_masks, _ = never_aimed(
        coordinate_batch(n, h, w), labels, masks, known, random.Random(1)
    )
    holds = out_masks.flatten(1).amax(1) > 0
    assert (out_labels[holds] == DEFECT).all() and (out_labels[~holds] == GOOD).all()
    assert int((~holds).sum()) > n // 2
    # Without a good class there is nothing to relabel to: every crop is cut on the defect.
    no_good = CropSampler(32, good_index=None, on_defect=0.0)
    _, kept, cut, _ = no_good(coordinate_batch(n, h, w), labels, masks, known, random.Random(1))
    assert (cut.flatten(1).amax(1) > 0).all() and (kept == DEFECT).all()


def test_half_the_defects_aimed_on_average():
    n, h, w = 400, 64, 64
    masks = torch.zeros(n, h, w)
    masks[:, 0, 0] = 1.0
    labels = torch.full((n,), DEFECT)
    sampler = CropSampler(32, good_index=GOOD, on_defect=0.5)
    _, out_labels, _, _ = sampler(
        coordinate_batch(n, h, w), labels, masks, torch.ones(n, dtype=torch.bool), random.Random(2)
    )
    # Aimed crops always hold the pixel; a uniform crop holds it 1 time in 33*33.
    assert 0.4 < float((out_labels == DEFECT).float().mean()) < 0.6


def test_collate_cuts_the_scaled_batch():
    pre = Preprocessing.for_scales([64])
    mask = np.zeros((128, 192), np.float32)
    mask[100:110, 150:160] = 1.0
    items = [(np.random.default_rng(0).random((128, 192, 3)).astype(np.float32), DEFECT, mask)]
    collate = ScaleCollate(pre, scale=64, crops=CropSampler(48, GOOD, on_defect=1.0))
    images, labels, masks, known = collate(items)
    assert images.shape == (1, 3, 48, 48) and masks.shape == (1, 48, 48)
    assert masks.sum() > 0 and labels.tolist() == [DEFECT] and known.tolist() == [True]


def test_crop_choices_are_checked_up_front():
    with pytest.raises(ConfigurationError, match="needs defect masks"):
        tiny_config(crop=48)
    with pytest.raises(ConfigurationError, match="larger than the smallest scale"):
        tiny_config(crop=80, masks="masks")
    with pytest.raises(ConfigurationError, match="crop_epochs must be between"):
        tiny_config(crop=48, masks="masks", crop_epochs=21)
    with pytest.raises(ConfigurationError, match="at least 32"):
        tiny_config(crop=16, masks="masks")
    with pytest.raises(ConfigurationError, match="on_defect must be in"):
        tiny_config(crop=48, masks="masks", crop_on_defect=1.5)
    with pytest.raises(ConfigurationError, match="larger than the scaled image"):
        CropSampler(64, GOOD)(
            coordinate_batch(1, 48, 96),
            torch.tensor([GOOD]),
            torch.zeros(1, 48, 96),
            torch.tensor([True]),
            random.Random(0),
        )


def test_training_on_crops_serves_whole_images(tmp_path: Path, monkeypatch):
    cuts: list[int] = []  # batches cut, counted at the end of each epoch
    calls = [0]
    cut = CropSampler.__call__

    def counted(self: CropSampler, *args: object) -> object:
        calls[0] += 1
        return cut(self, *args)

    monkeypatch.setattr(CropSampler, "__call__", counted)
    root = spot_dataset(tmp_path / "spots", per_class=24, size=96)
    store = ModelStore(tmp_path / "store")
    config = tiny_config(
        epochs=6,
        scales=(64, 80),
        masks=str(root / "masks"),
        good_classes=("good",),
        crop=48,
        crop_epochs=4,
    )
    mv = fit(
        root / "data",
        name="spots",
        store=store,
        config=config,
        weights_dir=tmp_path,
        on_epoch=lambda row: cuts.append(calls[0]),
    )
    per_epoch = [b - a for a, b in zip([0, *cuts], cuts, strict=False)]
    assert all(n > 0 for n in per_epoch[:4]) and per_epoch[4:] == [0, 0]
    assert mv.metadata.training["config"]["crop"] == 48
    history = json.loads((mv.path / "history.json").read_text())
    assert [row["crop"] for row in history] == [48, 48, 48, 48, 0, 0]  # then whole images
    assert list(mv.metadata.preprocessing.scales) == [64, 80]  # served whole, as before
    assert mv.metadata.metrics["accuracy"] >= 0.9


def test_the_images_own_edges_are_in_a_good_share_of_the_crops():
    # Every whole image served has its edges; crops must show them too, or the network learns
    # that an edge is where edge defects (breaks) are. A uniform origin would give 1 in 97.
    n, h, w, c = 400, 128, 128, 32
    sampler = CropSampler(c, good_index=GOOD)
    images, _, _, _ = sampler(
        coordinate_batch(n, h, w),
        torch.full((n,), GOOD),
        torch.zeros(n, h, w),
        torch.ones(n, dtype=torch.bool),
        random.Random(3),
    )
    tops, lefts = images[:, 0, 0, 0], images[:, 1, 0, 0]
    for origin in (tops, lefts):
        assert 0.08 < float((origin == 0).float().mean()) < 0.2
        assert 0.08 < float((origin == h - c).float().mean()) < 0.2


def test_the_train_command_takes_crops(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("INSPECTOR_DATA_DIR", str(tmp_path / "data"))
    root = spot_dataset(tmp_path / "spots", per_class=12, size=96)
    args = ["train", str(root / "data"), "--name", "spots", "--epochs", "2", "--quiet"]
    args += ["--arch", "vgg11_bn", "--width", "0.125", "--scales", "64", "--device", "cpu"]
    assert main([*args, "--crop", "48"]) == 2  # no masks: refused before any image is read
    assert "needs defect masks" in capsys.readouterr().err
    crops = ["--masks", str(root / "masks"), "--crop", "48", "--crop-epochs", "1"]
    assert main([*args, *crops]) == 0
    mv = ModelStore(tmp_path / "data" / "models").get("spots")
    assert mv.metadata.training["config"]["crop"] == 48
    assert mv.metadata.training["config"]["crop_epochs"] == 1
    history = json.loads((mv.path / "history.json").read_text())
    assert [row["crop"] for row in history] == [48, 0]


def test_crop_epochs_do_not_count_towards_early_stopping(tmp_path: Path):
    # Patience 0 from the first epoch would stop after epoch 1; crop epochs must not stop it:
    # the run has not met whole images yet.
    root = spot_dataset(tmp_path / "spots", per_class=8, size=96)
    config = tiny_config(
        epochs=3,
        scales=(64,),
        masks=str(root / "masks"),
        good_classes=("good",),
        crop=48,
        crop_epochs=2,
        patience=0,
        min_epochs=0,
    )
    store = ModelStore(tmp_path / "store")
    mv = fit(root / "data", name="spots", store=store, config=config, weights_dir=tmp_path)
    assert mv.metadata.training["epochs_run"] == 3

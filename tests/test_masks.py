import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from inspector.datasets import Augmentation, ImageSet, ScaleCollate, scan_folder
from inspector.errors import DatasetError
from inspector.masks import (
    IGNORE,
    MaskSupervision,
    load_masks,
    location_loss,
    location_targets,
    mask_paths,
)
from inspector.model import build_model
from inspector.preprocessing import Preprocessing
from inspector.store import ModelStore
from inspector.training import fit
from tests.conftest import tiny_config


def spot_dataset(root: Path, per_class: int = 24, size: int = 48, seed: int = 0) -> Path:
    """Textured good surfaces, and the same with one small dark spot, plus the spots' masks."""
    rng = np.random.default_rng(seed)
    for name in ("good", "spot"):
        (root / "data" / name).mkdir(parents=True)
    (root / "masks" / "spot").mkdir(parents=True)
    for i in range(per_class):
        for name in ("good", "spot"):
            surface = rng.normal(150, 20, (size, size)).clip(0, 255)
            if name == "spot":
                y, x = rng.integers(4, size - 4, 2)
                mask = np.zeros((size, size), np.uint8)
                cv2.circle(mask, (int(x), int(y)), 3, 255, -1)
                surface[mask > 0] = 30
                cv2.imwrite(str(root / "masks" / name / f"{i}.png"), mask)
            cv2.imwrite(str(root / "data" / name / f"{i}.png"), surface.astype(np.uint8))
    return root


def test_a_location_is_a_defect_when_any_mask_pixel_is_under_it():
    masks = torch.zeros(3, 64, 64)
    masks[0, 2, 3] = 1.0  # one pixel in the top-left cell
    masks[1, 40, 40] = 1.0
    known = torch.tensor([True, True, False])
    labels = torch.tensor([2, 0, 1])
    target = location_targets(masks, known, labels, good_index=0, size=(2, 2))
    assert target[0].tolist() == [[2, 0], [0, 0]]
    assert target[1].tolist() == [[0, 0], [0, 0]]  # a good image: all good
    assert (target[2] == IGNORE).all()  # no mask known: nothing said about its locations
    faint = torch.zeros(1, 64, 64)
    faint[0, 40:42, 40:42] = 0.25  # a 2-pixel defect averaged down by a batch resize
    assert location_targets(faint, known[:1], labels[:1], 0, (2, 2)).tolist() == [[[0, 0], [0, 2]]]
    without_good = location_targets(masks, known, labels, good_index=None, size=(2, 2))
    assert without_good[0].tolist() == [[2, IGNORE], [IGNORE, IGNORE]]


def test_location_loss_weighs_the_few_defect_locations_like_the_many_good_ones():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 0, 0] = 1
    all_good = torch.zeros(1, 2, 8, 8)
    all_good[:, 0] = 5.0  # says "good" everywhere, the defect location included
    right = all_good.clone()
    right[0, :, 0, 0] = torch.tensor([0.0, 5.0])
    assert location_loss(all_good, target, 0) > 2.0  # half the loss is the missed defect
    assert location_loss(right, target, 0) < 0.01
    ignored = torch.full((1, 8, 8), IGNORE)
    assert float(location_loss(all_good, ignored, 0)) == 0.0


def test_mask_follows_its_image_through_flips_and_turns():
    rng = np.random.default_rng(0)
    aug = Augmentation(brightness=0.2, contrast=0.2)
    for seed in range(12):
        mask = (rng.random((20, 20)) > 0.8).astype(np.float32)
        image = np.repeat(mask[:, :, None], 3, axis=2)
        out, moved = aug.apply_with_mask(image, mask, np.random.default_rng(seed))
        assert moved is not None
        # lighting is monotone: the bright pixels of the image are still the mask's
        assert np.array_equal(out[:, :, 0] > out[:, :, 0].mean(), moved > 0.5)
        plain = aug.apply(image, np.random.default_rng(seed))
        np.testing.assert_array_equal(plain, out)  # same draws with or without a mask


def test_masks_are_found_by_name_and_good_parts_need_none(tmp_path: Path):
    root = spot_dataset(tmp_path, per_class=3)
    folder = scan_folder(root / "data")
    (root / "masks" / "spot" / "2.png").unlink()
    paths = mask_paths(folder, root / "masks")
    assert [p.name if p else None for p in paths] == [None, None, None, "0.png", "1.png", None]
    images = [np.zeros((48, 48, 3), np.float32)] * 6
    masks = load_masks(folder, root / "masks", images, good_labels=[0])
    assert all(m is not None and not m.any() for m in masks[:3])  # good: all good
    assert masks[3] is not None and 0 < masks[3].sum() < 60
    assert masks[5] is None  # a defect without a mask: trained on its label only


def test_an_all_black_defect_mask_is_no_mask(tmp_path: Path, caplog):
    # It would teach every location of a defect image as good, against its label.
    root = spot_dataset(tmp_path, per_class=3)
    folder = scan_folder(root / "data")
    cv2.imwrite(str(root / "masks" / "spot" / "1.png"), np.zeros((48, 48), np.uint8))
    images = [np.zeros((48, 48, 3), np.float32)] * 6
    with caplog.at_level("WARNING", logger="inspector.masks"):
        masks = load_masks(folder, root / "masks", images, good_labels=[0])
    assert masks[4] is None and masks[3] is not None and masks[3].any()
    assert "1 defect image(s) have an all-black mask" in caplog.text
    assert "spot/1.png" in caplog.text


def test_bad_mask_folders_are_refused(tmp_path: Path):
    root = spot_dataset(tmp_path, per_class=2)
    folder = scan_folder(root / "data")
    images = [np.zeros((48, 48, 3), np.float32)] * 4
    with pytest.raises(DatasetError, match="not found"):
        load_masks(folder, tmp_path / "nowhere", images, [0])
    (tmp_path / "empty" / "spot").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no mask matches"):
        load_masks(folder, tmp_path / "empty", images, [0])
    cv2.imwrite(str(root / "masks" / "spot" / "1.png"), np.zeros((48, 96), np.uint8))
    with pytest.raises(DatasetError, match="mask is 96x48"):
        load_masks(folder, root / "masks", images, [0])
    (root / "masks" / "spot" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot be used:(.|\n)*not a decodable image"):
        load_masks(folder, root / "masks", images, [0])


def test_collate_resizes_masks_with_their_images():
    pre = Preprocessing.for_scales([32])
    mask = np.zeros((64, 64), np.float32)
    mask[:32] = 1.0
    items = [
        (np.ones((64, 64, 3), np.float32), 1, mask),
        (np.ones((64, 64, 3), np.float32), 0, None),
    ]
    images, labels, masks, known = ScaleCollate(pre, scale=32)(items)
    assert labels.tolist() == [1, 0]
    assert images.shape == (2, 3, 32, 32) and masks.shape == (2, 32, 32)
    assert known.tolist() == [True, False]
    assert masks[0, :16].min() == 1.0 and masks[0, 16:].max() == 0.0
    assert len(ImageSet([items[0][0]], [1])[0]) == 2  # no masks: (image, label) as before


def test_location_logits_are_the_heads_logits_at_every_location():
    torch.manual_seed(0)
    model = build_model(arch="vgg11_bn", num_classes=3, width=0.125, dropout=0.0).eval()
    x = torch.rand(2, 3, 64, 96)
    logits, locations = model.forward_with_locations(x)
    assert locations.shape == (2, 3, 2, 3)
    _, cam = model.forward_with_cam(x)
    torch.testing.assert_close(locations, cam + model.head.bias.view(1, 3, 1, 1))
    torch.testing.assert_close(logits, model(x))
    supervision = MaskSupervision(good_index=0)
    loss = supervision.loss(
        locations, torch.zeros(2, 64, 96), torch.tensor([True, True]), torch.tensor([1, 0])
    )
    assert loss.ndim == 0 and float(loss.detach()) > 0


def test_training_with_masks_learns_where_the_defects_are(tmp_path: Path):
    root = spot_dataset(tmp_path / "spots", per_class=24)
    store = ModelStore(tmp_path / "store")
    config = tiny_config(
        epochs=6, scales=(48,), masks=str(root / "masks"), good_classes=("good",), batch_size=16
    )
    mv = fit(root / "data", name="spots", store=store, config=config, weights_dir=tmp_path)
    history = json.loads((mv.path / "history.json").read_text())
    mask_losses = [row["train_mask_loss"] for row in history]
    assert mask_losses[-1] < mask_losses[0]
    assert mv.metadata.training["config"]["masks"] == str(root / "masks")

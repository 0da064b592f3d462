from pathlib import Path

import numpy as np
import pytest
import torch

from inspector.datasets import (
    Augmentation,
    ImageSet,
    ScaleCollate,
    ShapeBatchSampler,
    fingerprint,
    load_images,
    scan_folder,
    stratified_split,
)
from inspector.errors import DatasetError
from inspector.preprocessing import Preprocessing, to_batch
from tests.conftest import noise_image, write_image


def make_folder(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            write_image(root / name / f"{name}_{i}.png", noise_image(rng, 24, 24))
    return root


def test_scan_finds_classes_in_sorted_order(tmp_path: Path) -> None:
    folder = scan_folder(make_folder(tmp_path, {"ok": 3, "crack": 2}))
    assert folder.classes == ("crack", "ok")
    assert folder.counts() == {"crack": 2, "ok": 3}


def test_no_classes_is_refused_with_what_was_found(tmp_path: Path) -> None:
    write_image(tmp_path / "loose.png", noise_image(np.random.default_rng(0)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"no classes found.*1 sub-folder.*1 image"):
        scan_folder(tmp_path)


def test_one_class_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"found 1 class \(ok\).*at least 2"):
        scan_folder(make_folder(tmp_path, {"ok": 3}))


def test_empty_class_folder_is_refused(tmp_path: Path) -> None:
    make_folder(tmp_path, {"ok": 2, "crack": 2})
    (tmp_path / "scratch").mkdir()
    with pytest.raises(DatasetError, match="without any image: scratch"):
        scan_folder(tmp_path)


def test_unknown_class_against_a_model_is_refused(tmp_path: Path) -> None:
    make_folder(tmp_path, {"ok": 1, "dent": 1})
    with pytest.raises(DatasetError, match="dent are not among the classes"):
        scan_folder(tmp_path, classes=("ok", "crack"))


def test_unreadable_files_are_listed_up_front(tmp_path: Path) -> None:
    make_folder(tmp_path, {"ok": 2, "crack": 2})
    (tmp_path / "ok" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "crack" / "empty.jpg").write_bytes(b"")
    folder = scan_folder(tmp_path)
    with pytest.raises(DatasetError, match=r"2 of 6 image\(s\) cannot be read") as info:
        load_images(folder, max_pixels=10**6, max_short_side=64)
    assert "broken.png" in str(info.value) and "empty.jpg" in str(info.value)


def test_stratified_split_is_seeded_and_keeps_every_class(tmp_path: Path) -> None:
    folder = scan_folder(make_folder(tmp_path, {"a": 10, "b": 5, "c": 2}))
    train, val = stratified_split(folder, 0.2, seed=3)
    assert val.counts() == {"a": 2, "b": 1, "c": 1}
    assert train.counts() == {"a": 8, "b": 4, "c": 1}
    assert not {s.path for s in train.samples} & {s.path for s in val.samples}
    again, _ = stratified_split(folder, 0.2, seed=3)
    other, _ = stratified_split(folder, 0.2, seed=4)
    assert again.samples == train.samples
    assert other.samples != train.samples


def test_split_refuses_a_class_with_one_image(tmp_path: Path) -> None:
    folder = scan_folder(make_folder(tmp_path, {"a": 4, "b": 1}))
    with pytest.raises(DatasetError, match="class 'b' has 1 image"):
        stratified_split(folder)


def test_fingerprint_follows_content(tmp_path: Path) -> None:
    root = make_folder(tmp_path, {"a": 2, "b": 2})
    before = fingerprint(scan_folder(root))
    assert fingerprint(scan_folder(root)) == before
    write_image(root / "a" / "a_0.png", noise_image(np.random.default_rng(99), 24, 24))
    assert fingerprint(scan_folder(root)) != before


def test_batches_hold_one_shape_each() -> None:
    pre = Preprocessing(scales=(64,))
    images = [np.zeros((40, 40, 3), np.float16)] * 5 + [np.zeros((40, 80, 3), np.float16)] * 3
    keys = ImageSet(images, [0] * 8).shape_keys(pre)
    sampler = ShapeBatchSampler(keys, batch_size=4, shuffle=True, seed=0)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(8))
    assert all(len({keys[i] for i in b}) == 1 for b in batches)
    assert list(sampler) == batches  # same epoch, same batches
    sampler.set_epoch(1)
    assert list(sampler) != batches  # a new epoch reshuffles
    # Training pools the leftovers of each shape bucket into full batches.
    pooled = list(ShapeBatchSampler(keys, batch_size=4, shuffle=True, pool_remainders=True))
    assert sorted(len(b) for b in pooled) == [4, 4]
    assert sorted(i for b in pooled for i in b) == list(range(8))


def test_an_epoch_takes_its_share_of_some_images_drawn_afresh() -> None:
    # Images 0-11 "good" (half an epoch each), 12-15 defects (every epoch); two shapes.
    keys = [(32, 32) if i % 2 else (32, 48) for i in range(16)]
    shares = [0.5] * 12 + [1.0] * 4
    sampler = ShapeBatchSampler(keys, 4, shuffle=True, seed=3, pool_remainders=True, shares=shares)
    drawn = []
    for epoch in range(6):
        sampler.set_epoch(epoch)
        images = sorted(i for b in sampler for i in b)
        assert len(images) == len(set(images)) == 10  # 6 of 12 good, all 4 defects
        assert {12, 13, 14, 15} <= set(images)
        assert list(sampler) == list(sampler)  # an epoch's draw is fixed by seed and epoch
        drawn.append(tuple(images))
    assert len(set(drawn)) > 1  # and changes from epoch to epoch
    for bad in ([0.0] * 16, [1.0] * 15, [1.2] * 16):
        with pytest.raises(ValueError, match="shares"):
            ShapeBatchSampler(keys, 4, shuffle=True, shares=bad)


def test_load_images_shrinks_to_what_training_needs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    write_image(tmp_path / "a" / "big.png", noise_image(rng, 300, 200))
    write_image(tmp_path / "b" / "small.png", noise_image(rng, 40, 40))
    folder = scan_folder(tmp_path)
    big, small = load_images(folder, max_pixels=10**6, max_short_side=100)
    assert big.shape == (150, 100, 3) and small.shape == (40, 40, 3)


def test_lighting_augmentation_does_not_saturate_bright_surfaces() -> None:
    rng = np.random.default_rng(0)
    bright = (0.9 + 0.08 * rng.random((32, 32, 3))).astype(np.float16)  # a brightly lit surface
    aug = Augmentation(flips=False, rotations=False, brightness=0.15, contrast=0.0)
    for seed in range(8):
        out = aug.apply(bright, np.random.default_rng(seed))
        # Texture survives any offset: no pixel is clipped to white.
        assert np.allclose(out - out.mean(), bright - bright.astype(np.float32).mean(), atol=2e-3)


def test_lighting_is_undone_by_per_image_and_local_normalisation() -> None:
    rng = np.random.default_rng(3)
    surface = (0.3 + 0.4 * rng.random((40, 56, 3))).astype(np.float16)
    lit = Augmentation(flips=False, rotations=False, brightness=0.15, contrast=0.15)
    for normalise in ("image", "local", "fixed"):
        pre = Preprocessing(scales=(32,), normalise=normalise)
        plain = to_batch([surface], (32, 44), pre)
        moved = [
            to_batch([lit.apply(surface, np.random.default_rng(seed))], (32, 44), pre)
            for seed in range(4)
        ]
        undone = all(torch.allclose(m, plain, atol=1e-4) for m in moved)
        assert undone == (normalise != "fixed")


def test_scale_jitter_trains_at_every_listed_scale() -> None:
    # 200 is not on the 32-pixel grid from 160; it is still one of the scales trained at.
    collate = ScaleCollate(Preprocessing(scales=(160, 200)), scale=None)
    assert collate.choices == [160, 192, 200]
    # Progressive resizing: the early epochs jitter over smaller scales, then back.
    collate.jitter_over((96, 128))
    assert collate.choices == [96, 128]
    item = (np.zeros((300, 400, 3), np.float32), 0)
    assert {tuple(collate([item])[0].shape[-2:]) for _ in range(20)} == {(96, 128), (128, 160)}
    collate.jitter_over((160, 200))
    assert collate.choices == [160, 192, 200]

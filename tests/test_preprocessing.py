import numpy as np
import pytest
import torch

from inspector.errors import ConfigurationError
from inspector.preprocessing import (
    Preprocessing,
    cut_tiles,
    group_by_size,
    local_window,
    merge_views,
    needs_tiles,
    parse_scales,
    resize,
    target_size,
    tile_boxes,
    to_batch,
    with_views,
)


def test_target_size_keeps_short_side_and_aspect_within_limits() -> None:
    pre = Preprocessing()
    assert target_size(200, 200, 224, pre) == (224, 224)
    assert target_size(100, 160, 224, pre) == (224, 352)  # 358 rounded to a multiple of 32
    assert target_size(150, 100, 256, pre) == (384, 256)
    # Very long images are capped at max_aspect (tiles see the rest).
    assert target_size(100, 1000, 224, pre) == (224, 448)


def test_to_batch_normalises_with_the_stored_mean_and_std() -> None:
    pre = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    img = np.full((4, 4, 3), 0.75, np.float32)
    t = to_batch([img], (4, 4), pre)
    assert t.shape == (1, 3, 4, 4)
    assert np.allclose(t[0, :, 0, 0].numpy(), [1.0, 0.5, 0.25])


def test_image_normalisation_removes_lighting_but_keeps_texture() -> None:
    pre = Preprocessing(normalise="image")
    rng = np.random.default_rng(0)
    texture = rng.random((8, 8, 3), dtype=np.float32) * 0.2
    dark, bright = 0.1 + texture, 0.5 + 2.0 * texture  # the same surface, lit differently
    t = to_batch([dark, bright], (8, 8), pre).numpy()
    assert np.allclose(t[0], t[1], atol=1e-4)
    assert abs(t[0].mean()) < 1e-5 and abs(t[0].std() - 1.0) < 1e-4
    # A flat image is not blown up to full scale: its std is floored.
    flat = np.full((8, 8, 3), 0.5, np.float32)
    flat[0, 0] += 0.002
    assert np.abs(to_batch([flat], (8, 8), pre).numpy()).max() < 0.2


def local_reference(pixels: np.ndarray) -> np.ndarray:
    """ "local" normalisation written out in float64: windows mirrored at the borders."""
    grey = pixels.mean(axis=2)
    side = local_window(*grey.shape)
    windows = np.lib.stride_tricks.sliding_window_view(
        np.pad(grey, side // 2, mode="reflect"), (side, side)
    )
    mean, std = windows.mean(axis=(-2, -1)), windows.std(axis=(-2, -1))
    std = np.maximum(std, max(std.mean() / 4, 0.01))
    return (pixels - mean[..., None]) / std[..., None]


def test_local_normalisation_gives_a_dark_corner_the_contrast_of_the_middle() -> None:
    rng = np.random.default_rng(2)
    texture = rng.normal(0.0, 0.1, (128, 128)).astype(np.float32)
    yy, xx = np.mgrid[0:128, 0:128] / 127.0
    light = (1.0 - 0.7 * np.clip(xx + yy - 1.0, 0.0, 1.0)).astype(np.float32)  # dark corner
    surface = np.repeat((0.5 + texture)[..., None] * light[..., None], 3, axis=2)
    assert local_window(128, 128) == 33
    for normalise, corner_over_middle in (("image", (0.0, 0.5)), ("local", (0.7, 1.25))):
        out = to_batch([surface], (128, 128), Preprocessing(normalise=normalise))[0, 0].numpy()
        # Texture contrast: the spread of differences between neighbouring pixels.
        ratio = np.diff(out[100:, 100:]).std() / np.diff(out[40:80, 40:80]).std()
        assert corner_over_middle[0] < ratio < corner_over_middle[1], (normalise, ratio)
    # A flat image keeps its flatness: the std is floored, not divided out.
    flat = np.full((64, 64, 3), 0.5, np.float32)
    flat[10, 10] += 0.002
    local = Preprocessing(normalise="local")
    assert np.abs(to_batch([flat], (64, 64), local).numpy()).max() < 0.25
    # The window is symmetric and mirrored at the borders: flipping commutes with it.
    views = to_batch([surface, surface[::-1, ::-1]], (128, 128), local)
    assert torch.allclose(views[1], views[0].flip(1, 2), atol=1e-5)


@pytest.mark.parametrize("normalise", ["fixed", "image", "local"])
def test_to_batch_is_resize_then_normalise(normalise: str) -> None:
    """Resizing into the batch and normalising image by image gives what resizing each image,
    stacking and normalising the stack gives, also for inputs OpenCV cannot write from as they
    are (a flipped view, float64)."""
    pre = Preprocessing(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), normalise=normalise)
    rng = np.random.default_rng(1)
    images = [
        rng.random((40, 50, 3), dtype=np.float32),  # enlarged
        rng.random((90, 110, 3), dtype=np.float32)[::-1, ::-1],  # shrunk, negative strides
        rng.random((60, 70, 3)),  # float64, shrunk
        rng.random((48, 64, 3), dtype=np.float32),  # already the size
    ]
    got = to_batch(images, (48, 64), pre)
    assert got.shape == (4, 3, 48, 64) and got.dtype == torch.float32
    assert got.is_contiguous(memory_format=torch.channels_last)
    for image, tensor in zip(images, got, strict=True):
        pixels = resize(np.asarray(image, np.float32), (48, 64)).astype(np.float64)
        if normalise == "image":
            expected = (pixels - pixels.mean()) / max(pixels.std(), 0.02)
        elif normalise == "local":
            expected = local_reference(pixels)
        else:
            expected = (pixels - np.array(pre.mean)) / np.array(pre.std)
        assert np.allclose(tensor.permute(1, 2, 0).numpy(), expected, atol=1e-4)


def test_views_are_the_batch_and_its_flips_and_merge_to_their_mean() -> None:
    batch = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert with_views(batch, Preprocessing()) is batch
    pre = Preprocessing(flips=True)
    views = with_views(batch, pre)
    assert views.shape == (8, 3, 2, 2)
    assert torch.equal(views[:2], batch)
    assert torch.equal(views[2:4], batch.flip(3)) and torch.equal(views[4:6], batch.flip(2))
    assert torch.equal(views[6:], batch.flip(2).flip(3))
    logits = np.arange(8 * 2, dtype=np.float32).reshape(8, 2)  # view-major, 2 images
    merged = merge_views(logits, pre)
    assert np.array_equal(merged, logits.reshape(4, 2, 2).mean(axis=0))


def test_group_by_size_batches_same_shapes_and_keeps_indices() -> None:
    pre = Preprocessing(scales=(64,))
    images = [
        np.zeros((50, 50, 3), np.float32),
        np.zeros((50, 100, 3), np.float32),
        np.zeros((60, 60, 3), np.float32),
    ]
    groups = {tuple(idx): tuple(t.shape) for idx, t in group_by_size(images, 64, pre)}
    assert groups == {(0, 2): (2, 3, 64, 64), (1,): (1, 3, 64, 128)}


def test_tiles_cover_the_whole_image_with_overlap() -> None:
    boxes = tile_boxes(1000, 1500, 576, 0.25)
    covered = np.zeros((1000, 1500), bool)
    for y0, x0, y1, x1 in boxes:
        assert y1 - y0 <= 576 and x1 - x0 <= 576
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    pre = Preprocessing(tile_size=576, tile_trigger=1024)
    big = np.zeros((1000, 1500, 3), np.float32)
    assert needs_tiles(big, pre) and not needs_tiles(big[:500, :500], pre)
    crops, cut = cut_tiles(big, pre)
    assert len(crops) == len(cut) == len(boxes)


def test_preprocessing_round_trips_and_validates() -> None:
    pre = Preprocessing(scales=(96, 128))
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    per_image = Preprocessing.for_scales((96, 128), normalise="image")
    assert Preprocessing.from_dict(per_image.to_dict()) == per_image
    # Versions stored before per-image normalisation existed keep the fixed mean and std.
    legacy = {k: v for k, v in pre.to_dict().items() if k != "normalise"}
    assert Preprocessing.from_dict(legacy).normalise == "fixed"
    flipped = Preprocessing.for_scales((96,), flips=True)
    assert Preprocessing.from_dict(flipped.to_dict()) == flipped and flipped.views == 4
    # ... and those stored before flipped views existed run on the image as it is.
    assert Preprocessing.from_dict(legacy).flips is False and pre.views == 1
    with pytest.raises(ConfigurationError):
        Preprocessing(normalise="sometimes")
    assert parse_scales("224, 256,288") == (224, 256, 288)
    with pytest.raises(ConfigurationError):
        parse_scales("224,big")
    for typo in ("64,,96", "64,96,", ""):
        with pytest.raises(ConfigurationError):
            parse_scales(typo)
    with pytest.raises(ConfigurationError):
        Preprocessing(scales=(16,))

"""Fine-tuning on generated data: it learns, calibrates, records, resumes and continues."""

import json
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from inspector.errors import ConfigurationError, DatasetError, WeightsNotFoundError
from inspector.model import build_model
from inspector.pretrained import load_imagenet_features
from inspector.store import ModelStore, ModelVersion
from inspector.training import (
    class_weights,
    continued_choices,
    defect_classes_of,
    fit,
    initialise,
)
from tests.conftest import fit_demo, tiny_config


def test_compact_model_learns_the_demo_surfaces(trained: ModelVersion) -> None:
    meta = trained.metadata
    assert meta.classes == ("crack", "good", "patch", "scratch", "spot")
    assert meta.defect_classes == ("crack", "patch", "scratch", "spot")
    # Far above chance (0.2): the network really learned the classes.
    assert meta.metrics["accuracy"] >= 0.8
    assert meta.metrics["defect_recall"] >= 0.95


def test_version_records_history_calibration_data_and_figures(trained: ModelVersion) -> None:
    meta = trained.metadata
    history = json.loads((trained.path / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, len(history) + 1))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert meta.calibration.temperature > 0
    assert 0.0 <= meta.calibration.review_threshold <= meta.calibration.defect_threshold <= 1.0
    assert len(meta.dataset["fingerprint"]) == 64
    assert meta.dataset["train_counts"]["good"] == 60
    assert meta.training["config"]["arch"] == "vgg11_bn"
    assert meta.preprocessing.scales == (64, 96)
    # Trained with per-image normalisation, stored so that serving normalises the same way.
    assert meta.preprocessing.normalise == "image"
    for name in ("history.png", "val_confusion.png", "val_reliability.png", "val_report.json"):
        data = (trained.path / name).read_bytes()
        assert len(data) > 1000
    assert json.loads((trained.path / "val_report.json").read_text())["num_images"] == 100


def test_without_val_a_stratified_share_is_held_out(tmp_path: Path, demo_dirs) -> None:
    train_dir, _ = demo_dirs
    mv = fit(
        train_dir,
        name="split",
        store=ModelStore(tmp_path),
        weights_dir=tmp_path,
        config=tiny_config(epochs=1, val_fraction=0.25),
    )
    counts = mv.metadata.dataset["val_counts"]
    assert counts == dict.fromkeys(("crack", "good", "patch", "scratch", "spot"), 15)
    assert mv.metadata.dataset["train_counts"]["good"] == 45


def test_flipped_views_are_stored_with_the_version(tmp_path: Path, demo_dirs) -> None:
    train_dir, val_dir = demo_dirs
    store = ModelStore(tmp_path)
    mv = fit(
        train_dir,
        val_dir=val_dir,
        name="flips",
        store=store,
        weights_dir=tmp_path,
        config=tiny_config(epochs=1, flips=True),
    )
    assert mv.metadata.preprocessing.flips is True
    assert store.get(mv.ref).metadata.preprocessing.views == 4


def test_resume_continues_from_the_checkpoint(tmp_path: Path, demo_dirs) -> None:
    train_dir, val_dir = demo_dirs
    ckpt = tmp_path / "run" / "checkpoint.pt"
    store = ModelStore(tmp_path / "store")
    fit(
        train_dir,
        val_dir=val_dir,
        name="r",
        store=store,
        weights_dir=tmp_path,
        config=tiny_config(epochs=2),
        checkpoint_path=ckpt,
    )
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == 2
    seen: list[int] = []
    mv = fit(
        train_dir,
        val_dir=val_dir,
        name="r",
        store=store,
        weights_dir=tmp_path,
        config=tiny_config(epochs=3),
        checkpoint_path=ckpt,
        resume=True,
        on_epoch=lambda row: seen.append(int(row["epoch"])),
    )
    assert seen == [3]  # epochs 1-2 came from the checkpoint
    assert mv.metadata.training["epochs_run"] == 3


def checkpointed_fit(
    tmp_path: Path, train_dir: Path, val_dir: Path, *, resume: bool = True, **overrides: object
) -> ModelVersion:
    """A one-epoch run (unless ``overrides`` say otherwise) checkpointing in tmp_path/run; with
    ``resume`` and no checkpoint yet, a warning and training from epoch 1."""
    return fit(
        train_dir,
        val_dir=val_dir,
        name="r",
        store=ModelStore(tmp_path / "store"),
        weights_dir=tmp_path,
        config=tiny_config(**{"epochs": 1, **overrides}),
        checkpoint_path=tmp_path / "run" / "checkpoint.pt",
        resume=resume,
    )


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path: Path, demo_dirs) -> None:
    run = partial(checkpointed_fit, tmp_path, *demo_dirs)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    run()
    with pytest.raises(ConfigurationError, match=r"lr 0\.003 \(now 0\.001\)") as refused:
        run(epochs=2, lr=1e-3)
    assert str(ckpt) in str(refused.value)
    with pytest.raises(ConfigurationError, match=r"width 0.125 .now 0.25."):
        run(epochs=2, width=0.25)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1  # left as it was
    # What may change on resuming: the epochs, the patience, the calibration target.
    mv = run(epochs=2, patience=5, target_recall=0.95)
    assert mv.metadata.training["epochs_run"] == 2


def test_resume_refuses_a_checkpoint_of_other_images(tmp_path: Path, demo_dirs) -> None:
    train_dir, val_dir = demo_dirs
    copy = tmp_path / "train"
    shutil.copytree(train_dir, copy)
    checkpointed_fit(tmp_path, copy, val_dir, resume=False)
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert len(saved["data"]["fingerprint"]) == 64
    victim = next((copy / "good").iterdir())
    victim.write_bytes(next((copy / "crack").iterdir()).read_bytes())  # same name, other image
    with pytest.raises(ConfigurationError, match="the training images"):
        checkpointed_fit(tmp_path, copy, val_dir, epochs=2)


def test_continued_fine_tuning_starts_from_a_stored_version(
    tmp_path: Path, demo_dirs, trained: ModelVersion
) -> None:
    train_dir, val_dir = demo_dirs
    store = ModelStore(trained.path.parent.parent)
    first_epoch: list[float] = []
    mv = fit(
        train_dir,
        val_dir=val_dir,
        name="demo",
        store=store,
        weights_dir=tmp_path,
        config=tiny_config(epochs=1, init=trained.ref, lr=1e-4),
        on_epoch=lambda row: first_epoch.append(row["val_accuracy"]),
    )
    assert mv.metadata.parent == trained.ref
    assert mv.metadata.version == trained.metadata.version + 1
    assert store.production("demo") == trained.metadata.version  # not promoted by itself
    # Starting from the trained weights, the first epoch is already good.
    assert first_epoch[0] >= 0.7


def test_a_parent_passes_its_head_on_only_to_the_same_classes(
    tmp_path: Path, trained: ModelVersion
) -> None:
    store = ModelStore(trained.path.parent.parent)
    parent, _ = store.load(trained.ref)
    spec = trained.metadata.spec

    def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
        pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
        return all(torch.equal(x, y) for x, y in pairs)

    other_line = ("blowhole", "break", "crack", "free", "uneven")  # as many, other names
    for classes, keeps_head in ((trained.metadata.classes, True), (other_line, False)):
        model = build_model(
            arch=spec.arch, num_classes=5, width=spec.width, dropout=spec.dropout, pool=spec.pool
        )
        used = initialise(model, tiny_config(init=trained.ref), store, tmp_path, classes)
        assert used == (trained.ref, trained.ref)
        assert same(model.features, parent.features)
        assert same(model.head, parent.head) is keeps_head


def test_imagenet_init_without_weights_says_what_to_put_where(tmp_path: Path, demo_dirs) -> None:
    train_dir, _ = demo_dirs
    with pytest.raises(WeightsNotFoundError, match=r"place vgg11_bn-[0-9a-f]{8}\.pth") as info:
        fit(
            train_dir,
            name="x",
            store=ModelStore(tmp_path),
            weights_dir=tmp_path / "weights",
            config=tiny_config(width=1.0, init="imagenet", epochs=1),
        )
    assert str(tmp_path / "weights") in str(info.value)
    assert "--init scratch" in str(info.value)


def test_imagenet_init_loads_a_local_torchvision_file(tmp_path: Path, monkeypatch) -> None:
    import hashlib

    from torchvision.models import vgg11_bn

    from inspector import pretrained

    reference = vgg11_bn(weights=None)
    path = tmp_path / "candidate.pth"
    torch.save(reference.state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    named = path.rename(tmp_path / f"vgg11_bn-{digest}.pth")
    monkeypatch.setattr(pretrained, "imagenet_weights_file", lambda arch: (named.name, "url"))
    model = build_model(arch="vgg11_bn", num_classes=3)
    assert load_imagenet_features(model, tmp_path) == named
    assert torch.equal(model.features[0].weight, reference.features[0].weight)
    # A file whose content does not match its name's hash is refused.
    bad = tmp_path / "other"
    bad.mkdir()
    (bad / named.name).write_bytes(named.read_bytes() + b"x")
    with pytest.raises(WeightsNotFoundError, match="fails its hash check"):
        load_imagenet_features(model, bad)


def test_dataset_problems_are_refused_before_training(tmp_path: Path, demo_dirs) -> None:
    one_class = tmp_path / "one"
    (one_class / "only").mkdir(parents=True)
    (one_class / "only" / "a.png").write_bytes(b"")
    dangling = tmp_path / "dangling"
    shutil.copytree(demo_dirs[0], dangling)
    (dangling / "scratch" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    for data, message in (
        (one_class, "found 1 class"),
        (dangling, r"1 of \d+ image\(s\) cannot be read:\n.*gone.png: "),
    ):
        with pytest.raises(DatasetError, match=message):
            fit(
                data,
                name="x",
                store=ModelStore(tmp_path / "s"),
                weights_dir=tmp_path,
                config=tiny_config(),
            )


def test_defect_classes_and_class_weights() -> None:
    assert defect_classes_of(("blowhole", "free", "crack"), None) == ("blowhole", "crack")
    assert defect_classes_of(("a", "b"), ("b",)) == ("a",)
    with pytest.raises(ConfigurationError, match="every class is a good class"):
        defect_classes_of(("ok", "b"), ("ok", "b"))
    with pytest.raises(ConfigurationError, match="not among the classes"):
        defect_classes_of(("a", "b"), ("ok",))
    w = class_weights([0] * 70 + [1] * 30, 2)
    assert float(w.mean()) == pytest.approx(1.0)
    assert float(w[1] / w[0]) == pytest.approx(70 / 30)
    assert np.isfinite(w.numpy()).all()
    # An epoch that takes 3/7 of the good class sees the two classes equally often.
    thinned = class_weights([0] * 70 + [1] * 30, 2, {0: 3 / 7})
    assert thinned.tolist() == pytest.approx([1.0, 1.0])


def test_an_epoch_can_take_a_fresh_share_of_the_good_images(tmp_path: Path, demo_dirs) -> None:
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigurationError, match="good_per_epoch"):
            tiny_config(good_per_epoch=bad)
    per_epoch = {}
    for share in (1.0, 0.25):
        mv = fit_demo(tmp_path, demo_dirs, "thin", epochs=2, good_per_epoch=share)
        assert mv.metadata.training["config"]["good_per_epoch"] == share
        history = json.loads((mv.path / "history.json").read_text())
        per_epoch[share] = [row["train_images"] for row in history]
    # 60 training images a class, 4 defect classes: all 240 defects, and 60 or 15 good ones.
    assert per_epoch == {1.0: [300, 300], 0.25: [255, 255]}


def test_early_stopping_counts_patience_after_half_the_epochs(tmp_path: Path, demo_dirs) -> None:
    train_dir, val_dir = demo_dirs
    for min_epochs, expected in ((None, [1, 2, 3]), (3, [1, 2, 3, 4])):
        seen: list[int] = []
        # patience 0: every epoch counts as "no improvement", so only min_epochs holds it back.
        mv = fit(
            train_dir,
            val_dir=val_dir,
            name="early",
            store=ModelStore(tmp_path),
            weights_dir=tmp_path,
            config=tiny_config(epochs=4, patience=0, min_epochs=min_epochs),
            on_epoch=lambda row, seen=seen: seen.append(int(row["epoch"])),
        )
        assert seen == expected
        assert mv.metadata.training["epochs_run"] == len(expected)


def test_validating_every_few_epochs_before_the_patience_window(tmp_path: Path, demo_dirs) -> None:
    with pytest.raises(ConfigurationError, match="validate_every"):
        tiny_config(validate_every=0)
    histories = {}
    for every in (1, 2):
        mv = fit_demo(tmp_path, demo_dirs, f"every{every}", epochs=6, validate_every=every)
        histories[every] = json.loads((mv.path / "history.json").read_text())
        validated = [row["epoch"] for row in histories[every] if "val_loss" in row]
        # Epochs 1-3 come before the patience window (half the run): every 2nd is validated.
        assert validated == ([1, 2, 3, 4, 5, 6] if every == 1 else [2, 4, 5, 6])
        assert mv.metadata.training["best_epoch"] in validated
    # Validation only reads the network: the training is the same epoch for epoch.
    losses = {every: [row["train_loss"] for row in h] for every, h in histories.items()}
    assert losses[2] == pytest.approx(losses[1], rel=1e-6)


def test_early_epochs_train_at_the_early_scales(tmp_path: Path, demo_dirs) -> None:
    with pytest.raises(ConfigurationError, match="early_epochs must be between"):
        tiny_config(epochs=4, early_scales=(32,), early_epochs=4)
    with pytest.raises(ConfigurationError, match="needs early_epochs"):
        tiny_config(early_scales=(32,))
    with pytest.raises(ConfigurationError, match="needs early_scales"):
        tiny_config(early_epochs=2)
    with pytest.raises(ConfigurationError, match="scales must be"):
        tiny_config(early_scales=(16,), early_epochs=2)
    with pytest.raises(ConfigurationError, match="reach above the largest scale"):
        tiny_config(early_scales=(64, 128), early_epochs=2)
    with pytest.raises(ConfigurationError, match="smallest early scale"):
        tiny_config(crop=48, masks="masks", early_scales=(32, 64), early_epochs=2)
    mv = fit_demo(tmp_path, demo_dirs, "early", epochs=3, early_scales=(32, 48), early_epochs=2)
    history = json.loads((mv.path / "history.json").read_text())
    assert [row["max_scale"] for row in history] == [48, 48, 96]
    # Served, validated and calibrated at the model's own scales, not the early ones.
    assert mv.metadata.preprocessing.scales == (64, 96)
    assert mv.metadata.training["config"]["early_scales"] == [32, 48]


def test_normalisation_and_stride_are_checked_up_front() -> None:
    assert tiny_config(normalise="fixed").normalise == "fixed"
    with pytest.raises(ConfigurationError):
        tiny_config(normalise="per-pixel")
    assert tiny_config(stride=16).stride == 16
    with pytest.raises(ConfigurationError, match="stride must be one of"):
        tiny_config(stride=8)
    assert tiny_config(padding="reflect").padding == "reflect"
    with pytest.raises(ConfigurationError, match="padding must be one of"):
        tiny_config(padding="circular")
    with pytest.raises(ConfigurationError, match=r"at least 32 pixels.*got 24"):
        tiny_config(padding="reflect", scales=(24, 48))
    assert tiny_config(padding="replicate", scales=(24, 48)).scales == (24, 48)


def test_continuing_takes_the_parents_choices_but_not_an_empty_good_set(
    tmp_path: Path, demo_dirs, trained: ModelVersion
) -> None:
    store = ModelStore(trained.path.parent.parent)
    choices = continued_choices(store, trained.ref)
    assert choices["good_classes"] == ("good",)
    assert (choices["arch"], choices["width"], choices["pool"]) == ("vgg11_bn", 0.125, "max")
    assert choices["scales"] == (64, 96)
    assert continued_choices(store, "scratch") == {}

    all_defects = ModelStore(tmp_path / "store")
    mv = fit_demo(all_defects.root, demo_dirs, "steel", epochs=1, good_classes=())
    assert mv.metadata.defect_classes == mv.metadata.classes
    # Its features may start another line's model: that line's "good" must stay good.
    assert "good_classes" not in continued_choices(all_defects, mv.ref)

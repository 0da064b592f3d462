"""Cross-validated sets: one network per fold, calibrated on every image out of fold."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from inspector.calibration import calibrate
from inspector.cli import main
from inspector.datasets import ImageSet, load_images, scan_folder, stratified_folds
from inspector.errors import ConfigurationError, DatasetError
from inspector.model import VGGEnsemble
from inspector.store import ModelStore, ModelVersion
from inspector.training import (
    continued_choices,
    data_splits,
    fit,
    prepare_data,
    validation_logits,
)
from tests.conftest import tiny_config


def test_folds_cut_every_class_across_every_fold_once(demo_dirs: tuple[Path, Path]) -> None:
    folder = scan_folder(demo_dirs[0])  # 60 images in each of 5 classes
    folds = stratified_folds(folder, 7, seed=3)
    everything = [i for fold in folds for i in fold]
    assert sorted(everything) == list(range(len(folder.samples)))  # each image exactly once
    sizes = [len(fold) for fold in folds]
    assert max(sizes) - min(sizes) <= 1
    for fold in folds:
        counts = Counter(folder.samples[i].label for i in fold)
        assert set(counts) == set(range(len(folder.classes)))
        assert max(counts.values()) - min(counts.values()) <= 1
    assert stratified_folds(folder, 7, seed=3) == folds
    assert stratified_folds(folder, 7, seed=4) != folds


def test_folds_need_as_many_images_per_class(demo_dirs: tuple[Path, Path]) -> None:
    folder = scan_folder(demo_dirs[0])
    crack = [i for i, s in enumerate(folder.samples) if s.label == 0]
    small = folder.subset([i for i in range(len(folder.samples)) if i not in crack[1:]])
    with pytest.raises(DatasetError, match=r"class 'crack' has 1 image\(s\); 3 folds need"):
        stratified_folds(small, 3)
    with pytest.raises(DatasetError, match="at least 2"):
        stratified_folds(folder, 1)


def test_folds_are_refused_with_a_validation_folder_or_another_set_size(
    tmp_path: Path, demo_dirs: tuple[Path, Path]
) -> None:
    train_dir, val_dir = demo_dirs
    with pytest.raises(ConfigurationError, match=r"either folds \(3\) or a separate validation"):
        fit(
            train_dir,
            val_dir=val_dir,
            name="f",
            store=ModelStore(tmp_path),
            weights_dir=tmp_path,
            config=tiny_config(folds=3),
        )
    with pytest.raises(ConfigurationError, match="members 2 does not fit"):
        tiny_config(folds=3, members=2)
    assert tiny_config(folds=3, members=3).networks == 3
    with pytest.raises(ConfigurationError, match="folds must be between 1 and 16"):
        tiny_config(folds=0)


@pytest.fixture(scope="module")
def three_folds(
    tmp_path_factory: pytest.TempPathFactory, demo_dirs: tuple[Path, Path]
) -> ModelVersion:
    return fit(
        demo_dirs[0],
        name="folds",
        store=ModelStore(tmp_path_factory.mktemp("store")),
        weights_dir=tmp_path_factory.mktemp("weights"),
        config=tiny_config(epochs=2, folds=3, scales=(64,)),
    )


def test_a_fold_set_is_one_version_calibrated_on_every_image(three_folds: ModelVersion) -> None:
    meta = three_folds.metadata
    assert meta.spec.members == 3
    assert [m["fold"] for m in meta.training["members"]] == [1, 2, 3]
    assert [m["seed"] for m in meta.training["members"]] == [0, 1, 2]
    # Every labelled image was held out once: the calibration and the report cover all 300.
    assert (
        meta.dataset["val_counts"]
        == meta.dataset["train_counts"]
        == dict.fromkeys(("crack", "good", "patch", "scratch", "spot"), 60)
    )
    assert meta.dataset["val_root"] is None
    report = json.loads((three_folds.path / "val_report.json").read_text())
    assert report["num_images"] == 300
    history = json.loads((three_folds.path / "history.json").read_text())
    assert [(row["member"], row["epoch"]) for row in history] == [
        (m, e) for m in (1, 2, 3) for e in (1, 2)
    ]
    assert meta.metrics["accuracy"] > 0.2  # above chance after two epochs on two thirds


def test_continuing_from_a_fold_set_keeps_its_folds(three_folds: ModelVersion) -> None:
    store = ModelStore(three_folds.path.parent.parent)
    choices = continued_choices(store, three_folds.ref)
    assert (choices["folds"], choices["members"]) == (3, 3)
    assert tiny_config(**choices).networks == 3


def test_each_image_is_scored_by_the_network_that_held_it_out(
    three_folds: ModelVersion, demo_dirs: tuple[Path, Path]
) -> None:
    meta = three_folds.metadata
    config = tiny_config(epochs=2, folds=3, scales=(64,))
    data = prepare_data(demo_dirs[0], None, config)
    splits = data_splits(data, config)
    assert [len(s.train) + len(s.val) for s in splits] == [300] * 3
    assert sorted(i for s in splits for i in s.val) == list(range(300))
    model, _ = ModelStore(three_folds.path.parent.parent).load(three_folds.ref)
    assert isinstance(model, VGGEnsemble)
    pre = meta.preprocessing
    images = load_images(data.train, max_pixels=10**7, max_short_side=64)
    labels = np.asarray(data.train.labels())
    logits = np.zeros((1, 300, 5), np.float32)
    for network, split in zip(model.networks, splits, strict=True):
        held_out = ImageSet([images[i] for i in split.val], labels[split.val].tolist())
        logits[:, split.val] = validation_logits(
            network, held_out, pre, pre.scales, torch.device("cpu"), 16, config.amp
        )
    again = calibrate(logits, labels, meta.classes, meta.defect_classes, target_recall=0.99)
    assert again.temperature == pytest.approx(meta.calibration.temperature, rel=1e-3)
    assert again.defect_threshold == pytest.approx(meta.calibration.defect_threshold, abs=1e-3)


def test_the_train_command_trains_a_fold_set(
    tmp_path: Path, demo_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("INSPECTOR_DATA_DIR", str(tmp_path / "data"))
    train_dir, val_dir = demo_dirs
    args = ["train", str(train_dir), "--name", "cv", "--epochs", "1", "--quiet", "--folds", "2"]
    args += ["--arch", "vgg11_bn", "--width", "0.125", "--scales", "64", "--device", "cpu"]
    assert main(args) == 0
    assert main(["models", "list"]) == 0
    assert "cv:1  vgg11_bn w0.125 x2" in capsys.readouterr().out
    both = ["train", str(train_dir), "--name", "cv", "--folds", "2", "--val", str(val_dir)]
    assert main(both) == 2
    assert "either folds (2) or a separate validation folder" in capsys.readouterr().err

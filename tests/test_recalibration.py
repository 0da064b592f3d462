"""Recalibration: a version's thresholds refitted on more labelled images, same weights."""

import shutil
from pathlib import Path

import pytest

from inspector.cli import main
from inspector.demo_data import generate_demo_dataset
from inspector.errors import ConfigurationError, DatasetError
from inspector.inference import Classifier
from inspector.recalibration import recalibrate
from inspector.store import ModelStore, ModelVersion


@pytest.fixture
def store_copy(tmp_path: Path, trained: ModelVersion) -> ModelStore:
    """The session's trained store, copied: new versions must not leak into other tests."""
    return ModelStore(shutil.copytree(trained.path.parent.parent, tmp_path / "models"))


@pytest.fixture(scope="module")
def more_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Labelled images the model has never seen, drawn with another seed."""
    root = tmp_path_factory.mktemp("more")
    return generate_demo_dataset(root, per_class=24, size=64, seed=7).train_dir


def test_a_recalibrated_copy_keeps_the_weights_and_refits_the_thresholds(
    store_copy: ModelStore, trained: ModelVersion, more_images: Path
) -> None:
    old = trained.metadata
    mv = recalibrate(
        store_copy, old.ref, more_images, target_recall=0.9, max_pixels=10**7, device="cpu"
    )
    meta = mv.metadata
    assert meta.version == old.version + 1 and meta.parent == old.ref
    assert meta.weights_sha256 == old.weights_sha256
    assert store_copy.production("demo") == old.version  # promoted on purpose only
    assert meta.calibration.target_recall == 0.9
    assert meta.calibration != old.calibration
    metrics = meta.metrics
    assert metrics["num_images"] == 120 and metrics["in_sample"] is True
    assert metrics["previous"]["calibration"] == old.calibration.to_dict()
    # Fitted for 90% recall on these images: it reaches it there.
    assert metrics["defect_recall"] >= 0.9
    assert meta.dataset["calibration_counts"] == dict.fromkeys(old.classes, 24)
    assert meta.dataset["fingerprint"] == old.dataset["fingerprint"]  # same training data
    assert (mv.path / "calibration_report.json").is_file()
    # The copy serves with its own calibration.
    served = Classifier.from_store(store_copy, meta.ref, device="cpu").meta.calibration
    assert served == meta.calibration


def test_a_set_without_good_images_is_refused(
    tmp_path: Path, store_copy: ModelStore, trained: ModelVersion, more_images: Path
) -> None:
    only_defects = tmp_path / "defects"
    for name in ("crack", "spot"):
        shutil.copytree(more_images / name, only_defects / name)
    with pytest.raises(DatasetError, match="needs defect and good images"):
        recalibrate(store_copy, trained.metadata.ref, only_defects, max_pixels=10**7)
    assert store_copy.versions("demo") == [trained.metadata.version]


def test_bad_rates_are_refused_before_any_image_is_read(
    tmp_path: Path, store_copy: ModelStore, trained: ModelVersion
) -> None:
    missing = tmp_path / "not-there"  # never scanned: the rate is checked first
    with pytest.raises(ConfigurationError, match="target recall"):
        recalibrate(store_copy, trained.metadata.ref, missing, target_recall=1.5, max_pixels=1)
    with pytest.raises(ConfigurationError, match="max review rate"):
        recalibrate(store_copy, trained.metadata.ref, missing, max_review_rate=-0.1, max_pixels=1)


def test_the_command_prints_old_and_new_and_promotes_when_asked(
    store_copy: ModelStore,
    trained: ModelVersion,
    more_images: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("INSPECTOR_MODEL_STORE", str(store_copy.root))
    monkeypatch.setenv("INSPECTOR_DEVICE", "cpu")
    ref = trained.metadata.ref
    assert main(["calibrate", str(more_images), "--model", ref, "--promote"]) == 0
    out = capsys.readouterr().out
    new = f"demo:{trained.metadata.version + 1}"
    assert f"registered {new}: the weights of {ref}" in out
    assert "defect threshold" in out and "good flagged" in out
    assert f"defects of {more_images}: at least " in out and "with 95% confidence" in out
    assert "lowest-scored defects" in out
    assert store_copy.production("demo") == trained.metadata.version + 1

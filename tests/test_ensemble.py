"""Model sets: several networks trained apart, stored, calibrated and served as one version."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from inspector.cli import main
from inspector.errors import ConfigurationError, ModelIntegrityError
from inspector.export import export_model
from inspector.imaging import read_image
from inspector.inference import Classifier
from inspector.model import ModelSpec, VGGClassifier, VGGEnsemble, build_model, model_from_spec
from inspector.store import METADATA_FILE, ModelStore, ModelVersion
from inspector.training import continued_choices, fit, initialise, member_checkpoint
from tests.conftest import TINY, fit_demo, tiny_config

SPEC = {"arch": "vgg11_bn", "num_classes": 3, "width": 0.125, "pool": "max"}


def networks(count: int, seed: int = 0) -> list[VGGClassifier]:
    torch.manual_seed(seed)
    return [build_model(**SPEC).eval() for _ in range(count)]  # type: ignore[arg-type]


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return all(torch.equal(x, y) for x, y in pairs)


def test_a_set_gives_its_networks_mean_probabilities():
    members = networks(3)
    ensemble = VGGEnsemble(members).eval()
    x = torch.randn(4, 3, 64, 80)
    with torch.no_grad():
        expected = torch.stack([m(x).softmax(1) for m in members]).mean(0)
        logits = ensemble(x)
        _, cam = ensemble.forward_with_cam(x)
    torch.testing.assert_close(logits.softmax(1), expected)
    assert ensemble.spec == ModelSpec(**SPEC, members=3)  # type: ignore[arg-type]
    assert cam.shape == (4, 3, 2, 2)  # the members' maps averaged, at their resolution


def test_each_network_of_a_set_has_its_own_checkpoint():
    path = Path("runs/line/checkpoint.pt")
    assert member_checkpoint(path, 0, 1) == path  # a single network: the usual file
    assert member_checkpoint(path, 1, 3) == Path("runs/line/checkpoint-member2.pt")
    assert member_checkpoint(None, 1, 3) is None


def test_a_set_refuses_one_network_or_networks_of_different_shapes():
    with pytest.raises(ConfigurationError, match="at least 2"):
        VGGEnsemble(networks(1))
    other = build_model(**{**SPEC, "width": 0.25})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="share one spec"):
        VGGEnsemble([*networks(1), other])
    with pytest.raises(ConfigurationError, match="at least 1 network"):
        ModelSpec(**SPEC, members=0)  # type: ignore[arg-type]


def test_a_spec_with_members_rebuilds_a_set_and_an_old_spec_one_network():
    spec = ModelSpec(**SPEC, members=2)  # type: ignore[arg-type]
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert isinstance(model_from_spec(spec), VGGEnsemble)
    old = {k: v for k, v in spec.to_dict().items() if k != "members"}  # stored before sets
    assert isinstance(model_from_spec(ModelSpec.from_dict(old)), VGGClassifier)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, demo_dirs: tuple[Path, Path]) -> ModelVersion:
    """A set of two compact networks, trained on the demo data."""
    train_dir, val_dir = demo_dirs
    store = ModelStore(tmp_path_factory.mktemp("pair-store"))
    return fit(
        train_dir,
        val_dir=val_dir,
        name="pair",
        store=store,
        config=tiny_config(epochs=4, members=2),
        weights_dir=tmp_path_factory.mktemp("weights"),
        checkpoint_path=tmp_path_factory.mktemp("run") / "checkpoint.pt",
    )


def test_fit_trains_each_network_from_its_own_seed_and_stores_one_version(
    pair: ModelVersion, demo_dirs: tuple[Path, Path], tmp_path: Path
):
    meta = pair.metadata
    assert meta.spec.members == 2
    assert [m["seed"] for m in meta.training["members"]] == [0, 1]
    assert meta.training["epochs_run"] == 8
    history = json.loads((pair.path / "history.json").read_text())
    assert [(row["member"], row["epoch"]) for row in history] == [
        (m, e) for m in (1, 2) for e in (1, 2, 3, 4)
    ]
    assert (pair.path / "history.png").stat().st_size > 0
    assert meta.metrics["accuracy"] >= 0.6  # 5 classes, 4 epochs: learnt, evaluated as one

    # The first network is exactly the single model the same seed trains; the second differs.
    single = fit_demo(tmp_path / "store", demo_dirs, "single", epochs=4)
    one, _ = ModelStore(tmp_path / "store").load(single.ref)
    both, _ = ModelStore(pair.path.parent.parent).load(pair.ref)
    assert isinstance(both, VGGEnsemble)
    assert same_weights(both.networks[0], one)
    assert not same_weights(both.networks[1], one)


def test_a_set_is_served_and_exported_as_one_model(pair: ModelVersion, demo_dirs, tmp_path: Path):
    store = ModelStore(pair.path.parent.parent)
    classifier = Classifier.from_store(store, pair.ref, device="cpu")
    _, val_dir = demo_dirs
    paths = sorted(val_dir.rglob("*.png"))[:6]
    images = [read_image(p) for p in paths]
    predictions = classifier.predict(images)
    assert len(predictions) == 6
    for p in predictions:
        assert abs(sum(p.probabilities.values()) - 1) < 1e-4
        assert set(p.scale_probabilities) == set(TINY["scales"])  # type: ignore[arg-type]
    assert classifier.class_activation_maps(images[0]).ndim == 3

    model, _ = store.load(pair.ref)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    path, _ = export_model(store, pair.ref, "torchscript", tmp_path / "pair.torchscript.pt")
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(path))(x), expected)

    from onnx import load
    from onnx.reference import ReferenceEvaluator

    path, _ = export_model(store, pair.ref, "onnx", tmp_path / "pair.onnx")
    (got,) = ReferenceEvaluator(load(str(path))).run(None, {"images": x.numpy()})
    assert np.allclose(got, expected.numpy(), atol=1e-3)


def test_weights_that_do_not_match_the_sets_size_are_refused(pair: ModelVersion, tmp_path: Path):
    store = ModelStore(tmp_path / "store")
    # One network's weights under a set's spec (not promoted: promoting loads it too).
    mv = store.register(networks(2)[0], pair.metadata, promote=False)
    with pytest.raises(ModelIntegrityError, match="2 network"):
        store.load(mv.ref)
    data = json.loads((mv.path / METADATA_FILE).read_text())
    data["spec"]["members"] = 0
    (mv.path / METADATA_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelIntegrityError, match="malformed"):
        store.get(mv.ref)


def test_a_finished_network_is_not_trained_again_on_resume(
    pair: ModelVersion, demo_dirs: tuple[Path, Path], tmp_path: Path
):
    # Each network of a set keeps its own checkpoint; resuming a finished set trains nothing
    # and registers the same networks again.
    train_dir, val_dir = demo_dirs
    store = ModelStore(tmp_path / "store")
    ckpt = tmp_path / "run" / "checkpoint.pt"
    run = partial(
        fit,
        train_dir,
        val_dir=val_dir,
        name="p",
        store=store,
        config=tiny_config(epochs=2, members=2),
        weights_dir=tmp_path,
        checkpoint_path=ckpt,
    )
    run()
    assert sorted(p.name for p in ckpt.parent.iterdir()) == [
        "checkpoint-member1.pt",
        "checkpoint-member2.pt",
    ]
    seen: list[tuple[int, int]] = []
    again = run(resume=True, on_epoch=lambda row: seen.append((row["member"], row["epoch"])))
    assert seen == []
    first, _ = store.load("p:1")
    second, _ = store.load(again.ref)
    assert same_weights(first, second)


def test_early_stopped_network_is_not_trained_further_on_resume(
    demo_dirs: tuple[Path, Path], tmp_path: Path
):
    train_dir, val_dir = demo_dirs
    store = ModelStore(tmp_path / "store")
    ckpt = tmp_path / "run" / "checkpoint.pt"
    # Patience 0 from epoch 1: it stops at the first epoch that does not improve.
    run = partial(
        fit,
        train_dir,
        val_dir=val_dir,
        name="s",
        store=store,
        config=tiny_config(epochs=12, patience=0, min_epochs=0, lr=0.5),
        weights_dir=tmp_path,
        checkpoint_path=ckpt,
    )
    assert run().metadata.training["epochs_run"] < 12
    seen: list[int] = []
    run(resume=True, on_epoch=lambda row: seen.append(row["epoch"]))
    assert seen == []


def test_a_set_passes_each_network_on_to_the_next_sets_network(pair: ModelVersion, tmp_path: Path):
    store = ModelStore(pair.path.parent.parent)
    parent, _ = store.load(pair.ref)
    assert isinstance(parent, VGGEnsemble)
    assert continued_choices(store, pair.ref)["members"] == 2
    classes = pair.metadata.classes
    spec = pair.metadata.spec
    for member in (0, 1, 2):  # a larger set counts round
        model = build_model(
            arch=spec.arch, num_classes=len(classes), width=spec.width, pool=spec.pool
        )
        initialise(model, tiny_config(init=pair.ref), store, tmp_path, classes, member)
        assert same_weights(model, parent.networks[member % 2])


def test_the_train_command_trains_a_set(tmp_path: Path, demo_dirs, monkeypatch, capsys):
    monkeypatch.setenv("INSPECTOR_DATA_DIR", str(tmp_path / "data"))
    train_dir, _ = demo_dirs
    args = ["train", str(train_dir), "--name", "set", "--epochs", "1", "--quiet", "--members"]
    args += ["2", "--arch", "vgg11_bn", "--width", "0.125", "--scales", "64", "--device", "cpu"]
    assert main(args) == 0
    assert main(["train", str(train_dir), "--name", "set", "--members", "0"]) == 2
    assert "members must be between 1 and 16" in capsys.readouterr().err
    assert main(["models", "list"]) == 0
    assert "set:1  vgg11_bn w0.125 x2" in capsys.readouterr().out

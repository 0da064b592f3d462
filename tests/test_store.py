import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from inspector.calibration import Calibration
from inspector.errors import ModelIntegrityError, ModelStoreError
from inspector.model import build_model, model_from_spec
from inspector.preprocessing import Preprocessing
from inspector.store import ModelMetadata, ModelRef, ModelStore


def metadata(name: str = "steel", classes: tuple[str, ...] = ("ok", "crack")) -> ModelMetadata:
    model = build_model(arch="vgg11_bn", num_classes=len(classes), width=0.125)
    return ModelMetadata(
        name=name,
        version=0,
        spec=model.spec,
        classes=classes,
        defect_classes=classes[1:],
        preprocessing=Preprocessing(scales=(64, 96)),
        calibration=Calibration(temperature=1.5, defect_threshold=0.3, review_threshold=0.2),
    )


def register(store: ModelStore, **kwargs: object):
    meta = metadata(**kwargs)  # type: ignore[arg-type]
    return store.register(model_from_spec(meta.spec), meta)


def test_register_numbers_versions_and_promotes_only_the_first(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    first, second = register(store), register(store)
    assert (first.metadata.version, second.metadata.version) == (1, 2)
    assert store.versions("steel") == [1, 2]
    assert store.production("steel") == 1
    assert store.get("steel").metadata.version == 1  # production, not newest
    assert len(first.metadata.weights_sha256) == 64


def test_load_restores_weights_metadata_and_calibration(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    meta = metadata()
    original = model_from_spec(meta.spec)
    store.register(original, meta)
    loaded, mv = store.load("steel:1")
    assert not loaded.training
    for k, v in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    assert mv.metadata.calibration.temperature == 1.5
    assert mv.metadata.preprocessing.scales == (64, 96)
    assert mv.metadata.classes == ("ok", "crack")


def test_a_padded_model_loads_and_exports_with_its_padding(tmp_path: Path) -> None:
    import numpy as np
    from onnx import load
    from onnx.reference import ReferenceEvaluator

    from inspector.export import export_model

    store = ModelStore(tmp_path / "store")
    meta = metadata()
    spec = replace(meta.spec, padding="reflect")
    original = model_from_spec(spec).eval()
    store.register(original, replace(meta, spec=spec))
    loaded, mv = store.load("steel:1")
    assert mv.metadata.spec.padding == "reflect"
    assert {m.padding_mode for m in loaded.modules() if isinstance(m, torch.nn.Conv2d)} == {
        "reflect"
    }
    x = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        expected = original(x).numpy()
    path, _ = export_model(store, "steel:1", "onnx", tmp_path / "m.onnx")
    (got,) = ReferenceEvaluator(load(str(path))).run(None, {"images": x.numpy()})
    assert np.allclose(got, expected, atol=1e-3)


def test_tampered_weights_fail_the_hash_check(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    mv = register(store)
    with mv.weights_path.open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelIntegrityError, match="fails its hash check"):
        store.load("steel:1")


def test_weights_that_do_not_match_the_metadata_are_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    mv = register(store)
    meta = json.loads((mv.path / "model.json").read_text())
    meta["spec"]["width"] = 0.25
    (mv.path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelIntegrityError, match="do not match the metadata"):
        store.load("steel:1")


def test_metadata_with_wrong_class_count_is_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    mv = register(store)
    meta = json.loads((mv.path / "model.json").read_text())
    meta["classes"] = ["ok", "crack", "dent"]
    (mv.path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelIntegrityError, match="3 classes but the network has 2"):
        store.get("steel:1")


def test_promote_and_rollback_walk_the_production_history(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    for _ in range(3):
        register(store)
    store.promote("steel:2")
    store.promote("steel:3")
    assert store.production("steel") == 3
    assert store.rollback("steel").metadata.version == 2
    assert store.rollback("steel").metadata.version == 1
    with pytest.raises(ModelStoreError, match="no earlier production version"):
        store.rollback("steel")
    actions = [h["action"] for h in store.production_history("steel")]
    assert actions == ["promote", "promote", "promote", "rollback", "rollback"]


def test_missing_models_and_bad_references_say_what_exists(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    register(store)
    with pytest.raises(ModelStoreError, match=r"no model named 'tiles'.*models there: steel"):
        store.get("tiles")
    with pytest.raises(ModelStoreError, match=r"no version 7 \(versions: 1\)"):
        store.get("steel:7")
    with pytest.raises(ModelStoreError, match="invalid model name"):
        ModelRef.parse("../etc")
    with pytest.raises(ModelStoreError, match="invalid version"):
        ModelRef.parse("steel:latest")
    with pytest.raises(ModelStoreError, match="needs NAME:VERSION"):
        store.promote("steel")
    assert ModelRef.parse("steel:v3") == ModelRef("steel", 3)

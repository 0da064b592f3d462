"""The command line end to end: train, evaluate, models, export, demo data."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from inspector.cli import main
from inspector.evaluation import recall_lower_bound
from inspector.store import ModelStore, ModelVersion


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("INSPECTOR_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def test_train_evaluate_and_manage_models(cli_env: Path, demo_dirs, capsys) -> None:
    train_dir, val_dir = demo_dirs
    common = [
        "--arch",
        "vgg11_bn",
        "--width",
        "0.125",
        "--scales",
        "64,96",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--quiet",
        "--device",
        "cpu",
    ]
    assert main(["train", str(train_dir), "--val", str(val_dir), "--name", "steel", *common]) == 0
    again = ["--init", "steel:1", "--normalise", "fixed", "--flips"]
    assert main(["train", str(train_dir), "--name", "steel", *common, *again]) == 0
    out = capsys.readouterr().out
    assert "registered steel:1" in out and "registered steel:2" in out
    # What set the threshold: the hold-out's lowest-scored defects, named.
    assert out.count("lowest-scored defects (defect threshold ") == 2
    # And how far those defects vouch for the recall (80 in the val folder: at most 96.3%).
    assert "on the 80 defects of the validation folder: at least " in out
    assert "defects of the hold-out: at least " in out and out.count("95% confidence") == 2

    store = ModelStore(cli_env / "models")
    assert store.versions("steel") == [1, 2] and store.production("steel") == 1
    assert store.get("steel:2").metadata.parent == "steel:1"
    normalised = [store.get(f"steel:{v}").metadata.preprocessing.normalise for v in (1, 2)]
    assert normalised == ["image", "fixed"]  # the default, then as asked; kept for serving
    flips = [store.get(f"steel:{v}").metadata.preprocessing.flips for v in (1, 2)]
    assert flips == [False, True]

    report_dir = cli_env / "eval"
    assert main(["evaluate", str(val_dir), "--model", "steel:2", "--output", str(report_dir)]) == 0
    report = json.loads((report_dir / "report.json").read_text())
    assert report["model"] == "steel:2" and report["num_images"] == 100
    assert set(report["per_scale_accuracy"]) == {"64", "96"}
    assert (report_dir / "confusion.png").stat().st_size > 1000
    assert (report_dir / "reliability.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "defect_auc" in printed
    assert "good flagged at recall" in printed and "99% -> " in printed
    # 80 val defects cannot show 99% recall: evaluate says how many would.
    assert "showing 99% takes 299 defects with none missed" in printed
    assert 0.0 <= report["defect_auc"] <= 1.0
    assert "defect_recall_lower_95" in printed
    caught = round(report["defect_recall"] * 80)
    assert report["defect_recall_lower_95"] == pytest.approx(recall_lower_bound(caught, 80))
    assert set(report["false_rejects_at_recall"]) == {"0.95", "0.99", "1"}
    assert "lowest-scored defects (defect threshold" in printed
    weakest = report["hardest"]["defects"][0]
    assert (val_dir / weakest["image"]).is_file() and weakest["image"] in printed

    assert main(["models", "promote", "steel:2"]) == 0
    assert store.production("steel") == 2
    assert main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    assert "* steel:2" in listing and "  steel:1" in listing
    assert main(["models", "rollback", "steel"]) == 0
    assert store.production("steel") == 1
    capsys.readouterr()
    assert main(["models", "show", "steel"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == 1 and shown["production"] is True
    assert shown["calibration"]["temperature"] > 0


def test_continued_training_keeps_the_parents_choices(cli_env: Path, demo_dirs, capsys) -> None:
    train_dir, _ = demo_dirs
    quick = ["--epochs", "1", "--batch-size", "16", "--quiet", "--device", "cpu"]
    parent = ["--arch", "vgg11_bn", "--width", "0.125", "--scales", "64,96", "--pool", "max"]
    parent += ["--stride", "16", "--padding", "replicate", "--normalise", "fixed", "--flips"]
    parent += ["--good-classes", "good,spot"]
    assert main(["train", str(train_dir), "--name", "line", *quick, *parent]) == 0
    # Nothing but --init: the default arch (vgg16_bn at full width) would not even load.
    assert main(["train", str(train_dir), "--name", "line", *quick, "--init", "line:1"]) == 0
    assert main(["train", str(train_dir), "--name", "line", *quick, "--init", "line:2",
                 "--no-flips", "--scales", "64", "--average-epochs", "0.5",
                 "--good-per-epoch", "0.5", "--focal-gamma", "2"]) == 0  # fmt: skip
    capsys.readouterr()

    store = ModelStore(cli_env / "models")
    metas = [store.get(f"line:{v}").metadata for v in (1, 2, 3)]
    assert [m.parent for m in metas] == [None, "line:1", "line:2"]
    for meta in metas:
        assert (meta.spec.arch, meta.spec.width, meta.spec.pool) == ("vgg11_bn", 0.125, "max")
        assert (meta.spec.stride, meta.spec.padding) == (16, "replicate")
        assert meta.preprocessing.normalise == "fixed"
        assert meta.defect_classes == ("crack", "patch", "scratch")
    assert [m.preprocessing.flips for m in metas] == [True, True, False]
    assert [m.preprocessing.scales for m in metas] == [(64, 96), (64, 96), (64,)]
    assert [m.training["config"]["average_epochs"] for m in metas] == [0.0, 0.0, 0.5]
    assert [m.training["config"]["good_per_epoch"] for m in metas] == [1.0, 1.0, 0.5]
    assert [m.training["config"]["focal_gamma"] for m in metas] == [0.0, 0.0, 2.0]


def test_errors_are_one_line_messages_with_exit_code_2(cli_env: Path, tmp_path: Path, capsys):
    assert main(["models", "show", "nothing"]) == 2
    assert "error: no model named 'nothing'" in capsys.readouterr().err
    (tmp_path / "one" / "ok").mkdir(parents=True)
    assert main(["train", str(tmp_path / "one"), "--name", "x"]) == 2
    assert "no classes found" in capsys.readouterr().err


def test_user_mistakes_are_one_line_errors_not_tracebacks(
    cli_env: Path, trained: ModelVersion, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("INSPECTOR_MODEL_STORE", str(trained.path.parent.parent))
    taken = tmp_path / "taken.csv"
    taken.write_text("")
    mistakes = {
        ("classify", str(taken), "--model", "demo", "--output", "o.csv", "--device", "gpu"): (
            "unknown device 'gpu'"
        ),
        ("demo-data", str(tmp_path / "d"), "--val-fraction", "1"): "val_fraction",
        ("demo-data", str(taken)): f"{taken / 'good'}:",
        ("models", "rollback", "nothing"): "no model named 'nothing'",
        ("models", "export", "demo", "--format", "onnx", "--output", str(tmp_path / "m.json")): (
            "must end in .onnx"
        ),
        ("models", "export", "demo", "--format", "torchscript", "--output", str(tmp_path)): (
            "is a folder"
        ),
        ("evaluate", str(tmp_path), "--model", "demo", "--output", str(taken)): "is a file",
    }
    for argv, message in mistakes.items():
        assert main(list(argv)) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, argv
    for argv in (
        ["classify", str(taken), "--model", "demo", "--output", "o.csv", "--batch-size", "-5"],
        ["train", str(tmp_path), "--name", "x", "--workers", "-1"],
        ["train", str(tmp_path), "--name", "x", "--freeze-blocks", "-1"],
        ["train", str(tmp_path), "--name", "x", "--early-epochs", "-2"],
        ["demo-data", str(tmp_path / "d"), "--per-class", "0"],
    ):
        with pytest.raises(SystemExit) as exited:  # argparse: usage and the reason, exit 2
            main(argv)
        assert exited.value.code == 2
        assert "must be" in capsys.readouterr().err


def test_a_damaged_version_is_named_and_the_others_still_listed(
    trained: ModelVersion, tmp_path: Path, monkeypatch, capsys
) -> None:
    import shutil

    store = tmp_path / "models"
    shutil.copytree(trained.path.parent, store / "demo")
    damaged = store / "demo" / "v0002"
    shutil.copytree(trained.path, damaged)
    (damaged / "model.json").write_text("{}")
    monkeypatch.setenv("INSPECTOR_MODEL_STORE", str(store))
    assert main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    assert "demo:1" in listing and "! demo:2  cannot be read" in listing
    assert main(["models", "show", "demo:2"]) == 2
    assert f"{damaged / 'model.json'}: model metadata is incomplete" in capsys.readouterr().err


def test_export_onnx_and_torchscript_reproduce_the_logits(
    cli_env: Path, trained: ModelVersion, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("INSPECTOR_MODEL_STORE", str(trained.path.parent.parent))
    model, _ = ModelStore(trained.path.parent.parent).load(trained.ref)
    x = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        expected = model(x).numpy()

    onnx_path = tmp_path / "m.onnx"
    assert (
        main(["models", "export", trained.ref, "--format", "onnx", "--output", str(onnx_path)]) == 0
    )
    import onnx
    from onnx.reference import ReferenceEvaluator

    proto = onnx.load(str(onnx_path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["inspector"])["classes"] == list(trained.metadata.classes)
    (got,) = ReferenceEvaluator(proto).run(None, {"images": x.numpy()})
    assert np.allclose(got, expected, atol=1e-3)

    ts_path = tmp_path / "m.pt"
    assert (
        main(["models", "export", trained.ref, "--format", "torchscript", "--output", str(ts_path)])
        == 0
    )
    files = {"inspector.json": ""}
    loaded = torch.jit.load(str(ts_path), _extra_files=files)
    assert json.loads(files["inspector.json"])["name"] == "demo"
    with torch.inference_mode():
        assert np.allclose(loaded(x).numpy(), expected, atol=1e-4)


def test_demo_data_command_writes_the_layout(tmp_path: Path, capsys) -> None:
    out = tmp_path / "d"
    assert main(["demo-data", str(out), "--per-class", "3", "--size", "48"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["crack", "good", "patch", "scratch", "spot"]
    assert len(list((out / "crack").iterdir())) == 3
    assert "wrote 15 images" in capsys.readouterr().out


def test_db_upgrade_creates_the_schema_and_check_reports_it(cli_env: Path, capsys) -> None:
    assert main(["db", "check"]) == 2
    assert "inspector db upgrade" in capsys.readouterr().err
    assert main(["db", "upgrade"]) == 0
    assert (cli_env / "inspector.db").is_file()
    assert main(["db", "check"]) == 0
    assert "at revision" in capsys.readouterr().out


def test_tokens_create_prints_the_token_alone_on_its_last_line(cli_env: Path, capsys) -> None:
    from inspector.db.engine import make_engine
    from inspector.db.queries import verify_token

    assert main(["db", "upgrade"]) == 0
    capsys.readouterr()
    assert main(["tokens", "create", "line-3"]) == 0
    token = capsys.readouterr().out.splitlines()[-1]
    engine = make_engine(f"sqlite:///{cli_env / 'inspector.db'}")
    assert verify_token(engine, token) == "line-3"
    assert main(["tokens", "revoke", "line-3"]) == 0
    assert verify_token(engine, token) is None
    assert main(["tokens", "revoke", "line-3"]) == 2
    engine.dispose()

"""``inspector classify``: streaming, one row per image, bad files as error rows."""

import csv
import json
from pathlib import Path

import numpy as np

from inspector.classify import ResultWriter, classify_paths, decoded_batches, iter_image_paths
from inspector.cli import main
from inspector.inference import Classifier
from inspector.store import ModelVersion
from tests.conftest import noise_image, write_image


def mixed_folder(root: Path, demo_val: Path) -> Path:
    """Real demo images plus every kind of bad input."""
    for cls in ("good", "crack"):
        for p in sorted((demo_val / cls).iterdir())[:3]:
            (root / "batch" / cls).mkdir(parents=True, exist_ok=True)
            (root / "batch" / cls / p.name).write_bytes(p.read_bytes())
    (root / "batch" / "empty.png").write_bytes(b"")
    (root / "batch" / "notes.txt").write_text("not an image, and not named like one")
    (root / "batch" / "fake.jpg").write_text("this is text")
    good = (root / "batch" / "good").iterdir().__next__().read_bytes()
    (root / "batch" / "truncated.png").write_bytes(good[: len(good) // 2])
    write_image(root / "batch" / "huge.png", noise_image(np.random.default_rng(0), 400, 400))
    return root / "batch"


def env(monkeypatch, trained: ModelVersion, tmp_path: Path) -> None:
    monkeypatch.setenv("INSPECTOR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("INSPECTOR_MODEL_STORE", str(trained.path.parent.parent))
    monkeypatch.setenv("INSPECTOR_MAX_IMAGE_PIXELS", "100000")


def test_classify_writes_a_row_per_image_and_errors_for_bad_ones(
    tmp_path: Path, monkeypatch, trained: ModelVersion, demo_dirs, capsys
) -> None:
    env(monkeypatch, trained, tmp_path)
    batch = mixed_folder(tmp_path, demo_dirs[1])
    out = tmp_path / "results.csv"
    assert main(["classify", str(batch), "--model", "demo", "--output", str(out)]) == 0
    with out.open() as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    # notes.txt is not named like an image: folders are walked for images only.
    assert len(rows) == 10 and "notes.txt" not in rows
    for name in ("empty.png", "fake.jpg", "truncated.png", "huge.png"):
        assert rows[name]["error"], name
        assert rows[name]["label"] == ""
    assert "empty" in rows["empty.png"]["error"]
    assert "truncated" in rows["truncated.png"]["error"]
    assert "exceeds the limit" in rows["huge.png"]["error"]
    ok = [r for r in rows.values() if not r["error"]]
    assert len(ok) == 6
    header = out.read_text().splitlines()[0].split(",")
    assert header[:8] == [
        "path",
        "label",
        "confidence",
        "is_defect",
        "flagged",
        "uncertain",
        "defect_score",
        "error",
    ]
    assert "prob_crack" in header and "prob96_good" in header
    for r in ok:
        probs = [float(r[f"prob_{c}"]) for c in trained.metadata.classes]
        assert abs(sum(probs) - 1) < 1e-4
        assert r["model"] == trained.ref
        assert r["is_defect"] in {"0", "1"}
    printed = capsys.readouterr().out
    assert "10 image(s)" in printed and "4 error(s)" in printed


def test_named_files_are_taken_as_given_and_jsonl_nests(
    tmp_path: Path, monkeypatch, trained: ModelVersion, demo_dirs
) -> None:
    env(monkeypatch, trained, tmp_path)
    img = sorted((demo_dirs[1] / "spot").iterdir())[0]
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    out = tmp_path / "r.jsonl"
    assert main(["classify", str(img), str(notes), "--model", "demo:1", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(r["path"]).name for r in rows] == [img.name, "notes.txt"]
    assert rows[0]["error"] is None and set(rows[0]["scale_probabilities"]) == {"64", "96"}
    assert rows[1]["error"] and "label" not in rows[1]


def test_a_path_that_is_not_there_is_an_error_row_and_exit_status_2(
    tmp_path: Path, monkeypatch, trained: ModelVersion, demo_dirs, capsys
) -> None:
    env(monkeypatch, trained, tmp_path)
    img = sorted((demo_dirs[1] / "spot").iterdir())[0]
    typo = tmp_path / "batchh"
    out = tmp_path / "r.csv"
    assert main(["classify", str(img), str(typo), "--model", "demo:1", "--output", str(out)]) == 2
    with out.open() as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    assert not rows[img.name]["error"] and rows[img.name]["label"]
    assert rows["batchh"]["error"] and rows["batchh"]["label"] == ""
    assert f"not found: {typo}" in capsys.readouterr().err


def test_json_output_is_one_array_written_as_it_goes(
    tmp_path: Path, monkeypatch, trained: ModelVersion, demo_dirs
) -> None:
    env(monkeypatch, trained, tmp_path)
    imgs = sorted((demo_dirs[1] / "spot").iterdir())[:2]
    out = tmp_path / "r.json"
    assert main(["classify", *map(str, imgs), "--model", "demo:1", "--output", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [Path(r["path"]).name for r in rows] == [p.name for p in imgs]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["classify", str(empty), "--model", "demo:1", "--output", str(out)]) == 1
    assert json.loads(out.read_text()) == []


def test_decoding_streams_in_order_with_bounded_lookahead(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = [write_image(tmp_path / f"{i:03d}.png", noise_image(rng, 8, 8)) for i in range(25)]
    consumed = []

    def lazy():
        for p in paths:
            consumed.append(p)
            yield p

    batches = decoded_batches(lazy(), batch_size=4, max_pixels=10**6, workers=2, prefetch=2)
    first = next(batches)
    assert [p for p, _, _ in first] == paths[:4]
    # In flight: at most the prefetch window (2 batches) plus the batch being filled.
    assert len(consumed) <= 4 * 2 + 4
    rest = [p for b in batches for p, _, _ in b]
    assert rest == paths[4:]


def test_iter_image_paths_walks_folders_sorted_and_skips_temporaries(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("b.png", "a.jpg", ".hidden.png", "c.png.part", "sub/d.bmp"):
        write_image(tmp_path / name.replace(".part", ""), noise_image(rng, 8, 8))
    (tmp_path / "c.png").rename(tmp_path / "c.png.part")
    names = [p.relative_to(tmp_path).as_posix() for p in iter_image_paths([tmp_path])]
    assert names == ["a.jpg", "b.png", "sub/d.bmp"]


def test_summary_counts(tmp_path: Path, trained: ModelVersion, demo_dirs) -> None:
    from inspector.store import ModelStore

    classifier = Classifier.from_store(ModelStore(trained.path.parent.parent), "demo")
    (tmp_path / "bad.png").write_bytes(b"nope")
    with ResultWriter(tmp_path / "o.csv", classifier.meta.classes, (64, 96)) as writer:
        summary = classify_paths(
            classifier, [demo_dirs[1] / "good", tmp_path / "bad.png"], writer, max_pixels=10**6
        )
    assert summary.total == 21 and summary.errors == 1 and summary.classified == 20
    assert sum(summary.by_label.values()) == 20
    assert summary.flagged >= summary.defects

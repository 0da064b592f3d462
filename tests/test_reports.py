"""Evaluation reports name the images a person should look at first."""

import json

import numpy as np

from inspector.calibration import Calibration
from inspector.reports import evaluate_arrays, hardest_images
from inspector.store import ModelVersion

CLASSES = ("crack", "free", "spot")
DEFECTS = ("crack", "spot")


def test_hardest_images_orders_defects_good_parts_and_mixups() -> None:
    names = ["crack/a.png", "crack/b.png", "spot/c.png", "free/d.png", "free/e.png", "free/f.png"]
    probs = np.array(
        [
            [0.90, 0.05, 0.05],  # a: a confident crack
            [0.10, 0.80, 0.10],  # b: a crack taken for good (score 0.2): missed
            [0.50, 0.10, 0.40],  # c: a spot called a crack (caught, wrong class)
            [0.05, 0.90, 0.05],  # d: good
            [0.30, 0.40, 0.30],  # e: good, but scored 0.6: a false alarm
            [0.10, 0.70, 0.20],  # f: good, 0.3
        ]
    )
    labels = np.array([0, 0, 2, 1, 1, 1])
    calibration = Calibration(defect_threshold=0.5, review_threshold=0.5)

    hardest = hardest_images(names, probs, labels, CLASSES, DEFECTS, calibration, limit=2)

    assert [r["image"] for r in hardest["defects"]] == ["crack/b.png", "spot/c.png"]
    missed = hardest["defects"][0]
    assert missed == {
        "image": "crack/b.png",
        "class": "crack",
        "predicted": "free",
        "defect_score": 0.2,
        "class_probability": 0.1,
        "flagged": False,
    }
    assert [r["image"] for r in hardest["good"]] == ["free/e.png", "free/f.png"]
    assert hardest["good"][0]["flagged"] and not hardest["good"][1]["flagged"]
    # Wrong class, least probability on the true class first: b (0.1 on crack), c (0.4 on spot).
    assert [r["image"] for r in hardest["wrong_class"]] == ["crack/b.png", "spot/c.png"]
    json.dumps(hardest)  # stored in report.json as is


def test_a_model_without_a_good_class_lists_only_mixups() -> None:
    probs = np.array([[0.7, 0.3], [0.4, 0.6], [0.2, 0.8]])
    labels = np.array([0, 0, 1])
    hardest = hardest_images(
        ["a/1.png", "a/2.png", "b/3.png"], probs, labels, ("a", "b"), ("a", "b"), Calibration()
    )
    assert hardest["good"] == []
    assert [r["image"] for r in hardest["wrong_class"]] == ["a/2.png"]
    assert hardest["defects"] == []  # every score is 1.0: nothing to rank


def test_reports_list_the_hardest_only_when_names_are_given() -> None:
    logits = np.log(np.array([[[0.8, 0.1, 0.1], [0.2, 0.7, 0.1]]]))
    labels = np.array([0, 1])
    args = (logits, labels, CLASSES, DEFECTS, Calibration(), [224])
    report, _ = evaluate_arrays(*args)
    assert "hardest" not in report
    report, _ = evaluate_arrays(*args, names=["crack/x.png", "free/y.png"])
    assert report["hardest"]["good"][0]["image"] == "free/y.png"


def test_training_stores_the_hold_outs_hardest_images(trained: ModelVersion) -> None:
    hardest = trained.metadata.metrics["hardest"]
    val_counts = trained.metadata.dataset["val_counts"]
    weakest = hardest["defects"][0]
    assert weakest["image"].split("/")[0] in val_counts
    # The defect that sets a catch-them-all threshold is the weakest one of the hold-out.
    threshold = trained.metadata.calibration.defect_threshold
    target = trained.metadata.calibration.target_recall
    defects = sum(n for c, n in val_counts.items() if c in trained.metadata.defect_classes)
    assert target * defects > defects - 1
    assert abs(weakest["defect_score"] - threshold) < 1e-6

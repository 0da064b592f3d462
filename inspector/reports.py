"""Evaluation of a model version on labelled images: a JSON report and its figures."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inspector.calibration import Calibration, fused_probabilities
from inspector.datasets import LabelledFolder, load_images, scan_folder
from inspector.evaluation import (
    defect_indices,
    defect_scores,
    evaluate_predictions,
    reliability_bins,
)
from inspector.figures import plot_confusion_matrix, plot_reliability
from inspector.inference import Classifier
from inspector.store import write_json_atomic

log = logging.getLogger(__name__)

HARDEST_LISTED = 10


def flagged_mask(
    probs: np.ndarray,
    classes: Sequence[str],
    defect_classes: Sequence[str],
    calibration: Calibration,
) -> np.ndarray:
    """Which images a person would see: defects, the review band, and low confidence."""
    is_defect, uncertain = calibration.verdicts(
        defect_scores(probs, classes, defect_classes), probs.max(axis=1)
    )
    return np.asarray(is_defect | uncertain)


def hardest_images(
    names: Sequence[str],
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    defect_classes: Sequence[str],
    calibration: Calibration,
    *,
    limit: int = HARDEST_LISTED,
) -> dict[str, list[dict[str, Any]]]:
    """The images a person should look at first when judging a model on a labelled set.

    ``defects``: the lowest-scored defect images, lowest first (the first of them sets a
    threshold that must catch every defect); ``good``: the highest-scored good images, highest
    first (the first false alarms); ``wrong_class``: images given another class, least
    probability on their own class first. At most ``limit`` of each; no ``defects`` for a model
    without a good class.
    """
    scores = defect_scores(probs, classes, defect_classes)
    flagged = flagged_mask(probs, classes, defect_classes, calibration)
    preds = probs.argmax(axis=1)
    own = probs[np.arange(labels.shape[0]), labels]
    defect = np.isin(labels, defect_indices(classes, defect_classes))

    def rows(order: np.ndarray) -> list[dict[str, Any]]:
        return [
            {
                "image": names[i],
                "class": classes[labels[i]],
                "predicted": classes[preds[i]],
                "defect_score": round(float(scores[i]), 6),
                "class_probability": round(float(own[i]), 6),
                "flagged": bool(flagged[i]),
            }
            for i in order[:limit]
        ]

    # Stable sorts: ties keep the set's order, so the lists are reproducible. A model without a
    # good class scores every image 1.0: its defects have no order.
    has_good = len(defect_indices(classes, defect_classes)) < len(classes)
    defects = np.flatnonzero(defect) if has_good else np.empty(0, dtype=np.int64)
    good = np.flatnonzero(~defect)
    wrong = np.flatnonzero(preds != labels)
    return {
        "defects": rows(defects[np.argsort(scores[defects], kind="stable")]),
        "good": rows(good[np.argsort(-scores[good], kind="stable")]),
        "wrong_class": rows(wrong[np.argsort(own[wrong], kind="stable")]),
    }


def evaluate_arrays(
    logits: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    defect_classes: Sequence[str],
    calibration: Calibration,
    scales: Sequence[int],
    *,
    names: Sequence[str] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(report, figure data) of multi-scale logits (S, N, K) under ``calibration``; with the
    images' ``names``, the report lists the hardest of them (``hardest_images``)."""
    probs = fused_probabilities(logits, calibration.temperature)
    report = evaluate_predictions(
        probs,
        labels,
        classes,
        defect_classes,
        threshold=calibration.defect_threshold,
        flagged=flagged_mask(probs, classes, defect_classes, calibration),
    ).to_dict()
    bins = reliability_bins(probs, labels)
    report["per_scale_accuracy"] = {
        str(scale): float((logits[s].argmax(1) == labels).mean()) for s, scale in enumerate(scales)
    }
    report["calibration"] = calibration.to_dict()
    if names is not None:
        report["hardest"] = hardest_images(
            names, probs, labels, classes, defect_classes, calibration
        )
    return report, {"bins": bins}


def write_evaluation(
    folder: Path, report: dict[str, Any], figures: dict[str, Any], *, prefix: str = ""
) -> dict[str, Path]:
    """Write ``<prefix>report.json``, the confusion matrix and the reliability diagram."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "report": folder / f"{prefix}report.json",
        "confusion": folder / f"{prefix}confusion.png",
        "reliability": folder / f"{prefix}reliability.png",
    }
    write_json_atomic(paths["report"], report)
    plot_confusion_matrix(np.asarray(report["confusion"]), report["classes"], paths["confusion"])
    plot_reliability(figures["bins"], float(report["ece"]), paths["reliability"])
    return paths


def folder_logits(
    classifier: Classifier, data_dir: Path, *, max_pixels: int, workers: int = 2
) -> tuple[LabelledFolder, np.ndarray]:
    """A folder-per-class set whose classes ``classifier`` knows, and its logits (S, N, K)."""
    meta = classifier.meta
    folder = scan_folder(data_dir, classes=meta.classes, min_classes=1)
    images = load_images(
        folder,
        max_pixels=max_pixels,
        max_short_side=max(meta.preprocessing.scales),
        workers=workers,
    )
    return folder, classifier.logits([im.astype(np.float32) for im in images])


def evaluate_folder(
    classifier: Classifier, data_dir: Path, *, max_pixels: int, workers: int = 2
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate ``classifier`` on a folder-per-class set whose classes it knows."""
    meta = classifier.meta
    folder, logits = folder_logits(classifier, data_dir, max_pixels=max_pixels, workers=workers)
    report, figures = evaluate_arrays(
        logits,
        np.asarray(folder.labels()),
        meta.classes,
        meta.defect_classes,
        meta.calibration,
        meta.preprocessing.scales,
        names=folder.names(),
    )
    report["model"] = meta.ref
    report["data_dir"] = str(data_dir)
    report["counts"] = folder.counts()
    return report, figures

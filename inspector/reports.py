"""Evaluation of a model version on labelled images: a JSON report and its figures."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inspector.calibration import Calibration, fused_probabilities
from inspector.datasets import load_images, scan_folder
from inspector.evaluation import defect_scores, evaluate_predictions, reliability_bins
from inspector.figures import plot_confusion_matrix, plot_reliability
from inspector.inference import Classifier
from inspector.store import write_json_atomic

log = logging.getLogger(__name__)


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


def evaluate_arrays(
    logits: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    defect_classes: Sequence[str],
    calibration: Calibration,
    scales: Sequence[int],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(report, figure data) of multi-scale logits (S, N, K) under ``calibration``."""
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


def evaluate_folder(
    classifier: Classifier, data_dir: Path, *, max_pixels: int, workers: int = 2
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate ``classifier`` on a folder-per-class set whose classes it knows."""
    meta = classifier.meta
    folder = scan_folder(data_dir, classes=meta.classes, min_classes=1)
    images = load_images(
        folder,
        max_pixels=max_pixels,
        max_short_side=max(meta.preprocessing.scales),
        workers=workers,
    )
    logits = classifier.logits([im.astype(np.float32) for im in images])
    labels = np.asarray(folder.labels())
    report, figures = evaluate_arrays(
        logits,
        labels,
        meta.classes,
        meta.defect_classes,
        meta.calibration,
        meta.preprocessing.scales,
    )
    report["model"] = meta.ref
    report["data_dir"] = str(data_dir)
    report["counts"] = folder.counts()
    return report, figures

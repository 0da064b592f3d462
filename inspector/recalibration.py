"""Refit a stored version's calibration on more labelled images, keeping its weights.

Training calibrates on its hold-out, a fifth of the training folder: a few dozen defects, so a
single hard one sets a catch-every-defect threshold. A line that has since gathered more
labelled images (human verdicts, a test set of its own) refits the temperature, the defect
threshold and the review band on them; the result is a new version with the same weights,
which is promoted like any other.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from inspector.calibration import Calibration, calibrate
from inspector.datasets import fingerprint
from inspector.errors import ConfigurationError, DatasetError
from inspector.evaluation import defect_indices
from inspector.inference import Classifier
from inspector.reports import evaluate_arrays, folder_logits, write_evaluation
from inspector.store import ModelStore, ModelVersion

log = logging.getLogger(__name__)

__all__ = ["recalibrate"]


def recalibrate(
    store: ModelStore,
    ref: str,
    data_dir: Path,
    *,
    target_recall: float | None = None,
    max_review_rate: float | None = None,
    device: str = "auto",
    batch_size: int = 32,
    max_pixels: int,
    workers: int = 2,
    promote: bool = False,
) -> ModelVersion:
    """Register a copy of version ``ref`` calibrated on the labelled folder ``data_dir``.

    ``target_recall`` and ``max_review_rate`` default to the version's own. Its metrics are
    measured on ``data_dir`` under the new calibration (``in_sample``: the thresholds were fitted
    on those very images), with ``previous`` holding the same figures under the old one.
    """
    # Checked before the images are read: a typo should not cost a pass over a large set.
    if target_recall is not None and not 0.0 < target_recall <= 1.0:
        raise ConfigurationError(f"target recall must lie in (0, 1], got {target_recall}")
    if max_review_rate is not None and not 0.0 <= max_review_rate <= 1.0:
        raise ConfigurationError(f"max review rate must lie in [0, 1], got {max_review_rate}")
    classifier = Classifier.from_store(store, ref, device=device, batch_size=batch_size)
    meta = classifier.meta
    folder, logits = folder_logits(classifier, data_dir, max_pixels=max_pixels, workers=workers)
    labels = np.asarray(folder.labels())
    defect = np.isin(labels, defect_indices(meta.classes, meta.defect_classes))
    if len(meta.defect_classes) < len(meta.classes) and (defect.all() or not defect.any()):
        raise DatasetError(
            f"{data_dir}: calibrating a defect threshold needs defect and good images; found "
            + ", ".join(f"{c}: {n}" for c, n in folder.counts().items())
        )
    old = meta.calibration
    review_rate = max_review_rate
    if review_rate is None:
        review_rate = float(meta.training.get("config", {}).get("max_review_rate", 0.01))
    calibration = calibrate(
        logits,
        labels,
        meta.classes,
        meta.defect_classes,
        target_recall=old.target_recall if target_recall is None else target_recall,
        max_review_rate=review_rate,
    )

    def report_under(cal: Calibration) -> tuple[dict[str, object], dict[str, object]]:
        return evaluate_arrays(
            logits,
            labels,
            meta.classes,
            meta.defect_classes,
            cal,
            meta.preprocessing.scales,
            names=folder.names(),
        )

    report, figures = report_under(calibration)
    previous, _ = report_under(old)
    report["in_sample"] = True
    report["previous"] = {
        key: previous[key]
        for key in ("accuracy", "defect_recall", "false_reject_rate", "flagged_good_rate", "ece")
    } | {"calibration": old.to_dict(), "model": meta.ref}
    new_meta = replace(
        meta,
        calibration=calibration,
        parent=meta.ref,
        init=meta.ref,
        dataset={
            **meta.dataset,
            "calibration_root": str(data_dir),
            "calibration_counts": folder.counts(),
            "calibration_fingerprint": fingerprint(folder),
        },
        training={**meta.training, "recalibrated_from": meta.ref},
        metrics=report,
    )
    weights, _ = store.load(meta.ref)  # as stored: on the CPU, in the standard layout
    mv = store.register(weights, new_meta, promote=promote)
    write_evaluation(mv.path, report, figures, prefix="calibration_")
    log.info("%s: %s recalibrated on %d images of %s", mv.ref, meta.ref, len(labels), data_dir)
    return mv

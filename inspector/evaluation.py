"""Metrics of a classifier on a labelled set: confusion, per-class and defect-level rates, ECE.
Pure numpy: ``probs`` are class probabilities (N, K), ``labels`` true class indices (N,)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from inspector.errors import ConfigurationError

__all__ = [
    "EvaluationReport",
    "confusion_matrix",
    "defect_indices",
    "defect_scores",
    "evaluate_predictions",
    "expected_calibration_error",
    "reliability_bins",
]


def _as_probs(probs: ArrayLike) -> NDArray[np.float64]:
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 2:
        raise ConfigurationError(f"probs must be a 2-D array (N, K), got shape {arr.shape}")
    return arr


def _as_labels(labels: ArrayLike, num_images: int, num_classes: int) -> NDArray[np.int64]:
    raw = np.asarray(labels)
    if raw.ndim != 1 or raw.shape[0] != num_images:
        raise ConfigurationError(
            f"labels must be a 1-D array of {num_images} class indices, got shape {raw.shape}"
        )
    if raw.size and not np.issubdtype(raw.dtype, np.integer):
        raise ConfigurationError(f"labels must be integer class indices, got dtype {raw.dtype}")
    arr = raw.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ConfigurationError(
            f"labels must lie in [0, {num_classes}), got values in [{arr.min()}, {arr.max()}]"
        )
    return arr


def defect_indices(classes: Sequence[str], defect_classes: Sequence[str]) -> NDArray[np.int64]:
    """Indices in ``classes`` of the ``defect_classes`` (in the order of ``classes``)."""
    unknown = [name for name in defect_classes if name not in classes]
    if unknown:
        raise ConfigurationError(
            f"defect classes {unknown} are not among the classes {list(classes)}"
        )
    wanted = set(defect_classes)
    return np.array([i for i, name in enumerate(classes) if name in wanted], dtype=np.int64)


def defect_scores(
    probs: ArrayLike, classes: Sequence[str], defect_classes: Sequence[str]
) -> NDArray[np.float64]:
    """The defect score of each image: its probability mass on the defect classes, shape (N,).

    With no good class at all every image is a defect: the scores are exactly 1.0.
    """
    arr = _as_probs(probs)
    if arr.shape[1] != len(classes):
        raise ConfigurationError(
            f"probs has {arr.shape[1]} columns but there are {len(classes)} classes"
        )
    idx = defect_indices(classes, defect_classes)
    if idx.size == len(classes):
        return np.ones(arr.shape[0], dtype=np.float64)
    return np.asarray(arr[:, idx].sum(axis=1), dtype=np.float64)


def confusion_matrix(labels: ArrayLike, preds: ArrayLike, num_classes: int) -> NDArray[np.int64]:
    """Counts (num_classes, num_classes): rows are true classes, columns predicted classes."""
    if num_classes < 1:
        raise ConfigurationError(f"num_classes must be at least 1, got {num_classes}")
    raw = np.asarray(labels)
    true = _as_labels(raw, raw.shape[0] if raw.ndim == 1 else -1, num_classes)
    pred = _as_labels(preds, true.shape[0], num_classes)
    flat = np.bincount(true * num_classes + pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def _bin_index(confidence: NDArray[np.float64], n_bins: int) -> NDArray[np.int64]:
    # Bin i holds confidences in (i/n, (i+1)/n]; the first bin also holds 0.
    idx = np.ceil(confidence * n_bins).astype(np.int64) - 1
    return np.clip(idx, 0, n_bins - 1)


def reliability_bins(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> list[dict[str, Any]]:
    """Top-1 confidence against accuracy in ``n_bins`` equal-width bins over [0, 1].

    One dict per bin, empty bins included: ``lower``, ``upper``, ``count`` (int), and the mean
    top-1 ``confidence`` and ``accuracy`` of its images (both ``None`` when the bin is empty).
    Bin i holds confidences in (lower, upper]; a confidence of exactly 0 goes in the first bin.
    """
    if n_bins < 1:
        raise ConfigurationError(f"n_bins must be at least 1, got {n_bins}")
    arr = _as_probs(probs)
    true = _as_labels(labels, arr.shape[0], arr.shape[1])
    confidence = arr.max(axis=1) if arr.shape[0] else np.zeros(0)
    correct = (arr.argmax(axis=1) == true) if arr.shape[0] else np.zeros(0, dtype=bool)
    which = _bin_index(confidence, n_bins)
    bins: list[dict[str, Any]] = []
    for i in range(n_bins):
        members = which == i
        count = int(members.sum())
        bins.append(
            {
                "lower": i / n_bins,
                "upper": (i + 1) / n_bins,
                "count": count,
                "confidence": float(confidence[members].mean()) if count else None,
                "accuracy": float(correct[members].mean()) if count else None,
            }
        )
    return bins


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """ECE: sum over bins of (bin size / N) * |accuracy - mean confidence|, top-1, equal width.

    0.0 for an empty set.
    """
    bins = reliability_bins(probs, labels, n_bins)
    total = sum(b["count"] for b in bins)
    if total == 0:
        return 0.0
    return float(
        sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])
    )


def defect_auc(scores: ArrayLike, is_defect: ArrayLike) -> float | None:
    """Area under the ROC curve of defect scores: the chance that a defect image scores above a
    good one (ties count half). How well the scores rank, whatever the threshold; None without
    both kinds of image."""
    s = np.asarray(scores, dtype=np.float64)
    d = np.asarray(is_defect, dtype=bool)
    n_pos, n_neg = int(d.sum()), int((~d).sum())
    if not n_pos or not n_neg:
        return None
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2.0)[inverse]  # 1-based, ties averaged
    return float((ranks[d].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def false_rejects_at_recall(
    scores: ArrayLike, is_defect: ArrayLike, recalls: Sequence[float] = (0.95, 0.99, 1.0)
) -> dict[str, float] | None:
    """For each recall, the share of good images at or above the highest threshold that reaches
    it on these very images: the operating curve of this set, not of the calibrated threshold
    (which was fitted elsewhere). None without both kinds of image."""
    s = np.asarray(scores, dtype=np.float64)
    d = np.asarray(is_defect, dtype=bool)
    pos, neg = np.sort(s[d])[::-1], s[~d]
    if not pos.size or not neg.size:
        return None
    out: dict[str, float] = {}
    for recall in recalls:
        needed = min(pos.size, max(1, math.ceil(recall * pos.size - 1e-9)))
        out[f"{recall:g}"] = float((neg >= pos[needed - 1]).mean())
    return out


RECALL_CONFIDENCE = 0.95


def recall_lower_bound(
    caught: int, total: int, confidence: float = RECALL_CONFIDENCE
) -> float | None:
    """The recall that ``caught`` of ``total`` defects shows with ``confidence``: the one-sided
    Clopper-Pearson lower bound, the smallest true recall under which catching this many or
    more has a chance of at least 1 - ``confidence``. None without defects.

    With none missed it is (1 - confidence) ** (1 / total): 47 of 47 shows 93.8% at 95%, and
    showing 99% takes ``defects_to_show(0.99)`` = 299 defects without a miss.
    """
    if not 0 <= caught <= total:
        raise ConfigurationError(f"caught must lie in [0, {total}], got {caught}")
    if not 0.0 < confidence < 1.0:
        raise ConfigurationError(f"confidence must lie in (0, 1), got {confidence}")
    if total == 0:
        return None
    if caught == 0:
        return 0.0
    alpha = 1.0 - confidence
    if caught == total:
        return float(alpha ** (1.0 / total))
    j = np.arange(caught, total + 1)
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, total + 1)))])
    log_comb = log_fact[total] - log_fact[j] - log_fact[total - j]

    def upper_tail(p: float) -> float:  # P(X >= caught) for X ~ Binomial(total, p)
        terms = log_comb + j * math.log(p) + (total - j) * math.log1p(-p)
        top = float(terms.max())
        return math.exp(top) * float(np.exp(terms - top).sum())

    lo, hi = 0.0, caught / total  # the tail rises with p; at the observed rate it exceeds alpha
    for _ in range(60):
        mid = (lo + hi) / 2.0
        if mid > 0.0 and upper_tail(mid) >= alpha:
            hi = mid
        else:
            lo = mid
    return float(lo)


def defects_to_show(recall: float, confidence: float = RECALL_CONFIDENCE) -> int:
    """How many defects, every one caught, it takes to show ``recall`` with ``confidence``."""
    if not 0.0 < recall < 1.0:
        raise ConfigurationError(f"recall must lie in (0, 1), got {recall}")
    return math.ceil(math.log(1.0 - confidence) / math.log(recall) - 1e-9)


def _round(value: Any) -> Any:
    """Plain JSON types, floats rounded to 6 places (recursively)."""
    if isinstance(value, dict):
        return {str(k): _round(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_round(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return round(float(value), 6)
    return value


@dataclass
class EvaluationReport:
    """Everything measured on one labelled set; ``to_dict()`` is what gets written as JSON.

    ``defect_recall``: fraction of true-defect images predicted defect (score >= threshold).
    ``false_reject_rate``: fraction of true-good images predicted defect.
    ``flagged_good_rate``: fraction of true-good images flagged (defect or sent to review).
    ``defect_recall_lower_95``: the recall this set shows with 95% confidence
    (``recall_lower_bound``): how far a set this size can vouch for ``defect_recall``.
    ``defect_auc`` and ``false_rejects_at_recall``: how well the defect scores separate defects
    from good parts on this set, whatever the threshold (see their functions).
    Each is ``None`` when the set has no image of the kind it divides by.
    """

    num_images: int
    classes: list[str]
    defect_classes: list[str]
    accuracy: float
    macro_f1: float
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]
    defect_recall: float | None
    false_reject_rate: float | None
    flagged_good_rate: float | None
    ece: float
    threshold: float
    defect_auc: float | None = None
    false_rejects_at_recall: dict[str, float] | None = None
    defect_recall_lower_95: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable plain types only; floats rounded to 6 places."""
        return {
            "num_images": int(self.num_images),
            "classes": [str(c) for c in self.classes],
            "defect_classes": [str(c) for c in self.defect_classes],
            "accuracy": _round(self.accuracy),
            "macro_f1": _round(self.macro_f1),
            "per_class": _round(self.per_class),
            "confusion": _round(self.confusion),
            "defect_recall": _round(self.defect_recall),
            "defect_recall_lower_95": _round(self.defect_recall_lower_95),
            "false_reject_rate": _round(self.false_reject_rate),
            "flagged_good_rate": _round(self.flagged_good_rate),
            "ece": _round(self.ece),
            "threshold": _round(self.threshold),
            "defect_auc": _round(self.defect_auc),
            "false_rejects_at_recall": _round(self.false_rejects_at_recall),
        }


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else 0.0


def evaluate_predictions(
    probs: ArrayLike,
    labels: ArrayLike,
    classes: Sequence[str],
    defect_classes: Sequence[str],
    *,
    threshold: float = 0.5,
    flagged: NDArray[np.bool_] | None = None,
) -> EvaluationReport:
    """Score class probabilities against true labels.

    The predicted class is the argmax of ``probs``; an image is predicted a defect when its
    defect score is >= ``threshold``. ``flagged`` (N,) marks the images sent to a human (for
    instance predicted defect *or* in the review band); it defaults to "predicted defect".
    Precision of a class never predicted, and recall of a class with no image, are 0.0;
    ``macro_f1`` is the plain mean of the per-class F1 over the classes the set holds or the
    model predicted (as scikit-learn counts it): a class absent from both has no F1 to average.
    """
    arr = _as_probs(probs)
    num_images, num_classes = arr.shape
    if num_images == 0:
        raise ConfigurationError("cannot evaluate an empty set of images")
    if num_classes != len(classes):
        raise ConfigurationError(
            f"probs has {num_classes} columns but there are {len(classes)} classes"
        )
    if not 0.0 <= threshold <= 1.0:
        raise ConfigurationError(f"threshold must lie in [0, 1], got {threshold}")
    true = _as_labels(labels, num_images, num_classes)
    preds = arr.argmax(axis=1).astype(np.int64)

    confusion = confusion_matrix(true, preds, num_classes)
    tp = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0)
    support = confusion.sum(axis=1)
    per_class: dict[str, dict[str, float]] = {}
    f1s: list[float] = []
    for k, name in enumerate(classes):
        precision = _ratio(tp[k], predicted[k])
        recall = _ratio(tp[k], support[k])
        f1 = _ratio(2 * precision * recall, precision + recall)
        f1s.append(f1)
        per_class[str(name)] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": int(support[k]),
        }

    scores = defect_scores(arr, classes, defect_classes)
    predicted_defect = scores >= threshold
    is_defect = np.isin(true, defect_indices(classes, defect_classes))
    is_good = ~is_defect
    if flagged is None:
        flag = predicted_defect
    else:
        flag = np.asarray(flagged, dtype=bool)
        if flag.shape != (num_images,):
            raise ConfigurationError(f"flagged must have shape ({num_images},), got {flag.shape}")

    n_defect = int(is_defect.sum())
    n_good = int(is_good.sum())
    return EvaluationReport(
        num_images=int(num_images),
        classes=[str(c) for c in classes],
        defect_classes=[str(c) for c in classes if c in set(defect_classes)],
        accuracy=float(tp.sum() / num_images),
        macro_f1=float(np.mean([f for f, n in zip(f1s, support + predicted, strict=True) if n])),
        per_class=per_class,
        confusion=confusion.tolist(),
        defect_recall=(float(predicted_defect[is_defect].sum() / n_defect) if n_defect else None),
        false_reject_rate=float(predicted_defect[is_good].sum() / n_good) if n_good else None,
        flagged_good_rate=float(flag[is_good].sum() / n_good) if n_good else None,
        ece=expected_calibration_error(arr, true),
        threshold=float(threshold),
        defect_auc=defect_auc(scores, is_defect),
        false_rejects_at_recall=false_rejects_at_recall(scores, is_defect),
        defect_recall_lower_95=recall_lower_bound(
            int(predicted_defect[is_defect].sum()), n_defect, 0.95
        ),
    )

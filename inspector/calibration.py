"""Post-hoc calibration on a held-out set (pure numpy, deterministic): the temperature of the
multi-scale fusion, the defect threshold for a target recall and the human-review band below it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from inspector.errors import ConfigurationError
from inspector.evaluation import defect_indices, defect_scores

__all__ = [
    "MIN_CONFIDENCE_GRID",
    "TEMPERATURE_PRIOR_SIGMA",
    "TEMPERATURE_RANGE",
    "Calibration",
    "calibrate",
    "fit_temperature",
    "fused_probabilities",
    "review_threshold",
    "select_min_confidence",
    "softmax",
    "threshold_for_recall",
]

TEMPERATURE_RANGE = (0.05, 20.0)
# A log-normal prior on the temperature, centred on 1 (the network's own scale). With a few
# hundred held-out images the data decides; with a hold-out the model gets all right, the NLL
# keeps falling as T -> 0 and only the prior stops the fit from making every answer certain.
TEMPERATURE_PRIOR_SIGMA = 1.0
MIN_CONFIDENCE_GRID = (0.0, 0.3, 0.4, 0.5)
_COARSE_STEPS = 61
_GOLDEN_ITERATIONS = 60


def softmax(logits: ArrayLike, temperature: float = 1.0) -> NDArray[np.float64]:
    """Softmax of ``logits / temperature`` along the last axis, stable for large logits."""
    if not temperature > 0 or not math.isfinite(temperature):
        raise ConfigurationError(f"temperature must be a finite number > 0, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=-1, keepdims=True), dtype=np.float64)


def fused_probabilities(logits: ArrayLike, temperature: float = 1.0) -> NDArray[np.float64]:
    """Class probabilities (N, K) of single-scale (N, K) or multi-scale (S, N, K) logits.

    Multi-scale: the mean over the S scales of ``softmax(logits_s / temperature)``.
    """
    arr = np.asarray(logits, dtype=np.float64)
    if arr.ndim == 2:
        return softmax(arr, temperature)
    if arr.ndim == 3:
        if arr.shape[0] == 0:
            raise ConfigurationError("multi-scale logits need at least one scale")
        return np.asarray(softmax(arr, temperature).mean(axis=0), dtype=np.float64)
    raise ConfigurationError(f"logits must have shape (N, K) or (S, N, K), got {arr.shape}")


def _check_labels(labels: ArrayLike, num_images: int, num_classes: int) -> NDArray[np.int64]:
    raw = np.asarray(labels)
    if raw.ndim != 1 or raw.shape[0] != num_images:
        raise ConfigurationError(
            f"labels must be a 1-D array of {num_images} class indices, got shape {raw.shape}"
        )
    arr = raw.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ConfigurationError(f"labels must lie in [0, {num_classes})")
    return arr


def _nll(logits: NDArray[np.float64], labels: NDArray[np.int64], temperature: float) -> float:
    probs = fused_probabilities(logits, temperature)
    picked = probs[np.arange(labels.shape[0]), labels]
    return float(-np.mean(np.log(np.maximum(picked, 1e-300))))


def fit_temperature(
    logits: ArrayLike, labels: ArrayLike, *, prior_sigma: float | None = TEMPERATURE_PRIOR_SIGMA
) -> float:
    """The temperature T in [0.05, 20] that best explains the held-out labels.

    It minimises the summed NLL of the fused probabilities plus ``(log T)^2 / (2 sigma^2)``,
    the negative log of a log-normal prior centred on T = 1 (``prior_sigma=None``: plain NLL).
    A log-spaced grid of 61 values, then golden-section search (in log T) between the
    neighbours of the best grid value. Deterministic. 1.0 for an empty set.
    """
    arr = np.asarray(logits, dtype=np.float64)
    if arr.ndim not in (2, 3):
        raise ConfigurationError(f"logits must have shape (N, K) or (S, N, K), got {arr.shape}")
    num_images, num_classes = arr.shape[-2], arr.shape[-1]
    true = _check_labels(labels, num_images, num_classes)
    if num_images == 0:
        return 1.0
    if prior_sigma is not None and not prior_sigma > 0:
        raise ConfigurationError(f"prior_sigma must be > 0 or None, got {prior_sigma}")

    def objective(log_t: float) -> float:
        loss = _nll(arr, true, math.exp(log_t))
        if prior_sigma is not None:
            loss += log_t**2 / (2.0 * prior_sigma**2) / num_images
        return loss

    lo, hi = math.log(TEMPERATURE_RANGE[0]), math.log(TEMPERATURE_RANGE[1])
    grid = np.linspace(lo, hi, _COARSE_STEPS)
    losses = [objective(float(g)) for g in grid]
    best = int(np.argmin(losses))
    a = float(grid[max(best - 1, 0)])
    b = float(grid[min(best + 1, _COARSE_STEPS - 1)])

    inv_phi = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - inv_phi * (b - a), a + inv_phi * (b - a)
    fc, fd = objective(c), objective(d)
    for _ in range(_GOLDEN_ITERATIONS):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - inv_phi * (b - a)
            fc = objective(c)
        else:
            a, c, fc = c, d, fd
            d = a + inv_phi * (b - a)
            fd = objective(d)
    candidates = [(losses[best], float(grid[best])), (fc, c), (fd, d)]
    _, log_t = min(candidates)
    return float(math.exp(log_t))


def _split_scores(
    scores: ArrayLike, is_defect: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    s = np.asarray(scores, dtype=np.float64)
    d = np.asarray(is_defect, dtype=bool)
    if s.ndim != 1 or d.shape != s.shape:
        raise ConfigurationError(
            f"scores and is_defect must be 1-D of the same length, got {s.shape} and {d.shape}"
        )
    return s[d], s[~d]


def _check_fraction(name: str, value: float, *, allow_zero: bool) -> None:
    ok = (0.0 <= value <= 1.0) if allow_zero else (0.0 < value <= 1.0)
    if not ok:
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ConfigurationError(f"{name} must lie in {interval}, got {value}")


def threshold_for_recall(
    scores: ArrayLike, is_defect: ArrayLike, target_recall: float = 0.99
) -> float:
    """The largest t with: fraction of true-defect images whose score >= t is >= target_recall.

    That is the k-th highest defect score, k = ceil(target_recall * number of defects).
    0.5 when there is no defect example; 0.0 when there is no good example.
    """
    _check_fraction("target_recall", target_recall, allow_zero=False)
    defect, good = _split_scores(scores, is_defect)
    if defect.size == 0:
        return 0.5
    if good.size == 0:
        return 0.0
    k = math.ceil(target_recall * defect.size - 1e-9)
    k = min(max(k, 1), defect.size)
    return float(np.sort(defect)[::-1][k - 1])


def review_threshold(
    scores: ArrayLike,
    is_defect: ArrayLike,
    defect_threshold: float,
    *,
    target_recall: float = 0.995,
    max_review_rate: float = 0.01,
) -> float:
    """The lower edge r <= defect_threshold of the review band [r, defect_threshold).

    r starts at ``threshold_for_recall(scores, is_defect, target_recall)``; if more than
    ``max_review_rate`` of the good images would fall in the band, r is raised to the smallest
    value that keeps that rate. Never above ``defect_threshold``.
    """
    _check_fraction("defect_threshold", defect_threshold, allow_zero=True)
    _check_fraction("max_review_rate", max_review_rate, allow_zero=True)
    r = min(threshold_for_recall(scores, is_defect, target_recall), defect_threshold)
    _, good = _split_scores(scores, is_defect)
    if good.size == 0:
        return float(r)
    allowed = math.floor(max_review_rate * good.size + 1e-9)
    below = np.sort(good[good < defect_threshold])[::-1]
    if below.size > allowed:
        # Excluding the (allowed+1)-th highest good score below the threshold (and all lower
        # ones) keeps at most `allowed` good images in the band.
        floor_r = float(np.nextafter(below[allowed], np.inf))
        r = max(r, floor_r)
    return float(min(r, defect_threshold))


def select_min_confidence(
    probs: ArrayLike, labels: ArrayLike, grid: Sequence[float] = MIN_CONFIDENCE_GRID
) -> float:
    """The largest c in ``grid`` such that images with top-1 confidence < c exist and have
    accuracy < 0.5 (the model is mostly wrong below c); 0.0 when no grid value qualifies.
    """
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 2:
        raise ConfigurationError(f"probs must be a 2-D array (N, K), got shape {arr.shape}")
    true = _check_labels(labels, arr.shape[0], arr.shape[1])
    if arr.shape[0] == 0:
        return 0.0
    confidence = arr.max(axis=1)
    correct = arr.argmax(axis=1) == true
    for c in sorted(grid, reverse=True):
        below = confidence < c
        if below.any() and float(correct[below].mean()) < 0.5:
            return float(c)
    return 0.0


_FIELDS = ("temperature", "defect_threshold", "review_threshold", "min_confidence", "target_recall")


@dataclass(frozen=True)
class Calibration:
    """What calibration decided; stored beside a model and applied at inference.

    An image is a defect when its defect score >= ``defect_threshold``; it goes to human review
    when ``review_threshold`` <= score < ``defect_threshold`` or when its top-1 confidence is
    below ``min_confidence``. The defaults are "uncalibrated": T = 1, a 0.5 threshold, no band.
    Construction validates every field (ConfigurationError).
    """

    temperature: float = 1.0
    defect_threshold: float = 0.5
    review_threshold: float = 0.5
    min_confidence: float = 0.0
    target_recall: float = 0.99

    def __post_init__(self) -> None:
        for name in _FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise ConfigurationError(f"calibration {name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigurationError(
                f"calibration temperature must be a finite number > 0, got {self.temperature}"
            )
        for name in ("defect_threshold", "review_threshold", "min_confidence"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigurationError(f"calibration {name} must lie in [0, 1], got {value}")
        if not 0.0 < self.target_recall <= 1.0:
            raise ConfigurationError(
                f"calibration target_recall must lie in (0, 1], got {self.target_recall}"
            )

    def to_dict(self) -> dict[str, float]:
        """Plain floats, JSON-serialisable."""
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        """Build from a mapping; unknown keys are ignored, missing ones take their defaults."""
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"calibration must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def verdicts(
        self, scores: ArrayLike, confidence: ArrayLike
    ) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
        """(is_defect, uncertain) per image; an image is flagged for a person when either holds.

        Uncertain: a good verdict inside the review band, or a top-1 confidence below
        ``min_confidence``. The one place these rules live: serving and evaluation both use it.
        """
        s = np.asarray(scores, dtype=np.float64)
        is_defect = s >= self.defect_threshold
        uncertain = (~is_defect & (s >= self.review_threshold)) | (
            np.asarray(confidence, dtype=np.float64) < self.min_confidence
        )
        return is_defect, uncertain

    def apply(self, logits: ArrayLike) -> NDArray[np.float64]:
        """Fused, temperature-scaled probabilities (N, K) of (N, K) or (S, N, K) logits."""
        return fused_probabilities(logits, self.temperature)


def calibrate(
    logits: ArrayLike,
    labels: ArrayLike,
    classes: Sequence[str],
    defect_classes: Sequence[str],
    *,
    target_recall: float = 0.99,
    max_review_rate: float = 0.01,
    review_recall: float = 0.995,
) -> Calibration:
    """Fit a Calibration on a held-out labelled set of (N, K) or (S, N, K) logits.

    Temperature by NLL under a prior (``fit_temperature``); defect threshold =
    ``threshold_for_recall(target_recall)`` on the calibrated defect scores; review threshold =
    ``review_threshold`` for ``review_recall`` capped by ``max_review_rate`` of good images;
    min confidence by ``select_min_confidence``.
    """
    arr = np.asarray(logits, dtype=np.float64)
    if arr.ndim not in (2, 3):
        raise ConfigurationError(f"logits must have shape (N, K) or (S, N, K), got {arr.shape}")
    if arr.shape[-1] != len(classes):
        raise ConfigurationError(
            f"logits have {arr.shape[-1]} classes but {len(classes)} class names were given"
        )
    true = _check_labels(labels, arr.shape[-2], arr.shape[-1])
    _check_fraction("target_recall", target_recall, allow_zero=False)
    _check_fraction("review_recall", review_recall, allow_zero=False)
    _check_fraction("max_review_rate", max_review_rate, allow_zero=True)

    temperature = fit_temperature(arr, true)
    probs = fused_probabilities(arr, temperature)
    scores = defect_scores(probs, classes, defect_classes)
    is_defect = np.isin(true, defect_indices(classes, defect_classes))
    # Summed probabilities can exceed 1 by a rounding error; thresholds live in [0, 1].
    threshold = min(max(threshold_for_recall(scores, is_defect, target_recall), 0.0), 1.0)
    review = review_threshold(
        scores,
        is_defect,
        threshold,
        target_recall=review_recall,
        max_review_rate=max_review_rate,
    )
    return Calibration(
        temperature=temperature,
        defect_threshold=threshold,
        review_threshold=review,
        min_confidence=select_min_confidence(probs, true),
        target_recall=target_recall,
    )

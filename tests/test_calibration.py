import json
import math

import numpy as np
import pytest

from inspector.calibration import (
    Calibration,
    calibrate,
    fit_temperature,
    fused_probabilities,
    review_threshold,
    select_min_confidence,
    softmax,
    threshold_for_recall,
)
from inspector.errors import ConfigurationError
from inspector.evaluation import defect_scores


def sample_labels(true_logits, seed):
    rng = np.random.default_rng(seed)
    probs = softmax(true_logits)
    cumulative = probs.cumsum(axis=1)
    u = rng.uniform(size=(probs.shape[0], 1))
    return np.minimum((u > cumulative).sum(axis=1), probs.shape[1] - 1)


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(1234)
    true_logits = rng.normal(scale=2.0, size=(5000, 4))
    labels = sample_labels(true_logits, seed=99)
    return true_logits, labels


def test_softmax_is_stable_and_normalised():
    logits = np.array([[1000.0, 1000.0, -1000.0], [0.0, np.log(3.0), -np.inf]])
    p = softmax(logits)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[0], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(p[1], [0.25, 0.75, 0.0])


def test_softmax_temperature_divides_logits():
    logits = np.array([[2.0, 0.0]])
    expected = np.exp([1.0, 0.0]) / np.exp([1.0, 0.0]).sum()
    np.testing.assert_allclose(softmax(logits, 2.0)[0], expected)
    with pytest.raises(ConfigurationError):
        softmax(logits, 0.0)


def test_fused_probabilities_average_softmax_over_scales():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 7, 5))
    fused = fused_probabilities(logits, 1.5)
    expected = np.mean([softmax(logits[s], 1.5) for s in range(3)], axis=0)
    np.testing.assert_allclose(fused, expected)
    assert fused.shape == (7, 5)
    np.testing.assert_allclose(fused_probabilities(logits[0], 1.5), softmax(logits[0], 1.5))
    with pytest.raises(ConfigurationError):
        fused_probabilities(np.zeros(5))


def test_fit_temperature_recovers_two(synthetic):
    true_logits, labels = synthetic
    t = fit_temperature(true_logits * 2.0, labels)
    assert isinstance(t, float)
    assert t == pytest.approx(2.0, rel=0.10)


def test_fit_temperature_recovers_one_for_calibrated_logits(synthetic):
    true_logits, labels = synthetic
    assert fit_temperature(true_logits, labels) == pytest.approx(1.0, rel=0.10)


def test_fit_temperature_minimises_nll(synthetic):
    true_logits, labels = synthetic
    logits = true_logits * 2.0
    t = fit_temperature(logits, labels)

    def nll(temp):
        p = fused_probabilities(logits, temp)
        return -np.mean(np.log(p[np.arange(len(labels)), labels]))

    assert nll(t) <= nll(t * 1.01) and nll(t) <= nll(t / 1.01)


def test_fit_temperature_multi_scale(synthetic):
    true_logits, labels = synthetic
    rng = np.random.default_rng(5)
    scales = np.stack([true_logits * 2.0 + rng.normal(scale=0.05, size=true_logits.shape)] * 3)
    t = fit_temperature(scales, labels)
    assert t == pytest.approx(2.0, rel=0.10)
    # identical scales fuse to the single-scale answer
    same = np.stack([true_logits * 3.0] * 2)
    assert fit_temperature(same, labels) == pytest.approx(
        fit_temperature(true_logits * 3.0, labels), rel=1e-6
    )


def test_fit_temperature_is_deterministic_and_in_range(synthetic):
    true_logits, labels = synthetic
    assert fit_temperature(true_logits * 2.0, labels) == fit_temperature(true_logits * 2.0, labels)
    # perfectly separable, tiny logits: plain NLL runs to the smallest temperature allowed
    logits = np.array([[0.01, 0.0], [0.0, 0.01]] * 10)
    labels = np.array([0, 1] * 10)
    assert fit_temperature(logits, labels, prior_sigma=None) == pytest.approx(0.05, rel=1e-3)


def test_fit_temperature_prior_stops_a_flawless_hold_out_from_making_answers_certain():
    # A hold-out the model gets all right (confident logits, no errors): the NLL falls all the
    # way to T -> 0, which would give every future mistake a confidence of 1.0.
    rng = np.random.default_rng(7)
    labels = np.arange(240) % 6
    logits = rng.normal(scale=1.0, size=(240, 6))
    logits[np.arange(240), labels] += 6.0
    assert fit_temperature(logits, labels, prior_sigma=None) == pytest.approx(0.05, rel=1e-3)
    t = fit_temperature(logits, labels)
    assert 0.2 < t < 1.0  # sharpened, as the evidence says, but not to the bound
    # one wrong, confident answer: the prior matters little once the data speaks
    wrong = logits.copy()
    wrong[0] = np.roll(wrong[0], 1)
    assert fit_temperature(wrong, labels) > t
    with pytest.raises(ConfigurationError):
        fit_temperature(logits, labels, prior_sigma=0.0)


def recall_at(scores, is_defect, t):
    return np.mean(scores[is_defect] >= t)


def test_threshold_for_recall_hand_set():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.5, 0.3, 0.1])
    is_defect = np.array([True] * 5 + [False] * 3)
    assert threshold_for_recall(scores, is_defect, 0.8) == pytest.approx(0.6)
    assert threshold_for_recall(scores, is_defect, 0.6) == pytest.approx(0.7)
    assert threshold_for_recall(scores, is_defect, 0.61) == pytest.approx(0.6)
    assert threshold_for_recall(scores, is_defect, 0.99) == pytest.approx(0.2)
    assert threshold_for_recall(scores, is_defect, 1.0) == pytest.approx(0.2)


def test_threshold_for_recall_is_the_largest_that_reaches_target():
    rng = np.random.default_rng(3)
    scores = rng.uniform(size=400)
    is_defect = rng.uniform(size=400) < 0.4
    for target in (0.5, 0.9, 0.95, 0.99, 1.0):
        t = threshold_for_recall(scores, is_defect, target)
        assert recall_at(scores, is_defect, t) >= target
        assert recall_at(scores, is_defect, np.nextafter(t, np.inf)) < target
        ok = [c for c in np.unique(scores) if recall_at(scores, is_defect, c) >= target]
        assert t == max(ok)


def test_threshold_for_recall_degenerate_sets():
    assert threshold_for_recall([0.1, 0.9], [False, False]) == 0.5
    assert threshold_for_recall([0.1, 0.9], [True, True]) == 0.0
    with pytest.raises(ConfigurationError):
        threshold_for_recall([0.1, 0.9], [True, False], target_recall=0.0)


def review_rate(scores, is_defect, r, t):
    good = scores[~is_defect]
    return np.mean((good >= r) & (good < t))


def test_review_threshold_uses_recall_when_rate_allows():
    defect = np.array([0.95, 0.9, 0.85, 0.8, 0.3])
    good = np.array([0.05] * 95 + [0.1, 0.2, 0.35, 0.6, 0.7])
    scores = np.concatenate([defect, good])
    is_defect = np.concatenate([np.ones(5, bool), np.zeros(100, bool)])
    # recall 1.0 wants r = 0.3; good in [0.3, 0.8): 0.35, 0.6, 0.7 = 3% of good
    r = review_threshold(scores, is_defect, 0.8, target_recall=1.0, max_review_rate=0.05)
    assert r == pytest.approx(0.3)


def test_review_threshold_respects_max_review_rate():
    defect = np.array([0.95, 0.9, 0.85, 0.8, 0.3])
    good = np.array([0.05] * 95 + [0.1, 0.2, 0.35, 0.6, 0.7])
    scores = np.concatenate([defect, good])
    is_defect = np.concatenate([np.ones(5, bool), np.zeros(100, bool)])
    r = review_threshold(scores, is_defect, 0.8, target_recall=1.0, max_review_rate=0.02)
    # only 2 good images may fall in [r, 0.8): r must exclude 0.35, so r is just above it
    assert 0.35 < r <= 0.6
    assert review_rate(scores, is_defect, r, 0.8) <= 0.02
    # and it is the smallest such value
    assert review_rate(scores, is_defect, np.nextafter(r, -np.inf), 0.8) > 0.02
    r0 = review_threshold(scores, is_defect, 0.8, target_recall=1.0, max_review_rate=0.0)
    assert 0.7 < r0 <= 0.8
    assert review_rate(scores, is_defect, r0, 0.8) == 0.0


def test_review_threshold_never_above_defect_threshold():
    scores = np.array([0.9, 0.8, 0.1, 0.2])
    is_defect = np.array([True, True, False, False])
    # recall target reached at 0.8, far above the defect threshold 0.5
    assert review_threshold(scores, is_defect, 0.5, target_recall=0.5) == 0.5


def test_review_threshold_random_sets_keep_both_rules():
    rng = np.random.default_rng(11)
    for _ in range(20):
        scores = rng.beta(0.5, 0.5, size=300)
        is_defect = rng.uniform(size=300) < 0.3
        t = threshold_for_recall(scores, is_defect, 0.9)
        r = review_threshold(scores, is_defect, t, target_recall=0.99, max_review_rate=0.03)
        assert r <= t
        assert review_rate(scores, is_defect, r, t) <= 0.03
        r_recall = threshold_for_recall(scores, is_defect, 0.99)
        assert r >= min(r_recall, t)


def test_select_min_confidence():
    # unsure (0.35) images are wrong, 0.45-confident ones right, confident ones right
    probs = np.array([[0.9, 0.05, 0.05]] * 6 + [[0.35, 0.33, 0.32]] * 4 + [[0.45, 0.3, 0.25]] * 6)
    labels = np.array([0] * 6 + [1] * 4 + [0] * 6)
    # below 0.5: 6 of 10 right (not < 0.5); below 0.4: 0 of 4 right -> 0.4
    assert select_min_confidence(probs, labels) == 0.4
    # make the 0.45-confident images wrong -> below 0.5 is all wrong -> 0.5
    labels_wrong = np.array([0] * 6 + [1] * 4 + [2] * 6)
    assert select_min_confidence(probs, labels_wrong) == 0.5
    # everything right -> 0.0
    assert select_min_confidence(probs, np.zeros(16, dtype=int)) == 0.0
    # no image below any grid value -> 0.0
    assert select_min_confidence(probs[:6], np.ones(6, dtype=int)) == 0.0


def test_calibration_round_trips_through_dict():
    cal = Calibration(
        temperature=1.7,
        defect_threshold=0.31,
        review_threshold=0.12,
        min_confidence=0.4,
        target_recall=0.995,
    )
    d = cal.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert Calibration.from_dict(d) == cal
    assert Calibration.from_dict({**d, "made_by": "someone", "version": 3}) == cal
    assert Calibration.from_dict({}) == Calibration()
    assert Calibration().to_dict() == {
        "temperature": 1.0,
        "defect_threshold": 0.5,
        "review_threshold": 0.5,
        "min_confidence": 0.0,
        "target_recall": 0.99,
    }


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": 0.0},
        {"temperature": -1.0},
        {"temperature": math.nan},
        {"temperature": math.inf},
        {"defect_threshold": 1.5},
        {"defect_threshold": -0.1},
        {"review_threshold": 1.01},
        {"review_threshold": math.nan},
        {"min_confidence": 2.0},
        {"target_recall": 0.0},
        {"temperature": "warm"},
        {"defect_threshold": None},
    ],
)
def test_calibration_from_dict_rejects_bad_values(bad):
    with pytest.raises(ConfigurationError):
        Calibration.from_dict({**Calibration().to_dict(), **bad})


def test_calibration_apply_uses_temperature():
    logits = np.array([[[2.0, 0.0]], [[0.0, 0.0]]])
    cal = Calibration(temperature=2.0)
    expected = (softmax(logits[0], 2.0) + softmax(logits[1], 2.0)) / 2
    np.testing.assert_allclose(cal.apply(logits), expected)


def test_calibrate_end_to_end(synthetic):
    true_logits, labels = synthetic
    classes = ["ok", "scratch", "dent", "crack"]
    defects = ["scratch", "dent", "crack"]
    logits = np.stack([true_logits * 2.0, true_logits * 2.0 + 0.01])
    cal = calibrate(logits, labels, classes, defects, target_recall=0.95, max_review_rate=0.05)
    assert cal.temperature == pytest.approx(2.0, rel=0.10)
    assert cal.target_recall == 0.95
    probs = cal.apply(logits)
    scores = defect_scores(probs, classes, defects)
    is_defect = labels > 0
    assert recall_at(scores, is_defect, cal.defect_threshold) >= 0.95
    assert recall_at(scores, is_defect, np.nextafter(cal.defect_threshold, 1.0)) < 0.95
    assert cal.review_threshold <= cal.defect_threshold
    assert review_rate(scores, is_defect, cal.review_threshold, cal.defect_threshold) <= 0.05
    assert cal.min_confidence == select_min_confidence(probs, labels)
    assert Calibration.from_dict(cal.to_dict()) == cal


def test_calibrate_rejects_mismatched_classes(synthetic):
    true_logits, labels = synthetic
    with pytest.raises(ConfigurationError):
        calibrate(true_logits, labels, ["ok", "a", "b"], ["a"])
    with pytest.raises(ConfigurationError):
        calibrate(true_logits, labels[:-1], ["ok", "a", "b", "c"], ["a"])


def test_verdicts_flag_defects_the_review_band_and_low_confidence() -> None:
    cal = Calibration(defect_threshold=0.4, review_threshold=0.2, min_confidence=0.5)
    scores = np.array([0.5, 0.3, 0.1, 0.1])
    confidence = np.array([0.9, 0.9, 0.9, 0.45])
    is_defect, uncertain = cal.verdicts(scores, confidence)
    assert is_defect.tolist() == [True, False, False, False]
    assert uncertain.tolist() == [False, True, False, True]

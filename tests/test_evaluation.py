import json
import math

import numpy as np
import pytest

from inspector.errors import ConfigurationError
from inspector.evaluation import (
    confusion_matrix,
    defect_auc,
    defect_scores,
    defects_to_show,
    evaluate_predictions,
    expected_calibration_error,
    false_rejects_at_recall,
    recall_lower_bound,
    reliability_bins,
)


def one_hotish(preds, num_classes, peak=0.8):
    """Probabilities with `peak` on the predicted class, the rest spread evenly."""
    rest = (1.0 - peak) / (num_classes - 1)
    probs = np.full((len(preds), num_classes), rest)
    probs[np.arange(len(preds)), preds] = peak
    return probs


def test_confusion_matrix_hand_case():
    labels = [0, 0, 1, 2, 2, 2]
    preds = [0, 1, 1, 2, 0, 2]
    cm = confusion_matrix(labels, preds, 3)
    expected = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64
    assert cm.sum() == 6


def test_confusion_matrix_counts_unseen_classes_as_zero_rows():
    cm = confusion_matrix([0, 0], [0, 0], 3)
    np.testing.assert_array_equal(cm, [[2, 0, 0], [0, 0, 0], [0, 0, 0]])


def test_confusion_matrix_rejects_out_of_range():
    with pytest.raises(ConfigurationError):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ConfigurationError):
        confusion_matrix([0, 1], [0], 3)


def test_defect_scores_sum_defect_probabilities():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    scores = defect_scores(probs, ["free", "scratch", "dent"], ["scratch", "dent"])
    np.testing.assert_allclose(scores, [0.3, 0.9])


def test_defect_scores_without_good_class_are_all_one():
    probs = np.array([[0.5, 0.5], [0.9, 0.1]])
    np.testing.assert_array_equal(defect_scores(probs, ["a", "b"], ["a", "b"]), [1.0, 1.0])


def test_defect_scores_rejects_unknown_defect_class():
    with pytest.raises(ConfigurationError):
        defect_scores(np.ones((1, 2)) / 2, ["ok", "dent"], ["crack"])


def test_per_class_precision_recall_f1_on_three_class_toy():
    labels = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 0, 1, 1, 2, 2])
    report = evaluate_predictions(
        one_hotish(preds, 3), labels, ["a", "b", "c"], ["b", "c"], threshold=0.5
    )
    pc = report.per_class
    # class a: tp 2, predicted 2, support 3
    assert pc["a"]["precision"] == pytest.approx(1.0)
    assert pc["a"]["recall"] == pytest.approx(2 / 3)
    assert pc["a"]["f1"] == pytest.approx(0.8)
    assert pc["a"]["support"] == 3
    # class b: tp 1, predicted 2, support 2
    assert pc["b"]["precision"] == pytest.approx(0.5)
    assert pc["b"]["recall"] == pytest.approx(0.5)
    assert pc["b"]["f1"] == pytest.approx(0.5)
    # class c: tp 1, predicted 2, support 1
    assert pc["c"]["precision"] == pytest.approx(0.5)
    assert pc["c"]["recall"] == pytest.approx(1.0)
    assert pc["c"]["f1"] == pytest.approx(2 / 3)
    assert report.accuracy == pytest.approx(4 / 6)
    assert report.macro_f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert report.confusion == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert report.num_images == 6


def test_class_never_predicted_has_zero_precision_without_warning():
    labels = np.array([0, 1, 2])
    preds = np.array([0, 1, 1])  # class 2 never predicted
    report = evaluate_predictions(one_hotish(preds, 3), labels, ["a", "b", "c"], ["c"])
    assert report.per_class["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report.per_class["b"]["precision"] == pytest.approx(0.5)
    assert report.macro_f1 == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)


def test_macro_f1_leaves_out_a_class_neither_held_nor_predicted():
    labels = np.array([0, 1, 1])
    preds = np.array([0, 1, 0])  # "c" is a class of the model, but not in this set
    report = evaluate_predictions(one_hotish(preds, 3), labels, ["a", "b", "c"], ["c"])
    assert report.per_class["c"]["support"] == 0
    assert report.macro_f1 == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_defect_recall_and_false_reject_rate_with_one_good_class():
    classes = ["free", "scratch", "dent"]
    # probability of "free" per image; defect score = 1 - p_free
    p_free = np.array([0.9, 0.6, 0.45, 0.2, 0.7, 0.3, 0.55, 0.1])
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    probs = np.stack([p_free, (1 - p_free) / 2, (1 - p_free) / 2], axis=1)
    report = evaluate_predictions(probs, labels, classes, ["scratch", "dent"], threshold=0.5)
    # good images scores 0.1, 0.4, 0.55, 0.8 -> 2 of 4 predicted defect
    assert report.false_reject_rate == pytest.approx(0.5)
    # defect images scores 0.3, 0.7, 0.45, 0.9 -> 2 of 4 predicted defect
    assert report.defect_recall == pytest.approx(0.5)
    assert report.flagged_good_rate == pytest.approx(0.5)

    lower = evaluate_predictions(probs, labels, classes, ["scratch", "dent"], threshold=0.3)
    assert lower.defect_recall == pytest.approx(1.0)  # 0.3 >= 0.3 counts
    assert lower.false_reject_rate == pytest.approx(0.75)
    assert lower.threshold == 0.3

    # Threshold-free: 10 of the 16 (defect, good) pairs are ranked right.
    assert report.defect_auc == pytest.approx(10 / 16)
    # Finding all four defects on this set takes the threshold down to 0.3: 3 of 4 good flagged.
    assert report.false_rejects_at_recall == pytest.approx({"0.95": 0.75, "0.99": 0.75, "1": 0.75})


def test_defect_auc_counts_ties_half_and_matches_all_pairs():
    assert defect_auc([0.5, 0.5], [True, False]) == pytest.approx(0.5)
    assert defect_auc([0.9, 0.1], [True, False]) == pytest.approx(1.0)
    assert defect_auc([0.2, 0.3], [True, True]) is None
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 20, 300) / 20.0  # many ties
    is_defect = rng.random(300) < 0.3
    pos, neg = scores[is_defect], scores[~is_defect]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert defect_auc(scores, is_defect) == pytest.approx(pairs)


def test_false_rejects_at_recall_reads_the_operating_curve():
    good = [0.1, 0.2, 0.3, 0.6]
    defects = [0.4, 0.5, 0.7, 0.8, 0.9]
    scores = np.array(good + defects)
    is_defect = np.array([False] * 4 + [True] * 5)
    # 60% of 5 defects = the top 3 (>= 0.7): no good part; 4 (>= 0.5) or all 5 (>= 0.4): the
    # good part at 0.6, one of 4.
    curve = false_rejects_at_recall(scores, is_defect, recalls=(0.6, 0.8, 1.0))
    assert curve == pytest.approx({"0.6": 0.0, "0.8": 0.25, "1": 0.25})
    assert false_rejects_at_recall(scores[:4], is_defect[:4]) is None


def test_flagged_overrides_default_flagging():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.1, 0.9]])
    labels = np.array([0, 0, 0, 1])
    flagged = np.array([False, True, True, True])
    report = evaluate_predictions(probs, labels, ["ok", "nok"], ["nok"], flagged=flagged)
    assert report.false_reject_rate == pytest.approx(0.0)
    assert report.flagged_good_rate == pytest.approx(2 / 3)
    assert report.defect_recall == pytest.approx(1.0)


def test_rates_are_none_without_the_kind_of_image():
    probs = np.array([[0.9, 0.1], [0.8, 0.2]])
    only_good = evaluate_predictions(probs, np.array([0, 0]), ["ok", "nok"], ["nok"])
    assert only_good.defect_recall is None
    assert only_good.false_reject_rate == pytest.approx(0.0)
    only_defect = evaluate_predictions(probs, np.array([1, 1]), ["ok", "nok"], ["nok"])
    assert only_defect.false_reject_rate is None
    assert only_defect.flagged_good_rate is None
    assert only_defect.defect_recall == pytest.approx(0.0)


def test_no_good_class_means_every_image_is_defect():
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    report = evaluate_predictions(probs, np.array([0, 1]), ["a", "b"], ["a", "b"], threshold=1.0)
    assert report.defect_recall == pytest.approx(1.0)
    assert report.false_reject_rate is None


def test_ece_of_exactly_calibrated_set_is_zero():
    # confidence 0.75 with 3 of 4 right, confidence 0.95 with 19 of 20 right
    probs = np.array([[0.75, 0.25]] * 4 + [[0.95, 0.05]] * 20)
    labels = np.array([0, 0, 0, 1] + [0] * 19 + [1])
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.0, abs=1e-12)


def test_ece_of_sampled_calibrated_set_is_near_zero():
    rng = np.random.default_rng(0)
    n = 200_000
    conf = rng.uniform(0.5, 1.0, n)
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = (rng.uniform(size=n) >= conf).astype(np.int64)  # label 0 with probability conf
    assert expected_calibration_error(probs, labels) < 0.01


def test_ece_of_over_confident_set_is_large():
    # always 0.9 confident, right half the time -> ECE = |0.5 - 0.9| = 0.4
    probs = np.array([[0.9, 0.1]] * 10)
    labels = np.array([0, 1] * 5)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4)
    # two bins: 0.6 confident & all right (gap 0.4), 0.95 confident & right 3 of 4 (gap 0.2)
    probs = np.array([[0.6, 0.4]] * 4 + [[0.95, 0.05]] * 4)
    labels = np.array([0, 0, 0, 0, 0, 0, 0, 1])
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(
        0.5 * 0.4 + 0.5 * 0.2
    )


def test_reliability_bins_contents():
    probs = np.array([[0.6, 0.4]] * 4 + [[0.95, 0.05]] * 4)
    labels = np.array([0, 0, 0, 1, 0, 0, 0, 0])
    bins = reliability_bins(probs, labels, n_bins=10)
    assert len(bins) == 10
    assert [b["count"] for b in bins] == [0, 0, 0, 0, 0, 4, 0, 0, 0, 4]
    assert bins[5]["lower"] == pytest.approx(0.5) and bins[5]["upper"] == pytest.approx(0.6)
    assert bins[5]["confidence"] == pytest.approx(0.6)
    assert bins[5]["accuracy"] == pytest.approx(0.75)
    assert bins[9]["accuracy"] == pytest.approx(1.0)
    assert bins[0]["confidence"] is None and bins[0]["accuracy"] is None


def test_ece_of_empty_set_is_zero():
    assert expected_calibration_error(np.zeros((0, 3)), np.zeros(0, dtype=np.int64)) == 0.0


def test_report_to_dict_is_json_and_rounded():
    probs = np.array([[2 / 3, 1 / 3], [1 / 7, 6 / 7], [0.5, 0.5]])
    labels = np.array([0, 1, 1])
    report = evaluate_predictions(probs, labels, ["ok", "nok"], ["nok"], threshold=1 / 3)
    d = report.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["accuracy"] == round(2 / 3, 6)
    assert d["threshold"] == round(1 / 3, 6)
    assert d["per_class"]["nok"]["support"] == 2
    assert isinstance(d["per_class"]["nok"]["support"], int)
    assert d["confusion"] == [[1, 0], [1, 1]]
    assert set(d) == {
        "num_images",
        "classes",
        "defect_classes",
        "accuracy",
        "macro_f1",
        "per_class",
        "confusion",
        "defect_recall",
        "defect_recall_lower_95",
        "false_reject_rate",
        "flagged_good_rate",
        "ece",
        "threshold",
        "defect_auc",
        "false_rejects_at_recall",
    }


def test_evaluate_rejects_bad_input():
    probs = np.array([[0.9, 0.1]])
    with pytest.raises(ConfigurationError):
        evaluate_predictions(probs, np.array([0]), ["ok", "nok"], ["nok"], threshold=1.5)
    with pytest.raises(ConfigurationError):
        evaluate_predictions(probs, np.array([0, 1]), ["ok", "nok"], ["nok"])
    with pytest.raises(ConfigurationError):
        evaluate_predictions(probs, np.array([0]), ["ok", "nok", "x"], ["nok"])
    with pytest.raises(ConfigurationError):
        evaluate_predictions(np.zeros((0, 2)), np.zeros(0, dtype=int), ["ok", "nok"], ["nok"])


def _binomial_upper_tail(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))


@pytest.mark.parametrize(("caught", "total"), [(1, 1), (7, 10), (46, 47), (95, 100), (20, 20)])
def test_recall_lower_bound_is_the_clopper_pearson_bound(caught, total) -> None:
    bound = recall_lower_bound(caught, total)
    assert 0.0 < bound <= caught / total
    # At the bound, catching this many or more has exactly the 5% chance left over.
    assert _binomial_upper_tail(caught, total, bound) == pytest.approx(0.05, abs=1e-6)
    assert _binomial_upper_tail(caught, total, bound - 0.01) < 0.05


def test_recall_lower_bound_in_figures_a_quality_engineer_meets() -> None:
    # 47 unseen defects all found vouch for 93.8%, not for 99%.
    assert recall_lower_bound(47, 47) == pytest.approx(0.05 ** (1 / 47))
    assert recall_lower_bound(47, 47) == pytest.approx(0.938, abs=5e-4)
    assert recall_lower_bound(99, 100) == pytest.approx(0.9534, abs=5e-4)
    assert defects_to_show(0.99) == 299
    assert recall_lower_bound(299, 299) >= 0.99 > recall_lower_bound(298, 298)
    assert recall_lower_bound(46, 47) < recall_lower_bound(47, 47)
    assert recall_lower_bound(0, 5) == 0.0 and recall_lower_bound(0, 0) is None
    with pytest.raises(ConfigurationError):
        recall_lower_bound(6, 5)


def test_reports_say_how_much_their_defects_vouch_for() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.6, 0.4]])
    report = evaluate_predictions(probs, [0, 1, 1, 1], ["good", "dent"], ["dent"], threshold=0.5)
    assert report.defect_recall == pytest.approx(2 / 3)
    assert report.to_dict()["defect_recall_lower_95"] == pytest.approx(
        recall_lower_bound(2, 3), abs=1e-6
    )
    only_good = evaluate_predictions(probs[:1], [0], ["good", "dent"], ["dent"])
    assert only_good.defect_recall_lower_95 is None

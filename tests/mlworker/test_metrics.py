import json
import warnings

import numpy as np
import pytest
from sklearn import metrics as sklearn_metrics

from mlworker import taxonomy
from mlworker.metrics import classification_metrics, confusion_matrix, weak_classes

IDX = {code: k for k, code in enumerate(taxonomy.CODES)}


def hand_built_confusion():
    """NE: 6 right, 2 called LY; LY: 4 right; BL: 1 right, 4 called MY. No other images."""
    cm = np.zeros((14, 14), dtype=int)
    cm[IDX["NE"], IDX["NE"]] = 6
    cm[IDX["NE"], IDX["LY"]] = 2
    cm[IDX["LY"], IDX["LY"]] = 4
    cm[IDX["BL"], IDX["BL"]] = 1
    cm[IDX["BL"], IDX["MY"]] = 4
    return cm


def test_metrics_on_hand_built_confusion_have_the_known_values():
    m = classification_metrics(hand_built_confusion())
    assert m["n_images"] == 17
    assert m["accuracy"] == pytest.approx(11 / 17)
    assert m["balanced_accuracy"] == pytest.approx((0.75 + 1.0 + 0.2) / 3)
    assert m["normal_tpr"] == pytest.approx((0.75 + 1.0) / 2)
    assert m["abnormal_tpr"] == pytest.approx(0.2)
    f1_ne, f1_ly, f1_bl = 2 * 0.75 / 1.75, 2 * (2 / 3) / (5 / 3), 2 * 0.2 / 1.2
    assert m["macro_f1"] == pytest.approx((f1_ne + f1_ly + f1_bl) / 3)
    assert m["per_class"]["NE"] == {
        "n": 8,
        "tpr": 0.75,
        "tpr_ci95": pytest.approx(wilson(6, 8), abs=1e-4),
        "precision": 1.0,
    }
    assert m["per_class"]["LY"]["precision"] == pytest.approx(4 / 6)
    assert m["per_class"]["BL"] == {
        "n": 5,
        "tpr": 0.2,
        "tpr_ci95": pytest.approx(wilson(1, 5), abs=1e-4),
        "precision": 1.0,
    }


def wilson(hits, n, z=1.959964):
    """The textbook Wilson score interval, written out to check scipy's."""
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return [centre - half, centre + half]


def test_mean_tpr_intervals_hold_the_estimate_and_narrow_with_more_images():
    small = classification_metrics(hand_built_confusion())
    large = classification_metrics(hand_built_confusion() * 20)
    for key in ("balanced_accuracy", "normal_tpr", "abnormal_tpr"):
        low, high = small[f"{key}_ci95"]
        assert low <= small[key] <= high
        big_low, big_high = large[f"{key}_ci95"]
        assert big_low <= large[key] <= big_high
        assert big_high - big_low < (high - low) / 2
    # seeded: the same matrix gives the same interval
    assert classification_metrics(hand_built_confusion()) == small
    none = classification_metrics(np.zeros((14, 14), dtype=int))
    assert none["balanced_accuracy_ci95"] is None


def test_a_class_without_images_is_null_never_zero():
    m = classification_metrics(hand_built_confusion())
    # MY has no images but was predicted 4 times (all wrong): TPR undefined, precision 0
    assert m["per_class"]["MY"] == {"n": 0, "tpr": None, "tpr_ci95": None, "precision": 0.0}
    # MO has no images and was never predicted: both undefined
    assert m["per_class"]["MO"] == {"n": 0, "tpr": None, "tpr_ci95": None, "precision": None}
    assert "null" in json.dumps(m)
    assert weak_classes(m) == ["NE", "BL"]


def test_group_tpr_is_null_when_a_group_has_no_images():
    cm = np.zeros((14, 14), dtype=int)
    cm[IDX["NE"], IDX["NE"]] = 3
    m = classification_metrics(cm)
    assert m["normal_tpr"] == 1.0
    assert m["abnormal_tpr"] is None
    empty = classification_metrics(np.zeros((14, 14), dtype=int))
    assert empty["accuracy"] is None and empty["balanced_accuracy"] is None


def test_confusion_matrix_counts_rows_as_true_and_columns_as_predicted():
    y_true = [IDX["NE"]] * 8 + [IDX["LY"]] * 4 + [IDX["BL"]] * 5
    y_pred = [IDX["NE"]] * 6 + [IDX["LY"]] * 2 + [IDX["LY"]] * 4 + [IDX["BL"]] + [IDX["MY"]] * 4
    assert (confusion_matrix(y_true, y_pred) == hand_built_confusion()).all()
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([14], [0])


def test_confusion_matrix_refuses_what_scikit_learn_would_silently_drop():
    with pytest.raises(ValueError, match="y_pred has labels outside"):
        confusion_matrix([0, 1], [0, 14])  # scikit-learn would count one image, not two
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix([0, 1], [0])
    empty = confusion_matrix([], [])
    assert empty.shape == (14, 14) and empty.sum() == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_on_random_labels_equal_scikit_learn_and_keep_the_none_rules(seed):
    rng = np.random.default_rng(seed)
    # true labels only in classes 0-9, predictions only in 3-12: class 13 is neither,
    # 10-12 are predicted without images, 0-2 have images but are never predicted
    y_true = rng.integers(0, 10, size=300)
    y_pred = np.where(rng.random(300) < 0.5, y_true, rng.integers(3, 13, size=300))
    y_pred = np.clip(y_pred, 3, 12)
    cm = confusion_matrix(y_true, y_pred)
    expected_cm = np.zeros((14, 14), dtype=int)
    np.add.at(expected_cm, (y_true, y_pred), 1)
    assert (cm == expected_cm).all()
    assert (cm == sklearn_metrics.confusion_matrix(y_true, y_pred, labels=range(14))).all()

    m = classification_metrics(cm)
    present = sorted(set(y_true.tolist()))
    assert m["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y_true, y_pred))
    with warnings.catch_warnings():  # it warns about the predicted classes without images
        warnings.simplefilter("ignore")
        balanced = sklearn_metrics.balanced_accuracy_score(y_true, y_pred)
    assert m["balanced_accuracy"] == pytest.approx(balanced)
    assert m["macro_f1"] == pytest.approx(
        sklearn_metrics.f1_score(y_true, y_pred, labels=present, average="macro")
    )
    recall = sklearn_metrics.recall_score(y_true, y_pred, labels=present, average=None)
    precision = sklearn_metrics.precision_score(
        y_true, y_pred, labels=list(range(3, 13)), average=None
    )
    rows = [m["per_class"][code] for code in taxonomy.CODES]
    assert [rows[k]["tpr"] for k in present] == pytest.approx(list(recall))
    assert [rows[k]["precision"] for k in range(3, 13)] == pytest.approx(list(precision))
    assert [rows[k]["n"] for k in range(14)] == np.bincount(y_true, minlength=14).tolist()
    # the None rules: no images -> no TPR; never predicted -> no precision
    assert all(rows[k]["tpr"] is None for k in (10, 11, 12, 13))
    assert all(rows[k]["precision"] is None for k in (0, 1, 2, 13))
    # a class with images that is never predicted has TPR 0 (and F1 0 in the macro mean)
    assert all(rows[k]["tpr"] == 0.0 for k in (0, 1, 2))

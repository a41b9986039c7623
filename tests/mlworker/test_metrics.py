import json

import numpy as np
import pytest

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
    assert m["per_class"]["NE"] == {"n": 8, "tpr": 0.75, "precision": 1.0}
    assert m["per_class"]["LY"]["precision"] == pytest.approx(4 / 6)
    assert m["per_class"]["BL"] == {"n": 5, "tpr": 0.2, "precision": 1.0}


def test_a_class_without_images_is_null_never_zero():
    m = classification_metrics(hand_built_confusion())
    # MY has no images but was predicted 4 times (all wrong): TPR undefined, precision 0
    assert m["per_class"]["MY"] == {"n": 0, "tpr": None, "precision": 0.0}
    # MO has no images and was never predicted: both undefined
    assert m["per_class"]["MO"] == {"n": 0, "tpr": None, "precision": None}
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

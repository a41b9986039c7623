import pytest

from mlworker import taxonomy


def test_codes_are_the_14_diff_codes_in_model_output_order():
    assert taxonomy.CODES == (
        "NE", "LY", "MO", "EO", "BA", "ME", "MY", "PR", "LR", "LA", "BL", "PC", "NR", "AR",
    )  # fmt: skip


def test_groups_split_five_normal_and_nine_abnormal_classes():
    assert taxonomy.NORMAL_CODES == ("NE", "LY", "MO", "EO", "BA")
    assert len(taxonomy.ABNORMAL_CODES) == 9
    assert set(taxonomy.NORMAL_CODES).isdisjoint(taxonomy.ABNORMAL_CODES)


def test_keys_are_unique_single_characters_and_avoid_ui_reserved_keys():
    keys = [c.key for c in taxonomy.CLASSES]
    assert len(set(keys)) == len(keys)
    assert all(len(k) == 1 and k.islower() for k in keys)
    assert not set(keys) & {"s", "f", "Enter", "Backspace"}


def test_by_code_returns_the_class_and_rejects_unknown_codes_naming_allowed_ones():
    assert taxonomy.by_code("BL").name == "Blast"
    assert taxonomy.index_of("AR") == 13
    with pytest.raises(ValueError, match="NE, LY"):
        taxonomy.by_code("XX")


def test_classes_are_immutable():
    with pytest.raises(AttributeError):
        taxonomy.CLASSES[0].code = "ZZ"  # type: ignore[misc]

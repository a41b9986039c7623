from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from annotation.errors import ApplicationError
from annotation.models import AuditEvent, Case, CellImage, Label
from annotation.services.labels import cell_label_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def cell() -> CellImage:
    case = Case.objects.create(accession_id="C1")
    return CellImage.objects.create(
        case=case, image="cells/x.jpg", sha256="a" * 64, width=360, height=363
    )


@pytest.fixture
def hematologist():
    return get_user_model().objects.create_user("heme", password="x-Long-pass-123")


def test_new_label_supersedes_the_current_one_and_keeps_it(cell: CellImage, hematologist) -> None:
    first = cell_label_create(cell_id=cell.pk, code="MO", annotator=None, source="imported")
    second = cell_label_create(cell_id=cell.pk, code="ly", annotator=hematologist)
    cell.refresh_from_db()
    assert cell.current_label_id == second.pk
    assert second.supersedes_id == first.pk and second.code == "LY"
    first.refresh_from_db()
    assert first.code == "MO"  # the old label is untouched
    assert list(Label.objects.filter(cell=cell).values_list("code", flat=True)) == ["MO", "LY"]


def test_supersession_writes_an_audit_event_with_before_and_after(
    cell: CellImage, hematologist
) -> None:
    first = cell_label_create(cell_id=cell.pk, code="MO", annotator=None, source="imported")
    second = cell_label_create(cell_id=cell.pk, code="LR", annotator=hematologist)
    event = AuditEvent.objects.get(action="label.supersede")
    assert event.actor == hematologist
    assert event.target_type == "cell" and event.target_id == str(cell.pk)
    assert event.before == {
        "label_id": first.pk,
        "code": "MO",
        "source": "imported",
        "annotator": None,
    }
    assert event.after == {
        "label_id": second.pk,
        "code": "LR",
        "source": "hematologist",
        "annotator": hematologist.pk,
    }
    assert AuditEvent.objects.filter(action="label.create").count() == 1


def test_unknown_class_is_refused_with_the_allowed_codes(cell: CellImage, hematologist) -> None:
    with pytest.raises(ApplicationError, match="use one of NE, LY, MO"):
        cell_label_create(cell_id=cell.pk, code="XX", annotator=hematologist)
    assert not Label.objects.exists() and not AuditEvent.objects.exists()


def test_a_person_label_needs_the_person(cell: CellImage) -> None:
    with pytest.raises(ApplicationError, match="must name the person"):
        cell_label_create(cell_id=cell.pk, code="NE", annotator=None)


def test_a_label_of_a_person_settles_an_import_conflict(cell: CellImage, hematologist) -> None:
    cell.has_label_conflict = True
    cell.save(update_fields=["has_label_conflict"])
    cell_label_create(cell_id=cell.pk, code="BA", annotator=hematologist)
    cell.refresh_from_db()
    assert not cell.has_label_conflict


def test_missing_cell_is_a_404_error(hematologist) -> None:
    with pytest.raises(ApplicationError) as err:
        cell_label_create(cell_id=999999, code="NE", annotator=hematologist)
    assert err.value.status == 404

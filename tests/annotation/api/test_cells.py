"""Cells: list filters, detail, image files, labels."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from annotation.models import AuditEvent, Label, ModelVersion
from tests.annotation.api.conftest import predict

pytestmark = pytest.mark.django_db


def ids(response) -> list[int]:
    assert response.status_code == 200, response.content
    return [row["id"] for row in response.json()["results"]]


def test_cell_list_filters(heme_api, smear) -> None:
    labelled, unlabelled = smear["labelled"], smear["unlabelled"]
    case = smear["case"]
    assert len(ids(heme_api.get(f"/api/cells/?case={case.pk}"))) == 8
    assert ids(heme_api.get("/api/cells/?label=BL")) == [labelled[3].pk]
    assert ids(heme_api.get("/api/cells/?label=bl")) == [labelled[3].pk]
    assert ids(heme_api.get("/api/cells/?predicted=MY")) == [labelled[3].pk, unlabelled[1].pk]
    assert ids(heme_api.get("/api/cells/?label_status=unlabelled")) == [c.pk for c in unlabelled]
    assert (
        len(ids(heme_api.get("/api/cells/?label_status=labelled&label_source=hematologist"))) == 5
    )
    assert ids(heme_api.get("/api/cells/?confidence_max=0.5")) == [unlabelled[2].pk]
    assert ids(
        heme_api.get("/api/cells/?confidence_min=0.9&confidence_max=0.99&label_status=unlabelled")
    ) == [unlabelled[0].pk]
    assert ids(heme_api.get("/api/cells/?queue_reason=low_confidence")) == [unlabelled[2].pk]
    assert ids(heme_api.get("/api/cells/?queue_reason=audit")) == []
    page = heme_api.get("/api/cells/?limit=3&offset=3").json()
    assert page["count"] == 8 and len(page["results"]) == 3 and page["next"]


def test_cell_list_rejects_bad_filters_with_the_field_and_the_rule(heme_api, db) -> None:
    error = heme_api.get("/api/cells/?label=XX&confidence_min=2").json()["error"]
    assert set(error["fields"]) == {"label", "confidence_min"}
    assert "NE, LY" in error["fields"]["label"]


def test_cell_list_row_carries_label_prediction_and_queue(heme_api, smear) -> None:
    rows = {r["id"]: r for r in heme_api.get("/api/cells/").json()["results"]}
    queued = rows[smear["unlabelled"][2].pk]
    assert queued["label"] is None
    assert queued["prediction"]["top_code"] == "LY" and queued["prediction"]["confidence"] == 0.4
    assert queued["queue"]["reasons"] == ["low_confidence"]
    labelled = rows[smear["labelled"][0].pk]
    assert labelled["label"]["code"] == "NE" and labelled["label"]["annotator"] == "u_hematologist"
    assert labelled["image_url"].endswith(f"/api/cells/{smear['labelled'][0].pk}/image/")


def test_cell_list_query_count_is_fixed(
    heme_api, smear, make_cell, django_assert_max_num_queries
) -> None:
    for _ in range(30):
        make_cell(smear["case"], label="LY")
    with django_assert_max_num_queries(8):
        assert heme_api.get("/api/cells/?limit=100").status_code == 200


def test_cell_detail_has_predictions_per_version_masks_and_history(heme_api, smear) -> None:
    cell = smear["labelled"][0]
    old = ModelVersion.objects.create(name="v-old", arch="resnet152", status="retired")
    predict(cell, old, "LY", 0.6)
    body = heme_api.get(f"/api/cells/{cell.pk}/").json()
    assert {p["model_version_name"] for p in body["predictions"]} == {"v-active", "v-old"}
    active = next(p for p in body["predictions"] if p["model_version_status"] == "active")
    assert active["probabilities"]["NE"] == 0.9 and len(active["probabilities"]) == 14
    assert body["segmentations"][0]["mask_url"].endswith("/mask/")
    assert [lbl["code"] for lbl in body["labels"]] == ["NE"]
    mask = heme_api.get(body["segmentations"][0]["mask_url"])
    assert mask.status_code == 200
    with Image.open(io.BytesIO(b"".join(mask.streaming_content))) as im:
        assert set(im.getdata()) == {0, 128, 255}


def test_image_and_thumbnail_are_served_to_token_clients(ds_api, smear) -> None:
    cell = smear["labelled"][0]
    image = ds_api.get(f"/api/cells/{cell.pk}/image/")
    assert image.status_code == 200
    assert b"".join(image.streaming_content) == cell.image.open("rb").read()
    thumb = ds_api.get(f"/api/cells/{cell.pk}/thumbnail/")
    assert thumb["Content-Type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumb.content)) as im:
        assert max(im.size) <= 96
    assert ds_api.get("/api/cells/999999/image/").status_code == 404


def test_new_label_supersedes_the_current_one_and_history_keeps_both(heme_api, smear) -> None:
    cell = smear["labelled"][2]  # LY
    response = heme_api.post(f"/api/cells/{cell.pk}/labels/", {"code": "lr"}, format="json")
    assert response.status_code == 201, response.content
    new = response.json()
    assert new["code"] == "LR" and new["annotator"] == "u_hematologist"
    assert new["supersedes"] == cell.current_label_id
    history = heme_api.get(f"/api/cells/{cell.pk}/labels/").json()
    assert [h["code"] for h in history] == ["LY", "LR"]
    assert AuditEvent.objects.filter(action="label.supersede", target_id=str(cell.pk)).exists()


def test_label_with_an_unknown_code_is_400_listing_the_codes(heme_api, smear) -> None:
    cell = smear["labelled"][0]
    response = heme_api.post(f"/api/cells/{cell.pk}/labels/", {"code": "ZZ"}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert "ZZ" in error["fields"]["code"] and "AR" in error["fields"]["code"]
    assert Label.objects.filter(cell=cell).count() == 1
    assert (
        heme_api.post("/api/cells/99999/labels/", {"code": "NE"}, format="json").status_code == 404
    )
    assert heme_api.get("/api/cells/99999/labels/").status_code == 404


def test_data_scientist_may_not_label(ds_api, smear) -> None:
    cell = smear["labelled"][0]
    response = ds_api.post(f"/api/cells/{cell.pk}/labels/", {"code": "NE"}, format="json")
    assert response.status_code == 403
    assert "hematologist" in response.json()["error"]["message"]

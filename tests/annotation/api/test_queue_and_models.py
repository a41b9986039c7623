"""Review queue, routing settings, model versions and training jobs over the API."""

from __future__ import annotations

import pytest

from annotation.models import Label, ModelVersion, ReviewItem, TrainingJob
from mlworker.taxonomy import CODES
from tests.annotation.api.conftest import queue

pytestmark = pytest.mark.django_db


@pytest.fixture
def queued(smear, active_model, make_cell):
    """The smear's queued cell plus two more, with increasing priority."""
    items = list(ReviewItem.objects.all())
    for priority, cell in ((5.0, make_cell(smear["case"])), (3.0, make_cell(smear["case"]))):
        item = queue(cell, active_model, ["weak_class", "audit"])
        item.priority = priority
        item.save(update_fields=["priority"])
        items.append(item)
    return items


def test_next_leases_the_best_item_then_submit_stores_one_label(heme_api, queued) -> None:
    response = heme_api.post("/api/queue/next/")
    assert response.status_code == 200, response.content
    item = response.json()
    assert item["priority"] == 5.0 and item["status"] == "leased" and item["lease_expires_at"]
    assert item["cell"]["image_url"].endswith("/image/")
    assert heme_api.post("/api/queue/next/").json()["id"] == item["id"]  # same lease, renewed
    submitted = heme_api.post(
        f"/api/queue/items/{item['id']}/submit/", {"code": "bl"}, format="json"
    )
    assert submitted.status_code == 201 and submitted.json()["code"] == "BL"
    assert Label.objects.filter(cell_id=item["cell"]["id"]).count() == 1
    again = heme_api.post(f"/api/queue/items/{item['id']}/submit/", {"code": "BL"}, format="json")
    assert again.status_code == 409 and again.json()["error"]["code"] == "lease_lost"


def test_someone_elses_lease_cannot_be_submitted(heme_api, admin_api, queued) -> None:
    item = heme_api.post("/api/queue/next/").json()
    other = admin_api.post("/api/queue/next/").json()
    assert other["id"] != item["id"]
    stolen = admin_api.post(f"/api/queue/items/{item['id']}/submit/", {"code": "NE"}, format="json")
    assert stolen.status_code == 409
    bad_code = heme_api.post(
        f"/api/queue/items/{item['id']}/submit/", {"code": "??"}, format="json"
    )
    assert bad_code.status_code == 400 and "code" in bad_code.json()["error"]["fields"]


def test_skip_release_flag_and_counts(heme_api, ds_api, queued) -> None:
    counts = ds_api.get("/api/queue/counts/").json()
    assert counts["queued"] == 3 and counts["by_reason"]["audit"] == 2
    first = heme_api.post("/api/queue/next/").json()
    flagged = heme_api.post(
        f"/api/queue/items/{first['id']}/flag/", {"flagged": True}, format="json"
    )
    assert flagged.status_code == 200 and flagged.json()["flagged"] is True
    assert heme_api.post(f"/api/queue/items/{first['id']}/skip/").status_code == 204
    second = heme_api.post("/api/queue/next/").json()
    assert second["id"] != first["id"]  # a skipped item does not come back to the skipper
    assert heme_api.post(f"/api/queue/items/{second['id']}/release/").status_code == 204
    assert ReviewItem.objects.get(pk=second["id"]).status == "queued"
    assert heme_api.post("/api/queue/items/999999/skip/").status_code == 404


def test_empty_queue_is_204(heme_api, db) -> None:
    assert heme_api.post("/api/queue/next/").status_code == 204


def test_routing_settings_are_read_by_all_and_changed_by_admins(admin_api, heme_api, db) -> None:
    assert heme_api.get("/api/routing-config/").json()["confidence_threshold"] == 0.8
    changed = admin_api.patch("/api/routing-config/", {"confidence_threshold": 0.7}, format="json")
    assert changed.status_code == 200 and changed.json()["confidence_threshold"] == 0.7
    bad = admin_api.patch("/api/routing-config/", {"audit_rate": 3}, format="json")
    assert bad.status_code == 400 and "audit_rate" in bad.json()["error"]["fields"]


def _metrics(ba: float, ne: float) -> dict:
    return {"balanced_accuracy": ba, "per_class": {"NE": {"tpr": ne}, "LY": {"tpr": 0.9}}}


@pytest.fixture
def versions(db):
    active = ModelVersion.objects.create(
        name="v1",
        arch="resnet152",
        status="active",
        metrics=_metrics(0.85, 0.9),
        checkpoint="models/v1.pt",
    )
    better = ModelVersion.objects.create(
        name="v2",
        arch="resnet152",
        status="candidate",
        class_codes=["NE", "LY"],
        metrics=_metrics(0.88, 0.92),
    )
    worse = ModelVersion.objects.create(
        name="v3", arch="resnet152", status="candidate", metrics=_metrics(0.80, 0.70)
    )
    return active, better, worse


def test_model_versions_list_detail_and_compare(ds_api, versions) -> None:
    active, better, _ = versions
    listing = ds_api.get("/api/model-versions/").json()
    assert {v["name"] for v in listing["results"]} == {"v1", "v2", "v3"}
    assert ds_api.get("/api/model-versions/?status=active").json()["count"] == 1
    detail = ds_api.get(f"/api/model-versions/{better.pk}/").json()
    assert detail["metrics"]["balanced_accuracy"] == 0.88
    compare = ds_api.get(f"/api/model-versions/compare/?a={active.pk}&b={better.pk}").json()
    assert compare["per_class_tpr"]["NE"]["delta"] == pytest.approx(0.02)
    assert compare["guard_b_over_a"]["passes"] is True
    missing = ds_api.get(f"/api/model-versions/compare/?a={active.pk}&b=999999")
    assert missing.status_code == 404
    assert ds_api.get("/api/model-versions/compare/?a=x").status_code == 400


def test_promotion_is_guarded_unless_forced_and_rollback_returns(admin_api, versions) -> None:
    active, better, worse = versions
    refused = admin_api.post(f"/api/model-versions/{worse.pk}/promote/", {}, format="json")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "regression"
    assert "NE TPR drops" in refused.json()["error"]["message"]
    promoted = admin_api.post(f"/api/model-versions/{better.pk}/promote/", {}, format="json")
    assert promoted.status_code == 200 and promoted.json()["status"] == "active"
    back = admin_api.post(f"/api/model-versions/{active.pk}/rollback/")
    assert back.status_code == 200 and back.json()["status"] == "active"
    forced = admin_api.post(
        f"/api/model-versions/{worse.pk}/promote/", {"force": True}, format="json"
    )
    assert forced.status_code == 200


def test_training_jobs_trigger_list_detail_cancel(admin_api, ds_api, db) -> None:
    params = {"args": ["--epochs-finetune", "1"]}
    created = admin_api.post("/api/training-jobs/", {"params": params}, format="json")
    assert created.status_code == 201, created.content
    job = created.json()
    assert job["trigger"] == "api" and job["status"] == "queued"
    busy = admin_api.post("/api/training-jobs/", {}, format="json")
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "training_busy"
    assert ds_api.get("/api/training-jobs/").json()["count"] == 1
    assert ds_api.get(f"/api/training-jobs/{job['id']}/").json()["params"] == params
    cancelled = admin_api.post(f"/api/training-jobs/{job['id']}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert TrainingJob.objects.get(pk=job["id"]).lock is None
    again = admin_api.post(f"/api/training-jobs/{job['id']}/cancel/")
    assert again.status_code == 409
    assert ds_api.get("/api/training-jobs/424242/").status_code == 404


def test_next_with_count_leases_several_for_prefetching(heme_api, admin_api, queued) -> None:
    first = heme_api.post("/api/queue/next/", {"count": 2}, format="json").json()["items"]
    assert len(first) == 2 and len({i["id"] for i in first}) == 2
    every = heme_api.post("/api/queue/next/", {"count": 10}, format="json").json()["items"]
    suggestions = [i["suggestion"] for i in every if i["suggestion"]]
    assert suggestions and all(set(s["probabilities"]) == set(CODES) for s in suggestions)
    heme_api.post(f"/api/queue/items/{every[-1]['id']}/release/")
    # The caller's live leases come first, renewed.
    again = heme_api.post("/api/queue/next/", {"count": 2}, format="json").json()["items"]
    assert sorted(i["id"] for i in again) == sorted(i["id"] for i in first)
    others = admin_api.post("/api/queue/next/", {"count": 10}, format="json").json()["items"]
    assert not {i["id"] for i in others} & {i["id"] for i in first}
    bad = heme_api.post("/api/queue/next/", {"count": 50}, format="json")
    assert bad.status_code == 400 and "count" in bad.json()["error"]["fields"]


def test_next_payload_equals_the_serializer_for_every_kind_of_item(
    smear, active_model, make_cell, users
) -> None:
    """The queue's 'next' builds its response directly (queue.review_item_payload); it
    must stay exactly what ReviewItemSerializer, the schema, gives."""
    import json
    from datetime import timedelta

    from django.test import RequestFactory
    from django.utils import timezone
    from rest_framework.renderers import JSONRenderer

    from annotation.api.queue import ReviewItemSerializer, _item_with_cell, review_item_payload
    from annotation.models import ModelVersion as MV
    from annotation.services.labels import cell_label_create
    from tests.annotation.api.conftest import predict

    heme = users["hematologist"]
    old = MV.objects.create(name="v-old", arch="resnet18", class_codes=list(CODES))
    # 1. labelled twice (the label supersedes another), predictions by two versions,
    #    leased, flagged, two reasons.
    labelled = make_cell(smear["case"], label="NE", annotator=heme)
    cell_label_create(cell_id=labelled.pk, code="BL", annotator=heme)
    predict(labelled, active_model, "BL", 0.61)
    predict(labelled, old, "MY", 0.4)
    leased = queue(labelled, old, ["low_confidence", "disagreement"])
    leased.status, leased.flagged, leased.leased_to = "leased", True, heme
    leased.lease_expires_at = timezone.now() + timedelta(minutes=5)
    leased.save()
    # 2. no model version, no prediction, no label, imported source class name.
    bare = make_cell(smear["case"])
    bare.source_class_name = "Lymphocyte, variant"
    bare.save(update_fields=["source_class_name"])
    unscored = queue(bare, None, ["audit"])
    # 3. closed, with an imported label (no annotator).
    imported = make_cell(smear["case"], label="LY")
    done = queue(imported, active_model, ["weak_class"])
    done.status, done.closed_at = "done", timezone.now()
    done.save()
    # 4. every item of the smear fixture.
    mine = [leased, unscored, done]
    items = [*mine, *ReviewItem.objects.exclude(pk__in=[i.pk for i in mine])]
    request = RequestFactory().get("/api/queue/next/")
    render = JSONRenderer().render
    for item in items:
        context = {"request": request}
        direct = review_item_payload(
            _item_with_cell(ReviewItem.objects.get(pk=item.pk), heme), context
        )
        expected = ReviewItemSerializer(
            _item_with_cell(ReviewItem.objects.get(pk=item.pk), heme), context=context
        ).data
        assert json.loads(render(direct)) == json.loads(render(expected)), item.pk
    assert len(items) == 4  # the three above and the smear's queued cell
    # submit's response, the same way: a person's label superseding another, an imported one
    from annotation.api.cells import LabelSerializer
    from annotation.api.queue import label_payload

    for label in (labelled.labels.latest("id"), imported.labels.get()):
        fresh = Label.objects.get(pk=label.pk)
        assert json.loads(render(label_payload(fresh))) == json.loads(
            render(LabelSerializer(fresh).data)
        )

"""Giving back every lease a screen holds in one call: POST /api/queue/release/."""

from __future__ import annotations

import pytest

from annotation.models import ReviewItem
from tests.annotation.api.conftest import queue

pytestmark = pytest.mark.django_db


@pytest.fixture
def three_queued(smear, active_model, make_cell) -> list[ReviewItem]:
    """The smear's queued cell plus two more."""
    for cell in (make_cell(smear["case"]), make_cell(smear["case"])):
        queue(cell, active_model, ["audit"])
    return list(ReviewItem.objects.order_by("pk"))


def test_release_many_gives_back_the_callers_leases_and_ignores_the_rest(
    heme_api, admin_api, three_queued
) -> None:
    mine = heme_api.post("/api/queue/next/", {"count": 2}, format="json").json()["items"]
    theirs = admin_api.post("/api/queue/next/").json()
    submitted = mine[0]
    assert (
        heme_api.post(
            f"/api/queue/items/{submitted['id']}/submit/", {"code": "NE"}, format="json"
        ).status_code
        == 201
    )
    ids = [i["id"] for i in mine] + [theirs["id"], 987654]
    response = heme_api.post("/api/queue/release/", {"item_ids": ids}, format="json")
    assert response.status_code == 200, response.content
    assert response.json() == {"released": [mine[1]["id"]]}
    statuses = dict(ReviewItem.objects.values_list("pk", "status"))
    assert statuses[mine[1]["id"]] == "queued"
    assert statuses[submitted["id"]] == "done"  # labelled meanwhile: left alone
    assert statuses[theirs["id"]] == "leased"  # someone else's lease: left alone
    # A retry (the first answer was lost) releases nothing and still succeeds.
    again = heme_api.post("/api/queue/release/", {"item_ids": ids}, format="json")
    assert again.status_code == 200 and again.json() == {"released": []}
    # The per-item release keeps working.
    assert heme_api.post(f"/api/queue/items/{theirs['id']}/release/").status_code == 409
    assert admin_api.post(f"/api/queue/items/{theirs['id']}/release/").status_code == 204


def test_release_many_refuses_a_malformed_body_with_the_field(heme_api, three_queued) -> None:
    response = heme_api.post("/api/queue/release/", {"item_ids": "all"}, format="json")
    assert response.status_code == 400
    assert "item_ids" in response.json()["error"]["fields"]
    empty = heme_api.post("/api/queue/release/", {"item_ids": []}, format="json")
    assert empty.status_code == 200 and empty.json() == {"released": []}


def test_release_many_is_refused_to_data_scientists(ds_api, three_queued) -> None:
    response = ds_api.post("/api/queue/release/", {"item_ids": [1]}, format="json")
    assert response.status_code == 403

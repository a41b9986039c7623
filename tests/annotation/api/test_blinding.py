"""Readers stay blinded on every endpoint (annotation/selectors/visibility.py): while a
reader holds a gold item or an independent read, nothing they are served gives the answer
away; a gold cell's expert label is hidden from every reader; file names go to admins and
data scientists only. Admins see everything."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation.models import Case, CellImage, GoldCheck, Label, ReviewItem
from annotation.services.events import QUEUE_GROUP, broadcast
from annotation.services.gold import gold_cell_mark
from annotation.services.routing import routing_config_update
from annotation.services.users import user_create_with_role
from tests.annotation.api.conftest import PASSWORD, predict

pytestmark = pytest.mark.django_db

GOLD_FILE = "BA_124389.jpg"  # a PBC-style name: the class is in it


def _client(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


@pytest.fixture
def world(users, clients, make_cell, active_model) -> dict[str, Any]:
    """A reference case with a gold cell (imported BA, source class "basophil") leased to
    reader ``a`` as a gold item; a double-read cell (imported LY, then an open item needing
    two reads: ``b`` has read it, ``a`` holds it now); an ordinary labelled cell."""
    routing_config_update(user=None, gold_rate=0.0, audit_rate=0.0)
    a = user_create_with_role(username="reader_a", password=PASSWORD, role="hematologist")
    b = user_create_with_role(username="reader_b", password=PASSWORD, role="hematologist")
    case = Case.objects.create(accession_id="REF-1")
    gold = make_cell(case, label="BA")
    CellImage.objects.filter(pk=gold.pk).update(
        original_filename=GOLD_FILE, source_class_name="basophil", source_labels=["basophil"]
    )
    predict(gold, active_model, "BA", 0.95)
    gold_record = gold_cell_mark(user=users["admin"], cell_id=gold.pk, diff14="BA")
    gold_item = ReviewItem.objects.create(
        cell=gold,
        is_gold=True,
        reasons=["audit"],
        status=ReviewItem.Status.LEASED,
        leased_to=a,
        model_version=active_model,
        labels_required=1,
    )
    GoldCheck.objects.create(gold=gold_record, user=a, item=gold_item)
    double = make_cell(case, label="LY")
    predict(double, active_model, "LY", 0.5)
    double_item = ReviewItem.objects.create(
        cell=double,
        reasons=["low_confidence"],
        status=ReviewItem.Status.LEASED,
        leased_to=a,
        model_version=active_model,
        labels_required=2,
    )
    b_read = Label.objects.create(
        cell=double, code="MO", source="hematologist", annotator=b, review_item=double_item
    )
    ordinary = make_cell(case, label="NE")
    predict(ordinary, active_model, "NE", 0.9)
    return {
        "case": case,
        "gold": gold,
        "double": double,
        "ordinary": ordinary,
        "b_read": b_read,
        "a": _client(a),
        "b": _client(b),
        "other": clients["hematologist"],  # a reader holding nothing
        "admin": clients["admin"],
        "ds": clients["data_scientist"],
    }


def _detail(client: APIClient, cell: CellImage) -> dict[str, Any]:
    response = client.get(f"/api/cells/{cell.pk}/")
    assert response.status_code == 200, response.content
    return response.json()


def _assert_gold_disguised(body: dict[str, Any]) -> None:
    assert body["label"] is None
    assert body["source_class_name"] == "" and body["has_label_conflict"] is False
    assert body["original_filename"] == ""
    if "labels" in body:  # the detail
        assert body["labels"] == [] and body["source_labels"] == []
        assert all(item["status"] in ("queued", "leased") for item in body["review_items"])
    assert "BA_" not in str(body) and "basophil" not in str(body)


# --- cell detail -----------------------------------------------------------------------------


def test_cell_detail_hides_a_gold_cells_answer_from_its_holder_and_every_other_reader(
    world,
) -> None:
    for reader in ("a", "b", "other"):
        _assert_gold_disguised(_detail(world[reader], world["gold"]))
    held = _detail(world["a"], world["gold"])
    assert held["queue"]["status"] == "leased"  # as the queue shows it, reasons and all
    assert held["prediction"]["top_code"] == "BA"  # the queue shows the suggestion too


def test_cell_detail_shows_an_admin_and_a_data_scientist_everything(world) -> None:
    for who in ("admin", "ds"):
        body = _detail(world[who], world["gold"])
        assert body["label"]["code"] == "BA" and [lbl["code"] for lbl in body["labels"]] == ["BA"]
        assert body["original_filename"] == GOLD_FILE and body["source_class_name"] == "basophil"
        assert body["source_labels"] == ["basophil"]


def test_cell_detail_hides_the_label_and_reads_from_the_independent_reader(world) -> None:
    held = _detail(world["a"], world["double"])
    assert held["label"] is None and held["labels"] == []
    assert held["original_filename"] == ""
    # A reader not holding it sees what they saw before, without the file name; the other
    # reader's read stays hidden from everyone until the item is done.
    seen = _detail(world["other"], world["double"])
    assert seen["label"]["code"] == "LY" and [lbl["code"] for lbl in seen["labels"]] == ["LY"]
    assert seen["original_filename"] == ""
    admin = _detail(world["admin"], world["double"])
    assert admin["label"]["code"] == "LY" and admin["original_filename"].endswith(".jpg")
    for body in (held, seen, admin):
        assert world["b_read"].pk not in [lbl["id"] for lbl in body["labels"]]


def test_file_names_go_to_admins_and_data_scientists_only(world) -> None:
    cell = world["ordinary"]
    assert _detail(world["other"], cell)["original_filename"] == ""
    assert _detail(world["other"], cell)["label"]["code"] == "NE"  # otherwise unchanged
    assert _detail(world["admin"], cell)["original_filename"] == cell.original_filename
    assert _detail(world["ds"], cell)["original_filename"] == cell.original_filename


# --- label history -------------------------------------------------------------------------


def _history(client: APIClient, cell: CellImage) -> list[str]:
    response = client.get(f"/api/cells/{cell.pk}/labels/")
    assert response.status_code == 200, response.content
    return [row["code"] for row in response.json()]


def test_label_history_is_empty_while_the_reader_is_blinded(world) -> None:
    assert _history(world["a"], world["gold"]) == []
    assert _history(world["other"], world["gold"]) == []
    assert _history(world["a"], world["double"]) == []
    assert _history(world["other"], world["double"]) == ["LY"]
    assert _history(world["admin"], world["gold"]) == ["BA"]
    assert _history(world["admin"], world["double"]) == ["LY"]


# --- cell list (a case's gallery) -----------------------------------------------------------


def _rows(client: APIClient, query: str) -> dict[int, dict[str, Any]]:
    response = client.get(f"/api/cells/?{query}")
    assert response.status_code == 200, response.content
    return {row["id"]: row for row in response.json()["results"]}


def test_the_gallery_rows_are_blinded_like_the_detail(world) -> None:
    case, gold, double = world["case"], world["gold"], world["double"]
    rows = _rows(world["a"], f"case={case.pk}")
    _assert_gold_disguised(rows[gold.pk])
    assert rows[double.pk]["label"] is None
    assert all(row["original_filename"] == "" for row in rows.values())
    other = _rows(world["other"], f"case={case.pk}")
    _assert_gold_disguised(other[gold.pk])
    assert other[double.pk]["label"]["code"] == "LY"
    admin = _rows(world["admin"], f"case={case.pk}")
    assert admin[gold.pk]["label"]["code"] == "BA"
    assert admin[gold.pk]["original_filename"] == GOLD_FILE


def test_label_filters_treat_blinded_cells_as_unlabelled(world) -> None:
    gold, double = world["gold"].pk, world["double"].pk
    assert list(_rows(world["a"], "label=BA")) == []
    assert list(_rows(world["other"], "label=BA")) == []
    assert list(_rows(world["admin"], "label=BA")) == [gold]
    assert list(_rows(world["a"], "label=LY")) == []
    assert list(_rows(world["other"], "label=LY")) == [double]
    assert {gold, double} <= set(_rows(world["a"], "label_status=unlabelled"))
    other_unlabelled = set(_rows(world["other"], "label_status=unlabelled"))
    assert gold in other_unlabelled and double not in other_unlabelled
    assert gold not in _rows(world["other"], "label_status=labelled&label_source=imported")
    assert gold not in _rows(world["admin"], "label_status=unlabelled")


def test_the_blinded_gallery_still_costs_a_fixed_number_of_queries(
    world, make_cell, django_assert_max_num_queries
) -> None:
    for _ in range(20):
        make_cell(world["case"], label="NE")
    with django_assert_max_num_queries(9):
        assert world["a"].get(f"/api/cells/?case={world['case'].pk}&limit=100").status_code == 200


# --- cases: list counts and the differential -------------------------------------------------


def test_case_counts_and_differential_count_a_blinded_cell_by_the_model(world) -> None:
    case = world["case"]

    def n_labelled(client: APIClient) -> int:
        rows = client.get("/api/cases/?search=REF-1").json()["results"]
        return int(rows[0]["n_labelled"])

    def differential(client: APIClient) -> dict[str, Any]:
        body = client.get(f"/api/cases/{case.pk}/").json()["differential"]
        return {row["code"]: row for row in body["classes"]} | {"_": body}

    assert n_labelled(world["admin"]) == 3
    assert n_labelled(world["other"]) == 2  # the gold cell reads as unlabelled
    assert n_labelled(world["a"]) == 1  # and the cell they read independently
    admin, other, held = differential(world["admin"]), differential(world["other"]), None
    assert admin["BA"]["count"] == 1 and admin["BA"]["imported"] == 1
    assert admin["BA"]["model_only"] == 0
    assert other["BA"]["count"] == 0 and other["BA"]["model_only"] == 1
    assert other["LY"]["count"] == 1
    held = differential(world["a"])
    assert held["LY"]["count"] == 0 and held["LY"]["model_only"] == 1
    assert held["_"]["cells_total"] == admin["_"]["cells_total"] == 3


# --- the review queue -----------------------------------------------------------------------


def test_the_queue_serves_the_holder_the_same_blinded_cells(world) -> None:
    response = world["a"].post("/api/queue/next/", {"count": 5}, format="json")
    assert response.status_code == 200, response.content
    items = {item["cell"]["id"]: item for item in response.json()["items"]}
    assert set(items) == {world["gold"].pk, world["double"].pk}
    _assert_gold_disguised(items[world["gold"].pk]["cell"])
    assert items[world["double"].pk]["cell"]["label"] is None
    assert items[world["double"].pk]["cell"]["original_filename"] == ""


# --- what readers cannot reach at all -------------------------------------------------------


def test_exports_and_the_audit_trail_are_not_served_to_readers(world) -> None:
    assert world["a"].get("/api/export-jobs/").status_code == 403
    assert world["a"].get("/api/exports/").status_code == 403
    browser = APIClient()
    assert browser.login(username="reader_a", password=PASSWORD)
    audit = browser.get(f"/admin/annotation/auditevent/?target_id={world['gold'].pk}")
    assert audit.status_code == 302 and "/login/" in audit["Location"]


# --- websocket events -----------------------------------------------------------------------


class _UserInjector:
    """Puts a user in the scope the way the session middleware would."""

    def __init__(self, user: Any) -> None:
        from channels.routing import URLRouter

        from annotation.routing import websocket_urlpatterns

        self.user = user
        self.inner = URLRouter(websocket_urlpatterns)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        return await self.inner({**scope, "user": self.user}, receive, send)


@pytest.mark.django_db(transaction=True)
def test_a_reader_is_never_sent_an_event_carrying_cell_answers() -> None:
    reader = user_create_with_role(username="ws_r", password=PASSWORD, role="hematologist")
    admin = user_create_with_role(username="ws_a", password=PASSWORD, role="admin")
    leaky = {"cell": {"id": 1, "label": {"code": "BA"}, "original_filename": GOLD_FILE}}

    async def run() -> None:
        comms = {}
        for name, user in (("reader", reader), ("admin", admin)):
            comm = WebsocketCommunicator(
                _UserInjector(user), "/ws/events/", headers=[(b"origin", b"http://127.0.0.1")]
            )
            connected, _ = await comm.connect()
            assert connected
            await comm.receive_json_from()  # hello
            comms[name] = comm
        await sync_to_async(broadcast)(QUEUE_GROUP, "cell.changed", leaky)
        assert await comms["reader"].receive_nothing(timeout=0.5)
        assert (await comms["admin"].receive_json_from(timeout=5))["data"] == leaky
        await sync_to_async(broadcast)(QUEUE_GROUP, "queue.counts", {"queued": 2})
        for comm in comms.values():
            assert (await comm.receive_json_from(timeout=5))["data"] == {"queued": 2}
            await comm.disconnect()

    async_to_sync(run)()

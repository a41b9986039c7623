"""Gold cells: marking and retiring, mixing into readers' queues, gold reads, the
performance figures, and scoring by every new model version."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation.errors import ApplicationError
from annotation.models import (
    AuditEvent,
    Case,
    CellImage,
    GoldCell,
    GoldCheck,
    Label,
    ModelVersion,
    Prediction,
    ReviewItem,
)
from annotation.rules import REASONS
from annotation.selectors.gold import gold_performance
from annotation.services import review_queue as rq
from annotation.services.gold import gold_cell_mark, gold_cell_retire, gold_rng_seed
from annotation.services.imports import cells_import
from annotation.services.labels import cell_label_create
from annotation.services.model_registry import model_version_register
from annotation.services.routing import cells_route, routing_config_update
from annotation.services.users import user_create_with_role
from mlworker.taxonomy import CODES
from tests.annotation.helpers import copy_files, first_images
from tests.annotation.pipeline.fixtures import tiny_checkpoint

pytestmark = pytest.mark.django_db

_n = iter(range(10**6))


def _cell(case: Case, *, label: str | None = None, source_class: str = "") -> CellImage:
    i = next(_n)
    cell = CellImage.objects.create(
        case=case,
        image=f"c/{i}.jpg",
        sha256=f"{i:064d}",
        width=1,
        height=1,
        source_class_name=source_class,
    )
    if label is not None:
        cell.current_label = Label.objects.create(cell=cell, code=label, source="imported")
        cell.save(update_fields=["current_label"])
    return cell


def _predict(cell: CellImage, version: ModelVersion, top: str, confidence: float = 0.95) -> None:
    probs = np.full(14, (1 - confidence) / 13)
    probs[CODES.index(top)] = confidence
    Prediction.objects.create(
        cell=cell,
        model_version=version,
        probabilities=probs.tolist(),
        top_code=top,
        confidence=confidence,
        margin=0.5,
        entropy=0.5,
    )


@pytest.fixture
def world() -> dict[str, Any]:
    """An active version, 120 unlabelled cells it queued (low confidence), and 30 gold
    cells (imported labels, confident predictions) of a second case."""
    users = {
        name: user_create_with_role(username=name, password="Long-pass-123", role=role)
        for name, role in (("a", "hematologist"), ("b", "hematologist"), ("boss", "admin"))
    }
    version = ModelVersion.objects.create(
        name="v1",
        arch="resnet18",
        class_codes=list(CODES),
        status="active",
        per_class_tpr={c: 0.95 for c in CODES},
    )
    routing_config_update(user=None, audit_rate=0.0, gold_rate=0.0)
    smear = Case.objects.create(accession_id="SMEAR")
    ordinary = [_cell(smear) for _ in range(120)]
    for cell in ordinary:
        _predict(cell, version, "LY", confidence=0.5)
    cells_route(cell_ids=[c.pk for c in ordinary], version=version)
    reference = Case.objects.create(accession_id="REF")
    golds = []
    for i in range(30):
        code = ("NE", "LY", "EO")[i % 3]
        cell = _cell(reference, label=code, source_class=code)
        _predict(cell, version, code)
        golds.append(gold_cell_mark(user=users["boss"], cell_id=cell.pk, diff14=code))
    return {"users": users, "version": version, "ordinary": ordinary, "golds": golds}


def _client(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


# --- marking and retiring ---------------------------------------------------------------


def test_marking_and_retiring_are_audited_with_before_and_after(world) -> None:
    boss = world["users"]["boss"]
    cell = _cell(Case.objects.get(accession_id="REF"), label="MO")
    gold = gold_cell_mark(user=boss, cell_id=cell.pk, diff14="mo", note="checked twice")
    assert (gold.diff14, gold.note, gold.marked_by, gold.retired_at) == (
        "MO",
        "checked twice",
        boss,
        None,
    )
    marked = AuditEvent.objects.filter(action="gold.mark", target_id=str(cell.pk)).get()
    assert marked.actor == boss and marked.before is None and marked.after["diff14"] == "MO"

    with pytest.raises(ApplicationError, match=r"already a gold cell .*retire it first") as err:
        gold_cell_mark(user=boss, cell_id=cell.pk, diff14="LY")
    assert err.value.code == "already_gold"
    with pytest.raises(ApplicationError, match="Unknown 14-Diff class 'XX'"):
        gold_cell_mark(
            user=boss, cell_id=_cell(Case.objects.get(accession_id="REF")).pk, diff14="XX"
        )
    with pytest.raises(ApplicationError, match="does not exist") as err:
        gold_cell_mark(user=boss, cell_id=987654, diff14="NE")
    assert err.value.status == 404

    gold_cell_retire(user=boss, cell_id=cell.pk)
    retired = AuditEvent.objects.filter(action="gold.retire", target_id=str(cell.pk)).get()
    assert retired.before["retired_at"] is None and retired.after["retired_at"] is not None
    with pytest.raises(ApplicationError, match="not an active gold cell"):
        gold_cell_retire(user=boss, cell_id=cell.pk)

    # Marked again after retiring, with another class: one row, both steps in the audit.
    again = gold_cell_mark(user=boss, cell_id=cell.pk, diff14="LY")
    assert again.pk == gold.pk and again.diff14 == "LY" and again.retired_at is None
    last = AuditEvent.objects.filter(action="gold.mark", target_id=str(cell.pk)).last()
    assert last.before["diff14"] == "MO" and last.before["retired_at"] is not None
    assert last.after["diff14"] == "LY"


# --- mixing -------------------------------------------------------------------------------


def _work(user: Any, n: int) -> list[ReviewItem]:
    """Take and label n cells, one at a time, as a reader does."""
    taken = []
    for _ in range(n):
        item = rq.review_item_next(user=user)
        assert item is not None
        rq.review_item_submit(item_id=item.pk, user=user, code="NE")
        taken.append(item)
    return taken


def _next_gold(user: Any) -> ReviewItem:
    """Work through the queue until a gold item comes."""
    for _ in range(50):
        item = rq.review_item_next(user=user)
        assert item is not None
        if item.is_gold:
            return item
        rq.review_item_submit(item_id=item.pk, user=user, code="LY")
    raise AssertionError("no gold item in 50 cells")


def test_the_gold_rate_is_honoured_over_many_nexts(world) -> None:
    routing_config_update(user=None, gold_rate=0.2)
    gold_rng_seed(seed=7)
    taken = _work(world["users"]["a"], 100)
    n_gold = sum(item.is_gold for item in taken)
    # Binomial(100, 0.2): mean 20, sd 4; the seed makes the run reproducible.
    assert 10 <= n_gold <= 30, n_gold
    assert GoldCheck.objects.filter(user=world["users"]["a"]).count() == n_gold

    routing_config_update(user=None, gold_rate=0.0)
    assert not any(item.is_gold for item in _work(world["users"]["b"], 15))


def test_the_same_seed_mixes_the_same_way(world) -> None:
    routing_config_update(user=None, gold_rate=0.3)
    gold_rng_seed(seed=11)
    first = [item.is_gold for item in _work(world["users"]["a"], 20)]
    gold_rng_seed(seed=11)
    second = [item.is_gold for item in _work(world["users"]["b"], 20)]
    assert first == second and any(first)


def test_nobody_gets_the_same_gold_cell_twice(world) -> None:
    a, b = world["users"]["a"], world["users"]["b"]
    GoldCell.objects.exclude(pk__in=[g.pk for g in world["golds"][:3]]).update(
        retired_at=world["golds"][0].marked_at
    )
    # b has labelled one of them already (in case review): it is never mixed in for b.
    cell_label_create(cell_id=world["golds"][0].cell_id, code="NE", annotator=b)
    routing_config_update(user=None, gold_rate=0.5)
    gold_rng_seed(seed=3)
    given: list[int] = []
    for _ in range(40):
        item = rq.review_item_next(user=a)
        if item.is_gold:
            given.append(item.cell_id)
            # A released gold item is not handed out again, to anyone.
            rq.review_item_release(item_id=item.pk, user=a)
        else:
            rq.review_item_submit(item_id=item.pk, user=a, code="LY")
    assert sorted(given) == sorted({g.cell_id for g in world["golds"][:3]})
    # Gold items never wait in the queue: a released one is cancelled at once.
    assert not ReviewItem.objects.filter(is_gold=True, status="queued").exists()
    assert ReviewItem.objects.filter(is_gold=True, status="cancelled").count() == len(given)
    # Another reader still gets them, each once, but not the one they labelled.
    seen_by_b = [item.cell_id for item in _work(b, 40) if item.is_gold]
    assert sorted(seen_by_b) == sorted(g.cell_id for g in world["golds"][1:3])
    # Nor does the admin who marked them.
    assert not any(item.is_gold for item in _work(world["users"]["boss"], 20))


def test_skipped_or_expired_gold_items_are_cancelled_not_queued(world) -> None:
    a = world["users"]["a"]
    routing_config_update(user=None, gold_rate=0.5)
    gold_rng_seed(seed=5)
    golds = []
    while len(golds) < 2:
        item = rq.review_item_next(user=a)
        assert item is not None
        if not item.is_gold:
            rq.review_item_submit(item_id=item.pk, user=a, code="LY")
        elif not golds:
            golds.append(item)
            rq.review_item_skip(item_id=item.pk, user=a)
        else:
            golds.append(item)
    skipped, expiring = golds
    ReviewItem.objects.filter(pk=expiring.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert rq.review_leases_expire() == 1
    for item in (skipped, expiring):
        item.refresh_from_db()
        assert (item.status, item.leased_to_id, item.closed_at is not None) == (
            "cancelled",
            None,
            True,
        )
    assert not ReviewItem.objects.filter(is_gold=True, status="queued").exists()


def test_gold_cells_are_mixed_only_into_a_queue_with_ordinary_work(world) -> None:
    routing_config_update(user=None, gold_rate=0.5)
    ReviewItem.objects.filter(is_gold=False).update(status="cancelled")
    gold_rng_seed(seed=1)
    assert all(rq.review_item_next(user=world["users"]["a"]) is None for _ in range(20))


def _strip_ids(value: Any) -> Any:
    """The response's shape: keys and value types, not the values."""
    if isinstance(value, dict):
        return {k: _strip_ids(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_ids(v) for v in value[:1]]
    return type(value).__name__


def test_a_gold_item_looks_like_an_ordinary_one_in_the_queue_api(world) -> None:
    reader = world["users"]["a"]
    client = _client(reader)
    routing_config_update(user=None, gold_rate=0.5)
    gold_rng_seed(seed=5)
    responses: dict[bool, dict[str, Any]] = {}
    for _ in range(30):
        body = client.post("/api/queue/next/", {}, format="json").json()
        item = ReviewItem.objects.get(pk=body["id"])
        responses.setdefault(item.is_gold, body)
        client.post(f"/api/queue/items/{item.pk}/submit/", {"code": "NE"}, format="json")
        if len(responses) == 2:
            break
    gold, ordinary = responses[True], responses[False]
    assert _strip_ids(gold) == _strip_ids(ordinary)
    assert gold["reasons"] and set(gold["reasons"]) <= set(REASONS)
    assert gold["reasons"] == ["audit"]  # a confident, strong-class prediction
    assert gold["suggestion"] is not None and gold["status"] == "leased"
    # The expert's answer is not in it: no label, no source class name, no word "gold".
    assert gold["cell"]["label"] is None and gold["cell"]["source_class_name"] == ""
    assert "gold" not in json.dumps(gold).lower()
    assert gold["cell"]["queue"]["reasons"] == gold["reasons"]


# --- gold reads ---------------------------------------------------------------------------


def test_a_gold_read_keeps_the_cells_label_and_opens_no_adjudication(world) -> None:
    reader = world["users"]["a"]
    routing_config_update(user=None, gold_rate=0.5, labels_required_abnormal=2)
    Case.objects.filter(accession_id="REF").update(labels_required=2)  # double reading
    gold_rng_seed(seed=2)
    item = _next_gold(reader)
    cell = CellImage.objects.get(pk=item.cell_id)
    before = cell.current_label
    wrong = "BL"
    response = _client(reader).post(
        f"/api/queue/items/{item.pk}/submit/", {"code": wrong}, format="json"
    )
    assert response.status_code == 201 and response.json()["code"] == wrong
    cell.refresh_from_db()
    item.refresh_from_db()
    assert cell.current_label == before and not cell.has_label_conflict
    assert item.status == "done" and item.label.code == wrong and item.label.review_item == item
    assert not ReviewItem.objects.filter(status="adjudication").exists()
    assert AuditEvent.objects.filter(action="label.read", target_id=str(cell.pk)).exists()
    figures = gold_performance()
    assert figures["readers"][0]["user"] == "a" and figures["readers"][0]["n"] == 1
    assert figures["readers"][0]["correct"] == 0


def test_gold_reads_stay_out_of_the_cells_label_history(world) -> None:
    reader, other = world["users"]["a"], world["users"]["b"]
    routing_config_update(user=None, gold_rate=0.5)
    gold_rng_seed(seed=2)
    item = _next_gold(reader)
    submitted = _client(reader).post(
        f"/api/queue/items/{item.pk}/submit/", {"code": "BL"}, format="json"
    )
    assert submitted.status_code == 201
    # Another reader sees no label at all on an active gold cell: they may be handed it
    # too (annotation/selectors/visibility.py). An admin sees the expert's label, and
    # still not the gold read.
    history = _client(other).get(f"/api/cells/{item.cell_id}/labels/")
    assert history.status_code == 200 and history.json() == []
    admin_view = _client(world["users"]["boss"]).get(f"/api/cells/{item.cell_id}/labels/")
    shown = [row["id"] for row in admin_view.json()]
    assert submitted.json()["id"] not in shown
    assert CellImage.objects.get(pk=item.cell_id).current_label_id in shown


def test_active_gold_cells_are_left_out_of_training(world) -> None:
    from annotation.services.training import labelled_cells

    golds = world["golds"]
    training = {cell_id for cell_id, *_ in labelled_cells()}
    assert not training & {g.cell_id for g in golds}
    gold_cell_retire(user=world["users"]["boss"], cell_id=golds[0].cell_id)
    assert golds[0].cell_id in {cell_id for cell_id, *_ in labelled_cells()}


# --- performance --------------------------------------------------------------------------


def test_performance_of_readers_and_models_on_a_hand_built_example(db) -> None:
    boss = user_create_with_role(username="boss", password="Long-pass-123", role="admin")
    ann = user_create_with_role(username="ann", password="Long-pass-123", role="hematologist")
    bob = user_create_with_role(username="bob", password="Long-pass-123", role="hematologist")
    v1 = ModelVersion.objects.create(name="v1", arch="r", class_codes=list(CODES), status="active")
    v2 = ModelVersion.objects.create(name="v2", arch="r", class_codes=list(CODES))
    dm96 = Case.objects.create(accession_id="A", metadata={"Scanner": "DM96", "stain": "MGG"})
    other = Case.objects.create(accession_id="B", metadata={"Cohort": "x"})
    cells = [_cell(dm96), _cell(dm96), _cell(other), _cell(other)]
    for cell, code in zip(cells, ["NE", "NE", "LY", "BL"], strict=True):
        gold_cell_mark(user=boss, cell_id=cell.pk, diff14=code)
    retired = _cell(other)
    gold_cell_mark(user=boss, cell_id=retired.pk, diff14="MO")
    gold_cell_retire(user=boss, cell_id=retired.pk)
    not_gold = _cell(other)

    def read(user: Any, cell: CellImage, code: str) -> None:
        item = ReviewItem.objects.create(cell=cell, is_gold=True, status="done")
        Label.objects.create(
            cell=cell, code=code, annotator=user, source="hematologist", review_item=item
        )

    for cell, code in zip(cells, ["NE", "LY", "LY", "BL"], strict=True):
        read(ann, cell, code)
    read(bob, cells[0], "NE")
    read(bob, retired, "NE")  # a retired gold cell does not count
    for cell, code in zip(
        [*cells, retired, not_gold], ["NE", "NE", "NE", "NE", "MO", "NE"], strict=True
    ):
        _predict(cell, v1, code)
    _predict(cells[2], v2, "LY")

    figures = gold_performance()
    assert figures["gold_cells"] == 4 and figures["classes"] == ["NE", "LY", "BL"]
    ann_row, bob_row = figures["readers"]
    assert (ann_row["user"], ann_row["n"], ann_row["correct"]) == ("ann", 4, 3)
    assert ann_row["accuracy"] == pytest.approx(0.75)
    assert ann_row["per_class"]["NE"] == {"n": 2, "correct": 1, "tpr": 0.5}
    assert ann_row["per_class"]["BL"] == {"n": 1, "correct": 1, "tpr": 1.0}
    assert (bob_row["n"], bob_row["correct"], bob_row["per_class"]["LY"]) == (
        1,
        1,
        {"n": 0, "correct": 0, "tpr": None},
    )
    m1, m2 = figures["models"]
    assert (m1["name"], m1["active"], m1["n"], m1["correct"]) == ("v1", True, 4, 2)
    assert m1["accuracy"] == pytest.approx(0.5)
    assert m1["balanced_accuracy"] == pytest.approx((1.0 + 0.0 + 0.0) / 3)
    assert m1["per_class"]["LY"] == {"n": 1, "correct": 0, "tpr": 0.0}
    assert (m2["name"], m2["active"], m2["n"], m2["accuracy"]) == ("v2", False, 1, 1.0)
    assert m2["balanced_accuracy"] == pytest.approx(1.0)  # only LY has cells for v2

    assert set(figures["by_scanner"]) == {"DM96", "unknown"}
    dm = figures["by_scanner"]["DM96"]
    assert dm["gold_cells"] == 2 and dm["readers"][0]["n"] == 2 and dm["models"][0]["correct"] == 2
    assert figures["by_scanner"]["unknown"]["models"][0]["n"] == 2
    assert set(figures["by_stain"]) == {"MGG", "unknown"}


def test_gold_endpoints_for_the_admin_console(world) -> None:
    boss, reader = world["users"]["boss"], world["users"]["a"]
    admin = _client(boss)
    listed = admin.get("/api/gold/").json()
    assert len(listed) == 30
    first = listed[0]
    assert set(first) >= {
        "cell",
        "diff14",
        "note",
        "marked_by",
        "marked_at",
        "thumbnail_url",
        "case",
    }
    assert first["marked_by"] == "boss" and first["case"] == "REF"
    assert first["thumbnail_url"].endswith(f"/api/cells/{first['cell']}/thumbnail/")

    cell = world["ordinary"][0]
    created = admin.post(
        "/api/gold/", {"cell": cell.pk, "diff14": "ly", "note": "n"}, format="json"
    )
    assert created.status_code == 201 and created.json()["diff14"] == "LY"
    again = admin.post("/api/gold/", {"cell": cell.pk, "diff14": "LY"}, format="json")
    assert again.status_code == 400 and "already a gold cell" in again.json()["error"]["message"]
    unknown = admin.post("/api/gold/", {"cell": cell.pk, "diff14": "ZZ"}, format="json")
    assert unknown.status_code == 400 and "not a 14-Diff code" in json.dumps(unknown.json())
    assert admin.delete(f"/api/gold/{cell.pk}/").status_code == 204
    assert admin.delete(f"/api/gold/{cell.pk}/").status_code == 404
    assert len(admin.get("/api/gold/").json()) == 30

    figures = admin.get("/api/gold/performance/").json()
    assert figures["gold_cells"] == 30 and figures["gold_rate"] == 0.0
    assert figures["models"][0]["n"] == 30 and figures["models"][0]["accuracy"] == 1.0
    assert _client(reader).get("/api/gold/performance/").status_code == 403

    assert admin.patch("/api/routing-config/", {"gold_rate": 0.7}, format="json").status_code == 400
    ok = admin.patch("/api/routing-config/", {"gold_rate": 0.1}, format="json")
    assert ok.status_code == 200 and ok.json()["gold_rate"] == 0.1
    change = AuditEvent.objects.filter(action="routing.update").last()
    assert change.actor == boss and (change.before["gold_rate"], change.after["gold_rate"]) == (
        0.0,
        0.1,
    )


# --- scoring by every version -------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_every_new_model_version_scores_the_gold_cells(
    celery_worker, tmp_path: Path, shared_data: Path
) -> None:
    copy_files(first_images(shared_data / "pbc" / "NE", 2), tmp_path / "ref" / "NE")
    copy_files(first_images(shared_data / "pbc" / "LY", 2), tmp_path / "ref" / "LY")
    summary = cells_import(source=tmp_path / "ref", enqueue_processing=False)
    ids = sorted(summary.cell_ids)
    for cell_id in ids[:3]:
        code = CellImage.objects.get(pk=cell_id).current_label.code
        gold_cell_mark(user=None, cell_id=cell_id, diff14=code)
    first = model_version_register(checkpoint_path=tiny_checkpoint(tmp_path / "1.pt"), name="g1")
    _wait(lambda: Prediction.objects.filter(model_version=first).count() == 3, "g1 on gold")
    # A cell marked later is scored by the candidate that exists then.
    gold_cell_mark(user=None, cell_id=ids[3], diff14="LY")
    _wait(lambda: Prediction.objects.filter(model_version=first).count() == 4, "g1 on new gold")
    gold_cell_retire(user=None, cell_id=ids[0])
    second = model_version_register(
        checkpoint_path=tiny_checkpoint(tmp_path / "2.pt", seed=1), name="g2"
    )
    _wait(lambda: Prediction.objects.filter(model_version=second).count() == 3, "g2 on gold")
    time.sleep(1)
    assert set(
        Prediction.objects.filter(model_version=second).values_list("cell_id", flat=True)
    ) == set(ids[1:])
    assert {m["name"]: m["n"] for m in gold_performance()["models"]} == {"g1": 3, "g2": 3}


def _wait(condition: Any, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")

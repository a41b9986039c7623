"""Double reading: independent reads, agreement, adjudication, kappa."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation.errors import ApplicationError
from annotation.models import AuditEvent, Case, CellImage, ModelVersion, Prediction, ReviewItem
from annotation.selectors.agreement import agreement_summary, cohen_kappa, fleiss_kappa
from annotation.selectors.cells import cell_label_history
from annotation.services import review_queue as rq
from annotation.services.routing import cells_route, routing_config_update
from annotation.services.training import labelled_cells
from annotation.services.users import user_create_with_role
from mlworker.taxonomy import CODES

pytestmark = pytest.mark.django_db


def test_cohen_kappa_textbook_example() -> None:
    # 50 items: both yes 20, A yes/B no 5, A no/B yes 10, both no 15 -> kappa 0.4
    pairs = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    assert cohen_kappa([("y", "y")] * 3) is None  # chance agreement 1: undefined
    assert cohen_kappa([]) is None
    assert cohen_kappa([("y", "n")] * 3) == 0.0  # chance agreement 0, none observed


def test_cohen_kappa_on_random_reads_equals_its_definition() -> None:
    rng = np.random.default_rng(0)
    codes = ["NE", "LY", "MO", "BL"]
    for _ in range(20):
        first = rng.choice(codes, size=40).tolist()
        second = [a if rng.random() < 0.6 else str(rng.choice(codes)) for a in first]
        observed = sum(a == b for a, b in zip(first, second, strict=True)) / 40
        expected = sum(first.count(c) * second.count(c) for c in codes) / 40**2
        kappa = cohen_kappa(list(zip(first, second, strict=True)))
        assert kappa == pytest.approx((observed - expected) / (1 - expected))


def test_fleiss_kappa_textbook_example() -> None:
    # Fleiss (1971) as tabulated on Wikipedia: 10 subjects, 14 raters, 5 categories.
    table = [
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ]  # fmt: skip
    items = [Counter({str(j): n for j, n in enumerate(row) if n}) for row in table]
    result = fleiss_kappa(items)
    assert result["kappa"] == pytest.approx(0.210, abs=0.001)
    assert result["n_items"] == 10


@pytest.fixture
def setup():
    users = {
        name: user_create_with_role(username=name, password="Long-pass-123", role=role)
        for name, role in (("a", "hematologist"), ("b", "hematologist"), ("c", "hematologist"),
                           ("senior", "senior_hematologist"))
    }  # fmt: skip
    version = ModelVersion.objects.create(
        name="v", arch="resnet18", class_codes=list(CODES), status="active",
        per_class_tpr={c: 0.95 for c in CODES},
    )  # fmt: skip
    routing_config_update(user=None, audit_rate=0.0, labels_required_abnormal=2)
    double = Case.objects.create(accession_id="D", labels_required=2)
    single = Case.objects.create(accession_id="S")
    cells = []
    for i, (case, top) in enumerate(
        [(double, "LY"), (double, "LY"), (single, "BL"), (single, "NE")]
    ):
        cell = CellImage.objects.create(
            case=case, image=f"c/{i}.jpg", sha256=f"{i:064d}", width=1, height=1
        )
        probs = np.full(14, 0.3 / 13)
        probs[CODES.index(top)] = 0.7
        Prediction.objects.create(
            cell=cell, model_version=version, probabilities=probs.tolist(), top_code=top,
            confidence=0.7, margin=0.6, entropy=1.0,
        )  # fmt: skip
        cells.append(cell)
    cells_route(cell_ids=[c.pk for c in cells], version=version)
    return users, cells


def test_reads_needed_come_from_the_case_and_the_abnormal_rule(setup) -> None:
    _, cells = setup
    required = dict(ReviewItem.objects.values_list("cell_id", "labels_required"))
    assert [required[c.pk] for c in cells] == [2, 2, 2, 1]  # double case; BL abnormal; NE


def test_agreeing_reads_become_the_label_and_readers_are_blind(setup) -> None:
    users, cells = setup
    cell = cells[0]
    item = ReviewItem.objects.get(cell=cell)
    ReviewItem.objects.exclude(pk=item.pk).update(status="cancelled")
    first = rq.review_item_next(user=users["a"])
    rq.review_item_submit(item_id=first.pk, user=users["a"], code="LY")
    cell.refresh_from_db()
    assert cell.current_label is None  # one read does not count yet
    assert list(cell_label_history(cell_id=cell.pk)) == []  # and nobody else can see it
    assert rq.review_item_next(user=users["a"]) is None  # nobody reads a cell twice
    second = rq.review_item_next(user=users["b"])
    assert second.pk == item.pk
    label = rq.review_item_submit(item_id=second.pk, user=users["b"], code="LY")
    cell.refresh_from_db()
    item.refresh_from_db()
    assert cell.current_label == label and item.status == "done"
    assert [lbl.code for lbl in cell_label_history(cell_id=cell.pk)] == ["LY", "LY"]
    assert AuditEvent.objects.filter(action="label.agreed", target_id=str(cell.pk)).exists()


def test_disagreement_goes_to_a_senior_hematologist(setup) -> None:
    users, cells = setup
    cell = cells[0]
    item = ReviewItem.objects.get(cell=cell)
    ReviewItem.objects.exclude(pk=item.pk).update(status="cancelled")
    rq.review_item_submit(
        item_id=rq.review_item_next(user=users["a"]).pk, user=users["a"], code="LY"
    )
    rq.review_item_submit(
        item_id=rq.review_item_next(user=users["b"]).pk, user=users["b"], code="LR"
    )
    item.refresh_from_db()
    cell.refresh_from_db()
    assert item.status == "adjudication" and "disagreement" in item.reasons
    assert cell.has_label_conflict and cell.current_label is None
    assert cell.pk not in {c[0] for c in labelled_cells()}  # not trained on while unresolved
    assert rq.review_item_next(user=users["c"]) is None  # not in the normal queue
    with pytest.raises(ApplicationError) as err:
        rq.review_item_adjudicate(item_id=item.pk, user=users["c"], code="LR")
    assert err.value.status == 403
    decided = rq.review_item_adjudicate(item_id=item.pk, user=users["senior"], code="LR")
    cell.refresh_from_db()
    assert decided.source == "adjudicated" and cell.current_label == decided
    assert not cell.has_label_conflict

    summary = agreement_summary()
    assert summary["n_items"] == 1 and summary["pairs"][0]["n_items"] == 1
    assert summary["per_class"]["NE"] is None
    assert summary["per_class_items"]["LR"] == 1 and summary["per_class_items"]["BA"] == 0


def test_adjudication_over_the_api(setup) -> None:
    users, cells = setup
    item = ReviewItem.objects.get(cell=cells[0])
    ReviewItem.objects.exclude(pk=item.pk).update(status="cancelled")
    rq.review_item_submit(
        item_id=rq.review_item_next(user=users["a"]).pk, user=users["a"], code="LY"
    )
    rq.review_item_submit(
        item_id=rq.review_item_next(user=users["b"]).pk, user=users["b"], code="MO"
    )

    def client(user) -> APIClient:
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
        return api

    listing = client(users["senior"]).get("/api/adjudication/").json()
    assert [r["code"] for r in listing[0]["reads"]] == ["LY", "MO"]
    assert {r["annotator"] for r in listing[0]["reads"]} == {"a", "b"}
    assert listing[0]["case_id"] == cells[0].case_id
    assert client(users["a"]).get("/api/adjudication/").status_code == 403
    decided = client(users["senior"]).post(
        f"/api/adjudication/{item.pk}/decide/", {"code": "mo"}, format="json"
    )
    assert decided.status_code == 201 and decided.json()["source"] == "adjudicated"
    again = client(users["senior"]).post(
        f"/api/adjudication/{item.pk}/decide/", {"code": "MO"}, format="json"
    )
    assert again.status_code == 409

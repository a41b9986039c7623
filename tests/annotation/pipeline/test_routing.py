"""Routing reasons, priorities and the queue's leases (no worker needed)."""

from __future__ import annotations

import threading
from datetime import timedelta

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone

from annotation.errors import ApplicationError
from annotation.models import (
    Case,
    CellImage,
    Label,
    ModelVersion,
    Prediction,
    ReviewItem,
    ReviewSkip,
)
from annotation.selectors.routing import routing_config_get
from annotation.services import review_queue as rq
from annotation.services.routing import cells_route, routing_config_update
from mlworker.taxonomy import CODES

pytestmark = pytest.mark.django_db


def _version(tpr: dict[str, float] | None = None) -> ModelVersion:
    per_class = {c: {"tpr": (tpr or {}).get(c, 0.95)} for c in CODES}
    return ModelVersion.objects.create(
        name=f"t{ModelVersion.objects.count()}", arch="resnet18", class_codes=list(CODES),
        status="active", metrics={"per_class": per_class}, per_class_tpr={c: r["tpr"] for c, r in per_class.items()},
    )  # fmt: skip


def _cell(i: int, case: Case | None = None) -> CellImage:
    case = case or Case.objects.get_or_create(accession_id="R")[0]
    return CellImage.objects.create(
        case=case, image=f"cells/{i}.jpg", sha256=f"{i:064d}", width=360, height=363
    )


def _predict(cell: CellImage, version: ModelVersion, top: str, confidence: float) -> Prediction:
    probs = np.full(len(CODES), (1 - confidence) / (len(CODES) - 1))
    probs[CODES.index(top)] = confidence
    return Prediction.objects.create(
        cell=cell, model_version=version, probabilities=probs.tolist(), top_code=top,
        confidence=confidence, margin=confidence - probs.min(), entropy=0.0,
        features=np.random.default_rng(cell.pk).normal(size=16).astype(np.float16).tobytes(),
    )  # fmt: skip


def test_each_reason_is_given_for_its_own_cause() -> None:
    version = _version({"MY": 0.5})
    routing_config_update(user=None, confidence_threshold=0.8, audit_rate=0.0)
    confident = _cell(1)
    unsure = _cell(2)
    weak = _cell(3)
    conflict = _cell(4)
    conflict.has_label_conflict = True
    conflict.save()
    labelled = _cell(5)
    _predict(confident, version, "NE", 0.97)
    _predict(unsure, version, "LY", 0.55)
    _predict(weak, version, "MY", 0.97)
    _predict(conflict, version, "MO", 0.97)
    _predict(labelled, version, "LY", 0.3)
    Label.objects.create(cell=labelled, code="LY", source="imported")
    labelled.current_label = Label.objects.get(cell=labelled)
    labelled.save()
    ids = [c.pk for c in (confident, unsure, weak, conflict, labelled)]
    result = cells_route(cell_ids=ids, version=version)
    items = {i.cell_id: i.reasons for i in ReviewItem.objects.all()}
    assert items == {
        unsure.pk: ["low_confidence"],
        weak.pk: ["weak_class"],
        conflict.pk: ["disagreement"],
    }
    assert result["created"] == 3
    # Routing again creates nothing new.
    cells_route(cell_ids=ids, version=version)
    assert ReviewItem.objects.count() == 3


def test_audit_share_of_confident_cells_is_close_to_the_rate() -> None:
    version = _version()
    routing_config_update(user=None, audit_rate=0.2)
    cells = [_cell(i) for i in range(1, 301)]
    for cell in cells:
        _predict(cell, version, "NE", 0.99)
    cells_route(cell_ids=[c.pk for c in cells], version=version)
    audited = ReviewItem.objects.filter(reasons=["audit"]).count()
    assert 30 <= audited <= 90  # 20 % of 300 = 60, binomial sd ~7


def test_unvalidated_class_counts_as_weak() -> None:
    version = _version()
    version.per_class_tpr = {**version.per_class_tpr, "LA": None}
    version.save()
    routing_config_update(user=None, audit_rate=0.0)
    cell = _cell(1)
    _predict(cell, version, "LA", 0.99)
    cells_route(cell_ids=[cell.pk], version=version)
    assert ReviewItem.objects.get().reasons == ["weak_class"]


def test_routing_settings_are_validated_and_audited(django_user_model) -> None:
    admin = django_user_model.objects.create_user("adm", password="Long-pass-123")
    with pytest.raises(
        ApplicationError, match=r"confidence_threshold must be a number from 0\.0 to 1\.0"
    ):
        routing_config_update(user=admin, confidence_threshold=1.5)
    with pytest.raises(ApplicationError, match="choose one of"):
        routing_config_update(user=admin, strategy="vibes")
    routing_config_update(user=admin, confidence_threshold=0.6, strategy="entropy")
    assert routing_config_get().confidence_threshold == 0.6
    from annotation.models import AuditEvent

    event = AuditEvent.objects.get(action="routing.update")
    assert (
        event.before["confidence_threshold"] == 0.8 and event.after["confidence_threshold"] == 0.6
    )


@pytest.fixture
def queue_of_three():
    version = _version()
    routing_config_update(user=None, audit_rate=0.0)
    cells = []
    for i, conf in ((1, 0.3), (2, 0.5), (3, 0.7)):
        cells.append(_cell(i))
        _predict(cells[-1], version, "LY", conf)
    cells_route(cell_ids=[c.pk for c in cells], version=version)
    users = [
        get_user_model().objects.create_user(f"h{i}", password="Long-pass-123") for i in range(3)
    ]
    return users, cells


def test_next_leases_the_most_uncertain_first_and_is_sticky(queue_of_three) -> None:
    (a, b, _), cells = queue_of_three
    routing_config_update(user=None, strategy="least_confidence")
    ReviewItem.objects.all().delete()
    version = ModelVersion.objects.get()
    cells_route(cell_ids=[c.pk for c in cells], version=version)
    first = rq.review_item_next(user=a)
    assert first.cell_id == cells[0].pk and first.leased_to == a
    assert rq.review_item_next(user=a).pk == first.pk  # the same lease, renewed
    assert rq.review_item_next(user=b).cell_id == cells[1].pk


def test_submit_closes_the_item_and_labels_the_cell(queue_of_three) -> None:
    (a, b, _), _cells = queue_of_three
    item = rq.review_item_next(user=a)
    with pytest.raises(ApplicationError) as err:
        rq.review_item_submit(item_id=item.pk, user=b, code="LY")
    assert err.value.status == 409
    label = rq.review_item_submit(item_id=item.pk, user=a, code="LR")
    item.refresh_from_db()
    assert item.status == "done" and item.label == label and label.annotator == a
    assert item.closed_at is not None and item.lease_expires_at is None
    assert CellImage.objects.get(pk=item.cell_id).current_label == label


def test_skip_is_recorded_and_the_skipper_does_not_get_it_again(queue_of_three) -> None:
    (a, b, _), _cells = queue_of_three
    item = rq.review_item_next(user=a)
    rq.review_item_skip(item_id=item.pk, user=a)
    assert ReviewSkip.objects.filter(item=item, user=a).exists()
    assert rq.review_item_next(user=a).pk != item.pk
    assert rq.review_item_next(user=b).pk == item.pk


def test_expired_lease_returns_the_item_to_the_queue(queue_of_three) -> None:
    (a, b, _), cells = queue_of_three
    ReviewItem.objects.exclude(cell_id=cells[0].pk).delete()
    item = rq.review_item_next(user=a)
    assert rq.review_item_next(user=b) is None
    ReviewItem.objects.filter(pk=item.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    again = rq.review_item_next(user=b)
    assert again.pk == item.pk and again.leased_to == b
    with pytest.raises(ApplicationError, match="leased to someone else"):
        rq.review_item_submit(item_id=item.pk, user=a, code="NE")


def test_release_and_flag(queue_of_three) -> None:
    (a, _b, _), _cells = queue_of_three
    item = rq.review_item_next(user=a)
    assert rq.review_item_flag(item_id=item.pk, user=a, flagged=True).flagged
    rq.review_item_release(item_id=item.pk, user=a)
    item.refresh_from_db()
    assert item.status == "queued" and item.leased_to is None and item.flagged
    assert not ReviewSkip.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_concurrent_next_never_hands_one_item_to_two_people() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("SKIP LOCKED needs PostgreSQL")
    version = _version()
    routing_config_update(user=None, audit_rate=0.0)
    cells = [_cell(i) for i in range(1, 41)]
    for i, cell in enumerate(cells):
        _predict(cell, version, "LY", 0.3 + i / 100)
    cells_route(cell_ids=[c.pk for c in cells], version=version)
    users = [
        get_user_model().objects.create_user(f"c{i}", password="Long-pass-123") for i in range(16)
    ]
    got: dict[int, list[int]] = {}
    barrier = threading.Barrier(len(users))

    def work(user) -> None:
        from django.db import connection as conn

        try:
            barrier.wait()
            mine = []
            for _ in range(3):
                item = rq.review_item_next(user=user)
                if item is None:
                    break
                mine.append(item.pk)
                rq.review_item_submit(item_id=item.pk, user=user, code="LY")
            got[user.pk] = mine
        finally:
            conn.close()

    threads = [threading.Thread(target=work, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handed = [pk for items in got.values() for pk in items]
    assert len(handed) == len(set(handed)) == 40
    assert Label.objects.count() == 40
    assert ReviewItem.objects.filter(status="done").count() == 40


def test_several_leases_at_once_for_prefetching(queue_of_three) -> None:
    (a, b, _), _cells = queue_of_three
    items = rq.review_items_next(user=a, count=2)
    assert len(items) == 2 and all(i.leased_to == a for i in items)
    again = rq.review_items_next(user=a, count=3)
    assert [i.pk for i in again[:2]] == sorted(i.pk for i in items) and len(again) == 3
    assert rq.review_items_next(user=b, count=3) == []
    with pytest.raises(ApplicationError, match="count must be from 1 to 10"):
        rq.review_items_next(user=a, count=11)


def test_a_label_from_case_review_closes_the_queued_item(queue_of_three) -> None:
    from annotation.services.labels import cell_label_create

    (a, b, _), _cells = queue_of_three
    leased_by_b = rq.review_item_next(user=b)
    queued = ReviewItem.objects.filter(status="queued").first()
    label = cell_label_create(cell_id=queued.cell_id, code="MO", annotator=a)
    queued.refresh_from_db()
    assert queued.status == "done" and queued.label == label
    # An item someone else holds stays theirs.
    cell_label_create(cell_id=leased_by_b.cell_id, code="MO", annotator=a)
    leased_by_b.refresh_from_db()
    assert leased_by_b.status == "leased" and leased_by_b.leased_to == b


def test_counts_are_sent_once_a_second_not_per_request(settings) -> None:
    from django.core.cache import cache

    from annotation.selectors.review_queue import review_queue_counts
    from annotation.services.events import QUEUE_DIRTY_KEY, queue_changed, queue_counts_flush

    settings.CELERY_TASK_ALWAYS_EAGER = False
    cache.delete(QUEUE_DIRTY_KEY)
    assert queue_counts_flush() is False
    queue_changed()
    queue_changed()
    assert queue_counts_flush() is True
    assert queue_counts_flush() is False
    assert review_queue_counts()["queued"] == 0


def test_one_transaction_marks_the_queue_changed_once(
    settings, django_capture_on_commit_callbacks
) -> None:
    from django.core.cache import cache
    from django.db import transaction

    from annotation.services.events import QUEUE_DIRTY_KEY, queue_changed_on_commit

    settings.CELERY_TASK_ALWAYS_EAGER = False
    cache.delete(QUEUE_DIRTY_KEY)
    with django_capture_on_commit_callbacks(execute=True) as callbacks, transaction.atomic():
        queue_changed_on_commit()
        queue_changed_on_commit()
    assert len(callbacks) == 1 and cache.get(QUEUE_DIRTY_KEY)

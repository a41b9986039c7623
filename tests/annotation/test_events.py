"""``queue_changed_on_commit``: one mark per committed transaction, none for a rolled-back
one, and a rolled-back one never swallows the next transaction's mark."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import cache
from django.db import transaction

from annotation.services.events import QUEUE_DIRTY_KEY, queue_changed_on_commit


@pytest.fixture
def broker_mode(settings: Any) -> None:
    """With a broker the mark is a Redis key, which the tests can read."""
    settings.CELERY_TASK_ALWAYS_EAGER = False
    cache.delete(QUEUE_DIRTY_KEY)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("broker_mode")
def test_a_rolled_back_transaction_marks_nothing_and_does_not_suppress_the_next() -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        queue_changed_on_commit()
        raise RuntimeError("rolled back")
    assert not cache.get(QUEUE_DIRTY_KEY)
    with transaction.atomic():
        queue_changed_on_commit()
        queue_changed_on_commit()
    assert cache.get(QUEUE_DIRTY_KEY)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("broker_mode")
def test_each_committed_transaction_marks_the_queue_and_outside_one_it_marks_at_once() -> None:
    with transaction.atomic():
        queue_changed_on_commit()
        assert not cache.get(QUEUE_DIRTY_KEY)  # not before the commit
    assert cache.get(QUEUE_DIRTY_KEY)
    cache.delete(QUEUE_DIRTY_KEY)
    with transaction.atomic():
        queue_changed_on_commit()
    assert cache.get(QUEUE_DIRTY_KEY)
    cache.delete(QUEUE_DIRTY_KEY)
    queue_changed_on_commit()  # autocommit: nothing to wait for
    assert cache.get(QUEUE_DIRTY_KEY)


@pytest.mark.django_db
@pytest.mark.usefixtures("broker_mode")
def test_a_rolled_back_savepoint_does_not_suppress_the_mark_of_its_transaction(
    django_capture_on_commit_callbacks: Any,
) -> None:
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(RuntimeError), transaction.atomic():
            queue_changed_on_commit()
            raise RuntimeError("savepoint rolled back")
        with transaction.atomic():
            queue_changed_on_commit()
            queue_changed_on_commit()
    assert len(callbacks) == 1 and cache.get(QUEUE_DIRTY_KEY)

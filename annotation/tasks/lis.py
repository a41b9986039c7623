"""Sending one LIS delivery (annotation/services/lis/delivery.py), with Celery's retries.

While the receiver is unreachable the task retries with exponential backoff
(WBC_LIS_RETRY_BACKOFF_SECONDS, doubling, at most WBC_LIS_RETRY_BACKOFF_MAX_SECONDS;
no jitter, so the row can say when the next attempt is due) up to WBC_LIS_MAX_RETRIES
times; the row stays "retrying" in between and housekeeping finds it again if the retry
is lost. Settings are read when the worker starts.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.utils.time import get_exponential_backoff_interval
from django.conf import settings

from annotation.services.lis import lis_delivery_attempt
from annotation.services.lis.transport import LisUnavailable


@shared_task(
    bind=True,
    name="annotation.tasks.lis_delivery_send",
    acks_late=True,
    ignore_result=True,
    autoretry_for=(LisUnavailable,),
    retry_backoff=settings.WBC_LIS_RETRY_BACKOFF_SECONDS,
    retry_backoff_max=settings.WBC_LIS_RETRY_BACKOFF_MAX_SECONDS,
    retry_jitter=False,
    max_retries=settings.WBC_LIS_MAX_RETRIES,
)
def lis_delivery_send_task(self: Any, delivery_id: int) -> str:
    retries = int(self.request.retries or 0)
    if self.request.is_eager:
        # An eager (embedded, in-process) retry would run at once, in a loop: there the
        # task tries once and leaves the row "retrying" for housekeeping or an admin.
        retry_in: float | None = float(settings.WBC_LIS_RETRY_BACKOFF_SECONDS)
    elif retries < int(self.max_retries):
        # The countdown autoretry is about to use: the same function, the same inputs.
        retry_in = get_exponential_backoff_interval(
            factor=int(max(1.0, float(self.retry_backoff))),
            retries=retries,
            maximum=int(self.retry_backoff_max),
            full_jitter=False,
        )
    else:
        retry_in = None  # the last retry: a failure now is final
    delivery, error = lis_delivery_attempt(delivery_id=delivery_id, retry_in=retry_in)
    if error is not None and not self.request.is_eager:
        raise error  # autoretry_for: Celery sends the task again after the backoff
    return delivery.status if delivery is not None else "skipped"

"""Reading export jobs, and who may see which.

An export job's zip holds the labelled dataset its requester chose, so a job is seen by
the user who asked for it and by admins, nobody else. Deciding it here, where the jobs are
read, means the list, the detail and the download cannot disagree about it.
"""

from __future__ import annotations

from django.db.models import QuerySet

from annotation.errors import get_or_404
from annotation.models import ExportJob
from annotation.roles import ADMIN, user_roles
from annotation.types import UserLike


def export_job_list(*, user: UserLike) -> QuerySet[ExportJob]:
    """The export jobs ``user`` may see, newest first: admins every job, others their own."""
    jobs = ExportJob.objects.select_related("requested_by").order_by("-created_at", "-id")
    if ADMIN in user_roles(user):
        return jobs
    return jobs.filter(requested_by=user.pk)


def export_job_get(*, user: UserLike, job_id: int) -> ExportJob:
    """The job, or a 404 when it does not exist or ``user`` may not see it (the same
    answer for both, so ids of other users' jobs give nothing away)."""
    return get_or_404(export_job_list(user=user), what="Export job", pk=job_id)

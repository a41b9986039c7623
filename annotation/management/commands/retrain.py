from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from annotation.errors import ApplicationError
from annotation.models import TrainingJob
from annotation.services.training import training_job_create


class Command(BaseCommand):
    help = "Start a retraining job now (as an admin would); --wait follows it to the end."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--wait", action="store_true", help="wait and print progress")
        parser.add_argument(
            "--args",
            default="",
            help="extra training flags, e.g. '--epochs-head 2 --image-size 64'",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        params = {"args": options["args"].split()} if options["args"] else {}
        try:
            job = training_job_create(trigger=TrainingJob.Trigger.ADMIN, user=None, params=params)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"training job {job.pk} queued")
        if not options["wait"]:
            return
        last = None
        while True:
            job.refresh_from_db()
            state = (job.status, job.progress.get("stage"), job.progress.get("percent"))
            if state != last:
                self.stdout.write(f"job {job.pk}: {job.status} {job.progress}")
                last = state
            if job.status in (
                TrainingJob.Status.SUCCEEDED,
                TrainingJob.Status.FAILED,
                TrainingJob.Status.CANCELLED,
            ):
                break
            time.sleep(1)
        if job.status != TrainingJob.Status.SUCCEEDED:
            raise CommandError(f"training job {job.pk} {job.status}: {job.error}")
        version = job.result_version
        self.stdout.write(
            f"result: {version.name if version else '-'} ({version.status if version else '-'})"
        )

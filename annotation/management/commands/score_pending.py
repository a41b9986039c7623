from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from annotation.models import ModelVersion
from annotation.services.pipeline import cells_enqueue_pending


class Command(BaseCommand):
    help = "Queue segmentation and scoring for every cell that lacks them (active model)."

    def add_arguments(self, parser: CommandParser) -> None:
        # Not --version: every Django command has that one (it prints Django's version).
        parser.add_argument(
            "--model-version", dest="version", default=None, help="score with this version (name)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["version"]:
            version = ModelVersion.objects.filter(name=options["version"]).first()
            if version is None:
                raise CommandError(f"No model version {options['version']!r}")
        else:
            version = ModelVersion.objects.active()
        queued = cells_enqueue_pending(version=version)
        if version is None:
            self.stdout.write(
                f"queued {queued.segmentation} cells for segmentation; no active model to score with"
            )
            return
        self.stdout.write(
            f"queued {queued.segmentation} cells for segmentation and {queued.scoring} for "
            f"scoring with {version.name}"
        )

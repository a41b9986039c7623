from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from annotation.models import CellImage, ModelVersion, Prediction, Segmentation
from annotation.services.pipeline import cells_enqueue_scoring
from mlworker.tasks import SEGMENTATION_METHOD


class Command(BaseCommand):
    help = "Queue segmentation and scoring for every cell that lacks them (active model)."

    def add_arguments(self, parser: CommandParser) -> None:
        # Not --version: every Django command has that one (it prints Django's version).
        parser.add_argument(
            "--model-version", dest="version", default=None, help="score with this version (name)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        version = (
            ModelVersion.objects.filter(name=options["version"]).first()
            if options["version"]
            else ModelVersion.objects.filter(status=ModelVersion.Status.ACTIVE).first()
        )
        live = CellImage.objects.exclude(processing=CellImage.Processing.FAILED)
        unsegmented = live.exclude(
            pk__in=Segmentation.objects.filter(method_version=SEGMENTATION_METHOD).values("cell_id")
        ).values_list("id", flat=True)
        with transaction.atomic():
            seg_ids = list(unsegmented)
            if seg_ids:
                from mlworker import tasks

                ids = seg_ids
                transaction.on_commit(
                    lambda: [
                        tasks.segment_cells.delay(ids[i : i + 64]) for i in range(0, len(ids), 64)
                    ]
                )
            if version is None:
                if options["version"]:
                    raise CommandError(f"No model version {options['version']!r}")
                self.stdout.write(
                    f"queued {len(seg_ids)} cells for segmentation; no active model to score with"
                )
                return
            unscored = list(
                live.exclude(
                    pk__in=Prediction.objects.filter(model_version=version).values("cell_id")
                ).values_list("id", flat=True)
            )
            cells_enqueue_scoring(cell_ids=unscored, version_id=version.pk)
        self.stdout.write(
            f"queued {len(seg_ids)} cells for segmentation and {len(unscored)} for scoring with {version.name}"
        )

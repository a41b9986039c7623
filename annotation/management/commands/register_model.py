from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from annotation.errors import ApplicationError
from annotation.services.model_registry import model_version_promote, model_version_register


class Command(BaseCommand):
    help = (
        "Register a trained checkpoint (e.g. runs/train-cpu/checkpoint.pt) as a candidate "
        "model version; --activate promotes it (the first version always passes the guard)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("checkpoint", type=Path)
        parser.add_argument("--name", default=None)
        parser.add_argument("--activate", action="store_true")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            version = model_version_register(
                checkpoint_path=options["checkpoint"], name=options["name"], triggered_by="admin"
            )
            if options["activate"]:
                model_version_promote(version_id=version.pk, user=None)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        version.refresh_from_db()
        self.stdout.write(f"registered {version.name} ({version.arch}, {version.status})")

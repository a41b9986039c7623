from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from annotation.errors import ApplicationError
from annotation.management.commands._common import version_by_name_or_id
from annotation.services.model_registry import model_version_rollback


class Command(BaseCommand):
    help = "Make an earlier (retired) model version active again."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("version", help="version name (e.g. v2) or id")

    def handle(self, *args: Any, **options: Any) -> None:
        version = version_by_name_or_id(options["version"])
        try:
            model_version_rollback(version_id=version.pk, user=None)
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"rolled back: {version.name} is active again")

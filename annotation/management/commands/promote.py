from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from annotation.errors import ApplicationError
from annotation.management.commands._common import version_by_name_or_id
from annotation.services.model_registry import model_version_promote


class Command(BaseCommand):
    help = "Promote a candidate model version (the no-regression guard applies unless --force)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("version", help="version name (e.g. v3) or id")
        parser.add_argument("--force", action="store_true", help="promote despite a regression")

    def handle(self, *args: Any, **options: Any) -> None:
        version = version_by_name_or_id(options["version"])
        try:
            model_version_promote(version_id=version.pk, user=None, force=options["force"])
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"{version.name} is now active; unlabelled cells are being re-scored")

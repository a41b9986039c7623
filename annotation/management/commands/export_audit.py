from __future__ import annotations

import json
import sys
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from annotation.services.audit import audit_events_export


def _day(value: str) -> datetime:
    try:
        return datetime.combine(date.fromisoformat(value), time.min, tzinfo=UTC)
    except ValueError:
        raise CommandError(f"{value!r} is not a date; use YYYY-MM-DD") from None


class Command(BaseCommand):
    help = "Write the audit trail for a date range as JSON lines (one event a line, UTC)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--since", type=_day, default=None, help="first day, YYYY-MM-DD")
        parser.add_argument(
            "--until", type=_day, default=None, help="day after the last, YYYY-MM-DD"
        )
        parser.add_argument("--out", type=Path, default=None, help="file (default: stdout)")

    def handle(self, *args: Any, **options: Any) -> None:
        out = options["out"].open("w") if options["out"] else sys.stdout
        n = 0
        try:
            for event in audit_events_export(since=options["since"], until=options["until"]):
                out.write(json.dumps(event) + "\n")
                n += 1
        finally:
            if options["out"]:
                out.close()
        self.stderr.write(f"{n} audit events")

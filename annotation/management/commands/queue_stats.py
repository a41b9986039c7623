from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from annotation.selectors.review_queue import review_queue_counts


class Command(BaseCommand):
    help = "Print the review queue: open items by status, reason and predicted class."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def handle(self, *args: Any, **options: Any) -> None:
        counts = review_queue_counts()
        if options["json"]:
            self.stdout.write(json.dumps(counts))
            return
        self.stdout.write(f"queued {counts['queued']}, leased {counts['leased']}")
        for title in ("by_reason", "by_class"):
            self.stdout.write(title.replace("_", " ") + ":")
            for key, n in sorted(counts[title].items(), key=lambda kv: -kv[1]):
                self.stdout.write(f"  {key:16s} {n}")

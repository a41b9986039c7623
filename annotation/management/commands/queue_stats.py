from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from annotation.broker import broker_queue_lengths
from annotation.selectors.pipeline import pipeline_backlog
from annotation.selectors.review_queue import review_queue_counts


class Command(BaseCommand):
    help = (
        "Print the review queue (open items by status, reason and predicted class) and the "
        "pipeline: cells waiting for segmentation and scoring, and the stranded ones."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def handle(self, *args: Any, **options: Any) -> None:
        counts = review_queue_counts()
        pipeline = pipeline_backlog()
        queues = broker_queue_lengths()
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        **counts,
                        "pipeline": pipeline,
                        "broker_queues": queues,
                        "stranded_after_s": settings.WBC_STRANDED_AFTER_SECONDS,
                    }
                )
            )
            return
        self.stdout.write(f"queued {counts['queued']}, leased {counts['leased']}")
        for title in ("by_reason", "by_class"):
            self.stdout.write(title.replace("_", " ") + ":")
            for key, n in sorted(counts[title].items(), key=lambda kv: -kv[1]):
                self.stdout.write(f"  {key:16s} {n}")
        self.stdout.write(
            "pipeline (stranded: waiting over "
            f"{settings.WBC_STRANDED_AFTER_SECONDS} s with no task queued or running; "
            "housekeeping queues them again):"
        )
        for stage, state in pipeline.items():
            self.stdout.write(
                f"  {stage:13s} pending {state['pending']} (oldest {_age(state['oldest_pending_s'])}), "
                f"stranded {state['stranded']} (oldest {_age(state['oldest_stranded_s'])}), "
                f"last result {_ago(state['last_result_s'])}"
            )
        if queues is None:
            self.stdout.write("broker queues: no broker, or it does not answer")
        else:
            self.stdout.write(
                "broker queues: " + ", ".join(f"{q} {n} tasks" for q, n in queues.items())
            )


def _age(seconds: object) -> str:
    return "-" if seconds is None else f"{seconds} s"


def _ago(seconds: object) -> str:
    return "never" if seconds is None else f"{seconds} s ago"

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from annotation.errors import ApplicationError
from annotation.services.imports import cells_import


class Command(BaseCommand):
    help = (
        "Import cell images from a class-per-folder tree, a folder with manifest.csv, a "
        "CellaVision case export, or a zip of any of these. Bad files are skipped with "
        "their reason; images already stored are counted as duplicates."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path, help="folder or .zip to import")
        parser.add_argument(
            "--case",
            dest="case_name",
            default=None,
            help="put every cell into this case (default: one case per patient, or the "
            "folder's name)",
        )
        parser.add_argument(
            "--show-skipped",
            type=int,
            default=20,
            help="how many skipped files to list with their reasons (default 20)",
        )
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        parser.add_argument(
            "--no-processing",
            action="store_true",
            help="store only; do not queue segmentation and scoring (score_pending does later)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        bars: dict[str, tqdm] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if options["no_progress"]:
                return
            bar = bars.get(phase)
            if bar is None:
                bar = bars[phase] = tqdm(total=total, desc=phase, unit="img", file=self.stderr)
            bar.update(done - bar.n)
            if done >= total:
                bar.close()

        try:
            summary = cells_import(
                source=options["path"],
                case_name=options["case_name"],
                progress=progress,
                enqueue_processing=not options["no_processing"],
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        finally:
            for bar in bars.values():
                bar.close()

        out = self.stdout
        limit = options["show_skipped"]
        for name, reason in summary.skipped[:limit]:
            out.write(f"skipped {name}: {reason}")
        if len(summary.skipped) > limit:
            out.write(f"... and {len(summary.skipped) - limit} more skipped files")
        for name, count in sorted(summary.out_of_taxonomy.items()):
            out.write(f"outside the 14 classes, imported without a label: {name!r} x{count}")
        for name, count in sorted(summary.unknown_class_names.items()):
            out.write(
                f"unknown class name {name!r} x{count}: imported without a label, name kept; "
                "if it is one of the 14 classes add it to mlworker/taxonomy.py"
            )
        if summary.existing_labelled:
            out.write(f"gave a first label to {summary.existing_labelled} cells stored earlier")
        out.write(summary.line())
